"""Training speed of our HRM against the reference implementation (sapientinc/HRM), same config, same CPU.

    python benchmarks/bench_reference.py --reference-dir /tmp/refhrm
    python benchmarks/bench_reference.py --reference-dir /tmp/refhrm --threads 1 --rounds 6 --block 10

NEEDS AN EXTRACTED REFERENCE. Nothing of sapientinc/HRM is in this repository; the script imports it from
``--reference-dir`` (or ``$HRM_REFERENCE_DIR``) and skips with a message when that is absent. To make one:
take sapientinc/HRM (any commit since 171e2fc; checked at 42410da) and copy its ``models/`` files
``hrm/hrm_act_v1.py``, ``layers.py``, ``common.py``, ``losses.py`` and ``sparse_embedding.py`` into
``<dir>/models/`` with the same layout. Then, in ``<dir>/models/layers.py``, replace the try/except that
imports ``flash_attn_func`` from flash_attn_interface / flash_attn with an import from a module of your own
in ``<dir>`` (for instance ``sdpa_flash_shim.py``) whose ``flash_attn_func(q, k, v, causal=False)`` takes
[batch, seq, heads, head_dim] tensors, transposes them to [batch, heads, seq, head_dim], calls
``torch.nn.functional.scaled_dot_product_attention`` and returns the result transposed back and made
contiguous (the reference ``.view``-s it). Nothing else is changed. The reference also needs pydantic.

What is timed, for each implementation, is one training step of the reference's ``pretrain.py`` loop at
the ``sudoku4`` preset (h64, 2+2 layers, 2/2 cycles, 4 heads, halt_max 4, batch 64, seq 16 + one puzzle
token, fp32, the preset's loss, CPU): one ACT segment forward in train mode (including the extra no-grad Q-target
forward), the ACT loss, backward of loss / batch, the SignSGD step on the puzzle embedding and the
AdamATan2 step on the parameters, zero_grad, and reading the loss as a Python float. Ours runs
``hrm.losses.ACTLossHead`` with ``hrm.optim.build_optimizers`` as ``hrm.train`` does; the reference runs
its ``ACTLossHead`` and its own SignSGD optimiser, with the AdamATan2 rule as the per-parameter plain-torch
loop below (the pip package's kernel is CUDA-only). Both start from the same weights and see the same
random Sudoku-shaped batches.

The two implementations alternate in blocks of ``--block`` steps so that load from other jobs hits both
alike; the first ``--warmup`` steps of each are dropped. Per step the script records wall time and process
CPU time (``time.process_time``, all threads of this process). On a shared machine the CPU time with one
thread is the most robust comparison; wall time includes waiting for the cores. It prints medians, steps/s
from the median wall time, and the ratio ours / reference (below 1 means ours is faster).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hrm.config import ModelConfig, TrainConfig
from hrm.losses import ACTLossHead
from hrm.model import HRM
from hrm.optim import build_optimizers
from hrm.presets import get_preset

REFERENCE_FILES = (
    "models/hrm/hrm_act_v1.py",
    "models/layers.py",
    "models/common.py",
    "models/losses.py",
    "models/sparse_embedding.py",
)

Step = Callable[[], float]


# ------------------------------------------------------------------------------------------ reference side


def missing_reference_files(reference_dir: Path) -> list[str]:
    return [name for name in REFERENCE_FILES if not (reference_dir / name).is_file()]


def import_reference(reference_dir: Path) -> tuple[Any, Any, Any]:
    """(ACT model class, ACTLossHead class, SignSGD class) from an extracted reference tree."""
    sys.path.insert(0, str(reference_dir))
    try:
        act = importlib.import_module("models.hrm.hrm_act_v1")
        losses = importlib.import_module("models.losses")
        sparse = importlib.import_module("models.sparse_embedding")
    except ImportError as exc:
        raise SystemExit(
            f"could not import the reference from {reference_dir}: {exc}\n"
            "Was the flash_attn import in models/layers.py replaced by an SDPA shim? (see this script's docstring)"
        ) from exc
    return (
        act.HierarchicalReasoningModel_ACTV1,
        losses.ACTLossHead,
        sparse.CastedSparseEmbeddingSignSGD_Distributed,
    )


def reference_arch(cfg: ModelConfig, batch_size: int) -> dict[str, Any]:
    """Our ModelConfig as the reference's config dict (its keys are a subset of ours, plus batch_size)."""
    return {
        "batch_size": batch_size,
        "seq_len": cfg.seq_len,
        "puzzle_emb_ndim": cfg.puzzle_emb_ndim,
        "num_puzzle_identifiers": cfg.num_puzzle_identifiers,
        "vocab_size": cfg.vocab_size,
        "H_cycles": cfg.H_cycles,
        "L_cycles": cfg.L_cycles,
        "H_layers": cfg.H_layers,
        "L_layers": cfg.L_layers,
        "hidden_size": cfg.hidden_size,
        "expansion": cfg.expansion,
        "num_heads": cfg.num_heads,
        "pos_encodings": cfg.pos_encodings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "halt_max_steps": cfg.halt_max_steps,
        "halt_exploration_prob": cfg.halt_exploration_prob,
        "forward_dtype": cfg.forward_dtype,
    }


