"""Answer with a trained checkpoint: token sequences in, the model's output tokens out (for a task file, an
agent's next action from its logged state).

    python -m hrm act --checkpoint runs/best/checkpoint.pt --state '["key:no", ".", "A", ...]'
    python -m hrm act --checkpoint runs/best/checkpoint.pt --file decisions.jsonl   # scores lines with outputs

In Python::

    from hrm.act import Actor
    actor = Actor.load("runs/best/checkpoint.pt")
    actor.answer([["key:no", ".", "A", ...]])   # -> [["right"]]

The vocabulary (id i is ``vocab[i]``, as the file task encodes it: PAD, ``<unk>``, then the tokens) and the
output length come from the checkpoint's run config (``data["vocab"]``, ``data["output_len"]``, which the
``file`` presets carry), or from a dataset.json given with ``vocab_from``. Tokens are keyed by their text, so
``3`` and ``"3"`` are the same; an input token the model never saw becomes ``<unk>``. The model runs its
``halt_max_steps`` ACT segments (or ``segments``) and the last segment's argmax is the answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

PAD, UNK = "<pad>", "<unk>"


class Actor:
    """A checkpoint's model with its vocabulary, answering token sequences."""

    def __init__(self, model: torch.nn.Module, config: Any, vocab: Sequence[str], output_len: int,
                 device: str = "cpu") -> None:
        if len(vocab) != int(config.vocab_size):
            raise ValueError(f"the vocabulary has {len(vocab)} tokens, the model {config.vocab_size}")
        self.model, self.config, self.device = model, config, device
        self.vocab = [str(t) for t in vocab]
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.output_len = int(output_len)

    @classmethod
    def load(cls, checkpoint: str | Path, *, vocab_from: str | Path | None = None, output_len: int | None = None,
             device: str = "cpu") -> Actor:
        from hrm.evaluate import load_checkpoint

        run, model = load_checkpoint(Path(checkpoint), device=device)
        vocab = run.data.get("vocab")
        length = output_len or run.data.get("output_len")
        if vocab_from is not None:
            meta = json.loads(Path(vocab_from).read_text())
            params = meta.get("params") or {}
            vocab = params.get("vocab")
            length = output_len or params.get("max_output_len") or length
        if not vocab:
            raise ValueError(f"{checkpoint} carries no vocabulary (data['vocab']); pass the train split's "
                             "dataset.json (--vocab-from)")
        return cls(model, run.model, vocab, int(length or 1), device)

    def encode(self, state: Sequence[Any]) -> list[int]:
        if not state:
            raise ValueError("an empty state")
        if len(state) > int(self.config.seq_len):
            raise ValueError(f"a state of {len(state)} tokens; the model reads at most {self.config.seq_len}")
        unk = self.index.get(UNK)
        ids = []
        for token in state:
            if isinstance(token, bool) or not isinstance(token, (str, int)):
                raise ValueError(f"tokens are strings or integers, got {token!r}")
            i = self.index.get(str(token), unk)
            if i is None:
                raise ValueError(f"token {token!r} is not in the vocabulary")
            ids.append(i)
        return ids + [self.index.get(PAD, 0)] * (int(self.config.seq_len) - len(ids))

    def answer(self, states: Sequence[Sequence[Any]], segments: int | None = None) -> list[list[str]]:
        """The model's output tokens (the first ``output_len`` positions) for each state."""
        inputs = torch.tensor([self.encode(s) for s in states], dtype=torch.int64, device=self.device)
        batch = {"inputs": inputs, "puzzle_identifiers": torch.zeros(len(states), dtype=torch.int64,
                                                                     device=self.device)}
        self.model.eval()
        with torch.inference_mode():
            carry = self.model.initial_carry(batch)
            outputs: dict[str, torch.Tensor] = {}
            for _ in range(int(segments or self.config.halt_max_steps)):
                carry, outputs = self.model(carry, batch)
            ids = outputs["logits"].argmax(dim=-1)[:, : self.output_len].cpu().tolist()
        return [[self.vocab[i] for i in row] for row in ids]


def read_states(path: Path) -> tuple[list[list[Any]], list[list[str]] | None]:
    """The inputs of a JSONL file and, when every line has one, the outputs (as token text)."""
    states: list[list[Any]] = []
    outputs: list[list[str]] = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("input"), list):
            raise ValueError(f"{path}:{lineno}: expected an object with a list 'input'")
        states.append(record["input"])
        if isinstance(record.get("output"), list):
            outputs.append([str(t) for t in record["output"]])
    return states, (outputs if len(outputs) == len(states) else None)
