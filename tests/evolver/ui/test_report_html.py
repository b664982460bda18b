"""The report's HTML page: built from a real record by the real `evolve.py report`, opened in headless Chromium.

The browser test needs Debian's `chromium` and the `playwright` package (its own browser download is never
used: it drives the system chromium). Without them it skips, unless HRM_EVOLVE_REQUIRE_BROWSER=1 (CI).
Its screenshot is kept in $HRM_EVOLVE_ARTIFACTS/report.png, else <checkout>/.artifacts/report.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from evolver.judge.promotion import describe
from evolver.record.git_record import EvolutionRecord
from evolver.record.store import ProposalStore
from evolver.ui.report_html import load_curves, write_html_report
from tests.availability import skip_or_fail

PROJECT = Path(__file__).resolve().parents[3]
RUN = "run-html"
XSS_TITLE = "Faster <script>alert(1)</script> training"
RULE = describe()


def proposal_for(pid: str, title: str, parent: str) -> dict[str, Any]:
    return {
        "id": pid, "title": title,
        "rationale": "Because <img src=x onerror=alert(2)> said so & more.",
        "hypothesis": "exact accuracy rises by 0.05",
        "citations": [{"arxiv_id": "2506.21734", "title": "Hierarchical Reasoning Model",
                       "claim": "two coupled recurrent modules <b>reason</b>"}],
        "edits": [{"op": "search_replace", "file": "hrm/model.py", "search": "x", "replace": "y"}],
        "expected_effect": {"metric": "exact_accuracy", "direction": "increase", "size": 0.05,
                            "confidence": "low"},
        "risk": {"level": "low", "failure_modes": ["slower steps"]},
        "provenance": {"provider": "offline", "model": "test", "prompt_hash": None, "parent_commit": parent},
    }


def judged(seeds: list[int], parent: list[float], cand: list[float], confirm: list[int] | None = None,
           c_parent: list[float] | None = None, c_cand: list[float] | None = None,
           verdict: str = "merge") -> dict[str, Any]:
    """result.json's judgement and comparison, in the shape evolver/run/candidate.py writes them."""
    confirm, c_parent, c_cand = confirm or [], c_parent or [], c_cand or []
    gains = [c - p for p, c in zip(parent, cand, strict=True)]
    c_gains = [c - p for p, c in zip(c_parent, c_cand, strict=True)]
    pairs = [{"seed": s, "phase": "selection", "parent": p, "candidate": c, "gain": c - p, "void": False,
              "void_reason": ""} for s, p, c in zip(seeds, parent, cand, strict=True)]
    pairs += [{"seed": s, "phase": "confirmation", "parent": p, "candidate": c, "gain": c - p, "void": False,
               "void_reason": ""} for s, p, c in zip(confirm, c_parent, c_cand, strict=True)]
    mean = sum(gains) / len(gains)
    return {
        "judgement": {"verdict": verdict, "reason": f"{verdict} on {len(seeds)} pairs", "rule": RULE,
                      "pairs": pairs,
                      "selection": {"stage": "selection", "action": "pass" if verdict == "merge" else "reject",
                                    "reason": f"selection: mean gain {mean:+.4f}", "numbers": {}, "rule": ""},
                      "confirmation": None},
        "comparison": {"metric": "exact_accuracy", "verdict": verdict, "rule": RULE, "seeds": seeds,
                       "candidate": cand, "baseline": parent, "gains": gains, "confirmation_seeds": confirm,
                       "confirmation_candidate": c_cand, "confirmation_baseline": c_parent,
                       "confirmation_gains": c_gains, "confirmation_level": 0.075 if confirm else None,
                       "mean_gain": mean, "score": sum(cand) / len(cand), "delta": mean,
                       "baseline_mean": sum(parent) / len(parent), "lower_bound": mean - 0.02, "void_pairs": 0},
    }


def add_candidate(rec: EvolutionRecord, store: ProposalStore, pid: str, title: str, cycle: int,
                  old: str, new: str, verdict: str, extra: dict[str, Any]) -> str:
    """One candidate as the loop makes it: branch, commit, stored proposal and diff, note or merge, result."""
    cand = rec.create_candidate(pid)
    model = cand.path / "hrm" / "model.py"
    model.write_text(model.read_text().replace(old, new))
    proposal = proposal_for(pid, title, cand.parent)
    sha = rec.commit_candidate(cand, proposal)
    store.save_proposal(proposal, rec.diff(cand))
    result = {"proposal_id": pid, "run_id": RUN, "cycle": cycle, "title": title, "verdict": verdict,
              "failed_stage": None, "reason": f"{verdict}: see the numbers", "candidate_commit": sha,
              "parent": cand.parent, "branch": cand.branch, "citations": ["2506.21734"],
              "timings": {"llm": 1.5, "patch": 0.1, "safety": 0.4, "smoke": 2.0, "train": 30.0, "evaluate": 3.0},
              **extra}
    if verdict == "merged":
        result["merge_commit"] = rec.merge_candidate(cand, {"score": 0.5})
    else:
        rec.record_result(cand, verdict if verdict != "failed" else "failed:smoke", reason=result["reason"])
    store.save_result(pid, result)
    rec.remove_candidate(cand)
    return sha


