"""Every catalogue entry is a valid proposal that applies to the current hrm/ and changes what it claims."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evolver.literature import load_snapshot
from evolver.offline_catalogue import CATALOGUE, by_id
from proposals.schema import load_proposal

REPO = Path(__file__).resolve().parents[2]

try:  # the patch engine is another part of the project; say so plainly if it is missing
    from evolver.patch import apply_edits
except ImportError as exc:  # pragma: no cover - only while evolver/patch.py is not there
    apply_edits = None
    PATCH_MISSING = f"evolver.patch.apply_edits is not available yet: {exc}"
else:
    PATCH_MISSING = ""

# Run in a fresh interpreter: import the (patched) hrm from each root, build the sudoku4 preset model, run one
# training segment with a fixed seed and report what could have changed.
PROBE = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    out = {}
    for name, root in json.loads(sys.argv[1]).items():
        for mod in [m for m in sys.modules if m == "hrm" or m.startswith("hrm.")]:
            del sys.modules[mod]
        sys.path.insert(0, root)
        try:
            from hrm.presets import get_preset
            from hrm.model import HRM
            from hrm.losses import ACTLossHead
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
            out[name] = {
                "model": run.model.to_dict(),
                "train": run.train.to_dict(),
                "params": sum(p.numel() for p in head.parameters()),
                "loss": round(float(loss), 6),
                "grad_norm": round(float(grad.norm()), 6) if grad is not None else None,
                "outputs": sorted(outputs),
            }
        finally:
            sys.path.remove(root)
    print(json.dumps(out))
    """
)


def copy_hrm(dest: Path) -> Path:
    shutil.copytree(REPO / "hrm", dest / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


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
    with pytest.raises(KeyError):
        by_id("no-such-entry")


@pytest.mark.skipif(apply_edits is None, reason=PATCH_MISSING or "patch engine present")
def test_every_entry_applies_and_changes_the_model_or_run(tmp_path: Path) -> None:
    roots = {"baseline": str(copy_hrm(tmp_path / "baseline"))}
    for entry in CATALOGUE:
        root = copy_hrm(tmp_path / entry.id)
        proposal = load_proposal(entry.to_json())
        applied = apply_edits(root, proposal.edits)
        assert len(applied) == len(proposal.edits), entry.id
        roots[entry.id] = str(root)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(roots)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probes = json.loads(proc.stdout.strip().splitlines()[-1])
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
    assert probes["trm-single-shared-network"]["params"] < base["params"]
    assert "target_q_continue" in base["outputs"]
    assert "target_q_continue" not in probes["trm-halt-without-continue-loss"]["outputs"]
    full = probes["trm-full-backprop-last-recursion"]
    assert full["loss"] == base["loss"] and full["grad_norm"] != base["grad_norm"]  # same forward, new gradient
