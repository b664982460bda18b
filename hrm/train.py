"""The HRM trainer: the reference's segment loop with budgets, checkpoints, resume and evaluation.

Each step runs one ACT segment on the persistent carry: rows that halted at the previous step take new
samples from this step's batch, the others keep reasoning on their own sample. The loss (a sum over the
batch) is divided by the batch size before ``backward``, as the reference does. The learning rate warms up
linearly and then follows a cosine down to ``lr_min_ratio`` of its base value.

Stops (the first that applies, recorded as ``stop_reason``): ``max_steps``, ``epochs``, ``budget`` (training
wall-clock; evaluation and checkpointing are excluded and reported separately), ``converged`` (held-out exact
accuracy reached ``convergence_exact_accuracy`` at an evaluation), ``diverged: ...`` (non-finite loss, or the
smoothed loss rose above ``divergence_factor`` times its running minimum after warmup and above its level
at the end of warmup), ``interrupted`` (SIGINT/SIGTERM or a callback asked to stop: a checkpoint is saved and
the run can be resumed; no final evaluation).

Files in ``out_dir``:
- ``checkpoint.pt`` (written atomically; loads with ``torch.load(weights_only=True)``): ``config`` (the
  resolved ``RunConfig.to_dict()``), ``model`` (the HRM ``state_dict``, names under ``inner.``), ``ema``
  (EMA weights as a full HRM state dict, or None), ``optimizers``, ``step``, ``elapsed`` (training seconds),
  ``rng``, ``data_position``, ``carry``, ``jsonl_offset``, ``tracker``, ``finished`` and ``final_metrics``.
- ``metrics.jsonl``: one ``{"type": "train", ...}`` record per step and one ``{"type": "eval", ...}`` per
  evaluation. On resume the file is cut back to its length at the checkpoint, so a killed and resumed run
  leaves the same records as an uninterrupted one (timing fields aside).
- ``metrics.json``: the final summary (see :func:`train`).

Determinism: on CPU with a fixed thread count a seed fixes the run bit for bit (model init from
``torch.manual_seed(seed)``, data order and augmentation from a numpy Generator seeded with it, ACT
exploration from the torch RNG, whose state is checkpointed). ``torch.use_deterministic_algorithms`` is
not switched on: its first call imports the compiler stack (seconds), and the CPU kernels used here are
deterministic already, which the resume tests check by comparing parameters exactly.

Learning-rate horizon for the cosine: ``max_steps`` when set, else ``epochs`` x steps per epoch, else the
fraction of the wall-clock budget used (which is not reproducible step for step; with the default
``lr_min_ratio = 1.0`` the rate is constant after warmup and the horizon does not matter).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrm.config import RunConfig
from hrm.evaluate import autocast_context, evaluate, load_model_weights

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_JSONL = "metrics.jsonl"
METRICS_JSON = "metrics.json"
CHECKPOINT_FORMAT = "hrm-evolve-checkpoint/1"
TRAIN_EVAL_LIMIT = 2000  # examples scored on the train split when no test split is available
LOSS_EMA = 0.05  # smoothing of the loss used by the divergence test

StepCallback = Callable[[dict[str, Any]], bool | None]


# --------------------------------------------------------------------------------------------- data


def resolve_task(task: str, data_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Map an alias (``sudoku4``...) to the builder's task name and its kwargs, the run's kwargs winning."""
    from hrm.data import TASK_ALIASES

    kwargs: dict[str, Any] = {}
    base = task
    if task in TASK_ALIASES:
        base, alias_kwargs = TASK_ALIASES[task]
        kwargs.update(alias_kwargs)
    kwargs.update(data_kwargs)
    if isinstance(kwargs.get("box"), list):
        kwargs["box"] = tuple(kwargs["box"])
    return base, kwargs


def dataset_key(task: str, data_kwargs: dict[str, Any], seed: int) -> str:
    """A stable directory name for a dataset: the task plus a hash of its builder kwargs and seed."""
    base, kwargs = resolve_task(task, data_kwargs)
    blob = json.dumps({"task": base, "kwargs": kwargs, "seed": seed}, sort_keys=True, default=list)
    return f"{task}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def is_dataset_root(path: Path) -> bool:
    return (path / "train" / "dataset.json").is_file() or (path / "test" / "dataset.json").is_file()


