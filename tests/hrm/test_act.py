"""`python -m hrm act` and hrm.act.Actor: a checkpoint of a file task answers token states with the tokens of
its vocabulary, from the command line or in Python, and plays the example grid world."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hrm.act import Actor
from hrm.cli import main
from hrm.presets import get_preset
from hrm.train import train
from puzzles.agent_log import ACTIONS, generate, parse, random_world, render, step
from puzzles.file_task import file_task_spec
from puzzles.splits import ensure_run_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A file-task checkpoint after a few steps of the `file` preset (shrunk), and its run data."""
    root = tmp_path_factory.mktemp("act")
    log = root / "decisions.jsonl"
    log.write_text("".join(json.dumps(x) + "\n" for x in generate(200, 6, 0)))
    data = ensure_run_data(root / "run", file_task_spec(log))
    run = get_preset("file", meta=json.loads((data / "train" / "dataset.json").read_text()))
    run.model.hidden_size = run.model.puzzle_emb_ndim = 32
    run.model.H_layers = run.model.L_layers = 1
    run.train.eval_interval_steps = None
    train(run, root / "out", data_dir=data, max_steps=3, seed=0, progress=False)
    return root / "out" / "checkpoint.pt", data


def test_the_actor_answers_with_actions_and_plays_an_episode(trained: tuple[Path, Path]) -> None:
    checkpoint, data = trained
    actor = Actor.load(checkpoint)
    assert actor.vocab[:2] == ["<pad>", "<unk>"] and actor.output_len == 1
    states = [x["input"] for x in generate(5, 6, 9)]
    answers = actor.answer(states)
    assert len(answers) == 5 and all(len(a) == 1 and a[0] in actor.vocab for a in answers)
    assert actor.answer([[*states[0][:-1], "never-seen"]])[0][0] in actor.vocab  # an unseen token is <unk>
    world, state = random_world(6, np.random.default_rng(1))
    for _ in range(5):  # the loop a user writes: render, ask, step (an untrained model may walk into a wall)
        action = actor.answer([render(world, state)])[0][0]
        nxt = step(world, state, action) if action in ACTIONS else None
        if nxt is None:
            break
        state = nxt
    assert parse(render(world, state))[1] == state
    with pytest.raises(ValueError, match="the model reads at most 43"):
        actor.encode(["."] * 44)
    with pytest.raises(ValueError, match="strings or integers"):
        actor.encode([1.5])


def test_the_act_command(trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, data = trained
    lines = generate(4, 6, 3)
    assert main(["act", "--checkpoint", str(checkpoint), "--state", json.dumps(lines[0]["input"])]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert isinstance(answer, list) and len(answer) == 1
    path = tmp_path / "states.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["act", "--checkpoint", str(checkpoint), "--file", str(path),
                 "--vocab-from", str(data / "train" / "dataset.json")]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(x) for x in captured.out.splitlines()]
    assert [r["input"] for r in rows] == [x["input"] for x in lines] and all(len(r["output"]) == 1 for r in rows)
    assert "answers equal the file's outputs" in captured.err
    assert main(["act", "--checkpoint", str(checkpoint), "--state", "[1,"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    wrong = tmp_path / "dataset.json"
    wrong.write_text(json.dumps({"params": {"vocab": ["<pad>", "a"]}}))
    assert main(["act", "--checkpoint", str(checkpoint), "--state", "[1]", "--vocab-from", str(wrong)]) == 2
    assert "the vocabulary has 2 tokens, the model" in capsys.readouterr().err.replace("\n", " ")


def test_hrm_train_fits_the_file_preset_to_the_data_dir(trained: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _, data = trained
    assert main(["train", "--task", "file", "--out", str(tmp_path / "o"), "--max-steps", "1"]) == 2
    assert "fitted to its dataset: pass --data-dir" in capsys.readouterr().err.replace("\n", " ")
    config = json.dumps({"model": {"hidden_size": 32, "puzzle_emb_ndim": 32, "H_layers": 1, "L_layers": 1},
                         "train": {"eval_interval_steps": None}})
    assert main(["train", "--task", "file", "--data-dir", str(data), "--out", str(tmp_path / "o"),
                 "--max-steps", "1", "--config", config, "--no-progress"]) == 0
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert saved["config"]["model"]["seq_len"] == 43 and saved["config"]["train"]["batch_size"] == 16  # 160 train rows / 8
