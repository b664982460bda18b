"""The command line through real subprocesses: train, eval, data build, bench, and a SIGTERM resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hrm.config import RunConfig
from hrm.presets import get_preset

TINY = {
    "data": {"n_train": 256, "n_test": 64, "min_clues": 6},
    "model": {"hidden_size": 32, "num_heads": 2, "puzzle_emb_ndim": 32, "H_layers": 1, "L_layers": 1,
              "halt_max_steps": 2},
    "train": {"batch_size": 32, "eval_batch_size": 64, "lr_warmup_steps": 5, "eval_interval_steps": None},
}  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def hrm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hrm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        check=False,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-data")


def test_train_then_eval(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "run"
    proc = hrm("train", "--task", "sudoku4", "--out", str(out), "--max-steps", "5", "--seed", "2", "--threads", "1",
               "--budget-seconds", "600", "--config", json.dumps(TINY), "--data-dir", str(cache))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 5 and metrics["seed"] == 2 and metrics["stop_reason"] == "max_steps"
    for key in ("exact_accuracy", "token_accuracy", "steps", "seconds"):
        assert key in metrics
    assert metrics["config"]["model"]["hidden_size"] == 32
    ev = hrm("eval", "--checkpoint", str(out / "checkpoint.pt"), "--data-dir", str(cache), "--json")
    assert ev.returncode == 0, ev.stderr
    scored = json.loads(ev.stdout)
    assert scored["count"] == 64
    assert scored["token_accuracy"] == pytest.approx(metrics["token_accuracy"])
    assert scored["exact_accuracy"] == pytest.approx(metrics["exact_accuracy"])


def test_bad_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hrm.cli import main

    code = main(["train", "--task", "sudoku4", "--out", str(tmp_path / "x"), "--max-steps", "1",
                 "--config", '{"model": {"hidden": 3}}'])  # fmt: skip
    assert code == 2 and "unknown field" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_identically(tmp_path: Path, cache: Path) -> None:
    from hrm.train import train

    steps = 40
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "hrm",
        "train",
        "--task",
        "sudoku4",
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--seed",
        "4",
        "--threads",
        "1",
        "--config",
        json.dumps(TINY),
        "--data-dir",
        str(cache),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    jsonl = out / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be signalled (machine too fast for this test's window)")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert not (out / "metrics.json").exists()

    run = RunConfig.from_dict(get_preset("sudoku4").to_dict())
    for section in ("data", "model", "train"):
        for key, value in TINY[section].items():
            target = run.data if section == "data" else getattr(run, section)
            if section == "data":
                target[key] = value
            else:
                setattr(target, key, value)
    run.train.num_threads = 1
    resumed = train(run, out, data_dir=cache, max_steps=steps, seed=4, progress=False)
    straight = train(run, tmp_path / "straight", data_dir=cache, max_steps=steps, seed=4, progress=False)
    assert resumed["steps"] == straight["steps"] == steps
    for key in ("exact_accuracy", "token_accuracy", "q_halt_accuracy", "train_loss"):
        assert resumed[key] == straight[key], key
    strip = {"time"}
    a = [{k: v for k, v in json.loads(x).items() if k not in strip} for x in jsonl.read_text().splitlines()]
    b = [
        {k: v for k, v in json.loads(x).items() if k not in strip}
        for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    assert a == b


def test_data_build_and_bench(tmp_path: Path) -> None:
    out = tmp_path / "maze"
    proc = hrm(
        "data",
        "build",
        "--task",
        "maze",
        "--out",
        str(out),
        "--n-train",
        "20",
        "--n-test",
        "5",
        "--size",
        "7",
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "train" / "dataset.json").read_text())
    assert meta["seq_len"] == 49
    bench = hrm(
        "bench", "--presets", "sudoku4", "--steps", "2", "--batch-size", "8", "--threads", "1", "--json"
    )
    assert bench.returncode == 0, bench.stderr
    (row,) = json.loads(bench.stdout)
    assert row["preset"] == "sudoku4" and row["batch_size"] == 8 and row["steps_per_second"] > 0
    assert row["memory_kind"] == "peak_rss" and row["memory_mb"] > 50