def prepare_dataset(run: RunConfig, out_dir: Path, data_dir: Path | None, seed: int) -> tuple[Path, bool]:
    """Find or build the run's dataset. Returns (dataset root, built_now).

    ``data_dir`` may be a dataset itself (holding ``train/dataset.json``), used as is, or a cache root.
    Without it the cache root is ``$HRM_DATA_DIR`` or ``<out_dir>/../data``. Datasets in a cache are keyed
    by task, builder kwargs and seed (``run.data["seed"]`` when present, else the run's seed), and built in
    a temporary directory renamed into place, so concurrent runs never see half a dataset.
    """
    if data_dir is not None and is_dataset_root(Path(data_dir)):
        return Path(data_dir), False
    if data_dir is not None:
        cache = Path(data_dir)
    elif os.environ.get("HRM_DATA_DIR"):
        cache = Path(os.environ["HRM_DATA_DIR"])
    else:
        cache = Path(out_dir).resolve().parent / "data"
    data_kwargs = dict(run.data)
    data_seed = int(data_kwargs.pop("seed", seed))
    root = cache / dataset_key(run.task, data_kwargs, data_seed)
    if is_dataset_root(root):
        return root, False
    try:
        from puzzles.build import build_dataset  # the trusted generators, outside hrm/ (a user convenience)
    except ImportError as exc:
        raise FileNotFoundError(f"no dataset at {root} and the puzzles package is not importable to build one: "
                                "pass data_dir (built with python -m hrm data build)") from exc

    cache.mkdir(parents=True, exist_ok=True)
    base, kwargs = resolve_task(run.task, data_kwargs)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=cache))
    try:
        build_dataset(base, tmp, seed=data_seed, **kwargs)
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_dataset_root(root):  # someone else won the race only if theirs is complete
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root, True


class BatchStream:
    """Training batches across epochs, with a position that can be saved and restored exactly.

    Each epoch draws from a dedicated numpy Generator; the position is the generator's state at the start
    of the current epoch plus the number of batches consumed, so restoring replays the epoch up to there.
    """

    def __init__(self, dataset: Any, batch_size: int, augment: bool, seed: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.augment = augment
        self.rng = np.random.default_rng([seed, 0xDA7A])
        self.epoch = 0
        self.consumed = 0
        self._epoch_state: dict[str, Any] = self.rng.bit_generator.state
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _start_epoch(self) -> None:
        self._epoch_state = self.rng.bit_generator.state
        self.consumed = 0
        self._it = iter(self.dataset.train_batches(self.batch_size, self.rng, augment=self.augment))

    def next(self, max_epochs: int | None = None) -> dict[str, np.ndarray] | None:
        """The next batch, or None once ``max_epochs`` full epochs have been consumed."""
        for _ in range(2):
            if self._it is None:
                if max_epochs is not None and self.epoch >= max_epochs:
                    return None
                self._start_epoch()
            assert self._it is not None
            try:
                batch = next(self._it)
            except StopIteration:
                if self.consumed == 0:
                    raise ValueError(
                        f"the training split yields no batch of size {self.batch_size} "
                        f"(it has {len(self.dataset)} examples): lower the batch size"
                    ) from None
                self._it = None
                self.epoch += 1
                continue
            self.consumed += 1
            return batch
        return None

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "epoch_rng_state": self._epoch_state,
            "in_epoch": self._it is not None,
            "rng_state": self.rng.bit_generator.state,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        if state["in_epoch"]:
            self.rng.bit_generator.state = state["epoch_rng_state"]
            self._start_epoch()
            assert self._it is not None
            for _ in range(int(state["consumed"])):
                next(self._it)
            self.consumed = int(state["consumed"])
        else:
            self.rng.bit_generator.state = state["rng_state"]
            self._it = None
            self.consumed = 0

    def steps_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v), dtype=torch.int64).to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------- carry


