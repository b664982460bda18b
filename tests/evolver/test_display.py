import io

from rich.console import Console

from evolver.display import LoopDisplay


def test_plain_mode_prints_events_and_final_table():
    buf = io.StringIO()
    console = Console(file=buf, width=140, force_terminal=False, color_system=None)
    with LoopDisplay(console) as d:
        d.set_header(run="r1", task="sudoku4")
        d.stage("baseline", "seed 0", expected_seconds=10)
        d.upsert({"id": "p1", "cycle": 1, "title": "EMA", "verdict": "running"})
        d.upsert({"id": "p1", "verdict": "rejected", "score": 0.5, "delta": -0.01, "reason": "below margin"})
    out = buf.getvalue()
    assert "> baseline: seed 0" in out
    assert "rejected  p1  score 0.500  delta -0.010  below margin" in out
    assert "EMA" in out  # final table


def test_live_mode_renders():
    buf = io.StringIO()
    console = Console(file=buf, width=140, force_terminal=True)
    with LoopDisplay(console, live=True) as d:
        d.stage("train", "seed 1", expected_seconds=5)
        d.upsert({"id": "p2", "cycle": 2, "verdict": "merged", "score": 0.8, "delta": 0.05})
        console.print(d._render())
    assert "p2" in buf.getvalue()
