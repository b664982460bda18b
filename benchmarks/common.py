"""What the benchmarks share: the repository root on the import path (they run as scripts), git in a folder,
and a fresh clone of this repository's HEAD. Import it first: ``from common import ROOT, git, clone_head``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def git(cwd: Path, *args: str) -> str:
    """``git ARGS`` in ``cwd``; its stdout (raises on a non-zero exit)."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def clone_head(dest: Path) -> Path:
    """A fresh clone of this repository's HEAD at ``dest``, with a git identity of its own (benchmarks never
    evolve the checkout itself)."""
    git(dest.parent, "clone", "--quiet", str(ROOT), str(dest))
    git(dest, "config", "user.name", "bench")
    git(dest, "config", "user.email", "bench@hrm-evolve.invalid")
    return dest
