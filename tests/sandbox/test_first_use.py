"""A new user's sandbox: with a Docker engine answering and the sandbox image not built, the run builds the
image on first use (progress shown) or, when that cannot work, stops with the one command that builds it;
it never falls back to the local process sandbox unasked. Against the real Docker engine, each test under
its own image tag (never the shared hrm-evolve-sandbox:latest), removed afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import SandboxSpec, SandboxUnavailable, get_backend
from sandbox.docker_backend import DockerBackend
from sandbox.doctor import doctor
from sandbox.image import _client, build_command, first_use_obstacle, image_exists
from tests.availability import skip_or_fail

pytestmark = pytest.mark.docker


def _engine_reason() -> str | None:
    try:
        _client().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine
        return f"no Docker engine answers ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture
def fresh_tag() -> Iterator[str]:
    """An image tag of this test alone, absent at the start and removed at the end."""
    skip_or_fail(_engine_reason(), "HRM_EVOLVE_REQUIRE_DOCKER")
    tag = f"hrm-evolve-sandbox:first-use-{uuid.uuid4().hex[:10]}"
    assert not image_exists(tag)
    yield tag
    if image_exists(tag):
        _client().images.remove(tag)  # untags this test's tag only; layers others use stay


def test_the_build_command_names_a_non_default_tag() -> None:
    assert build_command() == "python -m sandbox.image build --no-registry"
    assert build_command("x:y") == "python -m sandbox.image build --no-registry --tag x:y"
    assert "--base-image pytorch/pytorch" in build_command("x:y", gpus=True)


def test_without_a_build_callback_a_missing_image_still_falls_back_to_local(fresh_tag: str) -> None:
    """Library callers that pass no progress callback keep the old behaviour (the run passes one)."""
    warnings: list[str] = []
    backend = get_backend("auto", image=fresh_tag, warn=warnings.append)
    assert not isinstance(backend, DockerBackend)
    assert warnings and "is not built" in warnings[0] and f"--tag {fresh_tag}" in warnings[0]


def test_a_missing_image_that_cannot_be_built_stops_with_the_command(fresh_tag: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HRM_EVOLVE_TORCH_WHEEL", "/nonexistent/torch-0-cp311-none-linux_x86_64.whl")
    lines: list[str] = []
    for kind in ("auto", "docker"):
        with pytest.raises(SandboxUnavailable) as caught:
            get_backend(kind, image=fresh_tag, build=lines.append)
        text = str(caught.value)
        assert f"Build it with: python -m sandbox.image build --no-registry --tag {fresh_tag}" in text
        assert "torch wheel not found" in text and "--backend local" in text
    assert not image_exists(fresh_tag)
    assert not lines  # nothing was started


def test_a_gpu_run_is_not_given_a_cpu_image(fresh_tag: str) -> None:
    with pytest.raises(SandboxUnavailable) as caught:
        get_backend("auto", image=fresh_tag, build=lambda line: None, gpus=True)
    assert "--base-image pytorch/pytorch:<cuda tag>" in str(caught.value) and f"--tag {fresh_tag}" in str(caught.value)
    assert not image_exists(fresh_tag)


def test_a_missing_image_is_built_on_first_use_and_runs(fresh_tag: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real registry-free build (about a minute with its base present; a few more while debootstrap makes
    the base), in this test's own cache folder so that no other build's context is touched."""
    obstacle = first_use_obstacle(_client())
    if obstacle is not None:
        skip_or_fail(f"the registry-free build cannot run here: {obstacle}", "HRM_EVOLVE_REQUIRE_DOCKER")
    monkeypatch.setenv("HRM_EVOLVE_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    backend = get_backend("auto", image=fresh_tag, build=lines.append)
    assert isinstance(backend, DockerBackend) and image_exists(fresh_tag)
    assert "building it now" in lines[0] and build_command(fresh_tag) in lines[0]
    assert any(line.startswith("image: built") or "up to date" in line for line in lines), lines[-5:]
    # the image it built runs a sandbox
    out = tmp_path / "out"
    result = backend.run(SandboxSpec(command=["python", "-c", "import numpy, torch; print('first-use', 6 * 7)"],
                                     mounts=[], output_dir=out, timeout_s=120.0, memory_mb=1024, cpus=1.0,
                                     pids=64, disk_mb=16, label="first-use"))
    assert result.exit_code == 0, result.log_tail
    assert "first-use 42" in result.log_tail
    # a second first use finds the image and builds nothing
    again: list[str] = []
    assert isinstance(get_backend("auto", image=fresh_tag, build=again.append), DockerBackend) and not again
    assert os.environ["HRM_EVOLVE_CACHE"] == str(tmp_path / "cache")


def test_the_doctor_says_what_a_run_does_about_the_missing_image(fresh_tag: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    obstacle = first_use_obstacle(_client())
    expected = "builds the image on first use" if obstacle is None else "stops:"
    assert doctor(fresh_tag)["first_use"].startswith(expected)
    monkeypatch.setenv("HRM_EVOLVE_TORCH_WHEEL", "/nonexistent/torch.whl")
    report = doctor(fresh_tag)["first_use"]
    assert report.startswith("stops:") and f"--no-registry --tag {fresh_tag}" in report
