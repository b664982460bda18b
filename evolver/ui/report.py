"""`python evolve.py report`: a JSON summary, a text summary, PNG plots and a self-contained HTML page of a run,
built from its stored results (the page: :mod:`evolver.ui.report_html`; the fidelity of the cheap stages:
:mod:`evolver.judge.fidelity`)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

from evolver.judge import fidelity  # noqa: E402
from evolver.judge.saturation import ceiling_lines  # noqa: E402
from evolver.record.git_record import EvolutionRecord  # noqa: E402
from evolver.ui.report_html import HTML_FILE, write_html_report  # noqa: E402

SUCCESS_VERDICTS = {"merged", "approved"}


def ceiling_summary(ladder: dict[str, Any] | None, saturation: dict[str, Any] | None,
                    results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's task ladder and every saturation it saw (runs/<run-id>/ladder.json or saturation.json on the
    record branch), and the merges per task they were judged on; None for a run with neither."""
    events = [dict(step) for step in (ladder or {}).get("steps") or []]
    if saturation:
        events.append({"task": saturation.get("task"), "moved_to": None, "time": saturation.get("time"),
                       "saturation": saturation})
    merges = Counter(str(r.get("task")) for r in results if r.get("verdict") in SUCCESS_VERDICTS and r.get("task"))
    if not events and not ladder and not merges:
        return None
    return {"ladder": list((ladder or {}).get("tasks") or []), "task": (ladder or {}).get("task"),
            "saturated": [{"task": e.get("task"), "moved_to": e.get("moved_to"),
                           "commit": (e.get("saturation") or {}).get("commit"),
                           "mean": (e.get("saturation") or {}).get("mean"),
                           "reason": (e.get("saturation") or {}).get("reason"), "time": e.get("time")}
                          for e in events],
            "merges_by_task": dict(merges)}


def summarize(results: list[dict[str, Any]], baseline: dict[str, Any] | None = None,
              ceiling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Aggregate per-candidate result dicts (as stored in result.json) into a run summary; ``ceiling`` is the
    run's task ladder and saturations (:func:`ceiling_summary`)."""
    verdicts = Counter(r.get("verdict", "unknown") for r in results)
    failures = Counter(r["failed_stage"] for r in results if r.get("failed_stage"))
    stage_time: dict[str, list[float]] = defaultdict(list)
    for r in results:
        for stage, seconds in (r.get("timings") or {}).items():
            stage_time[stage].append(float(seconds))
    best = None
    for r in results:
        comp = r.get("comparison") or {}
        if r.get("verdict") in SUCCESS_VERDICTS and comp.get("candidate"):
            score = sum(comp["candidate"]) / len(comp["candidate"])
            if best is None or score > best["score"]:
                best = {"proposal_id": r.get("proposal_id"), "score": score}
    total_time = sum(sum(v) for v in stage_time.values())
    training = sum(sum(v) for k, v in stage_time.items() if is_training(k))
    return {
        "candidates": len(results),
        "verdicts": dict(verdicts),
        "failures_by_stage": dict(failures),
        "seconds_by_stage": {k: sum(v) for k, v in stage_time.items()},
        "mean_seconds_by_stage": {k: sum(v) / len(v) for k, v in stage_time.items()},
        "non_training_share": (1 - training / total_time) if total_time else None,
        "baseline": baseline,
        "best": best,
        "fidelity": fidelity.assess(results),
        "ceiling": ceiling,
    }


def is_training(stage: str) -> bool:
    """Whether a timings key is training or scoring (either side of a pair, a screen pair): the rest of a
    cycle (the LLM, the patch, the gates) is the cost outside training."""
    return stage.removeprefix("screen-").removeprefix("guard-").removeprefix("parent-") in ("train", "evaluate")


FIDELITY_TITLE = "Fidelity of the cheap stages"


def text_report(summary: dict[str, Any]) -> str:
    """The summary as a few lines of plain text, ending with the fidelity of the cheap stages."""
    best = summary.get("best") or {}
    share = summary.get("non_training_share")
    lines = [f"candidates: {summary.get('candidates', 0)}",
             "verdicts: " + (", ".join(f"{k} {v}" for k, v in (summary.get("verdicts") or {}).items()) or "none"),
             "failures by stage: " + (", ".join(f"{k} {v}" for k, v in
                                               (summary.get("failures_by_stage") or {}).items()) or "none"),
             "best: " + (f"{best.get('proposal_id')} (score {best['score']:.4f})" if best.get("score") is not None
                         else "none"),
             "time outside training: " + (f"{share:.1%}" if isinstance(share, float) else "-"),
             *ceiling_lines(summary.get("ceiling")),
             "", f"{FIDELITY_TITLE} (how well each predicted the full judgement's mean gain):"]
    lines += [f"  {line}" for line in fidelity.describe(summary.get("fidelity") or fidelity.assess([]))]
    return "\n".join(lines) + "\n"


def _score_points(results: list[dict[str, Any]]) -> tuple[list[int], list[float], list[str]]:
    xs, ys, colors = [], [], []
    for i, r in enumerate(results):
        comp = r.get("comparison") or {}
        if comp.get("candidate"):
            xs.append(int(r.get("cycle", i)))
            ys.append(sum(comp["candidate"]) / len(comp["candidate"]))
            colors.append("tab:green" if r.get("verdict") in SUCCESS_VERDICTS else "tab:red")
    return xs, ys, colors


def _bar_plot(values: dict[str, float], ylabel: str, title: str, color: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(list(values) or ["(none)"], list(values.values()) or [0], color=color)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(results: list[dict[str, Any]], out_dir: Path, baseline: dict[str, Any] | None = None, *,
                 record: EvolutionRecord | None = None, ceiling: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write summary.json, report.txt, fidelity.json, three PNG plots and report.html into out_dir; return their
    paths.

    ``record`` is the run's record, for the page's tree, proposals, diffs and learning curves; without it the
    page looks the run up in the repository holding out_dir, then in the working directory's."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, baseline, ceiling)
    paths = {"summary": out_dir / "summary.json"}
    paths["summary"].write_text(json.dumps({"summary": summary, "candidates": results}, indent=2, default=str) + "\n")
    paths["text"] = out_dir / "report.txt"
    paths["text"].write_text(text_report(summary))
    paths["fidelity"] = fidelity.save(out_dir, summary["fidelity"])

    xs, ys, colors = _score_points(results)
    fig, ax = plt.subplots(figsize=(7, 4))
    if xs:
        ax.scatter(xs, ys, c=colors)
    if baseline and baseline.get("scores"):
        ax.axhline(sum(baseline["scores"]) / len(baseline["scores"]), color="grey", ls="--", label="first baseline")
        ax.legend()
    ax.set_xlabel("generation (cycle)")
    ax.set_ylabel("held-out exact accuracy (mean over seeds)")
    ax.set_title("Score by generation (green = merged)")
    paths["scores"] = out_dir / "score_by_generation.png"
    fig.tight_layout()
    fig.savefig(paths["scores"], dpi=100)
    plt.close(fig)

    paths["failures"] = _bar_plot(summary["failures_by_stage"], "candidates stopped here", "Failures by stage",
                                  "tab:red", out_dir / "failures_by_stage.png")
    paths["times"] = _bar_plot(summary["mean_seconds_by_stage"], "mean seconds per candidate", "Time per stage",
                               "tab:blue", out_dir / "time_per_stage.png")
    images = {k: paths[k] for k in ("scores", "failures", "times")}
    paths["html"] = write_html_report(out_dir / HTML_FILE, results, record=record, summary=summary, images=images)
    return paths
