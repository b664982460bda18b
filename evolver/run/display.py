"""The live terminal display of an evolution run: current stage with progress, and a table of candidates.

On a terminal it is a rich Live panel; elsewhere (logs, CI) it prints one line per event instead. Reasons are
never cut: they wrap at the console's width, and a multi-line reason (every problem of a refused proposal) is
printed whole. `llm_progress` is the provider's progress callback: tokens streamed, seconds, retries, refusals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from evolver.verdicts import STYLE
from evolver.verdicts import style as verdict_style

VERDICT_STYLE = STYLE
LIVE_REASON_CHARS = 240  # the live table shows this much of a reason; the full text is printed above it
PLAIN_PROGRESS_EVERY_S = 15.0
COMPACT_BELOW = 90  # console columns under which the table drops cycle, stage and delta  # without a live view, a streaming reply is reported this often


class LLMProgressLike(Protocol):
    """What `llm_progress` reads (evolver.propose.providers.records.LLMProgress has it)."""

    tokens: int
    elapsed_s: float
    attempt: int
    max_attempts: int
    status: str
    detail: str
    problems: list[str]


@dataclass
class _Stage:
    name: str = "starting"
    detail: str = ""
    started: float = field(default_factory=time.monotonic)
    expected_seconds: float | None = None


class LoopDisplay:
    """Thread-safe enough for one writer (the loop) and rich's refresh thread (a reader)."""

    def __init__(self, console: Console | None = None, *, title: str = "hrm-evolve", live: bool | None = None):
        self.console = console or Console()
        self.title = title
        self.header: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self._stage = _Stage()
        self._live_enabled = self.console.is_terminal if live is None else live
        self._live: Live | None = None
        self.llm: LLMProgressLike | None = None  # the latest provider progress report, while a proposal is asked for
        self._llm_printed_at = -PLAIN_PROGRESS_EVERY_S
        self.notices: list[str] = []  # run-level findings kept on screen (a saturated best: evolver/run/ceiling.py)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> LoopDisplay:
        if self._live_enabled:
            self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
        self.console.print(self._table())
        for message in self.notices:  # under the final table too: why the run moved or stopped
            self.console.print(message)

    # -- events ----------------------------------------------------------------------------------------------
    def set_header(self, **values: Any) -> None:
        self.header.update(values)

    def stage(self, name: str, detail: str = "", expected_seconds: float | None = None) -> None:
        self._stage = _Stage(name=name, detail=detail, expected_seconds=expected_seconds)
        self.llm = None
        if self._live is None:
            self.console.print(f"[cyan]>[/] {escape(name)}" + (f": {escape(detail)}" if detail else ""))

    def llm_progress(self, progress: LLMProgressLike) -> None:
        """The provider's progress callback (evolver.propose.providers.LLMProgress): shown live, or as plain lines."""
        if self.llm is None or progress.elapsed_s < self._llm_printed_at:  # a new propose call
            self._llm_printed_at = -PLAIN_PROGRESS_EVERY_S
        self.llm = progress
        status = progress.status
        if status == "refused":
            self.console.print(self._refusal(progress))
            return
        if self._live is not None:
            return
        if status == "streaming":
            if progress.elapsed_s - self._llm_printed_at >= PLAIN_PROGRESS_EVERY_S:
                self._llm_printed_at = progress.elapsed_s
                self.console.print(Text(f"  llm: {self._llm_line(progress)}", style="dim"))
        elif status in ("retrying", "failed"):
            self.console.print(Text(f"  llm: {self._llm_line(progress)}", style="yellow"))
        elif status == "waiting" and progress.attempt > 1:
            self.console.print(Text(f"  llm: {self._llm_line(progress)}", style="dim"))

    def log(self, message: str) -> None:
        self.console.print(message)

    def notice(self, message: str) -> None:
        """A run-level finding (rich markup): printed now, kept in the live panel, and printed again under the
        final table."""
        self.notices.append(message)
        self.console.print(message)

    def upsert(self, row: dict[str, Any]) -> None:
        """Add or update a candidate row keyed by proposal id."""
        for existing in self.rows:
            if existing.get("id") == row.get("id"):
                existing.update(row)
                break
        else:
            self.rows.append(dict(row))
        if row.get("verdict") not in (None, "running"):
            # Live or not, a final verdict and its whole reason are printed (above the live panel, if any).
            self.console.print(self._row_line(row))

    # -- rendering -------------------------------------------------------------------------------------------
    @staticmethod
    def _llm_line(p: LLMProgressLike) -> str:
        parts = [f"attempt {p.attempt}/{p.max_attempts}", p.status]
        if p.tokens:
            parts.append(f"{p.tokens} tokens")
        parts.append(f"{p.elapsed_s:.0f}s")
        if p.detail:
            parts.append(p.detail)
        return " · ".join(parts)

    @staticmethod
    def _refusal(p: LLMProgressLike) -> Text:
        text = Text(f"  llm: reply {p.attempt}/{p.max_attempts} refused ({p.elapsed_s:.0f}s)", style="magenta")
        for problem in p.problems:
            text.append(f"\n    - {problem}")
        return text

    @staticmethod
    def _row_line(row: dict[str, Any]) -> Text:
        """verdict, id, score, delta and the whole reason; rich wraps it at the console width."""
        style = verdict_style(str(row.get("verdict")))
        score = row.get("score")
        delta = row.get("delta")
        text = Text(str(row.get("verdict")), style=style)
        text.append(f"  {row.get('id')}")
        if score is not None:
            text.append(f"  score {score:.3f}")
        if delta is not None:
            text.append(f"  delta {delta:+.3f}")
        if row.get("reason"):
            text.append(f"  {row['reason']}")
        return text

    def _table(self, reason_chars: int | None = None) -> Table:
        """The candidates; text wraps in its column (`reason_chars` caps reasons, for the live view only).

        On a console narrower than COMPACT_BELOW columns, cycle, stage and delta are left out so that the
        title and the reason keep a readable width.
        """
        compact = self.console.width < COMPACT_BELOW
        table = Table(title="candidates", expand=True)
        columns = ["id", "title", "verdict", "score", "reason"] if compact else \
            ["cycle", "id", "title", "stage", "verdict", "score", "delta", "reason"]
        widths = {"id": (8, 1), "title": (10, 2), "reason": (16, 4)}
        for col in columns:
            if col in widths:
                table.add_column(col, overflow="fold", min_width=widths[col][0], ratio=widths[col][1])
            else:
                table.add_column(col, no_wrap=True)
        for r in self.rows:
            style = verdict_style(str(r.get("verdict")))
            reason = str(r.get("reason", "") or "")
            if reason_chars is not None and len(reason) > reason_chars:
                reason = reason[:reason_chars] + "… (full text above)"
            cells: dict[str, Any] = {
                "cycle": Text(str(r.get("cycle", ""))),
                "id": Text(str(r.get("id", ""))),
                "title": Text(str(r.get("title", ""))),
                "stage": Text(str(r.get("stage", ""))),
                "verdict": Text(str(r.get("verdict", "")), style=style),
                "score": "" if r.get("score") is None else f"{r['score']:.3f}",
                "delta": "" if r.get("delta") is None else f"{r['delta']:+.3f}",
                "reason": Text(reason),
            }
            table.add_row(*(cells[c] for c in columns))
        return table

    def _render(self) -> Panel:
        st = self._stage
        elapsed = time.monotonic() - st.started
        head = Text()
        for i, (k, v) in enumerate(self.header.items()):
            head.append(("  " if i else "") + str(k), style="bold")
            head.append(f" {v}")
        line = Text(st.name, style="cyan")
        line.append(f" {st.detail}  ")
        line.append(f"{elapsed:5.0f}s", style="dim")
        parts: list[Any] = [head, line]
        if self.llm is not None:
            parts.append(Text(f"llm: {self._llm_line(self.llm)}", style="cyan"))
        if st.expected_seconds:
            parts.append(ProgressBar(total=st.expected_seconds, completed=min(elapsed, st.expected_seconds)))
        parts += [Text.from_markup(n) for n in self.notices]
        parts.append(self._table(reason_chars=LIVE_REASON_CHARS))
        return Panel(Group(*parts), title=self.title)
