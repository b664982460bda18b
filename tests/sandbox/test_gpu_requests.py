"""GPU requests: one device per sandbox by id, and a clear failure when CUDA is not visible inside."""

from __future__ import annotations

import json
from pathlib import Path

from evolver.execute.cascade import run_cascade
from sandbox import SandboxResult, SandboxSpec
from sandbox.docker_backend import DockerBackend


def _spec(tmp_path: Path, **kw: object) -> SandboxSpec:
    return SandboxSpec(command=["python", "-V"], mounts=[], output_dir=tmp_path, **kw)  # type: ignore[arg-type]


def test_docker_requests_only_the_named_device(tmp_path: Path) -> None:
    backend = DockerBackend.__new__(DockerBackend)  # _kwargs needs no engine
    one = backend._kwargs(_spec(tmp_path, gpus=True, gpu_ids=["1"]), 65534, 65534)["device_requests"][0]
    assert one["DeviceIDs"] == ["1"] and one.get("Count") in (None, 0)
    every = backend._kwargs(_spec(tmp_path, gpus=True), 65534, 65534)["device_requests"][0]
    assert every["Count"] == -1
    assert "device_requests" not in backend._kwargs(_spec(tmp_path), 65534, 65534)


class CpuOnlyBackend:
    """A backend whose stages report running on the CPU, as a CPU image does under --gpus."""

    name = "cpu-only"

    def __init__(self) -> None:
        self.specs: list[SandboxSpec] = []

    def run(self, spec: SandboxSpec) -> SandboxResult:
        self.specs.append(spec)
        stage = spec.command[spec.command.index("smoketests") + 1]
        report = {"stage": stage, "ok": True, "reason": "", "seconds": 0.1,
                  "metrics": {"loss": 1.0, "parameters": 10, "device": "cpu"}}
        (Path(spec.output_dir) / f"{stage}.json").write_text(json.dumps(report))
        return SandboxResult(exit_code=0, timed_out=False, oom_killed=False, duration_s=0.1, overhead_s=0.0,
                             log_tail="", backend=self.name, isolation=[], missing=[])


def test_gpus_requested_but_cuda_invisible_fails_with_the_fix(run_data: Path, harness: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "hrm").mkdir(parents=True)
    (tree / "hrm" / "__init__.py").write_text("")
    box = CpuOnlyBackend()
    result = run_cascade(tree, harness, run_data, tmp_path / "out", task="sudoku4", seeds=[0], budget_seconds=1,
                         backend=box, stages=("smoke",), gpus=True, gpu_ids=["0"])
    assert result.failed_stage == "smoke"
    assert "CUDA is not visible in the sandbox" in result.reason and "--base-image" in result.reason
    assert box.specs[0].gpu_ids == ["0"]
