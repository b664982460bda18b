"""Reading a sandbox's output as a host that trusts none of it: links, FIFOs and oversized files."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from evolver.execute.cascade import _judge
from sandbox import SandboxResult
from sandbox.readback import UnsafeOutput, audit_tree, read_array, read_bytes, read_json


def _result(exit_code: int = 0) -> SandboxResult:
    return SandboxResult(exit_code=exit_code, timed_out=False, oom_killed=False, duration_s=1.0, overhead_s=0.1,
                         log_tail="", backend="test", isolation=[], missing=[])


def test_plain_files_read_back(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"x": 1}')
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "p.npy", np.arange(6).reshape(2, 3))
    assert audit_tree(tmp_path) == []
    assert read_json(tmp_path, "a.json") == {"x": 1}
    assert read_array(tmp_path, "sub/p.npy").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_symlink_to_a_host_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "labels.npy"
    np.save(secret, np.ones(3))
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(secret, out / "predictions.npy")
    assert audit_tree(out) == [f"/out/predictions.npy is a symlink -> {secret}"]
    with pytest.raises(UnsafeOutput, match="without following a link"):
        read_bytes(out, "predictions.npy")


def test_a_symlinked_directory_along_the_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "host" / "train").mkdir(parents=True)
    (tmp_path / "host" / "train" / "checkpoint.pt").write_bytes(b"secret")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path / "host" / "train", out / "train")
    with pytest.raises(UnsafeOutput):
        read_bytes(out, "train/checkpoint.pt")


def test_a_hard_link_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("x")
    os.link(out / "a", out / "b")
    assert any("hard link" in p for p in audit_tree(out))
    with pytest.raises(UnsafeOutput, match="hard link"):
        read_bytes(out, "a")


def test_a_fifo_never_blocks_the_host(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "smoke.json")
    done: list[object] = []

    def judge() -> None:
        done.append(_judge("smoke", None, _result(), out, 60.0))

    worker = threading.Thread(target=judge, daemon=True)
    worker.start()
    worker.join(10)
    assert done, "reading a FIFO blocked the host"
    run = done[0]
    assert not run.ok and "/out/smoke.json is a FIFO" in run.reason  # type: ignore[attr-defined]
    with pytest.raises(UnsafeOutput, match="FIFO"):
        read_bytes(out, "smoke.json")


def test_an_oversized_report_is_refused(tmp_path: Path) -> None:
    (tmp_path / "smoke.json").write_text(json.dumps({"ok": True, "pad": "x" * (2 << 20)}))
    run = _judge("smoke", None, _result(), tmp_path, 60.0)
    assert not run.ok and "over the" in run.reason


def test_a_report_that_claims_a_pass_without_measurements_fails(tmp_path: Path) -> None:
    (tmp_path / "smoke.json").write_text(json.dumps({"stage": "smoke", "ok": True, "reason": "", "seconds": 1,
                                                     "metrics": {}}))
    run = _judge("smoke", None, _result(), tmp_path, 60.0)
    assert not run.ok and "does not take a stage's word" in run.reason
    (tmp_path / "smoke.json").write_text(json.dumps({"stage": "smoke", "ok": True, "reason": "", "seconds": 1,
                                                     "metrics": {"loss": 1.2, "parameters": 10}}))
    assert _judge("smoke", None, _result(), tmp_path, 60.0).ok
