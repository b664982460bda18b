"""A trusted task from the user's own JSONL file: ``{"input": [tokens], "output": [tokens]}`` per line.

``evolve.py --task-file decisions.jsonl`` judges candidates on it like on the built-in puzzles. The host
reads and validates every line (a clear error names the file and line: malformed JSON, a missing or empty
``input``/``output``, a token that is not a string or an integer, a line over ``MAX_LINE_BYTES`` or a
sequence over ``MAX_SEQ_LEN`` tokens), then:

- **deduplicates inputs**: an input that occurs on several lines is kept once, with its most frequent
  output (the first seen on a tie), so no input can sit in two splits; how many lines were dropped and how
  many inputs had conflicting outputs is reported;
- **splits** train/select/final with the run's secret seed (``HOLDOUT_FRACTION`` of the distinct inputs
  each for select and final), or takes fixed splits from ``--select-file`` / ``--final-file``: a held-out
  line whose input is also in train (or a final line whose input is in select) is dropped and counted;
- **encodes**: PAD is id 0 (padded label positions are ignored by the loss and the score), ``<unk>`` id 1,
  the vocabulary takes ids 2.. in first-seen order over the train lines (inputs and outputs) and then the
  held-out *inputs*. A held-out output token that occurs nowhere else is encoded as ``<unk>`` on the host:
  the vocabulary a sandbox sees holds nothing that only a held-out label holds. (A model that answers
  ``<unk>`` there is counted right; no train label is ``<unk>``, so training gives it no reason to.) ``seq_len`` is the longest
  sequence of any line of the files (inputs are padded, outputs too; output position i is predicted at
  input position i).

The labels of select and final stay on the host exactly as for the puzzles (``puzzles.splits`` seals the
views); the dataset.json of every split holds only the vocabulary and its example count. The task's
spec (``file_task_spec``) holds the files' sha256, so a resumed run refuses a changed file, and the split
sizes and ``seq_len``; ``data/file_task.json`` (host only) records the build: the vocabulary, the counts
and every drop, and how many examples' output occurs verbatim in their own input (legal: a copy task;
reported because a held-out split full of them is answered by copying).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from puzzles.format import DatasetMetadata, write_split
from puzzles.tasks import FILE_GPU_TASK_NAME, FILE_TASK_NAME, FILE_TASKS, TaskSpec

MAX_LINE_BYTES = 1 << 20
"""A line longer than this (1 MiB, without its newline) is refused before it is parsed."""
MAX_SEQ_LEN = 1024
"""The longest input or output, in tokens."""
MAX_TOKEN_CHARS = 256
MAX_LINES = 2_000_000
MIN_EXAMPLES = 20
"""Distinct inputs a file needs when the run splits it (a few for each held-out split and a train batch)."""
HOLDOUT_FRACTION = 0.1
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
RESERVED = (PAD_TOKEN, UNK_TOKEN)
PAD_ID, UNK_ID = 0, 1
REPORT_FILE = "file_task.json"
TASK_NAME, GPU_TASK_NAME = FILE_TASK_NAME, FILE_GPU_TASK_NAME
CPU_EVAL_SEGMENTS, GPU_EVAL_SEGMENTS = 4, 16

Seq = tuple[str, ...]


class FileTaskError(ValueError):
    """A task file the host refuses; the message names the file and, where it can, the line."""


@dataclass
class FileLines:
    """One file's validated lines, in file order."""

    path: Path
    sha256: str
    pairs: list[tuple[Seq, Seq]]
    blank_lines: int = 0


@dataclass
class Deduplicated:
    """One example per distinct input (first-seen order), its most frequent output."""

    examples: dict[Seq, Seq]
    dropped: int  # lines removed because their input occurred before
    conflicting: int  # inputs whose lines disagree on the output
    conflict_lines: int  # lines whose output lost the vote


@dataclass
class FileSplits:
    """The examples of each split (train first) and what was dropped on the way."""

    splits: dict[str, list[tuple[Seq, Seq]]]
    notes: dict[str, Any] = field(default_factory=dict)


