"""Every catalogue entry is a valid proposal that applies to the current hrm/, changes what it claims and trains.

Each entry is applied to its own copy of hrm/; the copies are then imported one after the other in a fresh
interpreter (the PROBE and TRAIN scripts below), which reports what each copy builds and does.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evolver.propose.catalogue import CATALOGUE, by_id
from evolver.propose.literature import load_snapshot
from proposals.schema import load_proposal

REPO = Path(__file__).resolve().parents[3]
TRAIN_STEPS = 4
TRAIN_TASKS = ("sudoku4", "sudoku6")

try:  # the patch engine is another part of the project; say so plainly if it is missing
    from edits.engine import apply_edits
except ImportError as exc:  # pragma: no cover - only while edits/engine.py is not there
    apply_edits = None
    PATCH_MISSING = f"edits.engine.apply_edits is not available yet: {exc}"
else:
    PATCH_MISSING = ""

# Shared by both scripts: import hrm from one root at a time (the copies all call their package "hrm").
SWAP = textwrap.dedent(
    """
    import contextlib, json, math, sys, traceback
    import torch
    torch.set_num_threads(1)

    @contextlib.contextmanager
    def hrm_from(root):
        for mod in [m for m in sys.modules if m == "hrm" or m.startswith("hrm.")]:
            del sys.modules[mod]
        sys.path.insert(0, root)
        try:
            import hrm
            assert hrm.__file__.startswith(root), (hrm.__file__, root)
            yield
        finally:
            sys.path.remove(root)
    """
)

# For each root: build the sudoku4 preset model, run one training segment with a fixed seed and report what
# could have changed; then the specific measurements the entries' claims are checked against.
PROBE = SWAP + textwrap.dedent(
    """
    def grad_reach(inner, batch):
        # Which reasoning-module calls of one segment receive a non-zero gradient, in call order.
        records, labels = [], {}
        for label, module in (("L", inner.L_level), ("H", inner.H_level)):
            labels.setdefault(id(module), [module, []])[1].append(label)

        def make(label):
            def hook(module, args, output):
                if output.requires_grad:
                    output.retain_grad()
                records.append((label, output))
            return hook

        handles = [m.register_forward_hook(make("=".join(names))) for m, names in labels.values()]
        try:
            b = batch["inputs"].shape[0]
            carry = inner.reset_carry(torch.ones(b, dtype=torch.bool), inner.empty_carry(b))
            _, logits, (q_halt, q_continue) = inner(carry, batch)
            (logits.float().square().mean() + q_halt.sum() + q_continue.sum()).backward()
        finally:
            for h in handles:
                h.remove()
        return [[label, out.grad is not None and bool(out.grad.abs().sum() > 0)] for label, out in records]

    def mixer(task, data_root):
        # The blocks of a CPU preset built at the dataset's seq_len: token mixing, and a real forward/backward.
        from hrm.data.dataset import PuzzleDataset
        from hrm.layers import Attention
        from hrm.losses import ACTLossHead
        from hrm.model import HRM
        from hrm.presets import get_preset
        from hrm.train import BatchStream, to_device, with_dataset_shape

        dataset = PuzzleDataset(data_root, "train")
        run = with_dataset_shape(get_preset(task), dataset.meta)
        torch.manual_seed(0)
        head = ACTLossHead(HRM(run.model))
        head.train()
        inner = head.model.inner
        total = run.model.seq_len + inner.puzzle_emb_len
        blocks = list(inner.H_level.layers) + list(inner.L_level.layers)
        res = {"seq_len": run.model.seq_len, "total_len": total}
        res["attention_modules"] = sum(isinstance(m, Attention) for b in blocks for m in b.modules())
        res["attn_params"] = sorted({n for b in blocks for n, _ in b.named_parameters() if "attn" in n})
        # a token-mixing MLP reads and writes the sequence axis: weights [inner, total] and [total, inner]
        res["token_mlp_blocks"] = sum(
            any(p.ndim == 2 and p.shape[1] == total for p in b.parameters())
            and any(p.ndim == 2 and p.shape[0] == total for p in b.parameters())
            for b in blocks
        )
        res["blocks"] = len(blocks)

        cos_sin = inner.rotary_emb() if hasattr(inner, "rotary_emb") else None
        gen = torch.Generator().manual_seed(2)
        h = torch.randn(2, total, run.model.hidden_size, generator=gen, requires_grad=True)
        i = total // 2
        inner.L_level.layers[0](cos_sin, h)[:, i].sum().backward()
        dep = h.grad.abs().sum(dim=(0, 2)) > 0
        res["block_cross_token_inputs"] = int(dep.sum()) - int(dep[i])

        batch = to_device(BatchStream(dataset, 4, False, 0).next(), torch.device("cpu"))
        embedded = []

        def keep(module, args, output):
            output.retain_grad()
            embedded.append(output)

        handle = inner.embed_tokens.register_forward_hook(keep)
        try:
            carry = inner.reset_carry(torch.ones(4, dtype=torch.bool), inner.empty_carry(4))
            _, logits, _ = inner(carry, batch)
            j = run.model.seq_len // 2
            logits[:, j].float().sum().backward()
        finally:
            handle.remove()
        tok = embedded[0].grad.abs().sum(dim=(0, 2)) > 0  # [seq_len], the token embeddings
        res["model_cross_token_inputs"] = int(tok.sum()) - int(tok[j])
        res["logits_shape"] = list(logits.shape)

        head.zero_grad(set_to_none=True)
        carry = head.initial_carry(batch)
        carry, loss, metrics, outputs, _ = head(carry, batch)
        loss.backward()
        grads = [p.grad for p in head.parameters() if p.requires_grad]
        res["loss_finite"] = math.isfinite(float(loss))
        res["grads_finite"] = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
        res["params_with_grad"] = sum(g is not None and bool(g.abs().sum() > 0) for g in grads)
        res["params"] = len(grads)
        return res

    args = json.loads(sys.argv[1])
    out = {}
    for name, root in args["roots"].items():
        with hrm_from(root):
            from hrm.losses import ACTLossHead
            from hrm.model import HRM
            from hrm.presets import GPU_PRESETS, PRESETS, get_preset

            run = get_preset("sudoku4")
            torch.manual_seed(0)
            head = ACTLossHead(HRM(run.model))
            head.train()
            gen = torch.Generator().manual_seed(1)
            batch = {
                "inputs": torch.randint(0, run.model.vocab_size, (4, run.model.seq_len), generator=gen),
                "labels": torch.randint(1, run.model.vocab_size, (4, run.model.seq_len), generator=gen),
                "puzzle_identifiers": torch.zeros(4, dtype=torch.long),
            }
            carry = head.initial_carry(batch)
            carry, loss, metrics, outputs, _ = head(carry, batch)
            loss.backward()
            grad = head.model.inner.embed_tokens.embedding_weight.grad
            inner = head.model.inner
            h_params = {id(p): p.numel() for p in inner.H_level.parameters()}
            l_params = {id(p): p.numel() for p in inner.L_level.parameters()}
            torch.manual_seed(0)
            fresh = HRM(run.model).inner
            fresh.train()
            out[name] = {
                "model": run.model.to_dict(),
                "train": run.train.to_dict(),
                "params": sum(p.numel() for p in head.parameters()),
                "loss": round(float(loss), 6),
                "grad_norm": round(float(grad.norm()), 6) if grad is not None else None,
                "outputs": sorted(outputs),
                "levels": {
                    "same_parameters": set(h_params) == set(l_params),
                    "H": sum(h_params.values()),
                    "L": sum(l_params.values()),
                },
                "grad_reach": grad_reach(fresh, batch),
                "gpu_layers": {p: [get_preset(p).model.H_layers, get_preset(p).model.L_layers] for p in GPU_PRESETS},
                "mlp_t": {p: getattr(get_preset(p).model, "mlp_t", None) for p in PRESETS},
                "mixer": {task: mixer(task, root_) for task, root_ in args["datasets"].items()},
            }
    print(json.dumps(out))
    """
)

# For each root and task: a few real optimizer steps through hrm's own command line (`python -m hrm train`,
# called in-process so that torch is imported once for all roots), then the losses it recorded.
TRAIN = SWAP + textwrap.dedent(
    """
    args = json.loads(sys.argv[1])
    out = {}
    for name, root in args["roots"].items():
        with hrm_from(root):
            from hrm.cli import main

            for task, data_root in args["datasets"].items():
                run_dir = f"{args['out']}/{name}/{task}"
                argv = ["train", "--task", task, "--out", run_dir, "--data-dir", data_root,
                        "--max-steps", str(args["steps"]), "--config", json.dumps(args["config"]),
                        "--threads", "1", "--device", "cpu", "--fresh", "--no-progress"]
                try:
                    rc = main(argv)
                except Exception:
                    out[f"{name}/{task}"] = {"rc": None, "error": traceback.format_exc()[-2000:]}
                    continue
                result = {"rc": rc}
                if rc == 0:
                    with open(f"{run_dir}/metrics.json") as fh:
                        summary = json.load(fh)
                    with open(f"{run_dir}/metrics.jsonl") as fh:
                        records = [json.loads(line) for line in fh]
                    result.update(
                        steps=summary["steps"],
                        stop_reason=summary["stop_reason"],
                        model=summary["config"]["model"],
                        losses=[r["loss"] for r in records if r["type"] == "train"],
                    )
                out[f"{name}/{task}"] = result
    print(json.dumps(out))
    """
)


def copy_hrm(dest: Path) -> Path:
    shutil.copytree(REPO / "hrm", dest / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def run_script(script: str, payload: dict, timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(payload)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,  # the copies shadow REPO's hrm on sys.path; `puzzles` still comes from REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """baseline -> an untouched copy of hrm/, and entry id -> a copy with that entry's edits applied."""
    if apply_edits is None:
        pytest.skip(PATCH_MISSING)
    base = tmp_path_factory.mktemp("catalogue")
    out = {"baseline": str(copy_hrm(base / "baseline"))}
    for entry in CATALOGUE:
        root = copy_hrm(base / entry.id)
        proposal = load_proposal(entry.to_json())
        applied = apply_edits(root, proposal.edits)
        assert len(applied) == len(proposal.edits), entry.id
        out[entry.id] = str(root)
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny sudoku4 and sudoku6 datasets, built by the trusted generators with the presets' other settings."""
    from hrm.presets import get_preset
    from puzzles.build import build_dataset

    base = tmp_path_factory.mktemp("data")
    out = {}
    for task in TRAIN_TASKS:
        kwargs = {**get_preset(task).data, "n_train": 32, "n_test": 8}
        build_dataset(task, base / task, seed=0, **kwargs)
        out[task] = str(base / task)
    return out


