"""A remote stage job's inputs and outputs as bytes: the trees, the harness and the run data go to a node
as deterministic gzipped tarballs (`pack`, content-addressed by their digest); the node unpacks them
(`unpack`: regular files only, nothing outside the destination) and sends back the files its cascade wrote
(`collect_files`), which the driver writes into the job's out_dir (`write_files`), never through a link."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

SKIP_DIRS = ("staged",)
"""Out-dir folders a remote node does not send back: `staged/` holds the copies of the inputs the driver has
(the hrm/ copy, the train split, the sealed held-out inputs) and a second copy of the checkpoint."""
MAX_RETURN_FILE_BYTES = 512 << 20


def _regular_files(root: Path, include: Callable[[PurePosixPath], bool]) -> list[tuple[str, Path]]:
    """Regular files under ``root`` (links never followed, caches skipped), sorted, as (relative, path)."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(files):
            full = Path(dirpath) / name
            rel = PurePosixPath(full.relative_to(root).as_posix())
            if stat.S_ISREG(os.lstat(full).st_mode) and include(rel):
                found.append((rel.as_posix(), full))
    return found


def pack(root: Path, include: Callable[[PurePosixPath], bool] = lambda _p: True) -> bytes:
    """A gzipped tarball of the regular files under ``root``, byte-identical for identical content (fixed
    times, owners and modes), so its digest names the content."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, full in _regular_files(Path(root), include):
            data = full.read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _safe_relative(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or not rel.parts or any(p in ("", ".", "..") for p in rel.parts):
        raise ValueError(f"refusing the path {name!r}")
    return rel


def _write_file(dest_root: Path, name: str, data: bytes) -> Path:
    """Write ``data`` at ``dest_root/name``, refusing names that climb out and existing links on the way."""
    rel = _safe_relative(name)
    target = Path(dest_root)
    target.mkdir(parents=True, exist_ok=True)
    for part in rel.parts[:-1]:
        target = target / part
        if target.is_symlink():
            raise ValueError(f"refusing to write through the link {target}")
        target.mkdir(exist_ok=True)
    target = target / rel.parts[-1]
    if target.is_symlink():
        raise ValueError(f"refusing to overwrite the link {target}")
    target.write_bytes(data)
    return target


def unpack(blob: bytes, dest: Path, *, file_mode: int = 0o444) -> Path:
    """Unpack a `pack` tarball into ``dest``: regular files only, no name leaving ``dest``; files read-only
    (``file_mode``) and folders 0o755, so a sandbox's unprivileged user can read them."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            os.chmod(_write_file(dest, member.name, handle.read()), file_mode)
    for dirpath, _dirs, _files in os.walk(dest):
        os.chmod(dirpath, 0o755)
    return dest


def collect_files(out_dir: Path, *, skip: tuple[str, ...] = SKIP_DIRS,
                  max_file_bytes: int = MAX_RETURN_FILE_BYTES) -> tuple[dict[str, bytes], list[str]]:
    """The regular files the cascade wrote under ``out_dir`` (not following links; the ``skip`` folders
    left out), and the ones too large to send (listed, not sent)."""
    files: dict[str, bytes] = {}
    too_large: list[str] = []
    for rel, full in _regular_files(Path(out_dir), lambda p: p.parts[0] not in skip):
        if os.lstat(full).st_size > max_file_bytes:
            too_large.append(rel)
        else:
            files[rel] = full.read_bytes()
    return files, too_large


def write_files(files: dict[str, bytes], out_dir: Path) -> None:
    for name in sorted(files):
        _write_file(Path(out_dir), name, files[name])


def data_filter(heldout_split: str) -> Callable[[PurePosixPath], bool]:
    """The run data a node needs: the top-level files, the train split and the scored held-out split."""
    return lambda p: len(p.parts) == 1 or p.parts[0] in ("train", heldout_split)


def tree_filter(p: PurePosixPath) -> bool:
    return p.parts[0] == "hrm"


def rebase_paths(result: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """Stage out_dir paths as the driver sees them."""
    for run in result.get("stages") or []:
        if str(run.get("out_dir", "")).startswith(old):
            run["out_dir"] = new + str(run["out_dir"])[len(old):]
    return result
