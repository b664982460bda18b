"""An example task file: the decision log of an expert agent in a small grid world with a key, a door and
hazards, as JSONL for ``evolve.py --task-file`` (state tokens in, the chosen action out).

    python -m puzzles.agent_log --out decisions.jsonl --n 3000 [--size 6] [--seed 0]

The world: a ``size x size`` grid (outside it is wall) cut in two by a wall column with one locked door
``D``. The agent ``A`` starts on the left with the key ``K``; the goal ``G`` is on the right. Walls ``#`` and
hazards ``~`` are scattered on both sides; stepping on a hazard ends the episode, the door opens only to an
agent holding the key (stepping on ``K`` picks it up). Every layout is solvable.

The expert plans: at each step it takes the first action of a shortest safe path to the goal, found by
breadth-first search over (cell, holding the key), ties broken in the order up, down, left, right, so its
action is a function of the state. One line per decision::

    {"input": ["key:no", "key_dy:+1", "key_dx:-2", "door_dy:+0", "door_dx:+1", "goal_dy:-3", "goal_dx:+3",
               ".", "#", "A", ..., "G"], "output": ["right"]}

``input`` is the holding token, the agent's row/column offsets to the key (``held`` once it has it), the door
and the goal, then the grid row by row (``size * size + 7`` tokens); ``output`` is one of ``ACTIONS``. The
offsets alone point the way in open ground; around walls and hazards only the grid tells the shortest path. The generator is deterministic in ``--seed``; the host splits the file with the run's
secret (``puzzles/file_task.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ACTIONS: tuple[str, ...] = ("up", "down", "left", "right")
MOVES: dict[str, tuple[int, int]] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
EMPTY, WALL, AGENT, KEY, DOOR, GOAL, HAZARD = ".", "#", "A", "K", "D", "G", "~"
HOLDING = {False: "key:no", True: "key:yes"}


@dataclass(frozen=True)
class World:
    """The static layout (walls, hazards, door, goal; the key's cell while it lies there)."""

    size: int
    walls: frozenset[tuple[int, int]]
    hazards: frozenset[tuple[int, int]]
    door: tuple[int, int]
    key: tuple[int, int]
    goal: tuple[int, int]


State = tuple[tuple[int, int], bool]  # (agent cell, holding the key)


def step(world: World, state: State, action: str) -> State | None:
    """The next state, or None when the move is illegal: off the grid, into a wall, into a hazard (the
    episode would end), or through the door without the key."""
    (r, c), has_key = state
    dr, dc = MOVES[action]
    nr, nc = r + dr, c + dc
    cell = (nr, nc)
    if not (0 <= nr < world.size and 0 <= nc < world.size) or cell in world.walls or cell in world.hazards:
        return None
    if cell == world.door and not has_key:
        return None
    return cell, has_key or cell == world.key


def distance_to_goal(world: World, start: State) -> int | None:
    """Fewest legal moves from ``start`` to the goal (None: unreachable)."""
    if start[0] == world.goal:
        return 0
    seen = {start}
    queue: deque[tuple[State, int]] = deque([(start, 0)])
    while queue:
        state, dist = queue.popleft()
        for action in ACTIONS:
            nxt = step(world, state, action)
            if nxt is None or nxt in seen:
                continue
            if nxt[0] == world.goal:
                return dist + 1
            seen.add(nxt)
            queue.append((nxt, dist + 1))
    return None


def expert_action(world: World, state: State) -> str:
    """The first action of a shortest safe path to the goal (ties: the order of ACTIONS)."""
    best: tuple[int, int] | None = None
    for order, action in enumerate(ACTIONS):
        nxt = step(world, state, action)
        if nxt is None:
            continue
        dist = distance_to_goal(world, nxt)
        if dist is not None and (best is None or (dist, order) < best):
            best = (dist, order)
    if best is None:
        raise ValueError(f"no path to the goal from {state}")
    return ACTIONS[best[1]]


def offsets(world: World, state: State) -> list[str]:
    """The agent's row and column offsets to the key (``held`` once picked up), the door and the goal, one
    token each (``key_dy:+1``, ``key_dx:-2``, ...): what an agent's log often records beside its view."""
    (ar, ac), has_key = state
    tokens: list[str] = []
    for name, cell in (("key", None if has_key else world.key), ("door", world.door), ("goal", world.goal)):
        if cell is None:
            tokens += [f"{name}_dy:held", f"{name}_dx:held"]
        else:
            tokens += [f"{name}_dy:{cell[0] - ar:+d}", f"{name}_dx:{cell[1] - ac:+d}"]
    return tokens


N_OFFSETS = 6


def render(world: World, state: State) -> list[str]:
    """The state as tokens: the holding token, the offsets to key, door and goal, then the grid row by row."""
    (ar, ac), has_key = state
    tokens = [HOLDING[has_key], *offsets(world, state)]
    for r in range(world.size):
        for c in range(world.size):
            cell = (r, c)
            if cell == (ar, ac):
                tokens.append(AGENT)
            elif cell in world.walls:
                tokens.append(WALL)
            elif cell in world.hazards:
                tokens.append(HAZARD)
            elif cell == world.door:
                tokens.append(DOOR)
            elif cell == world.goal:
                tokens.append(GOAL)
            elif cell == world.key and not has_key:
                tokens.append(KEY)
            else:
                tokens.append(EMPTY)
    return tokens


def parse(tokens: list[str]) -> tuple[World, State]:
    """A rendered state back to (world, state); the key's cell is unknown once it is held (an off-grid cell
    stands for it), the door's is the agent's while it stands in the doorway. Used to replay and check
    decisions."""
    has_key = tokens[0] == HOLDING[True]
    cells = tokens[1 + N_OFFSETS:]
    size = int(round(len(cells) ** 0.5))
    if size * size != len(cells) or tokens[0] not in HOLDING.values():
        raise ValueError(f"not a rendered state of this world: {len(tokens)} tokens")
    where: dict[str, list[tuple[int, int]]] = {}
    for i, t in enumerate(cells):
        where.setdefault(t, []).append(divmod(i, size))
    agent = where[AGENT][0]
    door = where[DOOR][0] if DOOR in where else agent  # the agent stands in the doorway
    world = World(size, frozenset(where.get(WALL, [])), frozenset(where.get(HAZARD, [])), door,
                  where[KEY][0] if KEY in where else (-1, -1), where[GOAL][0])
    return world, (agent, has_key)


def random_world(size: int, rng: np.random.Generator, wall_p: float = 0.12, hazard_p: float = 0.10
                 ) -> tuple[World, State]:
    """A solvable layout and its start state (resampled until the goal is reachable and not adjacent)."""
    if size < 4:
        raise ValueError("size must be at least 4")
    while True:
        split = int(rng.integers(1, size - 2))  # the dividing wall column; both sides at least one column
        door = (int(rng.integers(0, size)), split)
        walls = {(r, split) for r in range(size) if r != door[0]}
        hazards: set[tuple[int, int]] = set()
        free = [(r, c) for r in range(size) for c in range(size) if c != split]
        for cell in free:
            u = rng.random()
            if u < wall_p:
                walls.add(cell)
            elif u < wall_p + hazard_p:
                hazards.add(cell)
        left = [cell for cell in free if cell[1] < split and cell not in walls and cell not in hazards]
        right = [cell for cell in free if cell[1] > split and cell not in walls and cell not in hazards]
        if len(left) < 2 or not right:
            continue
        a, k = (left[i] for i in rng.choice(len(left), size=2, replace=False))
        g = right[int(rng.integers(len(right)))]
        world = World(size, frozenset(walls), frozenset(hazards), door, k, g)
        start: State = (a, False)
        if distance_to_goal(world, start) is not None:
            return world, start


def episode(world: World, start: State, max_steps: int = 200) -> Iterator[tuple[list[str], str]]:
    """The expert's (state tokens, action) decisions from ``start`` until it stands on the goal."""
    state = start
    for _ in range(max_steps):
        if state[0] == world.goal:
            return
        action = expert_action(world, state)
        yield render(world, state), action
        nxt = step(world, state, action)
        assert nxt is not None
        state = nxt
    raise RuntimeError("the expert did not reach the goal")  # cannot happen: it follows a shortest path


def generate(n: int, size: int = 6, seed: int = 0) -> list[dict[str, list[str]]]:
    """``n`` decision lines from fresh random episodes (the last episode is cut at ``n``)."""
    rng = np.random.default_rng(seed)
    lines: list[dict[str, list[str]]] = []
    while len(lines) < n:
        world, start = random_world(size, rng)
        for tokens, action in episode(world, start):
            lines.append({"input": tokens, "output": [action]})
            if len(lines) == n:
                break
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m puzzles.agent_log", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    parser.add_argument("--n", type=int, default=3000, help="decision lines (default 3000)")
    parser.add_argument("--size", type=int, default=6, help="grid side (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be positive")
    lines = generate(args.n, args.size, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as handle:
        for line in lines:
            handle.write(json.dumps(line, separators=(",", ":")) + "\n")
    counts = {a: sum(1 for x in lines if x["output"] == [a]) for a in ACTIONS}
    print(f"wrote {len(lines)} decisions to {args.out} ({', '.join(f'{k} {v}' for k, v in counts.items())})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