def write_curve(repo: Path, pid: str, phase: str, seed: int, side: str, start: float) -> None:
    """A metrics.jsonl where the loop's seed-pair measurement leaves it (hrm/train.py's records)."""
    train = (repo / ".hrm-evolve" / "runs" / RUN / "candidates" / pid / f"{phase}-seed{seed}-{side}"
             / f"train-seed{seed}" / "train")
    train.mkdir(parents=True)
    lines = [json.dumps({"type": "train", "step": s, "loss": start / (1 + 0.1 * s), "time": s * 0.1})
             for s in range(1, 60)]
    lines.insert(3, "not json")
    (train / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def build_run(repo: Path) -> None:
    """A run with a merged, a rejected (whose title is a script), a failed and an invalid candidate."""
    with EvolutionRecord(repo, run_id=RUN) as rec:
        store = ProposalStore(rec)
        seeds, confirm = [0, 1, 2], [100000, 100001, 100002]
        add_candidate(rec, store, "wider-hidden", "Wider hidden size", 1, "return 64", "return 96", "merged",
                      judged(seeds, [0.40, 0.42, 0.41], [0.47, 0.49, 0.46], confirm, [0.41, 0.40, 0.43],
                             [0.46, 0.47, 0.47]))
        for s in seeds:
            for side, start in (("parent", 2.0), ("candidate", 1.6)):
                write_curve(repo, "wider-hidden", "selection", s, side, start + 0.05 * s)
        add_candidate(rec, store, "xss-title", XSS_TITLE, 2, "v * 2.0", "v * 3.0", "rejected",
                      judged(seeds, [0.47, 0.46, 0.48], [0.44, 0.45, 0.43], verdict="rejected"))
        add_candidate(rec, store, "broken-smoke", "Break <the> smoke test", 3, "return 96", "return 1 // 0",
                      "failed", {"failed_stage": "smoke",
                                 "stages": [{"stage": "safety", "ok": True, "duration_s": 0.4, "reason": ""},
                                            {"stage": "smoke", "ok": False, "duration_s": 2.0,
                                             "reason": "ZeroDivisionError: <division> by zero"}]})
        cand = rec.create_candidate("bad-edit")  # an edit that did not apply: no commit, branch discarded
        rec.discard_candidate(cand)
        store.save_proposal(proposal_for("bad-edit", "Edit a missing function", rec.best_commit()))
        store.save_result("bad-edit", {"proposal_id": "bad-edit", "run_id": RUN, "cycle": 4,
                                       "title": "Edit a missing function", "verdict": "invalid",
                                       "failed_stage": "apply", "reason": "no function 'nope' in hrm/model.py",
                                       "timings": {"llm": 1.0, "patch": 0.05}})


def run_report(repo: Path) -> Path:
    env = {**os.environ, "COLUMNS": "500"}
    proc = subprocess.run([sys.executable, str(PROJECT / "evolve.py"), "report", "--repo", str(repo),
                           "--run-id", RUN], cwd=repo, env=env, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = repo / ".hrm-evolve" / "reports" / RUN / "report.html"
    assert f"html: {page}" in proc.stdout, proc.stdout
    return page


def artifacts_dir() -> Path:
    return Path(os.environ["HRM_EVOLVE_ARTIFACTS"]) if os.environ.get("HRM_EVOLVE_ARTIFACTS") else PROJECT / ".artifacts"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_unavailable() -> str | None:
    if chromium_path() is None:
        return "no chromium binary on PATH (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


# ================================================================================================ without a browser
def test_page_escapes_candidate_text_and_needs_no_record(tmp_path: Path) -> None:
    results = [{"proposal_id": "x", "cycle": 1, "verdict": "rejected", "title": XSS_TITLE,
                "reason": "</pre><script>alert(3)</script>", "timings": {"llm": 1.0},
                "comparison": {"seeds": [0, 1], "baseline": [0.5, 0.6], "candidate": [0.4, "<b>"],
                               "gains": [-0.1, None], "rule": "rule <i>text</i>"}}]
    page = write_html_report(tmp_path / "report.html", results).read_text()
    assert "<script>alert" not in page and "</pre><script>" not in page and "rule <i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;/pre&gt;&lt;script&gt;alert(3)" in page
    assert "rule &lt;i&gt;text&lt;/i&gt;" in page and "<td>&lt;b&gt;</td>" in page
    assert page.count("<script>") == 1  # the page's own
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "no learning curve recorded" in page and "git record was not found" in page


def test_curves_are_read_without_following_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"type": "train", "step": 1, "loss": 0.5}) + "\n")
    train = tmp_path / "cand" / "selection-seed0-candidate" / "train-seed0" / "train"
    train.mkdir(parents=True)
    (train / "metrics.jsonl").symlink_to(secret)
    result = {"comparison": {"seeds": [0], "baseline": [0.5], "candidate": [0.6], "gains": [0.1]}}
    curves, problems = load_curves(tmp_path / "cand", result)
    assert curves == [] and len(problems) == 1 and "selection seed 0 candidate" in problems[0]


