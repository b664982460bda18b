"""Finding a test's sandbox processes through /proc: children, descendants, command lines, and which of a
set of pids still run a `smoketests` stage."""

from __future__ import annotations

import os
import time


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pids: list[int]) -> list[int]:
    """The pids that still run a `smoketests` stage."""
    return [p for p in pids if os.path.exists(f"/proc/{p}") and "smoketests" in cmdline(p)]


def training_under(pid: int, count: int = 1, timeout: float = 120.0) -> list[int]:
    """The pids of the `smoketests train` sandbox processes below ``pid``, once there are ``count``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in descendants(pid) if "smoketests train" in cmdline(p)]
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} sandbox(es) ever trained below pid {pid}")


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` for ``pids`` to stop running a stage; the ones still running."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)
