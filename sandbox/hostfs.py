"""Host-side file system work shared by the backends: who runs the sandbox, access to mounts, output quota."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from sandbox.spec import SandboxSpec

NOBODY = 65534
MAX_OUTPUT_ENTRIES = 100_000


def host_ids() -> tuple[int, int] | None:
    """The caller's (uid, gid), or None where the platform has no POSIX ids (Windows)."""
    getuid, getgid = getattr(os, "getuid", None), getattr(os, "getgid", None)
    if getuid is None or getgid is None:
        return None
    return getuid(), getgid()


def sandbox_ids() -> tuple[int, int]:
    """The uid:gid the sandboxed command runs as: the caller's own when unprivileged, else nobody:nogroup.

    Running as the caller keeps output files owned by them; running as root is never allowed, so a root caller
    gets 65534 (which also makes RLIMIT_NPROC count, since the kernel exempts uid 0 from it). A host without
    POSIX ids (Windows, where only Docker can run candidates) also gets 65534, the container user.
    """
    ids = host_ids()
    if ids is None or ids[0] == 0:
        return NOBODY, NOBODY
    return ids


def grant_access(spec: SandboxSpec, uid: int) -> None:
    """Make the mount roots usable by ``uid``: read+search on read-only inputs, write on the output dir.

    Only the mount roots are touched (a mkdtemp directory is 0700); files below keep their modes, which for a
    git worktree or generated data are world-readable under the usual umask 022.
    """
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = host_ids()
    if ids is None or uid != ids[0]:
        os.chmod(out, 0o777)
        for m in spec.mounts:
            host = Path(m.host)
            if not host.exists():
                continue
            mode = host.stat().st_mode
            extra = stat.S_IROTH | (stat.S_IXOTH if host.is_dir() else 0)
            if mode & extra != extra:
                os.chmod(host, stat.S_IMODE(mode) | extra)


def _allocated(st: os.stat_result) -> int:
    """Bytes a file occupies on disk: its blocks where the platform reports them (a sparse file counts what
    it uses), else its size (Windows has no st_blocks)."""
    blocks = getattr(st, "st_blocks", None)
    return st.st_size if blocks is None else blocks * 512


def tree_usage(root: Path, max_entries: int = MAX_OUTPUT_ENTRIES) -> tuple[int, int]:
    """(bytes, entries) under ``root``, without following symlinks; stops counting past ``max_entries``."""
    total = 0
    entries = 0
    stack = [str(root)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    entries += 1
                    if entries > max_entries:
                        return total, entries
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += _allocated(entry.stat(follow_symlinks=False))
                    except OSError:
                        continue
        except OSError:
            continue
    return total, entries


class OutputQuota:
    """A thread that polls the output dir and calls ``on_exceed`` once when it grows past the cap.

    The per-file cap is RLIMIT_FSIZE; this bounds the total (many small files). Overshoot is bounded by
    what a process can write in one poll interval.
    """

    def __init__(self, root: Path, limit_mb: int, on_exceed: Callable[[str], None], interval_s: float = 0.25,
                 stop: threading.Event | None = None):
        self.root = Path(root)
        self.limit = limit_mb * 1024 * 1024
        self.on_exceed = on_exceed
        self.interval_s = interval_s
        self.exceeded: str | None = None
        self.stop = stop
        self.stopped = False  # the host's stop event was set: on_exceed("stopped by the host") was called
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sandbox-output-quota", daemon=True)

    def __enter__(self) -> OutputQuota:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.stop is not None and self.stop.is_set():
                self.stopped = True
                self.on_exceed("stopped by the host")
                return
            used, entries = tree_usage(self.root)
            if used > self.limit or entries > MAX_OUTPUT_ENTRIES:
                self.exceeded = (f"output dir over its cap: {used // (1024 * 1024)} MiB / "
                                 f"{self.limit // (1024 * 1024)} MiB, {entries} entries")
                self.on_exceed(self.exceeded)
                return
