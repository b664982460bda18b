"""The live terminal display of an evolution run: current stage with progress, and a table of candidates.

On a terminal it is a rich Live panel; elsewhere (logs, CI) it prints one line per event instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

VERDICT_STYLE = {
    "merged": "bold green",
    "approved": "green",
    "pending-review": "yellow",
    "rejected": "red",
    "inconclusive": "yellow",
    "failed": "red",
    "invalid": "magenta",
    "running": "cyan",
}


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

    # -- events ----------------------------------------------------------------------------------------------
    def set_header(self, **values: Any) -> None:
        self.header.update(values)

    def stage(self, name: str, detail: str = "", expected_seconds: float | None = None) -> None:
        self._stage = _Stage(name=name, detail=detail, expected_seconds=expected_seconds)
        if self._live is None:
            self.console.print(f"[cyan]>[/] {name}" + (f": {detail}" if detail else ""))

    def log(self, message: str) -> None:
        self.console.print(message)

    def upsert(self, row: dict[str, Any]) -> None:
        """Add or update a candidate row keyed by proposal id."""
        for existing in self.rows:
            if existing.get("id") == row.get("id"):
                existing.update(row)
                break
        else:
            self.rows.append(dict(row))
        if self._live is None and row.get("verdict") not in (None, "running"):
            self.console.print(self._row_line(row))

    # -- rendering -------------------------------------------------------------------------------------------
    @staticmethod
    def _row_line(row: dict[str, Any]) -> str:
        style = VERDICT_STYLE.get(str(row.get("verdict")), "white")
        score = row.get("score")
        delta = row.get("delta")
        parts = [f"[{style}]{row.get('verdict')}[/]", str(row.get("id"))]
        if score is not None:
            parts.append(f"score {score:.3f}")
        if delta is not None:
            parts.append(f"delta {delta:+.3f}")
        if row.get("reason"):
            parts.append(str(row["reason"])[:160])
        return "  ".join(parts)

    def _table(self) -> Table:
        table = Table(title="candidates", expand=True)
        for col in ("cycle", "id", "title", "stage", "verdict", "score", "delta", "reason"):
            table.add_column(col, overflow="fold")
        for r in self.rows:
            style = VERDICT_STYLE.get(str(r.get("verdict")), "white")
            table.add_row(
                str(r.get("cycle", "")),
                str(r.get("id", "")),
                str(r.get("title", ""))[:48],
                str(r.get("stage", "")),
                Text(str(r.get("verdict", "")), style=style),
                "" if r.get("score") is None else f"{r['score']:.3f}",
                "" if r.get("delta") is None else f"{r['delta']:+.3f}",
                str(r.get("reason", "") or "")[:80],
            )
        return table

    def _render(self) -> Panel:
        st = self._stage
        elapsed = time.monotonic() - st.started
        head = "  ".join(f"[bold]{k}[/] {v}" for k, v in self.header.items())
        line = Text.from_markup(f"[cyan]{st.name}[/] {st.detail}  [dim]{elapsed:5.0f}s[/]")
        parts: list[Any] = [Text.from_markup(head), line]
        if st.expected_seconds:
            parts.append(ProgressBar(total=st.expected_seconds, completed=min(elapsed, st.expected_seconds)))
        parts.append(self._table())
        return Panel(Group(*parts), title=self.title)
