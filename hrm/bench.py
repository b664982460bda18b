"""Training throughput and peak memory of the presets.

Each preset trains for a few steps on random batches of its shape (token ids drawn from its vocabulary):
the same segment step as the trainer (ACT loss head, backward of loss / batch size, the optimizers).
Memory is the CUDA peak allocation on a GPU and the process's peak resident set size (``ru_maxrss``) on
a CPU; for a per-preset RSS figure run each preset in its own process (``run_benchmarks(isolate=True)``,
the CLI's default).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import torch

from hrm.evaluate import autocast_context
from hrm.presets import CPU_PRESETS, PRESETS, get_preset


def default_presets(device: torch.device) -> tuple[str, ...]:
    """All presets on a GPU; the CPU-sized ones on a CPU (a 27M model at batch 768 needs minutes a step)."""
    return PRESETS if device.type == "cuda" else CPU_PRESETS


def random_batch(
    vocab_size: int, seq_len: int, batch_size: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    inputs = torch.randint(1, vocab_size, (batch_size, seq_len), generator=generator)
    labels = (
        torch.randint(2, vocab_size, (batch_size, seq_len), generator=generator) if vocab_size > 2 else inputs
    )
    return {
        "inputs": inputs.to(torch.int64),
        "labels": labels.to(torch.int64),
        "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.int64),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes); NaN on Windows."""
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def bench_preset(
    name: str,
    *,
    steps: int = 20,
    warmup_steps: int = 3,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``steps`` training steps of preset ``name`` after ``warmup_steps`` untimed ones."""
    from hrm.losses import ACTLossHead
    from hrm.model import HRM
    from hrm.optim import build_optimizers

    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    run = get_preset(name)
    bs = int(batch_size or run.train.batch_size)
    torch.manual_seed(seed)
    loss_head = ACTLossHead(HRM(run.model)).to(dev)
    loss_head.train()
    optimizers = build_optimizers(loss_head, run.train)
    generator = torch.Generator().manual_seed(seed)
    autocast = autocast_context(dev, run.model.forward_dtype)
    carry: Any = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def one_step() -> float:
        nonlocal carry
        batch = {
            k: v.to(dev)
            for k, v in random_batch(run.model.vocab_size, run.model.seq_len, bs, generator).items()
        }
        if carry is None:
            carry = loss_head.initial_carry(batch)
        with autocast:
            carry, loss, _, _, _ = loss_head(carry, batch)
        (loss / bs).backward()
        for opt, _ in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return float(loss.detach()) / bs

    for _ in range(warmup_steps):
        one_step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    last_loss = 0.0
    for _ in range(steps):
        last_loss = one_step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        memory_mb = torch.cuda.max_memory_allocated(dev) / (1024 * 1024)
        memory_kind = "cuda_max_allocated"
    else:
        memory_mb = peak_rss_mb()
        memory_kind = "peak_rss"
    return {
        "preset": name,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in loss_head.parameters()),
        "batch_size": bs,
        "seq_len": run.model.seq_len,
        "steps": steps,
        "seconds": seconds,
        "steps_per_second": steps / seconds if seconds > 0 else float("inf"),
        "seconds_per_step": seconds / steps if steps else 0.0,
        "memory_mb": memory_mb,
        "memory_kind": memory_kind,
        "final_loss": last_loss,
    }


def run_benchmarks(
    presets: list[str] | tuple[str, ...] | None = None,
    *,
    steps: int = 20,
    device: str | None = None,
    batch_size: int | None = None,
    isolate: bool = True,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Benchmark several presets; with ``isolate`` each runs in a fresh process so its peak RSS is its own."""
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = list(presets) if presets else list(default_presets(dev))
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise KeyError(f"unknown preset(s) {unknown}; known: {', '.join(PRESETS)}")
    results: list[dict[str, Any]] = []
    for name in names:
        if not isolate:
            if threads:
                torch.set_num_threads(threads)
            results.append(bench_preset(name, steps=steps, device=dev, batch_size=batch_size))
            continue
        cmd = [
            sys.executable,
            "-m",
            "hrm",
            "bench",
            "--presets",
            name,
            "--steps",
            str(steps),
            "--device",
            str(dev),
            "--in-process",
            "--json",
        ]
        if batch_size:
            cmd += ["--batch-size", str(batch_size)]
        if threads:
            cmd += ["--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"bench of {name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        results.extend(json.loads(proc.stdout))
    return results