@pytest.fixture(scope="module")
def probes(roots: dict[str, str], datasets: dict[str, str]) -> dict[str, dict]:
    return run_script(PROBE, {"roots": roots, "datasets": datasets}, timeout=300)


def test_every_entry_is_a_valid_proposal_citing_known_papers() -> None:
    known = {p.arxiv_id for p in load_snapshot()}
    ids = [e.id for e in CATALOGUE]
    assert len(ids) == len(set(ids)) and len(CATALOGUE) >= 12
    for entry in CATALOGUE:
        proposal = load_proposal(entry.to_json())
        assert proposal.id == entry.id and proposal.title == entry.title
        assert proposal.citations, entry.id
        for citation in proposal.citations:
            assert citation.arxiv_id in known, f"{entry.id} cites {citation.arxiv_id}, not in the snapshot"
    assert by_id("trm-ema-weights").edits[0]["target"] == "TrainConfig.ema_decay"
    for entry_id in ("trm-mlp-token-mixer", "trm-two-layers"):
        proposal = load_proposal(by_id(entry_id).to_json())
        assert proposal.citations[0].arxiv_id == "2510.04871", entry_id
    with pytest.raises(KeyError):
        by_id("no-such-entry")


def test_the_offline_provider_hands_out_the_trm_entries() -> None:
    from evolver.propose.prompt import HistoryItem, build_prompt
    from evolver.propose.providers import get_provider
    from proposals.schema import proposal_json_schema

    provider = get_provider("offline", seed=0)
    history: list[HistoryItem] = []
    handed = set()
    for i in range(len(CATALOGUE)):
        proposal = provider.propose(build_prompt("map", [], history, proposal_json_schema(), seed=0)).proposal
        handed.add(proposal.id)
        history.append(HistoryItem(f"p{i}", proposal.title, "rejected", None, proposal.id))
    assert {"trm-mlp-token-mixer", "trm-two-layers"} <= handed


