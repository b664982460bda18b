"""Literature search against a local Atom server (fixtures written for these tests), and the snapshot."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from evolver.propose.literature import (
    LiteratureResult,
    Paper,
    SeenPapers,
    literature_context,
    load_snapshot,
    make_client,
    score_text,
    search_literature,
    select_papers,
    strip_version,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"


@contextmanager
def atom_server(bodies: list[bytes]) -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"requests": [], "times": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

        def do_GET(self) -> None:  # noqa: N802
            state["requests"].append(self.path)
            state["times"].append(time.monotonic())
            index = min(len(state["requests"]) - 1, len(bodies) - 1)
            data = bodies[index]
            self.send_response(200)
            self.send_header("Content-Type", "application/atom+xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/api/query?{{}}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_search_parses_dedups_and_respects_rate_limit(tmp_path: Path) -> None:
    bodies = [(FIXTURES / "arxiv_hrm.xml").read_bytes(), (FIXTURES / "arxiv_act.xml").read_bytes()]
    with atom_server(bodies) as server:
        client = make_client(delay_seconds=0.4, num_retries=0, query_url=server["url"])
        result = search_literature(['all:"hierarchical reasoning model"', 'all:"adaptive computation time"'], client=client, max_results=5)
    assert result.source == "arxiv", result.reason
    ids = [p.arxiv_id for p in result.papers]
    assert sorted(ids) == ["1603.08983", "2506.21734", "2599.00001"]  # HRM came twice (v3, v2): kept once
    hrm = next(p for p in result.papers if p.arxiv_id == "2506.21734")
    assert hrm.title == "Hierarchical Reasoning Model"  # whitespace in the Atom title normalised
    assert hrm.date == "2025-06-26" and hrm.authors == ["Guan Wang", "Jin Li"]
    assert "Second sentence" not in hrm.summary  # one line only
    assert {"halting", "gradient_approximation", "recursion_depth"} <= set(hrm.concepts)
    averaging = next(p for p in result.papers if p.arxiv_id == "2599.00001")
    assert "ema" in averaging.concepts
    # the query the real client sent
    first = parse_qs(urlparse(server["requests"][0]).query)
    assert first["search_query"] == ['all:"hierarchical reasoning model"']
    assert first["sortBy"] == ["relevance"]
    assert parse_qs(urlparse(server["requests"][1]).query)["search_query"] == ['all:"adaptive computation time"']
    gap = server["times"][1] - server["times"][0]
    assert gap >= 0.38, f"requests {gap:.3f}s apart, the client must wait delay_seconds"


def test_env_var_sets_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HRM_ARXIV_URL", "http://127.0.0.1:1/api/query")
    assert make_client().query_url_format == "http://127.0.0.1:1/api/query?{}"


def test_unreachable_falls_back_to_snapshot_with_reason() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(delay_seconds=0.0, num_retries=0, query_url=f"http://127.0.0.1:{port}/api/query?{{}}")
    result = search_literature(["all:hrm"], client=client)
    assert result.source == "snapshot"
    assert f"127.0.0.1:{port}" in result.reason and "unreachable" in result.reason
    assert {"2506.21734", "2510.04871", "1603.08983"} <= {p.arxiv_id for p in result.papers}
    assert all(p.source == "snapshot" for p in result.papers)


def test_malformed_feed_falls_back() -> None:
    with atom_server([b"<html>service unavailable</html>"]) as server:
        client = make_client(delay_seconds=0.0, num_retries=0, query_url=server["url"])
        result = search_literature(["all:hrm"], client=client)
    assert result.source == "snapshot" and result.reason


def test_snapshot_is_well_formed() -> None:
    papers = load_snapshot()
    assert 15 <= len(papers) <= 25
    ids = [p.arxiv_id for p in papers]
    assert len(set(ids)) == len(ids)
    for paper in papers:
        assert strip_version(paper.arxiv_id) == paper.arxiv_id and paper.title and paper.authors
        assert len(paper.summary) < 300 and paper.date[:2] in ("19", "20")
    by_id = {p.arxiv_id: p for p in papers}
    assert "halting" in by_id["1603.08983"].concepts
    assert "ema" in by_id["2510.04871"].concepts


def test_scoring_prefers_relevant_text() -> None:
    relevant, concepts = score_text("Adaptive halting for recurrent reasoning", "We ponder with an EMA of weights.")
    irrelevant, none = score_text("A survey of image captioning", "We caption images.")
    assert relevant > irrelevant == 0 and none == []
    assert {"halting", "recursion_depth", "ema"} <= set(concepts)


def test_seen_papers_persist_and_fresh_come_first(tmp_path: Path) -> None:
    snapshot = LiteratureResult(load_snapshot(), "snapshot", "test")
    first = literature_context(5, state_dir=tmp_path, result=snapshot)
    second = literature_context(5, state_dir=tmp_path, result=snapshot)  # a later run reads the seen-file
    assert len(first) == len(second) == 5
    assert not {p.arxiv_id for p in first} & {p.arxiv_id for p in second}
    assert set(SeenPapers(tmp_path).ids) == {p.arxiv_id for p in first + second}
    # once everything was seen the best ones come back rather than nothing
    everything = literature_context(100, state_dir=tmp_path, result=snapshot)
    assert len(everything) == len(snapshot.papers)


def test_select_dedups_within_a_run() -> None:
    a = Paper("1234.5678", "A", ["x"], "2020-01-01", "s", score=2.0)
    b = Paper("1234.5678", "A again", ["x"], "2020-01-01", "s", score=2.0)
    c = Paper("2345.6789", "C", ["y"], "2020-01-01", "s", score=1.0)
    assert [p.title for p in select_papers([a, b, c], 5)] == ["A", "C"]