def carry_to_state(obj: Any) -> Any:
    """Dataclasses, dicts, lists and tensors as plain containers that ``weights_only`` loading accepts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        return {
            "__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
            "fields": {f.name: carry_to_state(getattr(obj, f.name)) for f in dataclasses.fields(obj)},
        }
    if isinstance(obj, dict):
        return {"__dict__": {k: carry_to_state(v) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return [carry_to_state(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    return obj


def carry_from_state(state: Any, device: torch.device) -> Any:
    if isinstance(state, dict) and "__dataclass__" in state:
        module_name, qualname = state["__dataclass__"].split(":")
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        return cls(**{k: carry_from_state(v, device) for k, v in state["fields"].items()})
    if isinstance(state, dict) and "__dict__" in state:
        return {k: carry_from_state(v, device) for k, v in state["__dict__"].items()}
    if isinstance(state, list):
        return [carry_from_state(v, device) for v in state]
    if isinstance(state, torch.Tensor):
        return state.to(device)
    return state


# --------------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, warmup: int, total: float | None, min_ratio: float) -> float:
    """Multiplier of the base rate for the ``step``-th optimiser step (1-based).

    Linear warmup to 1 over ``warmup`` steps, then a half cosine to ``min_ratio`` at ``total``. ``total`` may
    be None (constant after warmup) or a float horizon in steps.
    """
    if warmup > 0 and step < warmup:
        return step / warmup
    if total is None or min_ratio >= 1.0:
        return 1.0
    progress = (step - warmup) / max(1.0, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass
class LossTracker:
    """Smoothed training loss for the divergence test and the summary."""

    ema: float | None = None
    min_ema: float | None = None
    ema_at_warmup_end: float | None = None

    def update(self, loss: float, step: int, warmup: int) -> None:
        self.ema = loss if self.ema is None else (1 - LOSS_EMA) * self.ema + LOSS_EMA * loss
        if step >= warmup:
            if self.ema_at_warmup_end is None:
                self.ema_at_warmup_end = self.ema
            self.min_ema = self.ema if self.min_ema is None else min(self.min_ema, self.ema)

    def diverged(self, factor: float) -> str | None:
        if self.ema is None or self.min_ema is None or self.ema_at_warmup_end is None:
            return None
        if self.ema > factor * self.min_ema and self.ema > self.ema_at_warmup_end:
            return (
                f"diverged: smoothed loss {self.ema:.4g} > {factor:g} x its minimum {self.min_ema:.4g} "
                f"and above its level at the end of warmup ({self.ema_at_warmup_end:.4g})"
            )
        return None


# --------------------------------------------------------------------------------------------- progress


class ProgressDisplay:
    """A rich progress bar over steps (or budget seconds); does nothing when disabled.

    It redraws from the training thread at most every ``REFRESH_SECONDS``: rich's own refresh thread
    competes with the training step for the GIL and slowed small-model steps several times over.
    """

    REFRESH_SECONDS = 1.0

    def __init__(self, enabled: bool, total_steps: int | None, budget: float | None, task: str) -> None:
        self._progress: Any = None
        self._task_id: Any = None
        self._by_steps = total_steps is not None or not budget
        self._last_refresh = 0.0
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn(
                (
                    "{task.completed:.0f}"
                    if total_steps is None and not budget
                    else "{task.completed:.0f}/{task.total:.0f}"
                )
                + (" steps" if self._by_steps or not budget else " s")
            ),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            transient=False,
            auto_refresh=False,
        )
        total = float(total_steps) if total_steps is not None else (float(budget) if budget else None)
        self._task_id = self._progress.add_task(f"train {task}", total=total, info="")
        self._progress.start()

    def update(self, step: int, elapsed: float, info: str) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        refresh = now - self._last_refresh >= self.REFRESH_SECONDS
        if refresh:
            self._last_refresh = now
        self._progress.update(
            self._task_id, completed=step if self._by_steps else elapsed, info=info, refresh=refresh
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()


# --------------------------------------------------------------------------------------------- helpers


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ema_init(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _ema_update(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            ema[name].lerp_(value, 1.0 - decay)
        else:
            ema[name].copy_(value)


@contextlib.contextmanager
def _swapped_weights(model: nn.Module, weights: dict[str, torch.Tensor] | None) -> Iterator[None]:
    if weights is None:
        yield
        return
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    load_model_weights(model, weights)
    try:
        yield
    finally:
        load_model_weights(model, backup)


@contextlib.contextmanager
def _stop_signals(flag: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``flag`` (checked between steps) instead of killing the run mid-step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():  # a second signal: give up on a clean stop
            raise KeyboardInterrupt
        flag.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _scalar_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, float | None]:
    values = {k: float(v) for k, v in metrics.items()}
    count = values.get("count", 0.0)
    out: dict[str, float | None] = {
        "count": count,
        "lm_loss": values.get("lm_loss"),
        "q_halt_loss": values.get("q_halt_loss"),
        "q_continue_loss": values.get("q_continue_loss"),
    }
    for name in ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps"):
        out["act_steps" if name == "steps" else name] = (
            values[name] / count if count > 0 and name in values else None
        )
    return out


def with_dataset_shape(run: RunConfig, meta: Any) -> RunConfig:
    """The run with the model's vocabulary, length and identifier count taken from the dataset."""
    resolved = RunConfig.from_dict(run.to_dict())
    resolved.model.vocab_size = int(meta.vocab_size)
    resolved.model.seq_len = int(meta.seq_len)
    resolved.model.num_puzzle_identifiers = int(meta.num_puzzle_identifiers)
    return resolved


