"""benchmarks/bench_proposals.py against the scripted server (exact counts, both protocols, both formats; the
gates and the no-effect check in the local sandbox) and the real llama.cpp server with SmolLM2-135M (whatever
the tiny model writes is refused, repaired or ended: never a crash)."""

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
# a default the sudoku4 preset sets itself (lr=3e-3): applies, passes the gates, changes nothing
DEFAULT_LR = {"op": "search_replace", "file": "hrm/config.py", "search": "    lr: float = 1e-4\n",
              "replace": "    lr: float = 5e-4\n"}
LOOK = json.dumps({"idea": "a shorter warmup", "symbols": ["_cpu_train"]})


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
    """Per format and protocol: request 0 is stale and repaired in one turn, request 1 applies at once, request
    2 is nonsense twice (refused). Under look-then-edit each request starts with a look reply. The counts, the
    tokens, the requests and the api line are exact; the gates are not measured without --gates."""
    script: list[Step] = []
    for fmt in ("json", "fenced"):
        for protocol in ("direct", "look-then-edit"):
            look = [Step(content=LOOK)] if protocol == "look-then-edit" else []
            script += look + [Step(content=text(STALE, fmt)), Step(content=text(FRESH, fmt))]
            script += look + [Step(content=text(FRESH, fmt))]
            script += look + [Step(content="nonsense"), Step(content="more nonsense")]
    module = bench()
    with scripted_server(script, flavour="llama.cpp", n_ctx=16384) as server:
        args = module.parse_args(["--provider", "lmstudio", "--host", f"{server.url}/v1", "--n", "3",
                                  "--max-attempts", "2", "--literature", "off"])
        results = module.run(args)
        bodies = [r.body for r in server.received]
    assert len(bodies) == len(script)
    assert [(r["format"], r["protocol"]) for r in results] == [
        ("json", "direct"), ("json", "look-then-edit"), ("fenced", "direct"), ("fenced", "look-then-edit")]
    for r in results:
        assert (r["valid"], r["valid_first_try"], r["applied"], r["repaired"], r["still failing"],
                r["refused"], r["error"]) == (2, 2, 1, 1, 0, 1, 0), r
        looks = 3 if r["protocol"] == "look-then-edit" else 0
        assert r["repair_turns"] == 1 and r["requests"] == 5 + looks, r
        assert r["tokens_in"] > 0 and r["tokens_out"] > 0
        assert r["no_effect"] == r["passed_gates"] == "not measured (pass --gates)" and not r["gates_measured"]
        assert [row["outcome"] for row in r["rows"]] == ["repaired", "applied", "refused"]
        for row in r["rows"][:2]:
            assert row["asked_protocol"] == r["protocol"]
            assert ("look" in row) == (r["protocol"] == "look-then-edit")
            if "look" in row:
                assert row["look"]["found"] == ["hrm/presets.py:_cpu_train"]
    assert results[0]["api"] == results[1]["api"] == "llama.cpp (json_schema response format)"
    assert results[2]["api"] == results[3]["api"] == "llama.cpp (free text, no response format)"
    # the edit requests: the task facts the loop sends; under look-then-edit, the looked-at source and the idea
    edit_request = " ".join(m["content"] for m in bodies[6]["messages"])  # json, look-then-edit, request 0's edit
    assert "Task in force" in edit_request and "def _cpu_train(" in edit_request and "a shorter warmup" in edit_request
    assert all("response_format" in b for b in bodies[:5])
    fenced_direct = bodies[len(script) // 2:len(script) // 2 + 5]
    assert not any("response_format" in b for b in fenced_direct)
    shown = module.render(results)
    assert "repaired        1/3 (1 repair turn(s) in all)" in shown and "not measured (pass --gates)" in shown
    assert "== fenced | look-then-edit | api llama.cpp" in shown


@pytest.mark.usefixtures("require_local_sandbox")
@pytest.mark.timeout(600)
def test_gates_count_an_edit_the_preset_overrides_as_no_effect(tmp_path: Path) -> None:
    """--gates: a proposal changing TrainConfig.lr's default (sudoku4 sets lr itself) applies, passes safety
    and smoke in the local sandbox, and its fingerprint equals the unmodified hrm/'s: counted no-effect. A
    proposal changing the sudoku4 preset's warmup passes too and is not (its learning rates differ); a reply
    that never validates runs no gate."""
    module = bench()
    script = [Step(content=text(DEFAULT_LR, "fenced")), Step(content=text(FRESH, "fenced")), Step(content="nonsense")]
    with scripted_server(script, flavour="llama.cpp", n_ctx=16384) as server:
        args = module.parse_args(["--provider", "lmstudio", "--host", f"{server.url}/v1", "--n", "3",
                                  "--formats", "fenced", "--protocols", "direct", "--literature", "off",
                                  "--max-attempts", "1", "--gates"])
        results = module.run(args)
    (r,) = results
    assert (r["applied"], r["refused"], r["gates_measured"], r["gates_run"]) == (2, 1, True, 2), r
    no_effect, warmup = r["rows"][0]["gates"], r["rows"][1]["gates"]
    assert "gates" not in r["rows"][2]
    assert r["passed_gates"] == 2 and r["no_effect"] == 1, (no_effect, warmup)
    assert no_effect["no_effect"] and no_effect["differed"] == [] and no_effect["unusable"] is None
    assert warmup["passed"] and not warmup["no_effect"] and "lrs" in warmup["differed"], warmup
    shown = module.render(results)
    assert "passed gates    2/2 that apply" in shown and "no-effect       1/2 that apply" in shown
    print(shown)


@pytest.mark.timeout(900)
def test_the_script_against_llamacpp_never_crashes(llama_server: LlamaServer, tmp_path: Path) -> None:
    """Both formats, the direct protocol, one request each, near the smallest prompt the loop's request fits
    (a 2600-token context: the fenced format's fixed part, task facts included, is 1890 tokens with SmolLM2's
    tokenizer) to keep the tiny model's CPU time down: each request ends refused, applied, repaired or still
    failing."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(BENCH), "--provider", "lmstudio", "--host", f"{llama_server.url}/v1", "--n", "1",
           "--context-tokens", "2600", "--max-reply-tokens", "128", "--max-attempts", "1", "--repair-turns", "1",
           "--literature", "off", "--protocols", "direct",
           "--json-out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [(r["format"], r["protocol"]) for r in results] == [("json", "direct"), ("fenced", "direct")]
    for r in results:
        assert r["error"] == 0, r["rows"]  # no config or HTTP failure: the request fitted the 4096 context
        assert r["applied"] + r["repaired"] + r["still failing"] + r["refused"] == 1
        assert r["model"] == conftest_llamacpp.ALIAS and r["tokens_out"] > 0
        for row in r["rows"]:
            assert row["outcome"] != "refused" or row["problems"]  # a refusal says why
    assert "valid replies" in proc.stdout and "not measured (pass --gates)" in proc.stdout