class PlainAdamATan2(torch.optim.Optimizer):
    """The AdamATan2 update written out per parameter in plain torch, standing in for the CUDA-only package.

    Per step t: p *= 1 - lr * wd; m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t)).
    """

    def __init__(
        self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float], weight_decay: float
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["t"] += 1
                t, m, v = state["t"], state["m"], state["v"]
                p.mul_(1 - lr * wd)
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.add_(torch.atan2(m, v.sqrt() / math.sqrt(1 - b2**t)), alpha=-lr / (1 - b1**t))


# ------------------------------------------------------------------------------------------------ steps


def random_batches(cfg: ModelConfig, batch_size: int, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Sudoku-shaped int64 batches: inputs with ~70% blanks (token 1), labels every cell's digit (2..V-1)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        labels = torch.randint(2, cfg.vocab_size, (batch_size, cfg.seq_len), generator=gen)
        blank = torch.rand(batch_size, cfg.seq_len, generator=gen) < 0.7
        inputs = torch.where(blank, torch.ones_like(labels), labels)
        ids = torch.randint(0, cfg.num_puzzle_identifiers, (batch_size,), generator=gen)
        out.append({"inputs": inputs, "labels": labels, "puzzle_identifiers": ids})
    return out


def _optimizer_step(pairs: list[tuple[torch.optim.Optimizer, float]]) -> None:
    for opt, base_lr in pairs:
        for group in opt.param_groups:
            group["lr"] = base_lr
        opt.step()
        opt.zero_grad(set_to_none=True)


def make_our_step(
    cfg: ModelConfig, tc: TrainConfig, batches: list[dict[str, torch.Tensor]], seed: int
) -> tuple[Step, nn.Module]:
    torch.manual_seed(seed)
    head = ACTLossHead(HRM(cfg))
    head.train()
    pairs = build_optimizers(head, tc)
    state: dict[str, Any] = {"carry": None, "i": 0}

    def step() -> float:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        if state["carry"] is None:
            state["carry"] = head.initial_carry(batch)
        state["carry"], loss, _, _, _ = head(state["carry"], batch)
        (loss / tc.batch_size).backward()
        _optimizer_step(pairs)
        return float(loss.detach())

    return step, head


def make_reference_step(
    reference_dir: Path,
    cfg: ModelConfig,
    tc: TrainConfig,
    batches: list[dict[str, torch.Tensor]],
    weights_from: nn.Module,
) -> Step:
    model_cls, loss_head_cls, signsgd_cls = import_reference(reference_dir)
    head = loss_head_cls(model_cls(reference_arch(cfg, tc.batch_size)), loss_type=cfg.loss_type)
    # Same starting point as ours: the names match (hrm.convert), non-persistent buffers are rebuilt alike.
    missing, unexpected = head.load_state_dict(weights_from.state_dict(), strict=False)
    if unexpected or any(not k.endswith(("local_weights", "local_ids")) for k in missing):
        raise SystemExit(f"state dicts differ: missing {missing}, unexpected {unexpected}")
    head.train()
    pairs: list[tuple[torch.optim.Optimizer, float]] = [
        (
            signsgd_cls(
                head.model.puzzle_emb.buffers(), lr=0.0, weight_decay=tc.puzzle_emb_weight_decay, world_size=1
            ),
            tc.puzzle_emb_lr,
        ),
        (
            PlainAdamATan2(
                head.parameters(), lr=0.0, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay
            ),
            tc.lr,
        ),
    ]
    # The reference's data pipeline yields int32 tensors.
    ref_batches = [{k: v.to(torch.int32) for k, v in b.items()} for b in batches]
    state: dict[str, Any] = {"carry": None, "i": 0}

    def step() -> float:
        batch = ref_batches[state["i"] % len(ref_batches)]
        state["i"] += 1
        if state["carry"] is None:
            state["carry"] = head.initial_carry(batch)
        state["carry"], loss, _, _, _ = head(carry=state["carry"], batch=batch, return_keys=[])
        ((1 / tc.batch_size) * loss).backward()
        _optimizer_step(pairs)
        return float(loss.detach())

    return step


# ---------------------------------------------------------------------------------------------- timing


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    seen: int = 0


def run_block(step: Step, steps: int, warmup: int, samples: Samples) -> None:
    for _ in range(steps):
        w0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        w1, c1 = time.perf_counter(), time.process_time()
        if not math.isfinite(loss):
            raise SystemExit(f"non-finite loss {loss}")
        samples.seen += 1
        if samples.seen > warmup:
            samples.wall.append(w1 - w0)
            samples.cpu.append(c1 - c0)


def compare(steps: dict[str, Step], threads: int, rounds: int, block: int, warmup: int) -> dict[str, Samples]:
    """Alternate the implementations in blocks (order flipped every round); the first ``warmup`` steps of each
    are run before any timing and dropped."""
    torch.set_num_threads(threads)
    names = list(steps)
    samples = {name: Samples() for name in names}
    for name in names:
        run_block(steps[name], warmup, warmup, samples[name])
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            run_block(steps[name], block, warmup, samples[name])
    return samples


def _ms(x: float) -> str:
    return f"{1000 * x:8.1f}"


def report(threads: int, samples: dict[str, Samples]) -> dict[str, float]:
    ours = samples["ours"]
    med = {
        f"{name}_{kind}": statistics.median(getattr(s, kind))
        for name, s in samples.items()
        for kind in ("wall", "cpu")
    }
    print(f"\n{threads} thread(s): {len(ours.wall)} timed steps each")
    print(f"  {'':10} {'wall ms/step':>13} {'steps/s':>8} {'CPU ms/step':>12} {'CPU/wall':>9}")
    for name in ("ours", "reference"):
        wall, cpu = med[f"{name}_wall"], med[f"{name}_cpu"]
        print(f"  {name:10} {_ms(wall):>13} {1 / wall:8.2f} {_ms(cpu):>12} {cpu / wall:9.2f}")
    ratio_wall = med["ours_wall"] / med["reference_wall"]
    ratio_cpu = med["ours_cpu"] / med["reference_cpu"]
    print(
        f"  ratio ours/reference (median time per step; < 1 = ours faster): wall {ratio_wall:.3f}, CPU {ratio_cpu:.3f}"
    )
    return {**med, "ratio_wall": ratio_wall, "ratio_cpu": ratio_cpu}


def check_same_outputs(our_head: nn.Module, reference_dir: Path, cfg: ModelConfig, batch_size: int) -> float:
    """Max |logit difference| between the two models built from the same weights (eval forward, one segment)."""
    model_cls, _, _ = import_reference(reference_dir)
    ref = model_cls(reference_arch(cfg, batch_size))
    ours = our_head.model  # type: ignore[union-attr]
    ref.load_state_dict(ours.state_dict(), strict=False)
    ref.eval()
    ours.eval()
    batch = random_batches(cfg, batch_size, 1, seed=123)[0]
    with torch.no_grad():
        _, ours_out = ours(ours.initial_carry(batch), batch)
        ref_batch = {k: v.to(torch.int32) for k, v in batch.items()}
        _, ref_out = ref(ref.initial_carry(ref_batch), ref_batch)
    ours.train()
    return float((ours_out["logits"] - ref_out["logits"]).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reference-dir", type=Path, default=os.environ.get("HRM_REFERENCE_DIR"),
        help="root of an extracted sapientinc/HRM models/ tree with the SDPA shim (see above); $HRM_REFERENCE_DIR",
    )  # fmt: skip
    parser.add_argument("--preset", default="sudoku4")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=6, help="blocks per implementation (alternating)")
    parser.add_argument("--block", type=int, default=10, help="steps per block")
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed steps per implementation and thread count"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.reference_dir is None:
        print("SKIP: no reference given. Pass --reference-dir DIR (or set HRM_REFERENCE_DIR) pointing to an")
        print("extracted sapientinc/HRM models/ tree with flash_attn replaced by an SDPA shim; see --help.")
        return 0
    reference_dir = Path(args.reference_dir).resolve()
    missing = missing_reference_files(reference_dir)
    if missing:
        print(
            f"SKIP: {reference_dir} is not an extracted reference; missing {', '.join(missing)}. See --help."
        )
        return 0

    run = get_preset(args.preset)
    cfg, tc = run.model, run.train
    if cfg.forward_dtype != "float32":
        raise SystemExit(
            f"preset {args.preset} runs in {cfg.forward_dtype}; this CPU benchmark compares fp32 only"
        )
    batches = random_batches(cfg, tc.batch_size, 16, seed=args.seed)
    our_step, our_head = make_our_step(cfg, tc, batches, seed=args.seed)
    diff = check_same_outputs(our_head, reference_dir, cfg, tc.batch_size)
    ref_step = make_reference_step(reference_dir, cfg, tc, batches, weights_from=our_head)

    print(
        f"preset {args.preset}: h{cfg.hidden_size}, layers {cfg.H_layers}+{cfg.L_layers}, cycles "
        f"{cfg.H_cycles}/{cfg.L_cycles}, heads {cfg.num_heads}, halt_max {cfg.halt_max_steps}, batch {tc.batch_size}, "
        f"seq {cfg.seq_len} + puzzle {-(cfg.puzzle_emb_ndim // -cfg.hidden_size)}, {cfg.forward_dtype}, {cfg.loss_type}"
    )
    print(f"same weights, eval forward: max |logits ours - reference| = {diff:.2e}")
    print(f"torch {torch.__version__}; reference from {reference_dir}")
    print("The machine may be shared: CPU time per step with 1 thread is the most robust comparison.")
    for threads in args.threads:
        report(
            threads,
            compare({"ours": our_step, "reference": ref_step}, threads, args.rounds, args.block, args.warmup),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
