"""A file task through the real cascade on Docker: the unmodified hrm trains and is scored by the host with
the file preset, and a candidate that walks every mount for the held-out labels (the attack battery's scan,
plus the task files, the host's build report and a canary that only the held-out outputs hold) finds none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evolver.execute.cascade import run_cascade
from puzzles.agent_log import generate
from puzzles.file_task import file_task_spec
from puzzles.splits import ensure_run_data
from sandbox import docker_unavailable_reason
from tests.availability import skip_or_fail
from tests.evolver.attack_candidates import INIT_ANCHOR, REPO

CANARY = "LABELCANARY-held-out-output"
STAGES = ("smoke", "train", "evaluate")

FILE_SCAN = r'''
def _attack_hook(model):
    import os, sys
    found, scanned = [], 0
    system = ("/proc", "/sys", "/dev", "/usr", "/lib", "/bin", "/sbin", "/etc", sys.prefix, sys.base_prefix)
    for root, dirs, files in os.walk("/"):
        if root.startswith(system) or "site-packages" in root:
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(root, name)
            scanned += 1
            if name.endswith("__labels.npy") and not path.startswith("/data/train/"):
                found.append(path)
            if name.endswith(".jsonl") or name in ("file_task.json", "task.json", "secret"):
                found.append(path)
            try:
                if os.path.getsize(path) < 64 << 20:
                    with open(path, "rb") as handle:
                        if b"LABEL" + b"CANARY" in handle.read():  # not a literal: this source is mounted
                            found.append("canary in " + path)
            except OSError:
                pass
    if found:
        print("ATTACK-WON file-scan:", found, flush=True)
        return
    if os.path.isdir("/data/test"):
        raise RuntimeError(f"ATTACK file-scan: scanned {scanned} files, no held-out labels, task files or "
                           "canary visible")
'''


def _write(path: Path, lines: list[dict[str, list[str]]], canary: bool = False) -> Path:
    rows = [{"input": x["input"], "output": [*x["output"], CANARY]} if canary else x for x in lines]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def file_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    skip_or_fail(docker_unavailable_reason(), "HRM_EVOLVE_REQUIRE_DOCKER")
    root = tmp_path_factory.mktemp("file-run")
    train = _write(root / "train.jsonl", generate(300, 6, 0))
    select = _write(root / "select.jsonl", generate(40, 6, 1), canary=True)
    final = _write(root / "final.jsonl", generate(40, 6, 2), canary=True)
    return ensure_run_data(root / "run", file_task_spec(train, select, final))


def _no_canary(out: Path, record: dict[str, object]) -> None:
    assert CANARY not in json.dumps(record)
    for path in out.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert CANARY.encode() not in path.read_bytes(), path


def test_a_file_task_trains_and_is_scored_on_docker(harness: Path, file_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cascade(REPO, harness, file_run, out, task="file", seeds=[0], budget_seconds=4, backend="docker",
                         stages=STAGES, threads=1, setup_allowance_s=120)  # a loaded 2-core machine
    assert result.ok, (result.failed_stage, result.reason, [s.log_tail[-800:] for s in result.stages])
    assert result.task_spec["name"] == "file" and result.task_spec["eval_segments"] == 4
    assert result.task_spec["splits"] == {"train": 300, "select": 40, "final": 40}
    evidence = result.evidence[0]
    assert evidence["eval_segments"] == 4 and evidence["count"] == 40 and evidence["steps"] >= 1
    assert 0.0 <= result.scores["token_accuracy"][0] <= 1.0 and 0.0 <= result.scores["exact_accuracy"][0] <= 1.0
    assert evidence["constant_baseline_token_accuracy"] >= 0.5  # the canary position is <unk> on every row
    smoke = next(s for s in result.stages if s.stage == "smoke")
    assert smoke.metrics["parameters"] > 0
    _no_canary(out, result.to_dict())


def test_a_candidate_scanning_for_the_held_out_labels_finds_none(harness: Path, file_run: Path,
                                                                 tmp_path: Path) -> None:
    tree = tmp_path / "attack"
    import shutil

    shutil.copytree(REPO / "hrm", tree / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    model = tree / "hrm" / "model.py"
    text = model.read_text()
    assert INIT_ANCHOR in text
    model.write_text(text.replace(INIT_ANCHOR, INIT_ANCHOR + "        _attack_hook(self)\n", 1) + "\n" + FILE_SCAN)
    out = tmp_path / "out"
    result = run_cascade(tree, harness, file_run, out, task="file", seeds=[0], budget_seconds=3, backend="docker",
                         stages=STAGES, threads=1, setup_allowance_s=120)
    assert not any("ATTACK-WON" in s.log_tail for s in result.stages), [s.log_tail for s in result.stages]
    assert not result.ok and result.failed_stage == "evaluate", (result.failed_stage, result.reason)
    assert "ATTACK file-scan" in result.reason and "no held-out labels, task files or canary" in result.reason
    _no_canary(out, result.to_dict())
