"""Stages run for real on the engine's hrm (and on broken copies of it) through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from puzzles.arrays import load_split
from puzzles.scoring import score_predictions
from smoketests.evaluate_stage import run_evaluate
from smoketests.result import StageFailure, StageResult, read_result, write_result
from tests.smoketests.conftest import REPO, make_candidate


def _cli(stage: str, repo: Path, data: Path, out: Path, *extra: str) -> tuple[int, dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HRM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "smoketests", stage, "--repo", str(repo), "--data", str(data), "--out", str(out),
         "--task", "sudoku4", "--seed", "0", *extra],
        capture_output=True, text=True, env=env, cwd=out.parent, timeout=240,
    )
    return proc.returncode, json.loads((out / f"{stage}.json").read_text())


def test_result_round_trip(tmp_path: Path) -> None:
    res = StageResult("smoke", False, "boom", {"x": float("nan"), "arr": np.arange(3)}, 1.5)
    path = write_result(tmp_path, res)
    assert path == tmp_path / "smoke.json"
    back = read_result(path)
    assert back is not None and back.ok is False and back.metrics == {"x": "nan", "arr": [0, 1, 2]}
    path.write_text("{not json")
    assert read_result(path) is None


def test_score_predictions_by_hand() -> None:
    labels = np.array([[2, 3, -100], [4, 5, 6], [-100, -100, -100]])
    preds = np.array([[2, 3, 0], [4, 0, 6], [1, 1, 1]])
    got = score_predictions(preds, labels)
    assert got == {"exact_accuracy": 0.5, "token_accuracy": 4 / 5, "count": 2}


def test_reader_matches_engine_dataset(sudoku4_data: Path) -> None:
    from hrm.data.dataset import PuzzleDataset

    ours = load_split(sudoku4_data, "test")
    theirs = PuzzleDataset(sudoku4_data, "test")
    batch, n_valid = next(theirs.eval_batches(len(ours)))
    assert n_valid == len(ours)
    assert np.array_equal(batch["inputs"], ours.inputs) and np.array_equal(batch["labels"], ours.labels)


def test_smoke_passes_on_real_hrm(sudoku4_data: Path, tmp_path: Path) -> None:
    code, data = _cli("smoke", REPO, sudoku4_data, tmp_path / "out")
    assert code == 0, data["reason"]
    assert data["ok"] and data["metrics"]["parameters"] > 0 and data["stage"] == "smoke"


def test_smoke_reports_a_crashing_candidate(sudoku4_data: Path, tmp_path: Path) -> None:
    cand = make_candidate(tmp_path / "cand", {
        "hrm/model.py": ("        halted_in = carry.halted\n",
                         "        raise RuntimeError('candidate forward exploded')\n"),
    })
    code, data = _cli("smoke", cand, sudoku4_data, tmp_path / "out")
    assert code == 1 and not data["ok"]
    assert data["reason"].startswith("RuntimeError: candidate forward exploded")
    assert "model.py" in data["reason"]  # traceback tail names the candidate's file


def test_trainability_fails_fast_when_lm_head_is_cut(sudoku4_data: Path, tmp_path: Path) -> None:
    cand = make_candidate(tmp_path / "cand", {
        "hrm/model.py": ("logits = self.lm_head(z_H)[:, self.puzzle_emb_len :]",
                         "logits = self.lm_head(z_H)[:, self.puzzle_emb_len :] * 0"),
    })
    code, data = _cli("trainability", cand, sudoku4_data, tmp_path / "out")
    assert code == 1 and "lm_head" in data["reason"], data["reason"]
    assert data["metrics"]["steps"] == 5


def test_evaluate_rejects_an_unloadable_checkpoint(sudoku4_data: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"config": {}, "model": {"w": torch.zeros(1)}, "extra": StageResult("x", True)}, ckpt)
    with pytest.raises(StageFailure, match="weights_only=True"):
        run_evaluate(sudoku4_data, tmp_path / "out", ckpt, seed=0)
    with pytest.raises(StageFailure, match="no checkpoint"):
        run_evaluate(sudoku4_data, tmp_path / "out", tmp_path / "missing.pt", seed=0)
