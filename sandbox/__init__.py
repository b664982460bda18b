"""Sandboxes that run untrusted candidate code: Docker first, a hardened local process as fallback."""

from __future__ import annotations

from pathlib import Path

from sandbox.spec import DEFAULT_IMAGE, Backend, Mount, SandboxResult, SandboxSpec, Warn

__all__ = ["DEFAULT_IMAGE", "Backend", "Mount", "SandboxResult", "SandboxSpec", "docker_unavailable_reason",
           "get_backend", "local_unavailable_reason"]


def docker_unavailable_reason(image: str = DEFAULT_IMAGE) -> str | None:
    """None when a Docker engine answers and has ``image``; otherwise why Docker can't be used."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no SDK, no socket, engine down: all mean "no Docker"
        return f"no Docker engine answers ({type(exc).__name__}: {exc})"
    try:
        client.images.get(image)
    except Exception:
        return f"the sandbox image {image} is not built (python -m sandbox.image build)"
    return None


def local_unavailable_reason() -> str | None:
    """None when the local backend can run candidates here; otherwise why it refuses (root, no bubblewrap)."""
    from sandbox.local_backend import LocalBackend

    return LocalBackend().refusal_reason()


def get_backend(kind: str = "auto", *, image: str = DEFAULT_IMAGE, warn: Warn | None = None) -> Backend:
    """``docker``, ``local``, or ``auto``: Docker when an engine answers and the image exists, else local
    (with a warning through ``warn`` saying which isolation is missing)."""
    if kind not in ("auto", "docker", "local"):
        raise ValueError(f"unknown sandbox backend {kind!r} (auto, docker, local)")
    if kind in ("auto", "docker"):
        reason = docker_unavailable_reason(image)
        if reason is None:
            from sandbox.docker_backend import DockerBackend

            return DockerBackend(image, warn=warn)
        if kind == "docker":
            raise RuntimeError(f"Docker sandbox unavailable: {reason}")
    from sandbox.local_backend import LocalBackend

    backend = LocalBackend(warn=warn)
    if kind == "auto" and warn is not None:
        _, missing = backend.describe(SandboxSpec(command=["python"], mounts=[], output_dir=Path("/nonexistent")))
        warn(f"Docker sandbox unavailable ({reason}); using the local process sandbox, which lacks: "
             + "; ".join(missing))
    return backend

