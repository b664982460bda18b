"""A task from your own sequences: JSONL lines ``{"input": [tokens], "output": [tokens]}``.

Tokens may be strings or integers; both are keyed by their text, so ``3`` and ``"3"`` are the same
token. Token id 0 is PAD; the vocabulary (given, or built from the data in first-seen order) takes ids
1..V. Inputs and outputs are padded with PAD to ``seq_len`` (default: the longest sequence in either
file); padded label positions equal ``ignore_label_id`` (0) and are left out of the loss. Each line is
one puzzle and one group, all with the blank identifier 0.

Example, an agent's logged states and chosen actions::

    {"input": ["hp:3", "enemy:near", "ammo:0"], "output": ["flee"]}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PAD_TOKEN = "<pad>"


def token_key(token: Any) -> str:
    if isinstance(token, bool) or not isinstance(token, (str, int)):
        raise ValueError(f"tokens must be strings or integers, got {token!r}")
    return str(token)


def read_jsonl(path: Path) -> list[tuple[list[str], list[str]]]:
    """Parse a JSONL file into (input keys, output keys) pairs; blank lines are skipped."""
    pairs: list[tuple[list[str], list[str]]] = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("input"), list) \
                or not isinstance(record.get("output"), list):
            raise ValueError(f"{path}:{lineno}: expected an object with list fields 'input' and 'output'")
        if not record["input"] or not record["output"]:
            raise ValueError(f"{path}:{lineno}: 'input' and 'output' must be non-empty")
        try:
            pairs.append(([token_key(t) for t in record["input"]], [token_key(t) for t in record["output"]]))
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from exc
    if not pairs:
        raise ValueError(f"{path}: no examples")
    return pairs


def build_vocab(pairs: Sequence[tuple[list[str], list[str]]]) -> list[str]:
    """Tokens in first-seen order (inputs then outputs, line by line); PAD is not included."""
    seen: dict[str, None] = {}
    for inp, out in pairs:
        for t in (*inp, *out):
            seen.setdefault(t, None)
    return list(seen)


def encode_pairs(
    pairs: Sequence[tuple[list[str], list[str]]], vocab: Sequence[str], seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """[N, seq_len] input and label token ids; token i of ``vocab`` gets id i + 1."""
    index = {t: i + 1 for i, t in enumerate(vocab)}
    inputs = np.zeros((len(pairs), seq_len), dtype=np.int64)
    labels = np.zeros((len(pairs), seq_len), dtype=np.int64)
    for row, (inp, out) in enumerate(pairs):
        for name, seq, target in (("input", inp, inputs), ("output", out, labels)):
            if len(seq) > seq_len:
                raise ValueError(f"example {row}: {name} has {len(seq)} tokens, more than seq_len={seq_len}")
            try:
                target[row, : len(seq)] = [index[t] for t in seq]
            except KeyError as exc:
                raise ValueError(f"example {row}: token {exc.args[0]!r} is not in the vocabulary") from exc
    return inputs, labels


def resolve_vocab(vocab: Sequence[Any] | None, pairs: Sequence[tuple[list[str], list[str]]]) -> list[str]:
    if vocab is None:
        return build_vocab(pairs)
    keys = [token_key(t) for t in vocab]
    if PAD_TOKEN in keys:
        keys.remove(PAD_TOKEN)
    if len(set(keys)) != len(keys):
        raise ValueError("the given vocabulary repeats a token")
    return keys