def _identity(run: RunConfig, seed: int) -> dict[str, Any]:
    return {
        "task": run.task,
        "data": json.loads(json.dumps(run.data, default=list)),
        "model": run.model.to_dict(),
        "seed": seed,
    }


# --------------------------------------------------------------------------------------------- train


def train(
    run: RunConfig,
    out_dir: Path | str,
    *,
    data_dir: Path | str | None = None,
    budget_seconds: float | None = None,
    max_steps: int | None = None,
    seed: int | None = None,
    resume: bool = True,
    progress: bool = True,
    device: torch.device | str | None = None,
    on_step: StepCallback | None = None,
    evaluate_at_end: bool = True,
) -> dict[str, Any]:
    """Train ``run`` into ``out_dir`` and return the final summary (also written to ``metrics.json``).

    ``budget_seconds``, ``max_steps`` and ``seed`` override the run's ``train`` fields when given. At least
    one of max_steps, epochs and budget_seconds must be set. ``on_step`` is called after every step with
    the step's train record; returning True stops the run as ``interrupted`` (checkpoint saved, no final
    evaluation), as SIGINT/SIGTERM do. ``evaluate_at_end=False`` skips the closing evaluation (a harness
    that scores the checkpoint itself); the accuracy keys are then those of the last periodic evaluation,
    or None.

    Summary keys: exact_accuracy, token_accuracy, mean_act_steps, q_halt_accuracy, eval_count, eval_split,
    steps, epochs, seconds (training only), eval_seconds, steps_per_second, stop_reason, seed, task, config,
    num_parameters, train_loss (smoothed), device, dataset.
    """
    from hrm.data.dataset import PuzzleDataset
    from hrm.losses import ACTLossHead
    from hrm.model import HRM
    from hrm.optim import build_optimizers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = RunConfig.from_dict(run.to_dict())
    tc = run.train
    if budget_seconds is not None:
        tc.budget_seconds = float(budget_seconds)
    if max_steps is not None:
        tc.max_steps = int(max_steps)
    if seed is not None:
        tc.seed = int(seed)
    seed = tc.seed
    if tc.max_steps is None and tc.epochs is None and tc.budget_seconds is None:
        raise ValueError(
            "train: set at least one of max_steps, epochs or budget_seconds (presets are budget-free)"
        )
    dev = torch.device(device) if device is not None else default_device()

    previous_threads = torch.get_num_threads()
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))

    ckpt_path = out / CHECKPOINT_NAME
    jsonl_path = out / METRICS_JSONL
    try:
        checkpoint: dict[str, Any] | None = None
        if resume and ckpt_path.exists():
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        elif not resume:
            for stale in (ckpt_path, jsonl_path, out / METRICS_JSON):
                stale.unlink(missing_ok=True)

        data_root, _ = prepare_dataset(run, out, Path(data_dir) if data_dir is not None else None, seed)
        train_set = PuzzleDataset(data_root, "train")
        has_test = (data_root / "test" / "dataset.json").is_file()
        eval_set = PuzzleDataset(data_root, "test") if has_test else train_set
        eval_limit = None if has_test else TRAIN_EVAL_LIMIT
        run = with_dataset_shape(run, train_set.meta)

        if checkpoint is not None:
            stored = RunConfig.from_dict(checkpoint["config"])
            if _identity(stored, int(checkpoint["seed"])) != _identity(run, seed):
                raise ValueError(
                    f"{ckpt_path} was written by a different run (task, data, model or seed differ); "
                    "use another out_dir or resume=False"
                )

        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        model = HRM(run.model).to(dev)
        loss_head = ACTLossHead(model).to(dev)
        loss_head.train()
        optimizers = build_optimizers(loss_head, tc)
        stream = BatchStream(train_set, tc.batch_size, tc.augment, seed)
        steps_per_epoch = stream.steps_per_epoch()
        horizon: int | None = (
            tc.max_steps
            if tc.max_steps is not None
            else (tc.epochs * steps_per_epoch if tc.epochs is not None else None)
        )
        ema: dict[str, torch.Tensor] | None = _ema_init(model) if tc.ema_decay else None
        tracker = LossTracker()
        step = 0
        elapsed = 0.0
        eval_seconds = 0.0
        carry: Any = None
        last_eval: dict[str, Any] | None = None
        stop_reason: str | None = None

        if checkpoint is not None:
            load_model_weights(model, checkpoint["model"])
            for (opt, _), opt_state in zip(optimizers, checkpoint["optimizers"], strict=True):
                opt.load_state_dict(opt_state)
            if ema is not None and checkpoint.get("ema") is not None:
                ema = {k: v.to(dev) for k, v in checkpoint["ema"].items()}
            step = int(checkpoint["step"])
            elapsed = float(checkpoint["elapsed"])
            eval_seconds = float(checkpoint["eval_seconds"])
            tracker = LossTracker(**checkpoint["tracker"])
            stream.restore(checkpoint["data_position"])
            _set_rng_state(checkpoint["rng"])
            carry = carry_from_state(checkpoint["carry"], dev) if checkpoint["carry"] is not None else None
            last_eval = checkpoint.get("last_eval")
            if checkpoint.get("finished") and str(checkpoint.get("stop_reason", "")).startswith(
                ("converged", "diverged")
            ):
                final = dict(checkpoint["final_metrics"])
                atomic_write_text(out / METRICS_JSON, json.dumps(final, indent=2, sort_keys=True) + "\n")
                return final
            offset = int(checkpoint["jsonl_offset"])
            if jsonl_path.exists() and jsonl_path.stat().st_size > offset:
                with open(jsonl_path, "r+b") as fh:
                    fh.truncate(offset)
        with open(jsonl_path, "a", encoding="utf-8") as jsonl:

            def write_record(record: dict[str, Any]) -> None:
                jsonl.write(json.dumps(record, sort_keys=True) + "\n")
                jsonl.flush()

            def run_eval() -> dict[str, Any]:
                nonlocal eval_seconds
                t0 = time.perf_counter()
                with _swapped_weights(model, ema):
                    result = evaluate(model, eval_set, tc.eval_batch_size, dev, max_examples=eval_limit)
                eval_seconds += time.perf_counter() - t0
                record = {
                    "type": "eval",
                    "step": step,
                    "split": "test" if has_test else "train",
                    **result,
                    "time": time.perf_counter() - t0,
                }
                write_record(record)
                return record

            def save_checkpoint(finished: bool, final: dict[str, Any] | None = None) -> None:
                jsonl.flush()
                state = {
                    "format": CHECKPOINT_FORMAT,
                    "config": run.to_dict(),
                    "seed": seed,
                    "model": model.state_dict(),
                    "ema": ema,
                    "optimizers": [opt.state_dict() for opt, _ in optimizers],
                    "step": step,
                    "elapsed": elapsed,
                    "eval_seconds": eval_seconds,
                    "rng": _rng_state(),
                    "data_position": stream.state(),
                    "carry": carry_to_state(carry) if carry is not None else None,
                    "jsonl_offset": jsonl.tell(),
                    "tracker": dataclasses.asdict(tracker),
                    "last_eval": last_eval,
                    "stop_reason": stop_reason,
                    "finished": finished,
                    "final_metrics": final,
                }
                atomic_torch_save(state, ckpt_path)

            display = ProgressDisplay(progress, horizon, tc.budget_seconds, run.task)
            stop_flag = threading.Event()
            last_save = time.monotonic()
            autocast = autocast_context(dev, run.model.forward_dtype)
            try:
                with _stop_signals(stop_flag):
                    while True:
                        if tc.max_steps is not None and step >= tc.max_steps:
                            stop_reason = "max_steps"
                            break
                        if tc.budget_seconds is not None and elapsed >= tc.budget_seconds:
                            stop_reason = "budget"
                            break
                        if stop_flag.is_set():
                            stop_reason = "interrupted"
                            break
                        t0 = time.perf_counter()
                        np_batch = stream.next(tc.epochs)
                        if np_batch is None:
                            stop_reason = "epochs"
                            break
                        batch = to_device(np_batch, dev)
                        if carry is None:
                            carry = loss_head.initial_carry(batch)
                        with autocast:
                            carry, loss, metrics, _, _ = loss_head(carry, batch)
                        loss_value = float(loss.detach()) / tc.batch_size
                        if not math.isfinite(loss_value):
                            elapsed += time.perf_counter() - t0
                            stop_reason = f"diverged: non-finite loss ({loss_value}) at step {step + 1}"
                            break
                        (loss / tc.batch_size).backward()
                        if tc.grad_clip_norm is not None:
                            torch.nn.utils.clip_grad_norm_(loss_head.parameters(), tc.grad_clip_norm)
                        if horizon is not None:
                            factor = lr_factor(step + 1, tc.lr_warmup_steps, horizon, tc.lr_min_ratio)
                        else:
                            assert tc.budget_seconds is not None
                            frac_total = (
                                (step + 1) * tc.budget_seconds / max(elapsed, 1e-9) if elapsed > 0 else None
                            )
                            factor = lr_factor(step + 1, tc.lr_warmup_steps, frac_total, tc.lr_min_ratio)
                        for opt, base_lr in optimizers:
                            for group in opt.param_groups:
                                group["lr"] = base_lr * factor
                            opt.step()
                            opt.zero_grad(set_to_none=True)
                        if ema is not None:
                            _ema_update(ema, model, float(tc.ema_decay or 0.0))
                        step += 1
                        tracker.update(loss_value, step, tc.lr_warmup_steps)
                        elapsed += time.perf_counter() - t0

                        record: dict[str, Any] = {
                            "type": "train",
                            "step": step,
                            "epoch": stream.epoch,
                            "loss": loss_value,
                            "lr": optimizers[-1][1] * factor,
                            **_scalar_metrics(metrics),
                            "time": elapsed,
                        }
                        write_record(record)
                        display.update(
                            step,
                            elapsed,
                            f"loss {tracker.ema:.3f}"
                            + (f" exact {last_eval['exact_accuracy']:.3f}" if last_eval else ""),
                        )
                        if on_step is not None and on_step(record):
                            stop_flag.set()

                        reason = tracker.diverged(tc.divergence_factor)
                        if reason is not None:
                            stop_reason = reason
                            break
                        if tc.eval_interval_steps and step % tc.eval_interval_steps == 0:
                            last_eval = run_eval()
                            target = tc.convergence_exact_accuracy
                            if target is not None and last_eval["exact_accuracy"] >= target:
                                stop_reason = (
                                    f"converged: exact accuracy {last_eval['exact_accuracy']:.4f} >= {target}"
                                )
                                break
                        if time.monotonic() - last_save >= tc.checkpoint_interval_seconds:
                            save_checkpoint(finished=False)
                            last_save = time.monotonic()
            finally:
                display.close()

            if stop_reason == "interrupted":
                save_checkpoint(finished=False)
                return {
                    "stop_reason": "interrupted",
                    "steps": step,
                    "seconds": elapsed,
                    "seed": seed,
                    "task": run.task,
                }

            if evaluate_at_end and (last_eval is None or last_eval["step"] != step):
                last_eval = run_eval()
            ev = last_eval or {}
            final: dict[str, Any] = {
                "exact_accuracy": ev.get("exact_accuracy"),
                "token_accuracy": ev.get("token_accuracy"),
                "mean_act_steps": ev.get("mean_act_steps"),
                "q_halt_accuracy": ev.get("q_halt_accuracy"),
                "eval_count": ev.get("count"),
                "eval_split": ev.get("split"),
                "steps": step,
                "epochs": stream.epoch,
                "seconds": elapsed,
                "eval_seconds": eval_seconds,
                "steps_per_second": step / elapsed if elapsed > 0 else 0.0,
                "stop_reason": stop_reason,
                "seed": seed,
                "task": run.task,
                "config": run.to_dict(),
                "num_parameters": count_parameters(model),
                "train_loss": tracker.ema,
                "device": str(dev),
                "dataset": str(data_root),
            }
            final = json.loads(json.dumps(final, default=list))
            save_checkpoint(finished=True, final=final)
            atomic_write_text(out / METRICS_JSON, json.dumps(final, indent=2, sort_keys=True) + "\n")
            return final
    finally:
        torch.set_num_threads(previous_threads)