def _token(value: Any, where: str, field_name: str, pos: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FileTaskError(f"{where}: {field_name}[{pos}] is {json.dumps(value)[:40]} ({type(value).__name__}); "
                            "tokens must be strings or integers")
    text = str(value)
    if not text:
        raise FileTaskError(f"{where}: {field_name}[{pos}] is an empty string")
    if len(text) > MAX_TOKEN_CHARS:
        raise FileTaskError(f"{where}: {field_name}[{pos}] is a token of {len(text)} characters "
                            f"(at most {MAX_TOKEN_CHARS})")
    if text in RESERVED:
        raise FileTaskError(f"{where}: {field_name}[{pos}] is {text!r}, a reserved token ({', '.join(RESERVED)})")
    return text


def parse_line(text: str, where: str) -> tuple[Seq, Seq]:
    """One line's (input, output) token keys; ``3`` and ``"3"`` are the same token."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileTaskError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise FileTaskError(f"{where}: expected a JSON object {{\"input\": [...], \"output\": [...]}}, "
                            f"got {type(record).__name__}")
    out: list[Seq] = []
    for name in ("input", "output"):
        if name not in record:
            raise FileTaskError(f"{where}: no {name!r} field")
        seq = record[name]
        if not isinstance(seq, list):
            raise FileTaskError(f"{where}: {name!r} must be a list of tokens, got {type(seq).__name__}")
        if not seq:
            raise FileTaskError(f"{where}: {name!r} is empty")
        if len(seq) > MAX_SEQ_LEN:
            raise FileTaskError(f"{where}: {name!r} has {len(seq)} tokens, more than {MAX_SEQ_LEN}")
        out.append(tuple(_token(t, where, name, i) for i, t in enumerate(seq)))
    return out[0], out[1]


def read_lines(path: str | Path) -> FileLines:
    """Read and validate a task file line by line (a line over MAX_LINE_BYTES is never parsed)."""
    path = Path(path)
    digest = hashlib.sha256()
    pairs: list[tuple[Seq, Seq]] = []
    blank = 0
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise FileTaskError(f"{path}: cannot read the task file ({exc.strerror or exc})") from None
    with handle:
        lineno = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 2)
            if not raw:
                break
            lineno += 1
            digest.update(raw)
            content = raw[:-1] if raw.endswith(b"\n") else raw
            if len(content) > MAX_LINE_BYTES:
                raise FileTaskError(f"{path}:{lineno}: the line is longer than {MAX_LINE_BYTES} bytes "
                                    "(refused unread)")
            if lineno > MAX_LINES:
                raise FileTaskError(f"{path}: more than {MAX_LINES} lines")
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FileTaskError(f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not text.strip():
                blank += 1
                continue
            pairs.append(parse_line(text, f"{path}:{lineno}"))
    if not pairs:
        raise FileTaskError(f"{path}: no examples (every line is blank)")
    return FileLines(path, digest.hexdigest(), pairs, blank)


def deduplicate(pairs: Sequence[tuple[Seq, Seq]]) -> Deduplicated:
    """One example per distinct input, with the output most of its lines give (the first seen on a tie)."""
    outputs: dict[Seq, Counter[Seq]] = {}
    for inp, out in pairs:
        outputs.setdefault(inp, Counter())[out] += 1
    examples: dict[Seq, Seq] = {}
    conflicting = conflict_lines = 0
    for inp, counts in outputs.items():
        best, n = counts.most_common(1)[0]  # most_common keeps first-seen order among equal counts
        examples[inp] = best
        if len(counts) > 1:
            conflicting += 1
            conflict_lines += sum(counts.values()) - n
    return Deduplicated(examples, len(pairs) - len(examples), conflicting, conflict_lines)


def _holdout_counts(n: int, fraction: float = HOLDOUT_FRACTION) -> tuple[int, int, int]:
    if n < MIN_EXAMPLES:
        raise FileTaskError(f"only {n} distinct inputs; a run splits at least {MIN_EXAMPLES} into train, select "
                            "and final (or pass --select-file and --final-file)")
    held = max(1, int(round(fraction * n)))
    return n - 2 * held, held, held


def _fixed_heldout(train: dict[Seq, Seq], select: dict[Seq, Seq], final: dict[Seq, Seq]
                   ) -> tuple[dict[Seq, Seq], dict[Seq, Seq], dict[str, int]]:
    """Held-out examples without any input of an earlier split; counts of what was dropped."""
    sel = {k: v for k, v in select.items() if k not in train}
    fin = {k: v for k, v in final.items() if k not in train and k not in sel}
    notes = {"select_dropped_in_train": len(select) - len(sel),
             "final_dropped_in_train": sum(1 for k in final if k in train),
             "final_dropped_in_select": sum(1 for k in final if k not in train and k in sel)}
    for name, kept in (("select", sel), ("final", fin)):
        if not kept:
            raise FileTaskError(f"the {name} file has no input that is not already in an earlier split")
    return sel, fin, notes


@dataclass
class _Files:
    lines: dict[str, FileLines]
    dedup: dict[str, Deduplicated]


def _read_all(train_file: str | Path, select_file: str | Path | None,
              final_file: str | Path | None) -> _Files:
    if (select_file is None) != (final_file is None):
        raise FileTaskError("give both --select-file and --final-file, or neither (the run splits the file)")
    named = {"train": train_file, "select": select_file, "final": final_file}
    lines = {k: read_lines(v) for k, v in named.items() if v is not None}
    return _Files(lines, {k: deduplicate(v.pairs) for k, v in lines.items()})


def _seq_len(files: _Files) -> int:
    return max(len(s) for f in files.lines.values() for pair in f.pairs for s in pair)


def file_task_spec(train_file: str | Path, select_file: str | Path | None = None,
                   final_file: str | Path | None = None, *, gpus: bool = False) -> Any:
    """The trusted TaskSpec of a task file (puzzles.tasks.TaskSpec): its files and their sha256, the split
    sizes and seq_len, all a function of the files' content. Raises FileTaskError naming the problem."""

    files = _read_all(train_file, select_file, final_file)
    if select_file is None:
        n_train, n_select, n_final = _holdout_counts(len(files.dedup["train"].examples))
    else:
        sel, fin, _ = _fixed_heldout(files.dedup["train"].examples, files.dedup["select"].examples,
                                     files.dedup["final"].examples)
        n_train, n_select, n_final = len(files.dedup["train"].examples), len(sel), len(fin)
    kwargs: dict[str, Any] = {
        "files": {k: str(Path(v.path).resolve()) for k, v in files.lines.items()},
        "sha256": {k: v.sha256 for k, v in files.lines.items()},
        "seq_len": _seq_len(files),
        "holdout_fraction": HOLDOUT_FRACTION if select_file is None else None,
    }
    return TaskSpec(GPU_TASK_NAME if gpus else TASK_NAME, "file", kwargs, n_train=n_train, n_select=n_select,
                    n_final=n_final, eval_segments=GPU_EVAL_SEGMENTS if gpus else CPU_EVAL_SEGMENTS)


def split_examples(files: _Files, rng: np.random.Generator) -> FileSplits:
    """Train/select/final examples: the fixed files', or the train file's distinct inputs split by ``rng``."""
    train = files.dedup["train"]
    notes: dict[str, Any] = {"lines": {k: len(v.pairs) for k, v in files.lines.items()},
                             "duplicate_lines_dropped": {k: v.dropped for k, v in files.dedup.items()},
                             "conflicting_inputs": {k: v.conflicting for k, v in files.dedup.items()},
                             "conflict_lines_outvoted": {k: v.conflict_lines for k, v in files.dedup.items()}}
    if "select" in files.dedup:
        sel, fin, dropped = _fixed_heldout(train.examples, files.dedup["select"].examples,
                                           files.dedup["final"].examples)
        notes["heldout_dropped"] = dropped
        return FileSplits({"train": list(train.examples.items()), "select": list(sel.items()),
                           "final": list(fin.items())}, notes)
    items = list(train.examples.items())
    n_train, n_select, n_final = _holdout_counts(len(items))
    order = rng.permutation(len(items))
    parts = {"select": order[:n_select], "final": order[n_select:n_select + n_final],
             "train": order[n_select + n_final:]}
    splits = {name: [items[i] for i in sorted(parts[name].tolist())] for name in ("train", "select", "final")}
    assert len(splits["train"]) == n_train
    return FileSplits(splits, notes)


def build_vocab(splits: dict[str, list[tuple[Seq, Seq]]]) -> list[str]:
    """Tokens in first-seen order over the train lines (input then output), then the held-out inputs."""
    seen: dict[str, None] = {}
    for inp, out in splits["train"]:
        for t in (*inp, *out):
            seen.setdefault(t, None)
    for name, pairs in splits.items():
        if name != "train":
            for inp, _ in pairs:
                for t in inp:
                    seen.setdefault(t, None)
    return list(seen)


def encode(pairs: Sequence[tuple[Seq, Seq]], index: dict[str, int], seq_len: int
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """[N, seq_len] inputs and labels (PAD-padded); output tokens outside ``index`` become UNK (counted)."""
    inputs = np.full((len(pairs), seq_len), PAD_ID, dtype=np.int64)
    labels = np.full((len(pairs), seq_len), PAD_ID, dtype=np.int64)
    unknown = 0
    for row, (inp, out) in enumerate(pairs):
        inputs[row, :len(inp)] = [index[t] for t in inp]
        ids = [index.get(t, UNK_ID) for t in out]
        unknown += sum(1 for i in ids if i == UNK_ID)
        labels[row, :len(out)] = ids
    return inputs, labels, unknown


def _contains(haystack: Seq, needle: Seq) -> bool:
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def outputs_in_input(pairs: Sequence[tuple[Seq, Seq]]) -> int:
    """Examples whose whole output occurs verbatim, in order, inside their input: legal (a copy or lookup
    task), but a held-out split full of them is answered by copying, so the build reports the count."""
    return sum(1 for inp, out in pairs if _contains(inp, out))


def _single_csr(n: int) -> dict[str, np.ndarray]:
    return {"puzzle_identifiers": np.zeros(n, dtype=np.int32), "puzzle_indices": np.arange(n + 1, dtype=np.int32),
            "group_indices": np.arange(n + 1, dtype=np.int32)}


def build_file_dataset(out_dir: Path, rng: np.random.Generator, *, files: dict[str, str], sha256: dict[str, str],
                       seq_len: int, holdout_fraction: float | None = None,
                       splits: dict[str, int] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> DatasetMetadata:
    """The builder behind ``build_dataset("file", ...)``: re-reads the files (refusing any whose sha256
    moved since the spec was made), splits, encodes, writes train/select/final and ``file_task.json``."""
    del holdout_fraction  # part of the spec; the split uses HOLDOUT_FRACTION (the spec records it)
    read = _read_all(files["train"], files.get("select"), files.get("final"))
    for name, lines in read.lines.items():
        if lines.sha256 != sha256.get(name):
            raise FileTaskError(f"{lines.path}: the file changed since the run read it (sha256 "
                                f"{str(sha256.get(name))[:12]}..., now {lines.sha256[:12]}...)")
    got = split_examples(read, rng)
    if splits is not None and {k: len(v) for k, v in got.splits.items()} != dict(splits):
        raise FileTaskError(f"split sizes {({k: len(v) for k, v in got.splits.items()})} differ from the spec's "
                            f"{dict(splits)}")
    vocab = build_vocab(got.splits)
    index = {t: i + len(RESERVED) for i, t in enumerate(vocab)}
    full_vocab = [*RESERVED, *vocab]
    out_dir = Path(out_dir)
    unknown: dict[str, int] = {}
    meta: DatasetMetadata | None = None
    for name, pairs in got.splits.items():
        inputs, labels, unknown[name] = encode(pairs, index, seq_len)
        # Only the vocabulary and the count: nothing in a held-out split's dataset.json comes from its labels.
        params: dict[str, Any] = {"vocab": full_vocab, "examples": len(pairs)}
        if name == "train":  # the train labels are in the sandbox anyway; a held-out split's never are
            params["max_output_len"] = max(len(out) for _, out in pairs)
        split_meta = DatasetMetadata(pad_id=PAD_ID, ignore_label_id=PAD_ID, blank_identifier_id=0,
                                     vocab_size=len(full_vocab), seq_len=seq_len, num_puzzle_identifiers=1,
                                     total_groups=len(pairs), mean_puzzle_examples=1.0, sets=["all"], task="file",
                                     params=params)
        write_split(out_dir, name, {"inputs": inputs, "labels": labels, **_single_csr(len(pairs))}, split_meta)
        meta = meta or split_meta
        if progress is not None:
            progress(len(pairs), len(pairs))
    report = {"files": files, "sha256": sha256, "seq_len": seq_len, "vocab_size": len(full_vocab),
              "vocab": full_vocab, "splits": {k: len(v) for k, v in got.splits.items()},
              "unknown_label_tokens": unknown,
              "outputs_in_input": {k: outputs_in_input(v) for k, v in got.splits.items()}, **got.notes}
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    assert meta is not None
    return meta


def describe_build(report: dict[str, Any]) -> list[str]:
    """The build's report in sentences for the run's display."""
    s = report["splits"]
    lines = [f"task file: {s['train']} train / {s['select']} select / {s['final']} final examples, vocabulary "
             f"{report['vocab_size']} tokens (PAD and <unk> included), seq_len {report['seq_len']}"]
    dup = {k: v for k, v in report.get("duplicate_lines_dropped", {}).items() if v}
    if dup:
        lines.append("duplicate inputs: dropped " + ", ".join(f"{v} line(s) of the {k} file" for k, v in dup.items())
                     + " (each input is kept once, with its most frequent output, so no input is in two splits)")
    conf = {k: v for k, v in report.get("conflicting_inputs", {}).items() if v}
    if conf:
        lines.append("conflicting outputs: " + ", ".join(f"{v} input(s) of the {k} file" for k, v in conf.items())
                     + " had several outputs; the most frequent was kept")
    held = {k: v for k, v in report.get("heldout_dropped", {}).items() if v}
    if held:
        lines.append("held-out lines dropped because their input is in an earlier split: "
                     + ", ".join(f"{k.replace('_dropped_in_', ' in ')} {v}" for k, v in held.items()))
    unk = {k: v for k, v in report.get("unknown_label_tokens", {}).items() if v and k != "train"}
    if unk:
        lines.append("held-out output tokens seen in no train line or input (scored against <unk>, which no "
                     "train label teaches): "
                     + ", ".join(f"{k} {v}" for k, v in unk.items()))
    copied = {k: v for k, v in report.get("outputs_in_input", {}).items() if v and k != "train"}
    if copied:
        sizes = report["splits"]
        lines.append("outputs found verbatim in their own input (answerable by copying; fine for a copy task): "
                     + ", ".join(f"{k} {v} of {sizes[k]}" for k, v in copied.items()))
    return lines


def is_file_task(name: str) -> bool:
    return name in FILE_TASKS
