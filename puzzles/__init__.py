"""Trusted puzzle tasks: generators, split building from a secret seed, the harness's reader and the scoring.

Part of the harness, outside the evolvable ``hrm/``; see ``puzzles.build`` and ``puzzles.splits``.
"""

from puzzles.build import TASK_ALIASES, build_dataset, resolve_task

__all__ = ["TASK_ALIASES", "build_dataset", "resolve_task"]
