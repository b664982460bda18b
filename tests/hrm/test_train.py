"""The trainer on tiny configs: stops, resume equivalence, divergence, convergence, data cache, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hrm.config import ModelConfig, RunConfig, TrainConfig
from hrm.train import (
    LossTracker,
    TrainState,
    convergence_stop,
    lr_factor,
    lr_horizon,
    non_finite_stop,
    prepare_dataset,
    scheduled_lr_factor,
    stop_after_step,
    stop_before_step,
    train,
)

TIMING_KEYS = {"seconds", "eval_seconds", "steps_per_second", "time"}


def tiny_run(**train_overrides: Any) -> RunConfig:
    model = ModelConfig(
        vocab_size=6,
        seq_len=16,
        hidden_size=32,
        num_heads=2,
        puzzle_emb_ndim=32,
        H_layers=1,
        L_layers=1,
        H_cycles=2,
        L_cycles=2,
        halt_max_steps=2,
    )
    train_cfg = TrainConfig(
        batch_size=32,
        lr=1e-3,
        lr_warmup_steps=5,
        eval_batch_size=64,
        num_threads=1,
        checkpoint_interval_seconds=3600.0,
    )
    for key, value in train_overrides.items():
        setattr(train_cfg, key, value)
    return RunConfig(
        task="sudoku4", data={"n_train": 256, "n_test": 64, "min_clues": 6}, model=model, train=train_cfg
    )


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hrm-data")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip_timing(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def test_lr_schedule() -> None:
    assert lr_factor(1, 4, 100, 0.1) == pytest.approx(0.25)
    assert lr_factor(4, 4, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(52, 4, 100, 0.1) == pytest.approx(0.55)  # half way down the cosine
    assert lr_factor(100, 4, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 4, None, 0.1) == 1.0
    assert lr_factor(50, 4, 100, 1.0) == 1.0


def test_schedule_horizon_and_budget_estimate() -> None:
    tc = TrainConfig(lr_warmup_steps=4, lr_min_ratio=0.1, max_steps=100, epochs=3)
    assert lr_horizon(tc, steps_per_epoch=10) == 100
    tc.max_steps = None
    assert lr_horizon(tc, steps_per_epoch=10) == 30
    tc.epochs, tc.budget_seconds = None, 10.0
    assert lr_horizon(tc, steps_per_epoch=10) is None
    assert scheduled_lr_factor(52, 0.0, tc, 100) == pytest.approx(0.55)
    # Budget-only: 26 steps in 5 s of a 10 s budget put the horizon at 52 steps, half way at step 28.
    assert scheduled_lr_factor(26, 5.0, tc, None) == pytest.approx(lr_factor(26, 4, 52.0, 0.1))
    assert scheduled_lr_factor(26, 0.0, tc, None) == 1.0  # no time measured yet: constant after warmup


def test_stop_checks_in_order() -> None:
    tc = TrainConfig(max_steps=5, budget_seconds=2.0, convergence_exact_accuracy=0.9)
    assert stop_before_step(tc, TrainState(step=4, elapsed=1.0), interrupted=False) is None
    assert stop_before_step(tc, TrainState(step=5, elapsed=3.0), interrupted=True) == "max_steps"
    assert stop_before_step(tc, TrainState(step=4, elapsed=3.0), interrupted=True) == "budget"
    assert stop_before_step(tc, TrainState(step=4, elapsed=1.0), interrupted=True) == "interrupted"
    assert stop_after_step(tc, TrainState()) is None
    assert convergence_stop(tc, {"exact_accuracy": 0.5}) is None
    assert convergence_stop(tc, {"exact_accuracy": 0.95}) == "converged: exact accuracy 0.9500 >= 0.9"
    assert non_finite_stop(float("nan"), 0) == "diverged: non-finite loss (nan) at step 1"


def test_loss_tracker_flags_a_blow_up_but_not_noise_near_zero() -> None:
    tracker = LossTracker()
    for step, loss in enumerate([2.0] * 10 + [0.05] * 200, start=1):
        tracker.update(loss, step, warmup=5)
    for step in range(211, 260):  # noisy but far below where training started: not divergence
        tracker.update(0.9, step, warmup=5)
    assert tracker.diverged(10.0) is None
    for step in range(260, 400):
        tracker.update(50.0, step, warmup=5)
    reason = tracker.diverged(10.0)
    assert reason is not None and reason.startswith("diverged")


def test_max_steps_writes_metrics_and_a_loadable_checkpoint(tmp_path: Path, data_cache: Path) -> None:
    from hrm.data.dataset import PuzzleDataset
    from hrm.evaluate import evaluate, load_checkpoint

    out = tmp_path / "run"
    result = train(
        tiny_run(eval_interval_steps=3), out, data_dir=data_cache, max_steps=7, seed=1, progress=False
    )
    assert result["stop_reason"] == "max_steps" and result["steps"] == 7
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in (
        "exact_accuracy",
        "token_accuracy",
        "mean_act_steps",
        "q_halt_accuracy",
        "steps",
        "seconds",
        "steps_per_second",
        "stop_reason",
        "seed",
        "task",
        "config",
    ):
        assert key in on_disk, key
    assert on_disk["seed"] == 1 and on_disk["eval_split"] == "test" and on_disk["mean_act_steps"] == 2.0
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, 8))
    assert [r["step"] for r in records if r["type"] == "eval"] == [3, 6, 7]
    assert all(r["loss"] > 0 for r in records if r["type"] == "train")
    # The checkpoint loads without pickle and reproduces the final evaluation.
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 7 and state["finished"] is True
    assert set(state) == {
        "format", "config", "seed", "model", "ema", "optimizers", "step", "elapsed", "eval_seconds", "rng",
        "data_position", "carry", "jsonl_offset", "tracker", "last_eval", "stop_reason", "finished",
        "final_metrics",
    }  # fmt: skip
    run, model = load_checkpoint(out / "checkpoint.pt")
    test_set = PuzzleDataset(Path(on_disk["dataset"]), "test")
    again = evaluate(model, test_set, batch_size=64, device="cpu")
    assert again["token_accuracy"] == pytest.approx(on_disk["token_accuracy"])
    assert again["exact_accuracy"] == pytest.approx(on_disk["exact_accuracy"])


def test_budget_stop_counts_training_time_only(tmp_path: Path, data_cache: Path) -> None:
    out = tmp_path / "run"
    budget = 1.5
    result = train(tiny_run(eval_interval_steps=2), out, data_dir=data_cache, budget_seconds=budget, seed=0,
                   progress=False)  # fmt: skip
    assert result["stop_reason"] == "budget" and result["steps"] >= 2
    assert result["eval_seconds"] > 0
    # The run stops at the first step boundary past the budget: the step before the last one ended inside it.
    times = [r["time"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "train"]
    assert times[-2] < budget <= times[-1] == pytest.approx(result["seconds"])


def test_epochs_stop(tmp_path: Path, data_cache: Path) -> None:
    result = train(tiny_run(epochs=1), tmp_path / "run", data_dir=data_cache, seed=0, progress=False)
    assert result["stop_reason"] == "epochs" and result["steps"] == 256 // 32 and result["epochs"] == 1


def test_needs_a_budget(tmp_path: Path, data_cache: Path) -> None:
    with pytest.raises(ValueError, match="max_steps, epochs or budget_seconds"):
        train(tiny_run(), tmp_path / "run", data_dir=data_cache, progress=False)


def _compare_runs(a: Path, b: Path) -> None:
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    assert strip_timing({k: v for k, v in ma.items() if k != "dataset"}) == strip_timing(
        {k: v for k, v in mb.items() if k != "dataset"}
    )
    ra = [strip_timing(r) for r in read_jsonl(a / "metrics.jsonl")]
    rb = [strip_timing(r) for r in read_jsonl(b / "metrics.jsonl")]
    assert ra == rb
    sa = torch.load(a / "checkpoint.pt", weights_only=True)["model"]
    sb = torch.load(b / "checkpoint.pt", weights_only=True)["model"]
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_resume_after_interrupt_and_after_crash_matches_a_straight_run(
    tmp_path: Path, data_cache: Path
) -> None:
    # eval every 4 steps; the 256-example split gives 8 steps per epoch, so the runs cross an epoch boundary.
    # A high rate moves the Q head within a few steps, so ACT halting and its random exploration (torch
    # RNG, restored from the checkpoint) shape the batches.
    run = tiny_run(eval_interval_steps=4, ema_decay=0.9, lr=1e-2)
    run.model.halt_max_steps = 4
    run.model.halt_exploration_prob = 0.5
    steps = 12
    straight = tmp_path / "straight"
    train(run, straight, data_dir=data_cache, max_steps=steps, seed=3, progress=False)

    # Interrupted at step 6 (as SIGINT does): checkpoint saved, no final evaluation, then resumed.
    interrupted = tmp_path / "interrupted"
    first = train(
        run,
        interrupted,
        data_dir=data_cache,
        max_steps=steps,
        seed=3,
        progress=False,
        on_step=lambda record: record["step"] == 6,
    )
    assert first["stop_reason"] == "interrupted" and first["steps"] == 6
    assert not (interrupted / "metrics.json").exists()
    train(run, interrupted, data_dir=data_cache, max_steps=steps, seed=3, progress=False)
    _compare_runs(straight, interrupted)

    # Crashed at step 9 with a checkpoint every step: the record of step 9 was written after the last
    # checkpoint (step 8), so resuming must cut it from metrics.jsonl and redo the step identically.
    crashed = tmp_path / "crashed"

    def crash(record: dict[str, Any]) -> bool:
        if record["step"] == 9:
            raise RuntimeError("simulated crash")
        return False

    every_step = RunConfig.from_dict(run.to_dict())
    every_step.train.checkpoint_interval_seconds = 0.0
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            every_step,
            crashed,
            data_dir=data_cache,
            max_steps=steps,
            seed=3,
            progress=False,
            on_step=crash,
        )
    assert torch.load(crashed / "checkpoint.pt", weights_only=True)["step"] == 8
    assert read_jsonl(crashed / "metrics.jsonl")[-1]["step"] == 9
    train(run, crashed, data_dir=data_cache, max_steps=steps, seed=3, progress=False)
    _compare_runs(straight, crashed)

    # Calling it again on a finished run does not train further or duplicate records.
    before = (straight / "metrics.jsonl").read_text()
    again = train(run, straight, data_dir=data_cache, max_steps=steps, seed=3, progress=False)
    assert again["steps"] == steps and (straight / "metrics.jsonl").read_text() == before


def test_resume_refuses_a_different_run(tmp_path: Path, data_cache: Path) -> None:
    out = tmp_path / "run"
    train(tiny_run(), out, data_dir=data_cache, max_steps=1, seed=0, progress=False)
    with pytest.raises(ValueError, match="different run"):
        train(tiny_run(), out, data_dir=data_cache, max_steps=2, seed=1, progress=False)
    fresh = train(tiny_run(), out, data_dir=data_cache, max_steps=2, seed=1, progress=False, resume=False)
    assert fresh["steps"] == 2


def test_nan_stops_with_a_clear_reason(tmp_path: Path, data_cache: Path) -> None:
    run = tiny_run()
    run.model.rms_norm_eps = -1e9  # rsqrt of a negative number: NaN activations from the first step
    result = train(run, tmp_path / "run", data_dir=data_cache, max_steps=5, seed=0, progress=False)
    assert result["stop_reason"].startswith("diverged: non-finite loss") and result["steps"] == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stop_reason"] == result["stop_reason"]


def test_convergence_stop(tmp_path: Path, data_cache: Path) -> None:
    run = tiny_run(eval_interval_steps=2, convergence_exact_accuracy=0.0)
    result = train(run, tmp_path / "run", data_dir=data_cache, max_steps=10, seed=0, progress=False)
    assert result["stop_reason"].startswith("converged") and result["steps"] == 2


def test_data_cache_and_direct_dataset_dir(tmp_path: Path, data_cache: Path) -> None:
    run = tiny_run()
    root, built = prepare_dataset(run, tmp_path / "out", data_cache, seed=0)
    assert not built  # the module's earlier runs built it
    same, _ = prepare_dataset(run, tmp_path / "elsewhere", data_cache, seed=0)
    other, _ = prepare_dataset(run, tmp_path / "out", data_cache, seed=5)
    assert same == root and other != root
    # A dataset directory holding only the train split (as the sandbox mounts it) is used as is, and the
    # final evaluation falls back to the train split.
    only_train = tmp_path / "mounted"
    only_train.mkdir()
    (only_train / "train").symlink_to(root / "train")
    (only_train / "identifiers.json").symlink_to(root / "identifiers.json")
    result = train(run, tmp_path / "run", data_dir=only_train, max_steps=2, seed=0, progress=False)
    assert result["eval_split"] == "train" and result["dataset"] == str(only_train)


def test_no_final_evaluation_when_the_harness_scores_the_checkpoint(tmp_path: Path, data_cache: Path) -> None:
    out = tmp_path / "run"
    result = train(
        tiny_run(), out, data_dir=data_cache, max_steps=2, seed=0, progress=False, evaluate_at_end=False
    )
    assert result["steps"] == 2 and result["exact_accuracy"] is None and result["eval_seconds"] == 0.0
    assert all(r["type"] == "train" for r in read_jsonl(out / "metrics.jsonl"))
    assert json.loads((out / "metrics.json").read_text())["token_accuracy"] is None