def test_every_entry_applies_and_changes_the_model_or_run(probes: dict[str, dict]) -> None:
    probes = dict(probes)
    base = probes.pop("baseline")
    for entry_id, probe in probes.items():
        assert probe != base, f"{entry_id} applied but changed neither config, parameters, loss nor gradients"
    assert probes["more-l-cycles"]["model"]["L_cycles"] == 3
    assert probes["fewer-l-cycles"]["model"]["L_cycles"] == 1
    assert probes["more-h-cycles"]["model"]["H_cycles"] == 3
    assert probes["trm-ema-weights"]["train"]["ema_decay"] == 0.99
    assert probes["grad-norm-clipping"]["train"]["grad_clip_norm"] == 1.0
    assert probes["stablemax-on-cpu-presets"]["model"]["loss_type"] == "stablemax_cross_entropy"
    assert probes["puzzle-embedding-weight-decay"]["train"]["puzzle_emb_weight_decay"] == 1.0
    assert probes["learned-positions"]["model"]["pos_encodings"] == "learned"
    assert probes["more-halt-steps"]["model"]["halt_max_steps"] == 8
    assert "target_q_continue" in base["outputs"]
    assert "target_q_continue" not in probes["trm-halt-without-continue-loss"]["outputs"]
    full = probes["trm-full-backprop-last-recursion"]
    # same forward, new gradient
    assert full["loss"] == base["loss"] and full["grad_norm"] != base["grad_norm"]


