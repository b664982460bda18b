"""The HRM trainer: the reference's segment loop with budgets, checkpoints, resume and evaluation, in parts.

:func:`train` is a short sequence of small functions, each replaceable on its own:
- schedule: :func:`scheduled_lr_factor` (the rate multiplier for a step, from the step, the training time,
  the ``TrainConfig`` and the horizon of :func:`lr_horizon`), built on :func:`lr_factor`;
- one optimisation step: :func:`optimization_step` (forward through the loss head, non-finite check,
  backward, clipping, rates, optimizer steps, EMA), returning a :class:`StepOutcome`; its metrics.jsonl
  record is :func:`train_record`;
- state and checkpoints: :class:`TrainState` (step, times, loss tracker, carry, last eval, stop reason),
  :func:`to_checkpoint` / :func:`save_checkpoint` / :func:`from_checkpoint`, :func:`read_checkpoint`,
  :func:`check_same_run`, :func:`finished_summary`, :func:`truncate_metrics`;
- evaluation and stops: :func:`evaluate_in_training`, :func:`eval_due`, :func:`stop_before_step`,
  :func:`stop_after_step`, :func:`non_finite_stop`, :func:`convergence_stop`;
- setup and the loop: :func:`resolve_run`, :func:`load_training_data`, :func:`build_learner` (a
  :class:`Learner`: model, loss head, optimizers, EMA), :class:`TrainSetup`, :func:`run_steps`,
  :func:`final_summary`.

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
- ``checkpoint.pt`` (written atomically; loads with ``torch.load(weights_only=True)``): ``format``,
  ``config`` (the resolved ``RunConfig.to_dict()``), ``seed``, ``model`` (the HRM ``state_dict``, names
  under ``inner.``), ``ema`` (EMA weights as a full HRM state dict, or None), ``optimizers``, ``step``,
  ``elapsed`` (training seconds), ``eval_seconds``, ``rng``, ``data_position``, ``carry``, ``jsonl_offset``,
  ``tracker``, ``last_eval``, ``stop_reason``, ``finished`` and ``final_metrics``.
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

from hrm.config import RunConfig, TrainConfig
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


def lr_horizon(tc: TrainConfig, steps_per_epoch: int) -> int | None:
    """Steps the cosine spans: ``max_steps`` when set, else ``epochs`` x steps per epoch, else None.

    None means a budget-only run, whose horizon :func:`scheduled_lr_factor` estimates from the time used.
    """
    if tc.max_steps is not None:
        return tc.max_steps
    return tc.epochs * steps_per_epoch if tc.epochs is not None else None


def scheduled_lr_factor(step: int, elapsed: float, tc: TrainConfig, horizon: int | None) -> float:
    """The learning-rate schedule: the multiplier of every optimizer's base rate for the ``step``-th step.

    ``step`` is 1-based (the step about to be taken), ``elapsed`` the training seconds before it and
    ``horizon`` what :func:`lr_horizon` gave. With a horizon in steps this is :func:`lr_factor`; without one
    (budget-only runs) the horizon is the number of steps the budget would hold at the pace so far.
    """
    if horizon is not None:
        return lr_factor(step, tc.lr_warmup_steps, horizon, tc.lr_min_ratio)
    assert tc.budget_seconds is not None
    frac_total = step * tc.budget_seconds / max(elapsed, 1e-9) if elapsed > 0 else None
    return lr_factor(step, tc.lr_warmup_steps, frac_total, tc.lr_min_ratio)


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


# --------------------------------------------------------------------------------------------- run setup


@dataclasses.dataclass
class EvalSplit:
    """What evaluations score: the test split, or without one the first TRAIN_EVAL_LIMIT training examples."""

    dataset: Any
    split: str  # "test" or "train", recorded in the eval records and the summary
    max_examples: int | None = None


@dataclasses.dataclass
class Learner:
    """What training changes: the HRM, the ACT loss head wrapping it, the optimizers and the EMA weights.

    ``optimizers`` holds (optimizer, base learning rate) pairs from :func:`hrm.optim.build_optimizers`;
    ``ema`` is an exponential moving average of the weights as a full HRM state dict (evaluations use it
    in place of the raw weights), or None when ``ema_decay`` is unset.
    """

    model: nn.Module
    loss_head: nn.Module
    optimizers: list[tuple[torch.optim.Optimizer, float]]
    ema: dict[str, torch.Tensor] | None = None


@dataclasses.dataclass
class TrainSetup:
    """The fixed parts of a run, built once by :func:`train`: config, device, files, learner, data."""

    run: RunConfig  # with the train() overrides applied and the model shaped to the dataset
    seed: int
    device: torch.device
    out: Path
    data_root: Path
    learner: Learner
    stream: BatchStream
    evaluation: EvalSplit
    horizon: int | None  # steps the cosine spans (lr_horizon); None for budget-only runs
    autocast: contextlib.AbstractContextManager[Any]  # entered around each training forward

    @property
    def tc(self) -> TrainConfig:
        return self.run.train

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME


@dataclasses.dataclass
class TrainState:
    """A run's mutable progress, saved in the checkpoint next to weights, optimizers and data position.

    ``elapsed`` counts training seconds only (evaluation and checkpointing excluded), ``eval_seconds`` the
    time spent evaluating, ``carry`` is the ACT carry (rows still reasoning on their sample), ``last_eval``
    the latest eval record, and ``stop_reason`` what the stop checks decided (a resumed run starts without
    one and decides its own).
    """

    step: int = 0
    elapsed: float = 0.0
    eval_seconds: float = 0.0
    tracker: LossTracker = dataclasses.field(default_factory=LossTracker)
    carry: Any = None
    last_eval: dict[str, Any] | None = None
    stop_reason: str | None = None


def resolve_run(
    run: RunConfig, *, budget_seconds: float | None, max_steps: int | None, seed: int | None
) -> RunConfig:
    """A copy of ``run`` with train()'s overrides applied; ValueError when no step/epoch/time bound is set."""
    run = RunConfig.from_dict(run.to_dict())
    tc = run.train
    if budget_seconds is not None:
        tc.budget_seconds = float(budget_seconds)
    if max_steps is not None:
        tc.max_steps = int(max_steps)
    if seed is not None:
        tc.seed = int(seed)
    if tc.max_steps is None and tc.epochs is None and tc.budget_seconds is None:
        raise ValueError(
            "train: set at least one of max_steps, epochs or budget_seconds (presets are budget-free)"
        )
    return run


