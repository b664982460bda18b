"""Reading what a sandbox wrote, as a host that trusts none of it.

Everything under a stage's output directory was made by candidate code. The host therefore:

- walks the directory without following links and refuses the whole output when it holds anything but
  directories and regular files with a single link (symlinks, hard links to other files, FIFOs, sockets
  and device files are named in the reason);
- opens each file it needs component by component with ``O_NOFOLLOW`` relative to the directory it
  already holds open, and ``O_NONBLOCK`` so that a FIFO swapped in after the walk cannot block it, then
  checks with ``fstat`` that it holds a regular file under the size limit before reading a byte.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_BINARY = getattr(os, "O_BINARY", 0)

DEFAULT_MAX_BYTES = 1 << 20
MAX_ENTRIES = 10_000


class UnsafeOutput(ValueError):
    """The sandbox left something the host will not read; the message says what and where."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"


def audit_tree(root: Path, *, shown_as: str = "/out") -> list[str]:
    """Every problem in ``root`` (empty when it holds only directories and single-link regular files)."""
    problems: list[str] = []
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            seen += 1
            if seen > MAX_ENTRIES:
                problems.append(f"more than {MAX_ENTRIES} entries under {shown_as}")
                return problems
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            where = f"{shown_as}/{rel}"
            if stat.S_ISDIR(st.st_mode):
                continue
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    problems.append(f"{where} is a hard link ({st.st_nlink} names for one file)")
                continue
            detail = f" -> {os.readlink(full)}" if stat.S_ISLNK(st.st_mode) else ""
            problems.append(f"{where} is {_kind(st.st_mode)}{detail}")
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return problems


def read_bytes(root: Path, rel: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of ``root/rel``, or UnsafeOutput when any component is a link or the file is not regular."""
    parts = [p for p in Path(rel).parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or Path(rel).is_absolute():
        raise UnsafeOutput(f"bad output path {rel!r}")
    fd = os.open(root, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _BINARY, dir_fd=fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise UnsafeOutput(f"{rel} cannot be opened without following a link ({exc.strerror})") from exc
    except NotADirectoryError as exc:
        raise UnsafeOutput(f"a component of {rel} is not a plain directory") from exc
    finally:
        os.close(fd)
    try:
        st = os.fstat(file_fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeOutput(f"{rel} is {_kind(st.st_mode)}, not a regular file")
        if st.st_nlink > 1:
            raise UnsafeOutput(f"{rel} is a hard link ({st.st_nlink} names for one file)")
        if st.st_size > max_bytes:
            raise UnsafeOutput(f"{rel} holds {st.st_size} bytes, over the {max_bytes}-byte limit")
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(file_fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise UnsafeOutput(f"{rel} grew past the {max_bytes}-byte limit while being read")
        return data
    finally:
        os.close(file_fd)


def read_json(root: Path, rel: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Parsed JSON from ``root/rel`` (see read_bytes); ValueError when it does not parse."""
    return json.loads(read_bytes(root, rel, max_bytes=max_bytes).decode("utf-8"))


def read_array(root: Path, rel: str, *, max_bytes: int = 256 << 20) -> Any:
    """A numpy array from ``root/rel``, never unpickling (see read_bytes)."""
    import numpy as np

    return np.load(io.BytesIO(read_bytes(root, rel, max_bytes=max_bytes)), allow_pickle=False)


def copy_out(root: Path, rel: str, dest: Path, *, max_bytes: int) -> Path:
    """Copy one regular file out of a sandbox's output into ``dest`` (a fresh host file)."""
    data = read_bytes(root, rel, max_bytes=max_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest
