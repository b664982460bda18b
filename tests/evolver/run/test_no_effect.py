"""Edits without effect and duplicates, ended before any seed pair (evolver/run/no_effect.py).

Real parts: the fingerprint stage run by the real cascade in the local sandbox on copies of the real hrm/,
and the main command (`evolve.py`) on a throwaway copy of this project, driven by a scripted LLM server on
127.0.0.1, with the real git record, libcst edits and training. Budgets are tiny.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evolver.execute.cascade import run_cascade
from evolver.run.no_effect import compare, normalise_patch, patch_digest, preset_overrides
from tests.evolver.fake_llm_server import Step, scripted_server, valid_proposal

REPO = Path(__file__).resolve().parents[3]
EVOLVE = REPO / "evolve.py"


# ------------------------------------------------------------------------------------------ host-side rules


def _fp(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "config": {"task": "sudoku4", "model": {"L_cycles": 2}, "train": {"lr": 0.003}},
        "trainer_config": {"train": {"lr": 0.003, "seed": 0}}, "parameters": 1000, "stopped_by": "on_step",
        "lrs": [3e-5, 6e-5], "losses": [2.1552944183, 1.8746583461], "lr_probe": [0.01, 0.5, 1.0],
        "logits_shape": [1, 2, 2], "logits_head": [0.5, -1.25, 2.0, 0.0], "logits_stats": [1.25, 3.75, 5.8125, 2.0, -1.25],
        "step_seconds": [2.0, 0.3, 0.3, 0.3],
        "defaults": {"TrainConfig": {"lr": 1e-4, "beta2": 0.95}, "ModelConfig": {"L_cycles": 2}}, "task": "sudoku4"}
    base.update(kw)
    return base


def test_compare_matches_within_noise_and_names_what_differs() -> None:
    parent = _fp()
    assert compare(parent, _fp()).equal
    noisy = _fp(losses=[2.1552944183 * (1 + 1e-8), 1.8746583461], logits_head=[0.5 + 1e-7, -1.25, 2.0, 0.0])
    assert compare(parent, noisy).equal
    other = compare(parent, _fp(losses=[2.1552944183, 1.8741]))
    assert not other.equal and other.differed == ["losses"] and "config" in other.matched
    assert compare(parent, _fp(lrs=[2e-5, 4e-5])).differed == ["lrs"]
    assert compare(parent, _fp(parameters=1001)).differed == ["parameters"]
    faster = compare(parent, _fp(step_seconds=[2.0, 0.1, 0.1, 0.1]))  # same numbers, three times the pace
    assert not faster.equal and faster.differed == [] and "may train more steps" in (faster.faster or "")
    missing = compare(parent, _fp(losses=[]))
    assert not missing.equal and "candidate" in (missing.unusable or "")
    assert not compare(None, _fp()).equal
    assert not compare(parent, _fp(losses=[float("nan"), 1.0])).equal


def test_preset_overrides_name_the_preset_value() -> None:
    edited = _fp(defaults={"TrainConfig": {"lr": 5e-4, "beta2": 0.95}, "ModelConfig": {"L_cycles": 3}})
    lines = preset_overrides(_fp(other_presets={"maze": {"lr": 1}}), {**edited, "other_presets": {"maze": {"lr": 2}}})
    assert any("changes the preset(s) maze, not sudoku4's" in line for line in lines), lines
    assert any("TrainConfig.lr (0.0001 -> 0.0005)" in line and "overrides with train.lr=0.003" in line
               for line in lines), lines
    assert any("ModelConfig.L_cycles (2 -> 3)" in line and "model.L_cycles=2" in line for line in lines), lines


def test_patch_normalisation_ignores_blob_ids_and_line_numbers_only() -> None:
    a = ("diff --git a/hrm/x.py b/hrm/x.py\nindex 1111111..2222222 100644\n--- a/hrm/x.py\n+++ b/hrm/x.py\n"
         "@@ -10,3 +10,3 @@ def f():\n-    return 1\n+    return 2\n")
    b = a.replace("1111111..2222222", "abcdef0..0fedcba").replace("-10,3 +10,3", "-12,3 +12,3")
    assert normalise_patch(a) == normalise_patch(b) and patch_digest(a) == patch_digest(b)
    assert patch_digest(a) != patch_digest(a.replace("return 2", "return 3"))


# ------------------------------------------------------------------------------------------ the real stage


def _tree(dest: Path, edits: dict[str, tuple[str, str]] | None = None) -> Path:
    shutil.copytree(REPO / "hrm", dest / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    for rel, (old, new) in (edits or {}).items():
        text = (dest / rel).read_text()
        assert old in text, (rel, old)
        (dest / rel).write_text(text.replace(old, new, 1))
    os.chmod(dest, 0o755)
    return dest


@pytest.mark.usefixtures("require_local_sandbox")
@pytest.mark.timeout(600)
def test_fingerprint_stage_tells_edits_without_effect_from_real_changes(run_data: Path, harness: Path,
                                                                        tmp_path: Path) -> None:
    trees = {
        "parent": _tree(tmp_path / "parent"),
        # a default the sudoku4 preset sets itself (lr=3e-3): the resolved configuration does not change
        "default": _tree(tmp_path / "default", {"hrm/config.py": ("    lr: float = 1e-4\n", "    lr: float = 5e-4\n")}),
        # a comment-equivalent rewrite of the trainer
        "comment": _tree(tmp_path / "comment", {"hrm/train.py": ("    loss_head = learner.loss_head\n",
                                                                 "    loss_head = learner.loss_head  # the ACT head\n")}),
        # the GPU presets' depth (the offline catalogue's trm-two-layers): the CPU preset is already 2+2
        "gpu-preset": _tree(tmp_path / "gpu-preset", {"hrm/presets.py": ("        H_layers=4,\n        L_layers=4,\n",
                                                                         "        H_layers=2,\n        L_layers=2,\n")}),
        # a real change: another learning rate in the preset
        "preset-lr": _tree(tmp_path / "preset-lr", {"hrm/presets.py": ("lr: float = 3e-3", "lr: float = 2e-3")}),
    }
    fps: dict[str, dict[str, object]] = {}
    seconds: dict[str, float] = {}
    runs = [(name, tree, "smoke") for name, tree in trees.items()] + [("parent-alone", trees["parent"], "fingerprint")]
    for name, tree, stage in runs:  # as the gates run it (inside smoke), and once as a stage of its own
        t0 = time.monotonic()
        res = run_cascade(tree, harness, run_data, tmp_path / f"out-{name}", task="sudoku4", seeds=[0],
                          budget_seconds=40, backend="local", stages=[stage], threads=1, fingerprint=True)
        seconds[name] = time.monotonic() - t0
        assert res.ok, (name, res.reason, res.stages[-1].log_tail[-2000:])
        metrics = res.stages[0].metrics
        fps[name] = metrics["fingerprint"] if stage == "smoke" else metrics
        assert isinstance(fps[name], dict), (name, metrics.get("fingerprint_error"))
        print(name, "step seconds", [round(float(x), 3) for x in fps[name]["step_seconds"]])  # type: ignore[union-attr]
    print("smoke + fingerprint seconds (host clock, local sandbox):", {k: round(v, 1) for k, v in seconds.items()})
    parent = fps["parent"]
    assert parent["steps"] == 5 and parent["stopped_by"] == "on_step" and parent["parameters"] > 0
    assert compare(parent, fps["parent-alone"]).differed == []  # smoke before it changes nothing it records

    default = compare(parent, fps["default"])
    assert default.equal or (not default.differed and default.faster), default  # faster: load noise, see below
    assert any("TrainConfig.lr" in line and "train.lr=0.003" in line for line in preset_overrides(parent, fps["default"]))
    comment = compare(parent, fps["comment"])
    assert comment.equal or (not comment.differed and comment.faster), comment
    gpu = compare(parent, fps["gpu-preset"])
    assert gpu.equal or (not gpu.differed and gpu.faster), gpu
    assert any("sudoku-extreme-gpu" in line and "not sudoku4's" in line
               for line in preset_overrides(parent, fps["gpu-preset"]))
    real = compare(parent, fps["preset-lr"])
    assert not real.equal and {"config", "trainer_config", "lrs", "losses", "logits_head"} <= set(real.differed), real


# ------------------------------------------------------------------------------------------ the main command


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout


def _snapshot(dest: Path) -> Path:
    files = _git(REPO, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    _git(dest, "init", "--quiet", "--initial-branch=main")
    _git(dest, "config", "user.name", "No Effect Test")
    _git(dest, "config", "user.email", "no-effect@example.invalid")
    _git(dest, "add", "--all")
    _git(dest, "commit", "--quiet", "-m", "snapshot of hrm-evolve")
    return dest


@pytest.mark.usefixtures("require_local_sandbox")
@pytest.mark.timeout(1500)
def test_main_command_ends_no_effect_and_duplicate_without_a_pair_and_judges_a_real_change(tmp_path: Path) -> None:
    repo = _snapshot(tmp_path / "repo")
    noop_edits = [{"op": "set_value", "file": "hrm/config.py", "target": "TrainConfig.lr", "value": "5e-4"}]
    noop = valid_proposal("default-lr", title="Raise the default learning rate", edits=noop_edits)
    again = valid_proposal("default-lr-again", title="A higher base learning rate", edits=noop_edits)
    real = valid_proposal("preset-beta2", title="Lower Adam beta2",
                          edits=[{"op": "set_value", "file": "hrm/config.py", "target": "TrainConfig.beta2",
                                  "value": "0.9"}])
    script = [Step(content=json.dumps(p)) for p in (noop, again, real)]
    with scripted_server(script) as server:
        cmd = [sys.executable, str(EVOLVE), "--repo", str(repo), "--provider", "lmstudio", "--host", server.url + "/v1",
               "--model", "scripted", "--cycles", "3", "--task", "sudoku4", "--budget-seconds", "3", "--seeds", "0,1",
               "--backend", "local", "--literature", "off", "--max-seeds", "2", "--confirm-seeds", "2",
               "--throughput-tolerance", "10", "--workers", "2",
               "--protocol", "direct"]  # one scripted reply per cycle: no look request before it
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=1400,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
        requests = list(server.received)
    run_id = next(b for b in _git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/evolve/").split()
                  if b.endswith("/best")).split("/")[1]
    record = f"evolve/{run_id}/record"

    def result(pid: str) -> dict[str, object]:
        return json.loads(_git(repo, "show", f"{record}:proposals/{run_id}/{pid}/result.json"))

    ended = result("default-lr")
    assert ended["verdict"] == "no-effect", (ended["verdict"], ended["reason"])
    reason = str(ended["reason"])
    assert "did not change training" in reason and "TrainConfig.lr" in reason and "train.lr=0.003" in reason
    assert [s["stage"] for s in ended["stages"]] == ["safety", "smoke"]  # no trainability, no pair
    assert "judgement" not in ended and "comparison" not in ended
    check = ended["no_effect_check"]
    assert check["verdict"] == "no-effect" and check["candidate_seconds"] > 0
    print("no-effect check: fingerprint inside smoke", check["candidate_seconds"], "s; smoke host seconds",
          check["smoke_host_seconds"], "; parent's smoke + fingerprint", check["parent_seconds"], "s")
    for pid in ("default-lr", "default-lr-again", "preset-beta2"):
        r = result(pid)
        print(pid, r["verdict"], {k: round(float(v), 1) for k, v in dict(r["timings"]).items()})
    run_dir = repo / ".hrm-evolve" / "runs" / run_id
    assert not [p for p in (run_dir / "candidates" / "default-lr").iterdir() if "seed" in p.name and p.name != "gates"]

    dup = result("default-lr-again")
    assert dup["verdict"] == "duplicate" and "default-lr" in str(dup["reason"]) and "stages" not in dup
    assert dup["duplicate_of"]["proposal_id"] == "default-lr" and dup["duplicate_of"]["verdict"] == "no-effect"
    assert not (run_dir / "candidates" / "default-lr-again").exists()

    judged = result("preset-beta2")
    assert judged["verdict"] not in ("no-effect", "duplicate"), judged["reason"]
    if judged["verdict"] != "failed":
        assert "trainability" in [s["stage"] for s in judged["stages"]]
        assert judged["judgement"]["pairs"] and "config" in judged["no_effect_check"]["differed"]
        assert judged["no_effect_check"]["parent_cached"]  # the parent's fingerprint was made once

    # the next request's history block shows why the earlier ones ended
    last = " ".join(m["content"] for m in requests[-1].messages)
    assert "no-effect: the edit did not change training" in last and "duplicate of default-lr" in last
    hist = subprocess.run([sys.executable, str(EVOLVE), "history", "--repo", str(repo), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert hist.returncode == 0, hist.stderr
    verdicts = {r["proposal_id"]: r["verdict"] for r in json.loads(hist.stdout)}
    assert verdicts["default-lr"] == "no-effect" and verdicts["default-lr-again"] == "duplicate"


# ------------------------------------------------------------------------------------------ duplicates, resumed


def test_a_repeated_edit_ends_duplicate_and_a_resumed_run_still_knows_the_first(user_repo: Path,
                                                                               tmp_path: Path) -> None:
    """The real loop, git record and edit engine on the template repository; only the executor's job runner
    is scripted (tests/evolver/run/test_cohort.py). A repeat of an earlier candidate's edit ends duplicate before any
    job of its own; after a restart the run reads its earlier candidates back from the record."""
    from evolver.propose.providers.offline import OfflineProvider
    from evolver.run.loop import EvolutionLoop
    from evolver.settings import load_settings
    from tests.evolver.run.test_cohort import Scripted, effect, entry, results, run_loop

    same = effect("same", 0.0, "hrm/model.py")
    state = tmp_path / "state"
    loop, scripted = run_loop(user_repo, state, (entry("first", same), entry("again", same),
                                                 entry("other", effect("other", 0.0, "hrm/config.py"))),
                              cohort=1, workers=2)
    out = results(loop)
    assert out["first"]["verdict"] in ("rejected", "inconclusive") and out["first"].get("judgement")
    assert out["again"]["verdict"] == "duplicate", out["again"]
    assert out["again"]["duplicate_of"] == {"proposal_id": "first", "verdict": out["first"]["verdict"],
                                            "same_tree": True}
    assert "stages" not in out["again"] and not (loop.ctx.run_dir / "candidates" / "again").exists()
    assert not [j for j in scripted.jobs if "again" in j.out_dir]  # no job of its own
    assert out["other"]["verdict"] in ("rejected", "inconclusive")  # a different edit is judged
    assert out["first"]["hrm_tree"] != out["other"]["hrm_tree"]

    settings = load_settings(user_repo, environ={}, overrides={
        "provider": "offline", "literature": "off", "state_dir": str(state), "seeds": [0, 1, 2], "cycles": 1,
        "auto_apply": True, "backend": "local", "cohort": 1, "workers": 2})
    resumed = EvolutionLoop(user_repo, settings, run_id=loop.ctx.run_id, harness_dir=state / "harness",
                            provider=OfflineProvider(catalogue=(entry("third", same),), shuffle=False))
    resumed.ctx.data_dir = lambda: state / "data"  # type: ignore[method-assign]
    from evolver.execute.local import LocalExecutor

    resumed.ctx.executor = LocalExecutor(2, run=Scripted(resumed.ctx.run_dir))
    resumed.run()
    third = resumed.ctx.store.result("third")
    assert third is not None and third["verdict"] == "duplicate" and third["duplicate_of"]["proposal_id"] == "first"


@pytest.mark.usefixtures("require_local_sandbox")
@pytest.mark.timeout(300)
def test_a_failing_fingerprint_never_fails_smoke(run_data: Path, harness: Path, tmp_path: Path) -> None:
    """A trainer that crashes at its first step: smoke (the harness's own forward/backward) still passes, the
    fingerprint's failure is recorded for the host, which then ends nothing (the train stage will judge it)."""
    tree = _tree(tmp_path / "crash", {"hrm/train.py": ("    loss_head = learner.loss_head\n",
                                                       "    raise RuntimeError('trainer exploded')\n")})
    res = run_cascade(tree, harness, run_data, tmp_path / "out", task="sudoku4", seeds=[0], budget_seconds=40,
                      backend="local", stages=["smoke"], threads=1, fingerprint=True)
    assert res.ok, res.reason
    metrics = res.stages[0].metrics
    assert "fingerprint" not in metrics and "trainer exploded" in metrics["fingerprint_error"]
    from evolver.run.no_effect import _fingerprint_of

    fp, why = _fingerprint_of(res)
    assert fp is None and "trainer exploded" in why
