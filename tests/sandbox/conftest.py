"""Backends for the sandbox tests. Docker cases skip without an engine and image, unless
HRM_EVOLVE_REQUIRE_DOCKER=1 (CI), which turns that skip into a failure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox import Backend, Mount, SandboxSpec, docker_unavailable_reason, get_backend
from tests.availability import skip_or_fail

BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), "local"]


def require_docker() -> None:
    skip_or_fail(docker_unavailable_reason(), "HRM_EVOLVE_REQUIRE_DOCKER")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "docker":
        require_docker()
    else:
        request.getfixturevalue("require_local_sandbox")
    return get_backend(request.param)


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., SandboxSpec]:
    """A spec running candidate/main.py (source given) with short limits; extra kwargs override."""

    def make(source: str, *args: str, files: dict[str, str] | None = None, **overrides: object) -> SandboxSpec:
        cand = tmp_path / "candidate"
        cand.mkdir(exist_ok=True)
        (cand / "main.py").write_text(source)
        for name, text in (files or {}).items():
            (cand / name).write_text(text)
        harness = tmp_path / "harness"
        harness.mkdir(exist_ok=True)
        (harness / "evaluator.py").write_text("BUDGET_SECONDS = 60\n")
        fields: dict[str, object] = dict(
            command=["python", "/candidate/main.py", *args],
            mounts=[Mount(cand, "/candidate"), Mount(harness, "/harness")],
            output_dir=tmp_path / "out",
            env={"PYTHONPATH": "/candidate"},
            timeout_s=20.0,
            memory_mb=512,
            cpus=1.0,
            pids=64,
            disk_mb=16,
            label="test",
        )
        fields.update(overrides)
        return SandboxSpec(**fields)  # type: ignore[arg-type]

    return make
