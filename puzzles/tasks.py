"""The trusted task specifications the verdict depends on: what is generated, how big each split is, and
the evaluation conditions (how many ACT segments every candidate is scored with).

These live outside the evolvable ``hrm/``. ``hrm/presets.py`` may describe the same tasks for training,
but whatever it says, the engine builds and scores data from these specifications only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_TASK_NAME, FILE_GPU_TASK_NAME = "file", "file-gpu"
FILE_TASKS = (FILE_TASK_NAME, FILE_GPU_TASK_NAME)
"""The tasks a user's task file makes (puzzles/file_task.py): their specs come from the run's task.json."""

HELD_OUT_SPLITS: tuple[str, ...] = ("select", "final")
"""``select`` drives every verdict; ``final`` is only read by the report, so selection cannot overfit it."""


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the preset name the candidate's trainer is asked for
    builder: str  # the generator in puzzles.build
    kwargs: dict[str, Any] = field(default_factory=dict)
    n_train: int = 2000
    n_select: int = 500
    n_final: int = 500
    eval_segments: int = 4  # ACT segments every candidate is evaluated with, whatever its own config says

    def splits(self) -> dict[str, int]:
        return {"train": self.n_train, "select": self.n_select, "final": self.n_final}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "builder": self.builder, "kwargs": dict(self.kwargs), "splits": self.splits(),
                "eval_segments": self.eval_segments}


TASKS: dict[str, TaskSpec] = {
    "sudoku4": TaskSpec("sudoku4", "sudoku", {"box": (2, 2), "min_clues": [4, 5]}),
    "sudoku6": TaskSpec("sudoku6", "sudoku", {"box": (2, 3), "min_clues": 10}),
    "sudoku9": TaskSpec("sudoku9", "sudoku", {"box": (3, 3), "min_clues": 45}),
    "maze": TaskSpec("maze", "maze", {"size": 9}),
    "sudoku-extreme-gpu": TaskSpec("sudoku-extreme-gpu", "sudoku", {"box": (3, 3), "min_clues": None},
                                   n_train=1000, n_select=1000, n_final=1000, eval_segments=16),
    "maze30-gpu": TaskSpec("maze30-gpu", "maze", {"size": 30, "min_path_len": 110},
                           n_train=1000, n_select=1000, n_final=1000, eval_segments=16),
}


def get_task(name: str, **overrides: Any) -> TaskSpec:
    """The trusted spec of ``name``; ``overrides`` replace fields (tests use smaller splits)."""
    try:
        spec = TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
    if not overrides:
        return spec
    values = {**spec.__dict__, **overrides}
    return TaskSpec(**values)


def task_spec(name: str, data_dir: Path | None = None) -> TaskSpec:
    """The trusted spec of ``name``: a built-in task from ``TASKS``, or a file task (``file``, ``file-gpu``:
    ``puzzles.file_task``) from the ``task.json`` its run wrote beside the splits it built on the host."""
    if name not in FILE_TASKS:
        return get_task(name)
    if data_dir is None or not (Path(data_dir) / "task.json").is_file():
        raise KeyError(f"task {name!r} is a file task: its spec is the task.json of the run's data, not found in "
                       f"{data_dir}")
    stored = json.loads((Path(data_dir) / "task.json").read_text())
    if stored.get("name") != name:
        raise ValueError(f"{data_dir}/task.json is for task {stored.get('name')!r}, not {name!r}")
    return TaskSpec(name=stored["name"], builder=stored["builder"], kwargs=dict(stored["kwargs"]),
                    n_train=int(stored["splits"]["train"]), n_select=int(stored["splits"]["select"]),
                    n_final=int(stored["splits"]["final"]), eval_segments=int(stored["eval_segments"]))
