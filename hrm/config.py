"""Typed, JSON-serialisable configuration: every knob evolution may touch lives here."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a dataclass from a dict, refusing unknown keys so typos never pass silently."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    return cls(**data)


@dataclass
class ModelConfig:
    """HRM ACT-V1 architecture. Defaults follow the paper's 27M-parameter model."""

    vocab_size: int = 11
    seq_len: int = 81
    num_puzzle_identifiers: int = 1
    puzzle_emb_ndim: int = 512  # 0 disables the puzzle embedding
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    H_layers: int = 4
    L_layers: int = 4
    H_cycles: int = 2
    L_cycles: int = 2
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    pos_encodings: str = "rope"  # "rope" | "learned" | "none"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    forward_dtype: str = "float32"  # "bfloat16" for GPU presets
    loss_type: str = "stablemax_cross_entropy"  # or "softmax_cross_entropy"
    q_loss_weight: float = 0.5
    attn_impl: str = "auto"  # "auto" (flash-attn if installed, else SDPA) | "sdpa" | "flash"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data)


@dataclass
class TrainConfig:
    """Optimisation and run control. Budgets set by a harness override these at run time."""

    batch_size: int = 64
    lr: float = 1e-4
    lr_min_ratio: float = 1.0
    lr_warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    max_steps: int | None = None
    epochs: int | None = None
    budget_seconds: float | None = None
    eval_interval_steps: int | None = None
    eval_batch_size: int = 256
    checkpoint_interval_seconds: float = 60.0
    augment: bool = True  # on-the-fly augmentation of training batches
    grad_clip_norm: float | None = None
    ema_decay: float | None = None  # EMA of weights, used for evaluation when set
    seed: int = 0
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default
    divergence_factor: float = 10.0  # stop when loss exceeds this multiple of its running minimum
    convergence_exact_accuracy: float | None = None  # stop early once eval exact accuracy reaches it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data)


@dataclass
class RunConfig:
    """One object for a whole run: the task, how to build its data, the model and the training."""

    task: str = "sudoku4"
    data: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "data": dict(self.data), "model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        unknown = sorted(set(data) - {"task", "data", "model", "train"})
        if unknown:
            raise ValueError(f"RunConfig: unknown field(s) {unknown}")
        return cls(
            task=data.get("task", "sudoku4"),
            data=dict(data.get("data", {})),
            model=ModelConfig.from_dict(data.get("model", {})),
            train=TrainConfig.from_dict(data.get("train", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_json(Path(path).read_text())