def load_training_data(
    run: RunConfig, out: Path, data_dir: Path | str | None, seed: int
) -> tuple[Path, Any, EvalSplit]:
    """The dataset root (from :func:`prepare_dataset`), its train split and what evaluations score."""
    from hrm.data.dataset import PuzzleDataset

    data_root, _ = prepare_dataset(run, out, Path(data_dir) if data_dir is not None else None, seed)
    train_set = PuzzleDataset(data_root, "train")
    if (data_root / "test" / "dataset.json").is_file():
        evaluation = EvalSplit(PuzzleDataset(data_root, "test"), "test", None)
    else:
        evaluation = EvalSplit(train_set, "train", TRAIN_EVAL_LIMIT)
    return data_root, train_set, evaluation


def build_learner(run: RunConfig, device: torch.device) -> Learner:
    """Seed torch and numpy with the run's seed, then build the HRM, its loss head, optimizers and EMA."""
    from hrm.losses import ACTLossHead
    from hrm.model import HRM
    from hrm.optim import build_optimizers

    tc = run.train
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed % (2**32))
    model = HRM(run.model).to(device)
    loss_head = ACTLossHead(model).to(device)
    loss_head.train()
    optimizers = build_optimizers(loss_head, tc)
    ema = _ema_init(model) if tc.ema_decay else None
    return Learner(model=model, loss_head=loss_head, optimizers=optimizers, ema=ema)