def test_full_backprop_reaches_the_early_l_steps_of_the_last_recursion(probes: dict[str, dict]) -> None:
    base, full = probes["baseline"], probes["trm-full-backprop-last-recursion"]
    cfg = base["model"]
    assert cfg["H_cycles"] == 2 and cfg["L_cycles"] == 2  # the sudoku4 preset the probe runs
    # One segment calls L L H per recursion: L, L, H (no grad) then L, L, H (the last recursion).
    expected_calls = (["L"] * cfg["L_cycles"] + ["H"]) * cfg["H_cycles"]
    assert [label for label, _ in base["grad_reach"]] == expected_calls
    assert [label for label, _ in full["grad_reach"]] == expected_calls
    per_recursion = cfg["L_cycles"] + 1
    last = slice(len(expected_calls) - per_recursion, None)
    base_last = [got for _, got in base["grad_reach"][last]]
    full_last = [got for _, got in full["grad_reach"][last]]
    assert base_last == [False] * (cfg["L_cycles"] - 1) + [True, True]  # the 1-step gradient
    assert full_last == [True] * per_recursion  # every L step of the last recursion, and its H step
    # the earlier recursions stay outside the graph in both
    for probe in (base, full):
        assert not any(got for _, got in probe["grad_reach"][: len(expected_calls) - per_recursion])


