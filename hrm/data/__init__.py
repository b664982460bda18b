"""The trainer's side of the puzzle data: the reader of the reference layout (``hrm.data.dataset``), its
format (``hrm.data.format``) and the training-time augmentations (``hrm.data.augment``).

All of it is evolvable. The puzzle generators and the held-out splits are not here: they are trusted code
in the top-level ``puzzles`` package, which the engine runs on the host. ``python -m hrm data build`` and
``hrm.train`` without a dataset call it for the user's convenience (imported lazily, never by a stage).
"""

from __future__ import annotations

from typing import Any

TASK_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sudoku4": ("sudoku", {"box": (2, 2)}),
    "sudoku6": ("sudoku", {"box": (2, 3)}),
    "sudoku9": ("sudoku", {"box": (3, 3)}),
    "maze": ("maze", {}),
}

__all__ = ["TASK_ALIASES"]