class MetricsLog:
    """``metrics.jsonl`` opened for appending: one JSON record per line, flushed after each one."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", encoding="utf-8")  # closed by close() or the with block

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def offset(self) -> int:
        """The file's length so far, stored in checkpoints so that a resume can cut later records off."""
        self._file.flush()
        return self._file.tell()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- checkpoints


def read_checkpoint(out: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint in ``out`` to resume from, or None (without ``resume``: earlier run files deleted).

    Without ``resume`` the checkpoint, metrics.jsonl and metrics.json of an earlier run are removed.
    """
    ckpt_path = out / CHECKPOINT_NAME
    if resume and ckpt_path.exists():
        return torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if not resume:
        for stale in (ckpt_path, out / METRICS_JSONL, out / METRICS_JSON):
            stale.unlink(missing_ok=True)
    return None


def check_same_run(checkpoint: dict[str, Any], run: RunConfig, seed: int, path: Path) -> None:
    """ValueError unless the checkpoint was written by this run (same task, data, model and seed)."""
    stored = RunConfig.from_dict(checkpoint["config"])
    if _identity(stored, int(checkpoint["seed"])) != _identity(run, seed):
        raise ValueError(
            f"{path} was written by a different run (task, data, model or seed differ); "
            "use another out_dir or resume=False"
        )


def to_checkpoint(
    setup: TrainSetup,
    state: TrainState,
    *,
    jsonl_offset: int,
    finished: bool,
    final: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint's contents (the keys the module docstring lists), loadable ``weights_only``."""
    learner = setup.learner
    return {
        "format": CHECKPOINT_FORMAT,
        "config": setup.run.to_dict(),
        "seed": setup.seed,
        "model": learner.model.state_dict(),
        "ema": learner.ema,
        "optimizers": [opt.state_dict() for opt, _ in learner.optimizers],
        "step": state.step,
        "elapsed": state.elapsed,
        "eval_seconds": state.eval_seconds,
        "rng": _rng_state(),
        "data_position": setup.stream.state(),
        "carry": carry_to_state(state.carry) if state.carry is not None else None,
        "jsonl_offset": jsonl_offset,
        "tracker": dataclasses.asdict(state.tracker),
        "last_eval": state.last_eval,
        "stop_reason": state.stop_reason,
        "finished": finished,
        "final_metrics": final,
    }


def save_checkpoint(
    setup: TrainSetup, state: TrainState, log: MetricsLog, finished: bool, final: dict[str, Any] | None = None
) -> None:
    """Write ``checkpoint.pt`` atomically, recording how far ``metrics.jsonl`` had been written."""
    contents = to_checkpoint(setup, state, jsonl_offset=log.offset(), finished=finished, final=final)
    atomic_torch_save(contents, setup.checkpoint_path)


def from_checkpoint(
    checkpoint: dict[str, Any], learner: Learner, stream: BatchStream, device: torch.device
) -> TrainState:
    """Resume from a checkpoint: weights, optimizers, EMA, data position, RNG restored; returns the state.

    The returned :class:`TrainState` holds step, times, loss tracker, carry and last evaluation, and no
    stop reason: the resumed run decides its own.
    """
    load_model_weights(learner.model, checkpoint["model"])
    for (opt, _), opt_state in zip(learner.optimizers, checkpoint["optimizers"], strict=True):
        opt.load_state_dict(opt_state)
    if learner.ema is not None and checkpoint.get("ema") is not None:
        learner.ema = {k: v.to(device) for k, v in checkpoint["ema"].items()}
    state = TrainState(
        step=int(checkpoint["step"]),
        elapsed=float(checkpoint["elapsed"]),
        eval_seconds=float(checkpoint["eval_seconds"]),
        tracker=LossTracker(**checkpoint["tracker"]),
    )
    stream.restore(checkpoint["data_position"])
    _set_rng_state(checkpoint["rng"])
    state.carry = carry_from_state(checkpoint["carry"], device) if checkpoint["carry"] is not None else None
    state.last_eval = checkpoint.get("last_eval")
    return state


def finished_summary(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The stored summary of a run that ended converged or diverged (not to train further), else None.

    Runs that ended on max_steps, epochs or budget resume instead, so a larger bound extends them.
    """
    reason = str(checkpoint.get("stop_reason", ""))
    if checkpoint.get("finished") and reason.startswith(("converged", "diverged")):
        return dict(checkpoint["final_metrics"])
    return None


def truncate_metrics(path: Path, offset: int) -> None:
    """Cut ``metrics.jsonl`` back to its length at the checkpoint: records after it are written again."""
    if path.exists() and path.stat().st_size > offset:
        with open(path, "r+b") as fh:
            fh.truncate(offset)


# --------------------------------------------------------------------------------------------- one step


@dataclasses.dataclass
class StepOutcome:
    """What one optimisation step produced; ``finite`` False: a non-finite loss, nothing was updated."""

    carry: Any  # the ACT carry after this segment
    loss: float  # the loss head's loss (a sum over the batch) divided by the batch size
    metrics: dict[str, torch.Tensor]  # the loss head's 0-dim metric sums
    finite: bool


def optimization_step(
    learner: Learner,
    carry: Any,
    batch: dict[str, torch.Tensor],
    tc: TrainConfig,
    factor: float,
    autocast: contextlib.AbstractContextManager[Any],
) -> StepOutcome:
    """One optimisation step on one ACT segment of the persistent carry.

    Forward through the loss head (a fresh carry when ``carry`` is None); unless the loss is non-finite:
    backward of loss / batch size, grad-norm clipping when ``grad_clip_norm`` is set, each optimizer's rate
    set to its base rate x ``factor`` (from :func:`scheduled_lr_factor`), step, zero_grad, EMA update.
    """
    loss_head = learner.loss_head
    if carry is None:
        carry = loss_head.initial_carry(batch)
    with autocast:
        carry, loss, metrics, _, _ = loss_head(carry, batch)
    loss_value = float(loss.detach()) / tc.batch_size
    if not math.isfinite(loss_value):
        return StepOutcome(carry=carry, loss=loss_value, metrics=metrics, finite=False)
    (loss / tc.batch_size).backward()
    if tc.grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(loss_head.parameters(), tc.grad_clip_norm)
    for opt, base_lr in learner.optimizers:
        for group in opt.param_groups:
            group["lr"] = base_lr * factor
        opt.step()
        opt.zero_grad(set_to_none=True)
    if learner.ema is not None:
        _ema_update(learner.ema, learner.model, float(tc.ema_decay or 0.0))
    return StepOutcome(carry=carry, loss=loss_value, metrics=metrics, finite=True)


def train_record(setup: TrainSetup, state: TrainState, outcome: StepOutcome, factor: float) -> dict[str, Any]:
    """The ``{"type": "train", ...}`` record of the step just taken (``state.step``), for metrics.jsonl."""
    return {
        "type": "train",
        "step": state.step,
        "epoch": setup.stream.epoch,
        "loss": outcome.loss,
        "lr": setup.learner.optimizers[-1][1] * factor,
        **_scalar_metrics(outcome.metrics),
        "time": state.elapsed,
    }


# ------------------------------------------------------------------------------------ evaluation and stops


def eval_due(tc: TrainConfig, step: int) -> bool:
    """Whether to evaluate after the ``step``-th step: every ``eval_interval_steps`` steps, when set."""
    return bool(tc.eval_interval_steps and step % tc.eval_interval_steps == 0)


def evaluate_in_training(setup: TrainSetup, state: TrainState, log: MetricsLog) -> dict[str, Any]:
    """Evaluate during training: score the model (EMA weights when kept), log and return the eval record.

    The ``{"type": "eval", ...}`` record is written to metrics.jsonl and stored as ``state.last_eval``; the
    time taken adds to ``state.eval_seconds``, not to the training time.
    """
    ev = setup.evaluation
    model = setup.learner.model
    t0 = time.perf_counter()
    with _swapped_weights(model, setup.learner.ema):
        result = evaluate(
            model, ev.dataset, setup.tc.eval_batch_size, setup.device, max_examples=ev.max_examples
        )
    state.eval_seconds += time.perf_counter() - t0
    record = {
        "type": "eval",
        "step": state.step,
        "split": ev.split,
        **result,
        "time": time.perf_counter() - t0,
    }
    log.write(record)
    state.last_eval = record
    return record


def stop_before_step(tc: TrainConfig, state: TrainState, interrupted: bool) -> str | None:
    """The stop reason checked before each step: ``max_steps``, ``budget`` or ``interrupted``, else None.

    ``budget`` counts training seconds only; ``interrupted`` is a signal or the step callback asking to
    stop. The ``epochs`` stop comes from the data stream running out (in :func:`run_steps`).
    """
    if tc.max_steps is not None and state.step >= tc.max_steps:
        return "max_steps"
    if tc.budget_seconds is not None and state.elapsed >= tc.budget_seconds:
        return "budget"
    if interrupted:
        return "interrupted"
    return None


def non_finite_stop(loss: float, step: int) -> str:
    """The stop reason when the loss of the step after ``step`` was NaN or infinite."""
    return f"diverged: non-finite loss ({loss}) at step {step + 1}"


def stop_after_step(tc: TrainConfig, state: TrainState) -> str | None:
    """The stop reason checked after each step, before any evaluation: divergence of the smoothed loss."""
    return state.tracker.diverged(tc.divergence_factor)


def convergence_stop(tc: TrainConfig, eval_record: dict[str, Any]) -> str | None:
    """The stop reason after an evaluation: held-out exact accuracy reached ``convergence_exact_accuracy``."""
    target = tc.convergence_exact_accuracy
    if target is not None and eval_record["exact_accuracy"] >= target:
        return f"converged: exact accuracy {eval_record['exact_accuracy']:.4f} >= {target}"
    return None


# --------------------------------------------------------------------------------------------- train


def run_steps(
    setup: TrainSetup,
    state: TrainState,
    log: MetricsLog,
    display: ProgressDisplay,
    stop_flag: threading.Event,
    on_step: StepCallback | None,
) -> None:
    """The training loop: steps until a stop check sets ``state.stop_reason``, with periodic checkpoints.

    Per step: stop checks, next batch, :func:`scheduled_lr_factor`, :func:`optimization_step`, the train
    record, the callback, divergence, evaluation when due (and convergence), a checkpoint every
    ``checkpoint_interval_seconds``. Each step's time (batch, step, bookkeeping) adds to ``state.elapsed``.
    """
    tc = setup.tc
    last_save = time.monotonic()
    while True:
        reason = stop_before_step(tc, state, stop_flag.is_set())
        if reason is not None:
            state.stop_reason = reason
            break
        t0 = time.perf_counter()
        np_batch = setup.stream.next(tc.epochs)
        if np_batch is None:
            state.stop_reason = "epochs"
            break
        batch = to_device(np_batch, setup.device)
        factor = scheduled_lr_factor(state.step + 1, state.elapsed, tc, setup.horizon)
        outcome = optimization_step(setup.learner, state.carry, batch, tc, factor, setup.autocast)
        state.carry = outcome.carry
        if not outcome.finite:
            state.elapsed += time.perf_counter() - t0
            state.stop_reason = non_finite_stop(outcome.loss, state.step)
            break
        state.step += 1
        state.tracker.update(outcome.loss, state.step, tc.lr_warmup_steps)
        state.elapsed += time.perf_counter() - t0

        record = train_record(setup, state, outcome, factor)
        log.write(record)
        last = state.last_eval
        display.update(
            state.step,
            state.elapsed,
            f"loss {state.tracker.ema:.3f}" + (f" exact {last['exact_accuracy']:.3f}" if last else ""),
        )
        if on_step is not None and on_step(record):
            stop_flag.set()

        reason = stop_after_step(tc, state)
        if reason is None and eval_due(tc, state.step):
            reason = convergence_stop(tc, evaluate_in_training(setup, state, log))
        if reason is not None:
            state.stop_reason = reason
            break
        if time.monotonic() - last_save >= tc.checkpoint_interval_seconds:
            save_checkpoint(setup, state, log, finished=False)
            last_save = time.monotonic()


def interrupted_summary(setup: TrainSetup, state: TrainState) -> dict[str, Any]:
    """What train() returns for an interrupted run (no metrics.json is written: the run is to be resumed)."""
    return {
        "stop_reason": "interrupted",
        "steps": state.step,
        "seconds": state.elapsed,
        "seed": setup.seed,
        "task": setup.run.task,
    }


def final_summary(setup: TrainSetup, state: TrainState) -> dict[str, Any]:
    """The summary of a finished run (the keys :func:`train` lists), as plain JSON values."""
    ev = state.last_eval or {}
    final: dict[str, Any] = {
        "exact_accuracy": ev.get("exact_accuracy"),
        "token_accuracy": ev.get("token_accuracy"),
        "mean_act_steps": ev.get("mean_act_steps"),
        "q_halt_accuracy": ev.get("q_halt_accuracy"),
        "eval_count": ev.get("count"),
        "eval_split": ev.get("split"),
        "steps": state.step,
        "epochs": setup.stream.epoch,
        "seconds": state.elapsed,
        "eval_seconds": state.eval_seconds,
        "steps_per_second": state.step / state.elapsed if state.elapsed > 0 else 0.0,
        "stop_reason": state.stop_reason,
        "seed": setup.seed,
        "task": setup.run.task,
        "config": setup.run.to_dict(),
        "num_parameters": count_parameters(setup.learner.model),
        "train_loss": state.tracker.ema,
        "device": str(setup.device),
        "dataset": str(setup.data_root),
    }
    return json.loads(json.dumps(final, default=list))


def write_summary(out: Path, final: dict[str, Any]) -> None:
    """Write the final summary to ``metrics.json`` atomically."""
    atomic_write_text(out / METRICS_JSON, json.dumps(final, indent=2, sort_keys=True) + "\n")


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = resolve_run(run, budget_seconds=budget_seconds, max_steps=max_steps, seed=seed)
    tc = run.train
    dev = torch.device(device) if device is not None else default_device()

    previous_threads = torch.get_num_threads()
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))
    try:
        checkpoint = read_checkpoint(out, resume)
        data_root, train_set, evaluation = load_training_data(run, out, data_dir, tc.seed)
        run = with_dataset_shape(run, train_set.meta)
        tc = run.train
        if checkpoint is not None:
            check_same_run(checkpoint, run, tc.seed, out / CHECKPOINT_NAME)
        learner = build_learner(run, dev)
        stream = BatchStream(train_set, tc.batch_size, tc.augment, tc.seed)
        setup = TrainSetup(
            run=run,
            seed=tc.seed,
            device=dev,
            out=out,
            data_root=data_root,
            learner=learner,
            stream=stream,
            evaluation=evaluation,
            horizon=lr_horizon(tc, stream.steps_per_epoch()),
            autocast=autocast_context(dev, run.model.forward_dtype),
        )
        state = TrainState()
        if checkpoint is not None:
            state = from_checkpoint(checkpoint, learner, stream, dev)
            done = finished_summary(checkpoint)
            if done is not None:
                write_summary(out, done)
                return done
            truncate_metrics(out / METRICS_JSONL, int(checkpoint["jsonl_offset"]))

        with MetricsLog(out / METRICS_JSONL) as log:
            display = ProgressDisplay(progress, setup.horizon, tc.budget_seconds, run.task)
            stop_flag = threading.Event()
            try:
                with _stop_signals(stop_flag):
                    run_steps(setup, state, log, display, stop_flag, on_step)
            finally:
                display.close()

            if state.stop_reason == "interrupted":
                save_checkpoint(setup, state, log, finished=False)
                return interrupted_summary(setup, state)
            if evaluate_at_end and (state.last_eval is None or state.last_eval["step"] != state.step):
                evaluate_in_training(setup, state, log)
            final = final_summary(setup, state)
            save_checkpoint(setup, state, log, finished=True, final=final)
            write_summary(out, final)
            return final
    finally:
        torch.set_num_threads(previous_threads)
