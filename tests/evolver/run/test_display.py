import io

from rich.console import Console

from evolver.run.display import LoopDisplay


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


def _plain(width: int = 60) -> tuple[io.StringIO, Console]:
    buf = io.StringIO()
    return buf, Console(file=buf, width=width, force_terminal=False, color_system=None)


def test_long_and_multi_line_reasons_wrap_instead_of_being_cut():
    buf, console = _plain(60)
    reason = ("invalid proposal: 3 problems\n  - edits[0]: unknown op 'rewrite' " + "detail " * 40 + "END-OF-FIRST\n"
              "  - edits[1] (set_value) in hrm/config.py: target 'X.y' not found\n"
              "  - edits[2]: file [hrm/nope.py] is outside the allowed paths END-OF-ALL")
    with LoopDisplay(console) as d:
        d.upsert({"id": "cycle-1", "cycle": 1, "title": "A title " * 12 + "TITLE-END", "verdict": "invalid",
                  "reason": reason})
    out = buf.getvalue()
    flat = " ".join(out.split())
    for marker in ("END-OF-FIRST", "edits[1] (set_value)", "[hrm/nope.py]", "END-OF-ALL", "TITLE-END"):
        assert marker in flat, marker  # every problem is shown, markup-like text kept literally
    assert max(len(line) for line in out.splitlines()) <= 60


def test_llm_progress_in_plain_mode_reports_refusals_retries_and_slow_streams():
    from evolver.propose.providers import LLMProgress

    buf, console = _plain(100)
    with LoopDisplay(console) as d:
        d.stage("propose", "asking lmstudio")
        d.llm_progress(LLMProgress(tokens=0, elapsed_s=0.0, attempt=1, max_attempts=3, status="waiting"))
        for second in range(40):
            d.llm_progress(LLMProgress(tokens=second * 5, elapsed_s=float(second), attempt=1, max_attempts=3))
        d.llm_progress(LLMProgress(tokens=195, elapsed_s=40.0, attempt=1, max_attempts=3, status="refused",
                                   problems=["id: String should match pattern", "edits: required field is missing"]))
        d.llm_progress(LLMProgress(tokens=0, elapsed_s=41.0, attempt=2, max_attempts=3, status="retrying",
                                   detail="timeout (no data from the server for 120s); retry 1/3"))
    out = buf.getvalue()
    streaming = [line for line in out.splitlines() if "streaming" in line]
    assert len(streaming) == 3  # at 0 s, 15 s and 30 s: progress without flooding the log
    assert "attempt 1/3 · streaming · 75 tokens · 15s" in out
    assert "reply 1/3 refused" in out and "- id: String should match pattern" in out
    assert "- edits: required field is missing" in out
    assert "retry 1/3" in out


def test_live_view_shows_llm_progress():
    from evolver.propose.providers import LLMProgress

    buf = io.StringIO()
    console = Console(file=buf, width=140, force_terminal=True)
    with LoopDisplay(console, live=True) as d:
        d.stage("propose", "asking llama.cpp")
        d.llm_progress(LLMProgress(tokens=42, elapsed_s=7.0, attempt=2, max_attempts=3))
        console.print(d._render())
    assert "attempt 2/3 · streaming · 42 tokens · 7s" in buf.getvalue()