# ================================================================================================ in Chromium
def test_report_page_in_headless_chromium(user_repo: Path) -> None:
    skip_or_fail(browser_unavailable(), "HRM_EVOLVE_REQUIRE_BROWSER")
    from playwright.sync_api import sync_playwright

    build_run(user_repo)
    page_path = run_report(user_repo)
    url = page_path.resolve().as_uri()
    console_errors: list[str] = []
    page_errors: list[str] = []
    requests: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url, wait_until="load")

            assert page.title() == f"hrm-evolve run {RUN}"
            tree = page.locator("svg.tree")
            assert tree.is_visible()
            nodes = tree.locator("a.node.cand")
            assert nodes.count() == 4
            assert sorted(nodes.nth(i).get_attribute("data-pid") for i in range(4)) == [
                "bad-edit", "broken-smoke", "wider-hidden", "xss-title"]
            merged = tree.locator("a.node.merged")
            assert merged.count() == 1 and merged.get_attribute("data-pid") == "wider-hidden"
            assert "merged" in (merged.text_content() or "")
            assert tree.locator("g.node.root").count() == 1

            xss = page.locator("details.cand[data-pid='xss-title']")
            assert not xss.locator("pre.diff").is_visible()
            tree.locator("a.node[data-pid='xss-title']").click()
            assert xss.get_attribute("open") is not None
            diff = xss.locator("pre.diff")
            assert diff.is_visible()
            assert "+    return [v * 3.0 for v in values]" in diff.inner_text()
            assert xss.locator("pre.diff .d-add").count() >= 1 and xss.locator("pre.diff .d-del").count() >= 1
            assert xss.locator(".ctitle").inner_text() == XSS_TITLE
            assert xss.locator("h4.ptitle").inner_text() == XSS_TITLE
            assert page.locator("script").count() == 1
            assert "<img src=x onerror=alert(2)>" in xss.inner_text()

            page.locator("table a[href='#cand-0']").click()  # a list entry opens the merged candidate
            first = page.locator("details.cand[data-pid='wider-hidden']")
            assert first.get_attribute("open") is not None
            assert first.locator("svg.curve-chart polyline.curve").count() == 6
            assert "100000" in first.locator("table.pairs").inner_text()
            tree.locator("a.node[data-pid='broken-smoke']").click()
            broken = page.locator("details.cand[data-pid='broken-smoke']")
            assert "no learning curve recorded" in broken.inner_text()
            assert "ZeroDivisionError: <division> by zero" in broken.inner_text()

            best = page.locator("#best + p + div.box")
            assert best.locator("svg.chart").is_visible()
            assert "[" in best.locator("table").inner_text()  # a confidence interval
            assert "promotion: selection:" in page.locator("#rule + div.box").inner_text()
            fidelity = page.locator("#fidelity + p + div.box")  # two candidates judged: too few to say
            assert fidelity.locator("table.fidelity").is_visible()
            assert fidelity.locator("table.fidelity tr[data-stage]").count() == 3
            assert "too few candidates were judged (2, need 3)" in fidelity.inner_text()

            page.evaluate("window.scrollTo(0, 0)")
            shot = artifacts_dir() / "report.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            print(f"report screenshot: {shot}")
        finally:
            browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert console_errors == [] and page_errors == [] and dialogs == []
    assert requests and all(u == url or u.startswith("data:") for u in requests), requests
