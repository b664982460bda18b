"""The main command on a machine whose Docker engine answers but has no sandbox image: it builds the image on
first use, showing its progress, and trains in it; where the build cannot work it stops with the one command
that builds it, never falling back to the local process sandbox unasked. Real Docker engine, real git
repositories, `python evolve.py` as a subprocess; each test under its own image tag, removed afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.image import _client, first_use_obstacle, image_exists
from tests.availability import skip_or_fail
from tests.evolver.run.test_loop_e2e import _snapshot

pytestmark = pytest.mark.docker

EVOLVE = Path(__file__).resolve().parents[3] / "evolve.py"
FALLBACK = "using the local process sandbox"


@pytest.fixture
def fresh_tag() -> Iterator[str]:
    try:
        _client().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine
        skip_or_fail(f"no Docker engine answers ({exc})", "HRM_EVOLVE_REQUIRE_DOCKER")
    tag = f"hrm-evolve-sandbox:first-use-cli-{uuid.uuid4().hex[:10]}"
    assert not image_exists(tag)
    yield tag
    if image_exists(tag):
        _client().images.remove(tag)  # this test's tag only


def _evolve(repo: Path, tag: str, env: dict[str, str], *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(EVOLVE), "--repo", str(repo), "--provider", "offline", "--literature", "off",
           "--image", tag, "--seeds", "0", "--cycles", "1", *extra]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **env})


def test_a_missing_image_that_cannot_be_built_stops_the_run_with_the_command(user_repo: Path, fresh_tag: str) -> None:
    proc = _evolve(user_repo, fresh_tag, {"HRM_EVOLVE_TORCH_WHEEL": "/nonexistent/torch.whl"}, timeout=300)
    out = " ".join((proc.stdout + proc.stderr).split())  # the console wraps long lines
    assert proc.returncode == 1, out[-3000:]
    assert f"python -m sandbox.image build --no-registry --tag {fresh_tag}" in out, out[-3000:]
    assert FALLBACK not in out and not image_exists(fresh_tag)


def test_the_main_command_builds_a_missing_image_on_first_use_and_trains_in_it(tmp_path: Path,
                                                                                fresh_tag: str) -> None:
    obstacle = first_use_obstacle(_client())
    if obstacle is not None:
        skip_or_fail(f"the registry-free build cannot run here: {obstacle}", "HRM_EVOLVE_REQUIRE_DOCKER")
    repo = _snapshot(tmp_path / "repo")
    # one baseline seed at a 3 s budget, then the runtime limit stops the run before any candidate (a generous
    # setup allowance: on a loaded machine torch's start-up alone can pass the default 30 s)
    proc = _evolve(repo, fresh_tag, {"HRM_EVOLVE_CACHE": str(tmp_path / "cache")}, "--budget-seconds", "3",
                   "--setup-allowance", "240", "--max-runtime", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "building it now" in out and "image: built" in out, out[-3000:]
    assert FALLBACK not in out and image_exists(fresh_tag)
    assert "reached --max-runtime" in out
    cascades = [json.loads(p.read_text()) for p in (repo / ".hrm-evolve" / "runs").glob("*/baseline/*/cascade.json")]
    assert cascades and all(c["ok"] for c in cascades), out[-3000:]
    assert {s["stage"]: s["backend"] for c in cascades for s in c["stages"]} == {"train": "docker",
                                                                                "evaluate": "docker"}
