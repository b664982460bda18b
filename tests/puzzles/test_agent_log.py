"""The example task file's generator (puzzles/agent_log.py): the expert reaches the goal on a shortest safe
path, the log is a valid task file, and a state parses back to its world."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from puzzles import agent_log
from puzzles.agent_log import (
    ACTIONS,
    distance_to_goal,
    episode,
    expert_action,
    parse,
    random_world,
    render,
    step,
)
from puzzles.file_task import file_task_spec, read_lines


def test_the_expert_reaches_the_goal_on_a_shortest_safe_path() -> None:
    rng = np.random.default_rng(7)
    for _ in range(60):
        world, start = random_world(6, rng)
        shortest = distance_to_goal(world, start)
        assert shortest is not None and shortest >= 1
        state, taken = start, 0
        for tokens, action in episode(world, start):
            assert tokens == render(world, state)
            nxt = step(world, state, action)
            assert nxt is not None, "the expert made an illegal move"
            assert nxt[0] not in world.hazards and nxt[0] not in world.walls
            assert nxt[0] != world.door or state[1], "through the door without the key"
            state, taken = nxt, taken + 1
        assert state[0] == world.goal and state[1]  # the goal lies behind the door: the key was fetched
        assert taken == shortest


def test_step_refuses_walls_hazards_the_edge_and_a_locked_door() -> None:
    world = agent_log.World(4, frozenset({(0, 1)}), frozenset({(1, 0)}), (2, 1), (3, 0), (0, 3))
    assert step(world, ((0, 0), False), "right") is None  # wall
    assert step(world, ((0, 0), False), "down") is None  # hazard
    assert step(world, ((0, 0), False), "up") is None  # edge
    assert step(world, ((2, 0), False), "right") is None  # locked door
    assert step(world, ((2, 0), True), "right") == ((2, 1), True)
    assert step(world, ((2, 0), False), "down") == ((3, 0), True)  # picks up the key
    # tie-break: from (2, 2) with the key, up and right both start a shortest path; "up" comes first
    assert expert_action(world, ((2, 2), True)) == "up"


def test_a_rendered_state_parses_back_and_the_expert_agrees() -> None:
    rng = np.random.default_rng(3)
    world, start = random_world(6, rng)
    for tokens, action in episode(world, start):
        w2, s2 = parse(tokens)
        assert render(w2, s2) == tokens
        assert expert_action(w2, s2) == action


def test_the_log_is_deterministic_and_a_valid_task_file(tmp_path: Path) -> None:
    out = tmp_path / "decisions.jsonl"
    assert agent_log.main(["--out", str(out), "--n", "300", "--seed", "5"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 300 and lines == agent_log.generate(300, 6, 5)
    assert all(len(x["input"]) == 43 and x["output"][0] in ACTIONS for x in lines)
    assert agent_log.generate(300, 6, 6) != lines
    assert len(read_lines(out).pairs) == 300
    spec = file_task_spec(out)
    assert spec.kwargs["seq_len"] == 43 and spec.n_select == spec.n_final >= 25
