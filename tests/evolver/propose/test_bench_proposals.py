"""benchmarks/bench_proposals.py against the scripted server (exact counts) and the real llama.cpp server with
SmolLM2-135M (whatever the tiny model writes is refused, repaired or ended: never a crash)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from evolver.propose.providers.reply_formats import render_fenced
from proposals.schema import load_proposal
from tests.evolver import conftest_llamacpp
from tests.evolver.conftest_llamacpp import LlamaServer
from tests.evolver.fake_llm_server import Step, scripted_server, valid_proposal

llama_server = conftest_llamacpp.llama_server  # the session-scoped server fixture

REPO = Path(__file__).resolve().parents[3]
BENCH = REPO / "benchmarks" / "bench_proposals.py"
STALE = {"op": "search_replace", "file": "hrm/presets.py", "search": "        lr_warmup_steps=10,",
         "replace": "        lr_warmup_steps=50,"}
FRESH = {**STALE, "search": "        lr_warmup_steps=100,"}


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_proposals", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def text(edit: dict[str, object], fmt: str) -> str:
    proposal = load_proposal(valid_proposal("warmup", edits=[edit], citations=[]))
    return render_fenced(proposal) if fmt == "fenced" else proposal.model_dump_json()


def test_exact_counts_against_the_scripted_server() -> None:
    """Per format: request 0 is stale and repaired in one turn, request 1 applies at once, request 2 is nonsense
    twice (refused). The counts, the tokens and the protocol line are exact."""
    script: list[Step] = []
    for fmt in ("json", "fenced"):
        script += [Step(content=text(STALE, fmt)), Step(content=text(FRESH, fmt)), Step(content=text(FRESH, fmt)),
                   Step(content="nonsense"), Step(content="more nonsense")]
    module = bench()
    with scripted_server(script, flavour="llama.cpp", n_ctx=16384) as server:
        args = module.parse_args(["--provider", "lmstudio", "--host", f"{server.url}/v1", "--n", "3",
                                  "--max-attempts", "2", "--literature", "off"])
        results = module.run(args)
        bodies = [r.body for r in server.received]
    assert [r["format"] for r in results] == ["json", "fenced"]
    for r in results:
        assert (r["valid"], r["valid_first_try"], r["applied"], r["repaired"], r["still failing"],
                r["refused"], r["error"]) == (2, 2, 1, 1, 0, 1, 0), r
        assert r["repair_turns"] == 1 and r["requests"] == 5 and r["tokens_in"] > 0 and r["tokens_out"] > 0
        assert r["no_effect"].startswith("not measured") and r["gates"].startswith("not measured")
        assert [row["outcome"] for row in r["rows"]] == ["repaired", "applied", "refused"]
    assert results[0]["protocol"] == "llama.cpp (json_schema response format)"
    assert results[1]["protocol"] == "llama.cpp (free text, no response format)"
    assert all("response_format" in b for b in bodies[:5]) and not any("response_format" in b for b in bodies[5:])
    shown = module.render(results)
    assert "repaired        1/3 (1 repair turn(s) in all)" in shown and "not measured" in shown


@pytest.mark.timeout(900)
def test_the_script_against_llamacpp_never_crashes(llama_server: LlamaServer, tmp_path: Path) -> None:
    """Both formats, one request each, at the smallest prompt the loop accepts (a 1800-token context) to keep
    the tiny model's CPU time down: each request ends refused, applied, repaired or still failing."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(BENCH), "--provider", "lmstudio", "--host", f"{llama_server.url}/v1", "--n", "1",
           "--context-tokens", "1800", "--max-reply-tokens", "128", "--max-attempts", "1", "--repair-turns", "1",
           "--literature", "off",
           "--json-out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["format"] for r in results] == ["json", "fenced"]
    for r in results:
        assert r["error"] == 0, r["rows"]  # no config or HTTP failure: the request fitted the 4096 context
        assert r["applied"] + r["repaired"] + r["still failing"] + r["refused"] == 1
        assert r["model"] == conftest_llamacpp.ALIAS and r["tokens_out"] > 0
        for row in r["rows"]:
            assert row["outcome"] != "refused" or row["problems"]  # a refusal says why
    assert "valid replies" in proc.stdout and "not measured" in proc.stdout
