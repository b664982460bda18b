"""The file task (puzzles/file_task.py): validation naming the line, deduplication across splits, the run's
secret split, sealed views that hold no held-out label, and a resume that refuses a changed file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from puzzles.arrays import load_split
from puzzles.file_task import MAX_LINE_BYTES, FileTaskError, describe_build, file_task_spec, read_lines
from puzzles.splits import ensure_run_data, sealed_view
from puzzles.tasks import task_spec


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _rows(n: int, start: int = 0, out: str | None = None) -> list[dict[str, list[object]]]:
    """Distinct inputs; the output is a function of the input (the parity of its number)."""
    return [{"input": ["s", i // 10, i % 10], "output": [out or ("even" if i % 2 == 0 else "odd")]}
            for i in range(start, start + n)]


@pytest.mark.parametrize(("line", "expected"), [
    ('{"input": ["a"], "output": ["b"]', "t.jsonl:3: not valid JSON"),
    ('["a", "b"]', "t.jsonl:3: expected a JSON object"),
    ('{"input": [], "output": ["b"]}', "t.jsonl:3: 'input' is empty"),
    ('{"input": ["a"], "output": []}', "t.jsonl:3: 'output' is empty"),
    ('{"input": ["a"]}', "t.jsonl:3: no 'output' field"),
    ('{"input": "abc", "output": ["b"]}', "t.jsonl:3: 'input' must be a list"),
    ('{"input": ["a", 1.5], "output": ["b"]}', "t.jsonl:3: input[1] is 1.5 (float)"),
    ('{"input": ["a", true], "output": ["b"]}', "t.jsonl:3: input[1] is true (bool)"),
    ('{"input": ["a", null], "output": ["b"]}', "t.jsonl:3: input[1] is null"),
    ('{"input": ["a", ["x"]], "output": ["b"]}', "t.jsonl:3: input[1] is [\"x\"] (list)"),
    ('{"input": ["a"], "output": [""]}', "t.jsonl:3: output[0] is an empty string"),
    ('{"input": ["<pad>"], "output": ["b"]}', "t.jsonl:3: input[0] is '<pad>', a reserved token"),
    ('{"input": ["a"], "output": ["b"]} trailing', "t.jsonl:3: not valid JSON"),
])
def test_a_bad_line_is_refused_naming_its_number(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"input": ["a"], "output": ["b"]}\n\n' + line + "\n")  # line 2 is blank, skipped
    with pytest.raises(FileTaskError) as info:
        read_lines(path)
    assert expected in str(info.value)


def test_a_10_mb_line_is_refused_unparsed(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    big = json.dumps({"input": ["x"] * (10 * 2**20 // 5), "output": ["y"]})
    assert len(big) > 10 * 2**20 > MAX_LINE_BYTES
    path.write_text(json.dumps(_rows(1)[0]) + "\n" + big + "\n")
    with pytest.raises(FileTaskError, match=r"big.jsonl:2: the line is longer than 1048576 bytes"):
        read_lines(path)
    with pytest.raises(FileTaskError, match="big.jsonl:2"):  # the run's spec refuses it the same way
        file_task_spec(path)


def test_too_long_sequence_non_utf8_and_empty_files(tmp_path: Path) -> None:
    long = _write(tmp_path / "long.jsonl", [{"input": ["a"] * 1025, "output": ["b"]}])
    with pytest.raises(FileTaskError, match="long.jsonl:1: 'input' has 1025 tokens, more than 1024"):
        read_lines(long)
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b'{"input": ["\xff"], "output": ["b"]}\n')
    with pytest.raises(FileTaskError, match="raw.jsonl:1: not UTF-8"):
        read_lines(raw)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n \n")
    with pytest.raises(FileTaskError, match="no examples"):
        read_lines(blank)
    with pytest.raises(FileTaskError, match="cannot read"):
        read_lines(tmp_path / "missing.jsonl")
    few = _write(tmp_path / "few.jsonl", _rows(10))
    with pytest.raises(FileTaskError, match="only 10 distinct inputs"):
        file_task_spec(few)


def _inputs(split: object) -> set[bytes]:
    return {row.tobytes() for row in split.inputs}  # type: ignore[attr-defined]


def test_secret_split_keeps_every_input_in_one_split_and_reports_dropped_duplicates(tmp_path: Path) -> None:
    rows = _rows(200)
    rows += [rows[i] for i in range(0, 60, 3)]  # 20 exact duplicates
    rows += [{"input": rows[i]["input"], "output": ["flip"]} for i in (1, 5)]  # outvoted: 2 conflicts
    rows += [{"input": rows[7]["input"], "output": ["flip"]}, {"input": rows[7]["input"], "output": ["flip"]}]
    path = _write(tmp_path / "d.jsonl", rows)
    spec = file_task_spec(path)
    assert spec.name == "file" and spec.builder == "file" and spec.eval_segments == 4
    assert (spec.n_train, spec.n_select, spec.n_final) == (160, 20, 20)  # 200 distinct inputs
    assert spec.kwargs["seq_len"] == 3 and spec.kwargs["sha256"]["train"] == read_lines(path).sha256
    data = ensure_run_data(tmp_path / "run", spec)
    splits = {name: load_split(data, name) for name in ("train", "select", "final")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 160, "select": 20, "final": 20}
    sets = {k: _inputs(v) for k, v in splits.items()}
    assert not (sets["train"] & sets["select"]) and not (sets["train"] & sets["final"])
    assert not (sets["select"] & sets["final"])
    assert sum(len(s) for s in sets.values()) == 200  # each distinct input exactly once
    report = json.loads((data / "file_task.json").read_text())
    assert report["duplicate_lines_dropped"] == {"train": 24} and report["conflicting_inputs"] == {"train": 3}
    assert report["conflict_lines_outvoted"] == {"train": 3}  # a line each for rows 1 and 5, row 7's first
    vocab = report["vocab"]
    flip = vocab.index("flip") if "flip" in vocab else None
    # row 7's input now answers "flip" (2 votes to 1); rows 1 and 5 keep their own output (first seen on a tie)
    all_labels = np.concatenate([s.labels for s in splits.values()])  # type: ignore[misc]
    assert flip is not None and int((all_labels[:, 0] == flip).sum()) == 1
    text = " ".join(describe_build(report))
    assert "dropped 24 line(s) of the train file" in text and "3 input(s) of the train file" in text


def test_the_split_follows_the_secret_and_a_resume_refuses_a_changed_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", _rows(100))
    spec = file_task_spec(path)
    a = ensure_run_data(tmp_path / "a", spec)
    b = ensure_run_data(tmp_path / "b", spec)  # another run, another secret
    assert _inputs(load_split(a, "select")) != _inputs(load_split(b, "select"))
    again = ensure_run_data(tmp_path / "a", file_task_spec(path))  # the same file resumes
    assert _inputs(load_split(again, "select")) == _inputs(load_split(a, "select"))
    _write(path, _rows(100, out="same"))
    with pytest.raises(ValueError, match=r"d.jsonl changed since this run built its splits \(sha256"):
        ensure_run_data(tmp_path / "a", file_task_spec(path))
    stored = task_spec("file", a)
    assert stored.to_dict() == spec.to_dict()


def test_a_file_changed_between_spec_and_build_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", _rows(100))
    spec = file_task_spec(path)
    _write(path, _rows(100, start=1))
    with pytest.raises(FileTaskError, match="the file changed since the run read it"):
        ensure_run_data(tmp_path / "run", spec)


def test_fixed_splits_drop_held_out_inputs_seen_earlier(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.jsonl", _rows(50))
    select_rows = _rows(10, start=100) + [_rows(50)[4], _rows(50)[9]]  # two select lines copied from train
    select = _write(tmp_path / "select.jsonl", select_rows)
    final = _write(tmp_path / "final.jsonl", _rows(10, start=200) + [select_rows[0], _rows(50)[0]])
    with pytest.raises(FileTaskError, match="both --select-file and --final-file"):
        file_task_spec(train, select)
    spec = file_task_spec(train, select, final)
    assert (spec.n_train, spec.n_select, spec.n_final) == (50, 10, 10)
    data = ensure_run_data(tmp_path / "run", spec)
    report = json.loads((data / "file_task.json").read_text())
    assert report["heldout_dropped"] == {"select_dropped_in_train": 2, "final_dropped_in_train": 1,
                                         "final_dropped_in_select": 1}
    sets = {k: _inputs(load_split(data, k)) for k in ("train", "select", "final")}
    assert not (sets["train"] & sets["select"]) and not ((sets["train"] | sets["select"]) & sets["final"])
    assert "held-out lines dropped because their input is in an earlier split" in " ".join(describe_build(report))
    only_copies = _write(tmp_path / "copies.jsonl", [_rows(50)[1]])
    with pytest.raises(FileTaskError, match="the select file has no input that is not already in an earlier split"):
        file_task_spec(train, only_copies, final)


def test_sealed_views_hold_no_held_out_label_not_even_in_the_vocabulary(tmp_path: Path) -> None:
    """A held-out output token that occurs nowhere else is scored as <unk> and never named in a file the
    sandbox sees: the evaluate stage's view of select holds inputs, the vocabulary and a count."""
    train = _write(tmp_path / "train.jsonl", _rows(40))
    select = _write(tmp_path / "select.jsonl", _rows(10, start=100, out="SECRET-select-label"))
    final = _write(tmp_path / "final.jsonl", _rows(10, start=200, out="SECRET-final-label"))
    data = ensure_run_data(tmp_path / "run", file_task_spec(train, select, final))
    held = load_split(data, "select")
    assert held.labels is not None and set(held.labels[:, 0].tolist()) == {1}  # <unk> on the host
    view = sealed_view(data, "select", tmp_path / "view")
    files = sorted(p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file())
    assert "test/all__labels.npy" not in files and "test/all__inputs.npy" in files
    for p in view.rglob("*"):
        if p.is_file():
            assert b"SECRET" not in p.read_bytes(), p
    meta = json.loads((view / "test" / "dataset.json").read_text())
    assert set(meta["params"]) == {"vocab", "examples"} and "SECRET-select-label" not in meta["params"]["vocab"]
    report = json.loads((data / "file_task.json").read_text())  # the host's record says what happened
    assert report["unknown_label_tokens"] == {"train": 0, "select": 10, "final": 10}
    assert "scored against <unk>" in " ".join(describe_build(report))


def test_outputs_copied_from_the_input_are_legal_and_reported(tmp_path: Path) -> None:
    rows = [{"input": ["q", i, i + 1, "end"], "output": [i, i + 1] if i % 4 == 0 else ["no"]} for i in range(100)]
    data = ensure_run_data(tmp_path / "run", file_task_spec(_write(tmp_path / "copy.jsonl", rows)))
    report = json.loads((data / "file_task.json").read_text())
    assert sum(report["outputs_in_input"].values()) == 25  # every fourth line copies two of its input tokens
    assert report["outputs_in_input"]["train"] == sum(
        1 for row in load_split(data, "train").labels if row[1] != -100)  # type: ignore[union-attr]
    text = " ".join(describe_build(report))
    assert ("outputs found verbatim in their own input" in text) == any(
        report["outputs_in_input"][k] for k in ("select", "final"))
