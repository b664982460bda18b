"""A run stopped in the middle of a confirmation resumes with that confirmation spent: its level cannot be
offered again, so stopping and resuming never re-rolls a confirmation (the run-level error bound holds)."""

from __future__ import annotations

import json
from pathlib import Path

from evolver.judge.promotion import RunErrorControl
from evolver.run.display import LoopDisplay
from evolver.run.loop import EvolutionLoop
from evolver.settings import Settings


def test_resume_spends_a_confirmation_that_was_cut_short(user_repo: Path) -> None:
    settings = Settings(provider="offline", task="sudoku4", backend="local", literature="off")
    first = EvolutionLoop(user_repo, settings, display=LoopDisplay(live=False))
    control = RunErrorControl()
    level = control.begin("p-cut")  # what the judge persists before the first confirmation pair
    (first.ctx.run_dir / "error_control.json").write_text(json.dumps(control.to_dict()))
    first.ctx.record.close()

    resumed = EvolutionLoop(user_repo, settings, run_id=first.ctx.run_id, display=LoopDisplay(live=False))
    assert resumed.ctx.control.attempts == 1 and resumed.ctx.control.passes == 0
    assert resumed.ctx.control.open_attempt is None
    assert resumed.ctx.control.history == [{"attempt": 1, "level": level, "passed": False, "proposal_id": "p-cut",
                                        "note": "interrupted before it ended"}]
    stored = json.loads((resumed.ctx.run_dir / "error_control.json").read_text())
    assert stored["attempts"] == 1 and stored["open_attempt"] is None  # settled on disk, not only in memory
    assert resumed.ctx.control.next_level() < level
