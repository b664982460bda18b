"""Build the sandbox image, with or without a registry.

Registry-free path (the default, what CI uses): ``debootstrap --variant=minbase`` a Debian bookworm root
(python3 3.11 + pip), ``docker import`` it as ``hrm-evolve-base:bookworm``, then build ``sandbox/Dockerfile``
FROM that base with every wheel (torch from a local file, numpy, rich and their dependencies fetched on the host
with ``pip download``) in the build context, so neither the build nor the container needs a registry or PyPI.

With a registry, ``--base-image python:3.11-slim`` (or a pytorch image, whose torch is kept) skips debootstrap.

The image carries a ``hrm-evolve.content-hash`` label (Dockerfile + base image id + wheel files); a build whose
hash matches the existing image is skipped.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.spec import DEFAULT_IMAGE

NO_REGISTRY_BASE = "hrm-evolve-base:bookworm"
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HASH_LABEL = "hrm-evolve.content-hash"
DOCKERFILE = Path(__file__).with_name("Dockerfile")
TORCH_WHEEL_GLOB = "/opt/wheels/torch-*-cp311-*.whl"
PY_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")

Log = Callable[[str], None]


class ImageBuildError(RuntimeError):
    """The image could not be built; the message says which step failed and why."""


@dataclass
class BuildReport:
    tag: str
    image_id: str
    content_hash: str
    skipped: bool
    base_image: str
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "image_id": self.image_id,
            "content_hash": self.content_hash,
            "skipped": self.skipped,
            "base_image": self.base_image,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def default_cache_dir() -> Path:
    root = os.environ.get("HRM_EVOLVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hrm-evolve")
    return Path(root) / "sandbox-build"


def _client() -> Any:
    import docker

    return docker.from_env()


def image_exists(tag: str = DEFAULT_IMAGE, client: Any | None = None) -> bool:
    """True when an engine answers and has ``tag``; False otherwise (never raises for a missing engine)."""
    try:
        cli = client or _client()
        cli.images.get(tag)
        return True
    except Exception:  # engine down, image absent, SDK errors: all mean "not usable"
        return False


def _image_label(client: Any, tag: str, key: str) -> str | None:
    import docker.errors

    try:
        img = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    return (img.labels or {}).get(key)


def find_torch_wheel(explicit: str | None = None) -> Path | None:
    """The torch wheel to put in the context: --torch-wheel, $HRM_EVOLVE_TORCH_WHEEL, or /opt/wheels."""
    candidate = explicit or os.environ.get("HRM_EVOLVE_TORCH_WHEEL")
    if candidate:
        path = Path(candidate)
        if not path.is_file():
            raise ImageBuildError(f"torch wheel not found: {path}")
        return path
    found = sorted(glob.glob(TORCH_WHEEL_GLOB))
    return Path(found[-1]) if found else None


def _pinned(dist: str) -> str:
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return dist


def _run(cmd: list[str], log: Log, what: str, **kwargs: Any) -> None:
    log(f"  $ {' '.join(cmd)}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def prepare_wheels(wheel_dir: Path, torch_wheel: Path | None, log: Log) -> list[Path]:
    """Download numpy, rich (host versions) and torch's dependencies as cp311 wheels into ``wheel_dir``.

    A marker file records the request; an identical request reuses the directory with no network.
    """
    reqs = [_pinned("numpy"), _pinned("rich")]
    request = {"torch": torch_wheel.name if torch_wheel else None, "reqs": reqs, "platforms": list(PY_PLATFORMS)}
    marker = wheel_dir / ".request.json"
    if marker.is_file() and json.loads(marker.read_text()) == request:
        log(f"wheels: reusing {wheel_dir}")
        return sorted(wheel_dir.glob("*.whl"))
    if wheel_dir.exists():
        shutil.rmtree(wheel_dir)
    wheel_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--dest", str(wheel_dir), "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for plat in PY_PLATFORMS:
        cmd += ["--platform", plat]
    if torch_wheel is not None:
        cmd.append(str(torch_wheel))
    cmd += reqs
    log("wheels: pip download (host side; the container never reaches PyPI)")
    _run(cmd, log, "pip download")
    if torch_wheel is not None and not (wheel_dir / torch_wheel.name).exists():
        shutil.copy2(torch_wheel, wheel_dir / torch_wheel.name)
    marker.write_text(json.dumps(request))
    return sorted(wheel_dir.glob("*.whl"))


def build_base_no_registry(client: Any, log: Log, cache_dir: Path, mirror: str = DEFAULT_MIRROR,
                           tag: str = NO_REGISTRY_BASE) -> str:
    """debootstrap a bookworm minbase with python3 + pip and ``docker import`` it. Returns the image id."""
    import docker.errors

    try:
        img = client.images.get(tag)
        log(f"base: {tag} exists ({img.short_id}); not rebuilding")
        return str(img.id)
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install -y debootstrap), or pass --base-image")
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root; run the build as root or pass --base-image")
    cache_dir.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir))
    try:
        log(f"base: debootstrap --variant=minbase {DEBIAN_SUITE} ({mirror}); a few minutes")
        _run(["debootstrap", "--variant=minbase", "--include=python3,python3-pip", DEBIAN_SUITE,
              str(rootfs), mirror], log, "debootstrap")
        # Drop apt lists and caches: they only make the image larger.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            target = rootfs / sub
            for entry in target.glob("*"):
                if entry.is_file():
                    entry.unlink()
        log(f"base: docker import -> {tag}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        try:
            repo, _, version = tag.rpartition(":")
            client.api.import_image(src=tar.stdout, repository=repo, tag=version,
                                    changes=['CMD ["python3"]', "ENV LANG=C.UTF-8"])
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise ImageBuildError("tar of the debootstrap root failed")
        return str(client.images.get(tag).id)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def content_hash(dockerfile: bytes, base_id: str, wheels: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(dockerfile)
    h.update(base_id.encode())
    for w in sorted(wheels, key=lambda p: p.name):
        h.update(f"{w.name}:{w.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _base_id(client: Any, base_image: str, log: Log) -> str:
    import docker.errors

    try:
        return str(client.images.get(base_image).id)
    except docker.errors.ImageNotFound:
        log(f"base: pulling {base_image}")
        try:
            return str(client.images.pull(base_image).id)
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"cannot pull {base_image} ({exc}); without a registry use --no-registry") from exc


def build_image(tag: str = DEFAULT_IMAGE, *, base_image: str | None = None, no_registry: bool | None = None,
                torch_wheel: str | None = None, cache_dir: Path | None = None, force: bool = False,
                mirror: str = DEFAULT_MIRROR, log: Log = print) -> BuildReport:
    """Build (or reuse) the sandbox image. With no ``base_image`` the registry-free base is used."""
    client = _client()
    try:
        client.ping()
    except Exception as exc:
        raise ImageBuildError(f"no Docker engine answers ({exc}); start one (bash .ci/docker-up.sh)") from exc
    cache = cache_dir or default_cache_dir()
    seconds: dict[str, float] = {}
    if no_registry is None:
        no_registry = base_image is None
    t0 = time.monotonic()
    if no_registry:
        if base_image not in (None, NO_REGISTRY_BASE):
            raise ImageBuildError("--no-registry builds its own base; do not combine it with --base-image")
        base_image = NO_REGISTRY_BASE
        base_id = build_base_no_registry(client, log, cache / "rootfs", mirror=mirror)
    else:
        assert base_image is not None
        base_id = _base_id(client, base_image, log)
    seconds["base"] = time.monotonic() - t0

    t0 = time.monotonic()
    wheel = find_torch_wheel(torch_wheel)
    if wheel is None and no_registry:
        raise ImageBuildError("no torch wheel: pass --torch-wheel PATH (a cp311 linux wheel) or set "
                              "HRM_EVOLVE_TORCH_WHEEL; the registry-free base has no torch")
    context = cache / "context"
    wheels = prepare_wheels(context / "wheels", wheel, log)
    dockerfile_bytes = DOCKERFILE.read_bytes()
    (context / "Dockerfile").write_bytes(dockerfile_bytes)
    seconds["wheels"] = time.monotonic() - t0

    digest = content_hash(dockerfile_bytes, base_id, wheels)
    if not force and _image_label(client, tag, HASH_LABEL) == digest:
        image_id = str(client.images.get(tag).id)
        log(f"image: {tag} is up to date (content hash {digest}); skipping build")
        return BuildReport(tag, image_id, digest, True, base_image, seconds)

    t0 = time.monotonic()
    log(f"image: docker build {tag} FROM {base_image} ({len(wheels)} wheels in the context)")
    image_id = ""
    for chunk in client.api.build(path=str(context), tag=tag, buildargs={"BASE_IMAGE": base_image},
                                  labels={HASH_LABEL: digest, "hrm-evolve": "1"}, rm=True, forcerm=True,
                                  decode=True, network_mode="none", pull=False):
        if "stream" in chunk:
            text = chunk["stream"].rstrip()
            if text:
                log(f"  {text}")
        if "error" in chunk:
            raise ImageBuildError(f"docker build failed: {chunk['error']}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = str(aux["ID"])
    seconds["build"] = time.monotonic() - t0
    if not image_id:
        image_id = str(client.images.get(tag).id)
    log(f"image: built {tag} ({image_id[:19]}) in {sum(seconds.values()):.1f}s "
        + " ".join(f"{k}={v:.1f}s" for k, v in seconds.items()))
    return BuildReport(tag, image_id, digest, False, base_image, seconds)


def build_command(tag: str = DEFAULT_IMAGE, *, gpus: bool = False) -> str:
    """The one command that builds the sandbox image ``tag`` here (a CUDA image for GPUs)."""
    tail = "" if tag == DEFAULT_IMAGE else f" --tag {tag}"
    if gpus:
        return f"python -m sandbox.image build --base-image pytorch/pytorch:<cuda tag>{tail}"
    return f"python -m sandbox.image build --no-registry{tail}"


def first_use_obstacle(client: Any, torch_wheel: str | None = None) -> str | None:
    """Why the registry-free build cannot run here (its base needs debootstrap as root unless the base image
    exists; its context needs a torch wheel), or None when nothing visible stands in its way."""
    import docker.errors

    try:
        client.images.get(NO_REGISTRY_BASE)
    except docker.errors.ImageNotFound:
        if shutil.which("debootstrap") is None:
            return f"its base {NO_REGISTRY_BASE} is absent and debootstrap is not installed"
        if os.geteuid() != 0:
            return f"its base {NO_REGISTRY_BASE} is absent and debootstrap needs root"
    try:
        wheel = find_torch_wheel(torch_wheel)
    except ImageBuildError as exc:
        return str(exc)
    if wheel is None:
        return f"no torch wheel (none in {TORCH_WHEEL_GLOB}, HRM_EVOLVE_TORCH_WHEEL unset)"
    return None


def build_on_first_use(tag: str = DEFAULT_IMAGE, *, log: Log = print, cache_dir: Path | None = None) -> BuildReport:
    """Build the missing sandbox image ``tag`` the registry-free way (what a first run does when an engine
    answers and the image is absent), with its progress through ``log``. Raises ImageBuildError, whose message
    ends with the one command that builds the image, when the build cannot run here or fails."""
    command = build_command(tag)
    client = _client()
    obstacle = first_use_obstacle(client)
    if obstacle is not None:
        raise ImageBuildError(f"the sandbox image {tag} is not built and cannot be built here now: {obstacle}. "
                              f"Build it with: {command}")
    log(f"the sandbox image {tag} is not built: building it now, once (registry-free, about a minute with "
        f"its base present, a few more to make the base); the same as `{command}`")
    try:
        return build_image(tag, no_registry=True, cache_dir=cache_dir, log=log)
    except ImageBuildError as exc:
        raise ImageBuildError(f"building the sandbox image {tag} failed: {exc}\nBuild it with: {command}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.image", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the sandbox image (skipped when up to date)")
    b.add_argument("--tag", default=DEFAULT_IMAGE)
    b.add_argument("--base-image", default=None, help="FROM image (needs a registry unless present locally)")
    b.add_argument("--no-registry", action="store_true", help="debootstrap + docker import base (the default "
                   "when --base-image is not given)")
    b.add_argument("--torch-wheel", default=None, help=f"torch wheel for the context (default: {TORCH_WHEEL_GLOB})")
    b.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror for debootstrap")
    b.add_argument("--cache-dir", type=Path, default=None)
    b.add_argument("--force", action="store_true", help="rebuild even when the content hash matches")
    e = sub.add_parser("exists", help="exit 0 when the image exists")
    e.add_argument("--tag", default=DEFAULT_IMAGE)
    args = parser.parse_args(argv)

    if args.cmd == "exists":
        present = image_exists(args.tag)
        print(f"{args.tag}: {'present' if present else 'absent'}")
        return 0 if present else 1

    from rich.console import Console

    console = Console(stderr=True, highlight=False)

    def log(msg: str) -> None:
        console.print(msg, markup=False)

    no_registry = True if args.no_registry else (None if args.base_image is None else False)
    try:
        report = build_image(args.tag, base_image=args.base_image, no_registry=no_registry,
                             torch_wheel=args.torch_wheel, cache_dir=args.cache_dir, force=args.force,
                             mirror=args.mirror, log=log)
    except ImageBuildError as exc:
        console.print(f"[bold red]sandbox image build failed:[/] {exc}", markup=True)
        return 1
    print(json.dumps(report.as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
