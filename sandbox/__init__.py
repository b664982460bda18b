"""Sandboxes that run untrusted candidate code: Docker first, a hardened local process as fallback."""

from __future__ import annotations

from pathlib import Path

from sandbox.spec import DEFAULT_IMAGE, Backend, Mount, SandboxResult, SandboxSpec, Warn

__all__ = ["DEFAULT_IMAGE", "Backend", "Mount", "SandboxResult", "SandboxSpec", "SandboxUnavailable",
           "docker_unavailable_reason", "get_backend", "local_unavailable_reason"]


class SandboxUnavailable(RuntimeError):
    """No sandbox can run candidates as asked; the message says why and what to do (a command to run)."""


def _docker_status(image: str) -> tuple[bool, str | None]:
    """(does an engine answer, why Docker cannot be used or None)."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no SDK, no socket, engine down: all mean "no Docker"
        return False, f"no Docker engine answers ({type(exc).__name__}: {exc})"
    try:
        client.images.get(image)
    except Exception:
        tail = "" if image == DEFAULT_IMAGE else f" --tag {image}"
        return True, f"the sandbox image {image} is not built (python -m sandbox.image build --no-registry{tail})"
    return True, None


def docker_unavailable_reason(image: str = DEFAULT_IMAGE) -> str | None:
    """None when a Docker engine answers and has ``image``; otherwise why Docker can't be used."""
    return _docker_status(image)[1]


def local_unavailable_reason() -> str | None:
    """None when the local backend can run candidates here; otherwise why it refuses (root, no bubblewrap)."""
    from sandbox.local_backend import LocalBackend

    return LocalBackend().refusal_reason()


def get_backend(kind: str = "auto", *, image: str = DEFAULT_IMAGE, warn: Warn | None = None,
                build: Warn | None = None, gpus: bool = False) -> Backend:
    """``docker``, ``local``, or ``auto``: Docker when an engine answers and the image exists, else local
    (with a warning through ``warn`` saying which isolation is missing).

    ``build`` (a progress callback): when an engine answers but the image is missing, ``auto`` and ``docker``
    build it on first use (``sandbox.image.build_on_first_use``) and raise SandboxUnavailable, naming the one
    command that builds it, when that cannot work (and at once with ``gpus``: a GPU image needs a CUDA base).
    Without ``build`` a missing image falls back to local (``auto``) or raises (``docker``), as before."""
    if kind not in ("auto", "docker", "local"):
        raise ValueError(f"unknown sandbox backend {kind!r} (auto, docker, local)")
    if kind in ("auto", "docker"):
        engine, reason = _docker_status(image)
        if reason is not None and engine and build is not None:
            from sandbox.image import ImageBuildError, build_command, build_on_first_use

            if gpus:
                raise SandboxUnavailable(f"the sandbox image {image} is not built; with GPUs it needs a CUDA "
                                         f"build of torch: {build_command(image, gpus=True)} (or --backend local)")
            try:
                build_on_first_use(image, log=build)
            except ImageBuildError as exc:
                raise SandboxUnavailable(f"{exc} (or choose --backend local, the weaker local process sandbox)") \
                    from exc
            reason = None
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