def test_shared_network_uses_one_set_of_parameters_for_both_levels(probes: dict[str, dict]) -> None:
    base, shared = probes["baseline"], probes["trm-single-shared-network"]
    assert not base["levels"]["same_parameters"]
    assert shared["levels"]["same_parameters"]
    assert shared["levels"]["H"] == shared["levels"]["L"] == base["levels"]["L"]
    assert base["params"] - shared["params"] == base["levels"]["H"]  # exactly one level's parameters fewer
    # the shared module serves both levels' calls: every call in the segment goes to it
    assert {label for label, _ in shared["grad_reach"]} == {"L=H"}


def test_mlp_token_mixer_replaces_attention_and_mixes_tokens(probes: dict[str, dict]) -> None:
    base, mlp = probes["baseline"], probes["trm-mlp-token-mixer"]
    assert mlp["model"]["mlp_t"] is True and "mlp_t" not in base["model"]
    for task in TRAIN_TASKS:
        b, m = base["mixer"][task], mlp["mixer"][task]
        assert m["seq_len"] == b["seq_len"] == {"sudoku4": 16, "sudoku6": 36}[task]  # the dataset's
        assert m["total_len"] == m["seq_len"] + 1  # plus the puzzle-embedding position
        assert b["attention_modules"] == b["blocks"] and b["attn_params"] and b["token_mlp_blocks"] == 0
        assert m["attention_modules"] == 0 and m["attn_params"] == [], task
        assert m["token_mlp_blocks"] == m["blocks"] == 4, task
        assert m["block_cross_token_inputs"] == m["total_len"] - 1, task  # output i depends on every input j
        assert m["model_cross_token_inputs"] == m["seq_len"] - 1, task
        assert m["logits_shape"][1] == m["seq_len"]
        assert m["loss_finite"] and m["grads_finite"], task
        assert m["params_with_grad"] == m["params"], task  # the mixer's weights are trained too
    # only where L = seq_len + 1 <= hidden (64): sudoku9, maze (L = 82) and the GPU presets keep attention
    assert set(base["mlp_t"].values()) == {None}
    assert mlp["mlp_t"] == {p: p in TRAIN_TASKS for p in base["mlp_t"]}


def test_two_layers_halves_the_gpu_presets_depth(probes: dict[str, dict]) -> None:
    base, two = probes["baseline"], probes["trm-two-layers"]
    assert base["gpu_layers"] and all(layers == [4, 4] for layers in base["gpu_layers"].values())
    assert all(layers == [2, 2] for layers in two["gpu_layers"].values())
    assert two["model"] == base["model"]  # the CPU presets were already 2+2


def test_every_entry_trains(roots: dict[str, str], datasets: dict[str, str], tmp_path: Path) -> None:
    # Tiny: batch 8 on 32 puzzles, TRAIN_STEPS optimizer steps, evaluation on 8 (the CLI always evaluates).
    config = {"train": {"batch_size": 8, "eval_batch_size": 8}}
    payload = {"roots": roots, "datasets": datasets, "out": str(tmp_path), "steps": TRAIN_STEPS}
    payload["config"] = config
    results = run_script(TRAIN, payload, timeout=300)
    assert len(results) == len(roots) * len(TRAIN_TASKS)
    for key, result in results.items():
        assert result["rc"] == 0, f"{key}: {result.get('error', result)}"
        assert result["stop_reason"] == "max_steps" and result["steps"] == TRAIN_STEPS, key
        assert len(result["losses"]) == TRAIN_STEPS and all(math.isfinite(x) for x in result["losses"]), key
    for task in TRAIN_TASKS:
        mlp = results[f"trm-mlp-token-mixer/{task}"]["model"]
        assert mlp["mlp_t"] is True and mlp["seq_len"] == {"sudoku4": 16, "sudoku6": 36}[task]
