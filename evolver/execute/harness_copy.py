"""The pristine, read-only copy of the harness code that every stage mounts at /harness.

Only the trusted packages a stage runs (`smoketests`, `puzzles`) are copied, as `.py` files, from the
engine's own installation into `<state>/harness/<content hash>/`. The engine root, its state directory,
`.git`, `.env` and the worktrees are never inside a mount.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import stat
from pathlib import Path
from typing import Any

HARNESS_PACKAGES: tuple[str, ...] = ("smoketests", "puzzles")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the harness package {name!r} is not importable from this engine")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _sources(name: str) -> list[tuple[str, Path]]:
    root = _package_dir(name)
    files = []
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts or path.is_symlink():
            continue
        files.append((f"{name}/{path.relative_to(root).as_posix()}", path))
    return files


def harness_digest() -> str:
    """A content hash of the harness sources (changes whenever the harness's code does)."""
    digest = hashlib.sha256()
    for name in HARNESS_PACKAGES:
        for rel, path in _sources(name):
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def pristine_harness(state_dir: Path) -> Path:
    """The read-only copy for the current harness sources (made once per content hash)."""
    digest = harness_digest()
    dest = Path(state_dir) / "harness" / digest
    if (dest / ".complete").is_file():
        return dest
    tmp = dest.with_name(f".{digest}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    for name in HARNESS_PACKAGES:
        for rel, path in _sources(name):
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    (tmp / ".complete").write_text(digest + "\n")
    for root, _dirs, files in os.walk(tmp):
        for f in files:
            os.chmod(os.path.join(root, f), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(root, 0o755)
    if dest.exists():
        shutil.rmtree(dest, onerror=_force)
    os.replace(tmp, dest)
    return dest


def _force(func: Any, path: str, _exc: Any) -> None:
    os.chmod(os.path.dirname(path), 0o755)
    os.chmod(path, 0o644)
    func(path)


def stage_candidate(worktree: Path, dest: Path) -> Path:
    """A copy of the candidate's `hrm/` package alone (regular files; links and caches skipped), so the
    sandbox sees neither the worktree's `.git` pointer nor any other file of the repository."""
    src = Path(worktree) / "hrm"
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory")
    if dest.exists():
        shutil.rmtree(dest)
    for root, dirs, files in os.walk(src, followlinks=False):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not os.path.islink(os.path.join(root, d))]
        rel = Path(root).relative_to(src)
        (dest / "hrm" / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            full = Path(root) / f
            if full.is_symlink() or not full.is_file():
                continue
            shutil.copyfile(full, dest / "hrm" / rel / f)
    for root, _dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
    return dest
