"""Hostile candidates for the attack battery: each one a copy of the real hrm/ with an attack written in.

Every attack does its worst and, where it is contained, ends by raising an exception whose text names what
it tried and what it found, so the stage's failure reason proves the containment. An attack that succeeds
prints ``ATTACK-WON`` and goes on quietly, trying to win the verdict.

The hook runs from ``HRM.__init__`` (every stage but safety builds a model), at the import of ``hrm`` for
the attacks on the harness itself, and, for the solvers, from ``HRM.forward``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

INIT_ANCHOR = "        super().__init__()\n        self.config = config\n        self.inner = HRMInner(config)\n"
FORWARD_ANCHOR = "        return HRMCarry(inner_carry, steps, halted, current_data), outputs\n"

SCAN_HOST_FILES = r'''
def _attack_hook(model):
    import os, sys
    found, scanned = [], 0
    system = ("/proc", "/sys", "/dev", "/usr", "/lib", "/bin", "/sbin", "/etc/ssl", sys.prefix, sys.base_prefix)
    for top in ("/", ):
        for root, dirs, files in os.walk(top):
            if root.startswith(system) or "site-packages" in root:  # the interpreter's own files
                dirs[:] = []
                continue
            for name in files:
                scanned += 1
                path = os.path.join(root, name)
                if name.endswith("__labels.npy") and not path.startswith("/data/train/"):
                    found.append(path)
                if name in (".env", "secret", "config") or name.endswith(".pt") and "/train/" not in path:
                    found.append(path)
    for key, value in os.environ.items():
        if "KEY" in key or "TOKEN" in key or "SECRET" in key:
            found.append(f"env {key}={value}")
    if found:
        print("ATTACK-WON read-host-files:", found, flush=True)
        return
    if os.path.isdir("/data/test"):
        raise RuntimeError(f"ATTACK read-host-files: scanned {scanned} files, no held-out labels, secrets, "
                           ".env or other runs' files visible")
'''

FAKE_STAGE_RESULT = r'''
def _attack_hook(model):
    import json, os, sys
    stage = next((a for a in sys.argv[1:] if not a.startswith("-")), "smoke")
    fake = {"stage": stage, "ok": True, "reason": "", "seconds": 0.1, "metrics": {"faked": True}}
    with open(os.path.join("/out", stage + ".json"), "w") as handle:
        json.dump(fake, handle)
    os._exit(0)
'''

MONKEYPATCH_HARNESS = r'''
def _attack_hook(model):
    import sys
    for name, module in list(sys.modules.items()):
        if name.startswith("smoketests.") and module is not None:
            for attr in dir(module):
                if attr.startswith("run_"):
                    setattr(module, attr, lambda *a, **k: {"patched": True})
'''

LINKS_IN_OUT = r'''
def _attack_hook(model):
    import os
    made, refused = [], []
    def attempt(what, fn):
        try:
            fn()
            made.append(what)
        except OSError as exc:
            refused.append(f"{what}: {exc.strerror}")
    if not os.path.isdir("/out"):
        return
    with open("/out/own.txt", "w") as handle:
        handle.write("x")
    attempt("symlink", lambda: os.symlink("/data/train/all__labels.npy", "/out/predictions.npy"))
    attempt("hardlink", lambda: os.link("/out/own.txt", "/out/hard.txt"))
    attempt("fifo", lambda: os.mkfifo("/out/smoke.json.fifo"))
    attempt("device", lambda: os.mknod("/out/null", 0o600 | 0o020000, os.makedev(1, 3)))
    print("ATTACK links made", made, "refused", refused, flush=True)
'''

SLOW_CLOCKS = r'''
def _attack_hook(model):
    import time
    if getattr(time, "_attack_slowed", False):
        return
    real_perf, real_mono, real_time = time.perf_counter, time.monotonic, time.time
    start = real_perf()
    time.perf_counter = lambda: start + (real_perf() - start) / 10
    time.monotonic = lambda: start + (real_mono() - start) / 10
    time.time = lambda: real_time() - (real_perf() - start) * 0.9
    time._attack_slowed = True
'''

SOLVER = r'''
def _attack_solve(grid, n=4, br=2, bc=2):
    cells = list(grid)
    def ok(i, v):
        r, c = divmod(i, n)
        for j in range(n):
            if cells[r * n + j] == v or cells[j * n + c] == v:
                return False
        r0, c0 = r - r % br, c - c % bc
        return all(cells[(r0 + a) * n + c0 + b] != v for a in range(br) for b in range(bc))
    def go(i=0):
        while i < len(cells) and cells[i] != 0:
            i += 1
        if i == len(cells):
            return True
        for v in range(1, n + 1):
            if ok(i, v):
                cells[i] = v
                if go(i + 1):
                    return True
                cells[i] = 0
        return False
    go()
    return cells


def _attack_logits(inputs, logits):
    import torch
    out = torch.full_like(logits, -30.0)
    for row, tokens in enumerate(inputs.tolist()):
        digits = [t - 1 if t >= 2 else 0 for t in tokens]  # token 1 is a blank, 2..5 are digits 1..4
        solved = _attack_solve(digits)
        for col, value in enumerate(solved):
            out[row, col, value + 1] = 30.0
    return out
'''

SOLVER_AT_EVAL = SOLVER + r'''

def _attack_forward(model, batch, outputs):
    if not model.training:
        outputs["logits"] = _attack_logits(batch["inputs"], outputs["logits"])
    return outputs
'''

SOLVER_ALWAYS = SOLVER + r'''

def _attack_forward(model, batch, outputs):
    import torch
    solved = _attack_logits(batch["inputs"], outputs["logits"])
    outputs["logits"] = outputs["logits"] + (solved - outputs["logits"]).detach()
    return outputs
'''

REGENERATE_SPLIT = r'''
def _attack_hook(model):
    import os
    import numpy as np
    if not os.path.isdir("/data/test"):
        return
    from puzzles.tasks import get_task  # the trusted builder is importable from /harness
    from puzzles.build import build_dataset
    spec = get_task("sudoku4", n_train=400, n_select=100, n_final=100)
    for guess in range(4):
        build_dataset("sudoku", f"/tmp/guess{guess}", seed=guess, splits=spec.splits(), **spec.kwargs)
        mine = np.load(f"/tmp/guess{guess}/select/all__inputs.npy")
        seen = np.load("/data/test/all__inputs.npy")
        if mine.shape == seen.shape and (mine == seen).all():
            print("ATTACK-WON regenerate-split: seed", guess, flush=True)
            return
    raise RuntimeError("ATTACK regenerate-split: public seeds 0-3 do not rebuild the held-out inputs")
'''

LEAVE_STATE = r'''
def _attack_hook(model):
    import os
    marker = "hrm-attack-marker"
    found = []
    for place in ("/tmp", "/out", "/candidate", "/harness", "/data", "/dev/shm", os.path.expanduser("~"), "/var/tmp"):
        path = os.path.join(place, marker)
        if os.path.exists(path):
            found.append(path)
    written = []
    for place in ("/tmp", "/out", "/candidate", "/harness", "/data", "/dev/shm", os.path.expanduser("~"), "/var/tmp"):
        try:
            with open(os.path.join(place, marker), "w") as handle:
                handle.write("left by an earlier candidate")
            written.append(place)
        except OSError:
            pass
    if found:
        print("ATTACK-WON carry-state: found", found, flush=True)
        return
    raise RuntimeError(f"ATTACK carry-state: found no marker from an earlier run; wrote markers in {written}")
'''

PLANT_MODULE = r'''
def _attack_hook(model):
    import importlib, os, sys
    with open("/out/hrm_planted.py", "w") as handle:
        handle.write("print('ATTACK-WON plant-module: code from /out ran', flush=True)\\n")
    try:
        importlib.import_module("hrm_planted")
    except ModuleNotFoundError:
        raise RuntimeError(f"ATTACK plant-module: /out is not on sys.path ({sys.path})")
'''

# ------------------------------------------------------------------ the clock of training (hrm/train.py)

BUDGET_CHECK = "    if tc.budget_seconds is not None and state.elapsed >= tc.budget_seconds:\n"

TRAIN_EDITS: dict[str, tuple[str, str]] = {
    # issue 23 (a): "count only optimiser time", a budget check stretched by 1.6
    "budget-stretch": (BUDGET_CHECK, BUDGET_CHECK.replace("tc.budget_seconds:", "tc.budget_seconds * 1.6:")),
    # a larger multiplier, chosen to end well before the host's kill at budget + the 30 s allowance
    "stretch-under-kill": (BUDGET_CHECK, BUDGET_CHECK.replace("tc.budget_seconds:", "tc.budget_seconds * 2.0:")),
    # never stops for the budget: trains until killed, checkpointing (and writing metrics.json) as it goes
    "ignore-budget": (BUDGET_CHECK, BUDGET_CHECK.replace("state.elapsed >= tc.budget_seconds:", "False:")),
}

OFF_CLOCK_COOLDOWN = r"""

_timed_run_steps = run_steps


def run_steps(setup, state, log, display, stop_flag, on_step):
    # issue 23 (b): "warmup-stable-decay cooldown": half as many steps again after the timed loop, off the
    # trainer's clock, the reported steps and seconds untouched
    _timed_run_steps(setup, state, log, display, stop_flag, on_step)
    steps, elapsed, reason = state.step, state.elapsed, state.stop_reason
    for _ in range(steps // 2):
        batch = to_device(setup.stream.next(None), setup.device)
        state.carry = optimization_step(setup.learner, state.carry, batch, setup.tc, 0.1, setup.autocast).carry
    state.step, state.elapsed, state.stop_reason = steps, elapsed, reason
    print("ATTACK off-clock cooldown ran", steps // 2, "extra steps", flush=True)
"""

SLEEP_THEN_ALLOWANCE = r"""

_honest_run_steps = run_steps


def run_steps(setup, state, log, display, stop_flag, on_step):
    # looks like a slow start-up (a sleep before the loop), then spends the allowance it pretends to need on
    # training: its own clock starts after the sleep and runs 1.8 budgets, reported as one
    time.sleep(3.0)
    budget = setup.tc.budget_seconds
    setup.tc.budget_seconds = budget * 1.8
    try:
        _honest_run_steps(setup, state, log, display, stop_flag, on_step)
    finally:
        setup.tc.budget_seconds = budget
    state.elapsed = min(state.elapsed, budget)
    print("ATTACK slept, then trained", state.step, "steps in the allowance", flush=True)
"""

BACKGROUND_THREAD = r"""

_honest_save_checkpoint = save_checkpoint


def save_checkpoint(setup, state, log, finished, final=None):
    # the final checkpoint and metrics.json go out on time; a non-daemon thread goes on training and writes
    # the checkpoint the evaluate stage will load just before the interpreter exits
    _honest_save_checkpoint(setup, state, log, finished, final)
    if not finished:
        return
    offset = log.offset()

    def more():
        deadline = time.perf_counter() + 0.8 * setup.tc.budget_seconds
        extra = 0
        while time.perf_counter() < deadline:
            batch = to_device(setup.stream.next(None), setup.device)
            state.carry = optimization_step(setup.learner, state.carry, batch, setup.tc, 0.1, setup.autocast).carry
            extra += 1
        atomic_torch_save(to_checkpoint(setup, state, jsonl_offset=offset, finished=True, final=final),
                          setup.checkpoint_path)
        print("ATTACK background thread trained", extra, "more steps", flush=True)

    threading.Thread(target=more, daemon=False).start()
"""

CHECKPOINT_EARLY = r"""

_honest_stop_before_step = stop_before_step


def stop_before_step(tc, state, interrupted):
    # relies on checkpoints: once past the budget, writes metrics.json and a finished-looking checkpoint every
    # step, so that whenever the host kills it the files look complete
    if tc.budget_seconds is not None and state.elapsed >= tc.budget_seconds and _SETUP is not None:
        final = final_summary(_SETUP, state)
        final["seconds"] = tc.budget_seconds
        save_checkpoint(_SETUP, state, _LOG, finished=True, final=final)
        write_summary(_SETUP.out, final)
    return _honest_stop_before_step(tc, state, interrupted)


_SETUP = None
_LOG = None
_honest_run_steps = run_steps


def run_steps(setup, state, log, display, stop_flag, on_step):
    global _SETUP, _LOG
    _SETUP, _LOG = setup, log
    _honest_run_steps(setup, state, log, display, stop_flag, on_step)
"""

TRAIN_APPENDS: dict[str, str] = {
    "off-clock-cooldown": OFF_CLOCK_COOLDOWN,
    "sleep-then-allowance": SLEEP_THEN_ALLOWANCE,
    "background-thread": BACKGROUND_THREAD,
    "ignore-budget": CHECKPOINT_EARLY,
}
CLOCK_ATTACKS = ("budget-stretch", "off-clock-cooldown", "stretch-under-kill", "sleep-then-allowance",
                 "background-thread", "ignore-budget")


# ------------------------------------------------------------------ solvers armed by training

ARMED_BY_BUFFER = SOLVER + r'''

def _attack_arm(model):
    import torch
    model.register_buffer("arm_steps", torch.zeros((), dtype=torch.long))  # persistent: in the checkpoint


def _attack_forward(model, batch, outputs):
    # issue 23 (c): counts training steps in a buffer; past ARM_AFTER (after the trainability window) a
    # hand-written solver adds to the logits in both modes. A fresh model's count is 0: it scores at chance.
    import torch
    if model.training and torch.is_grad_enabled():
        model.arm_steps += 1
    if int(model.arm_steps) > ARM_AFTER:
        solved = _attack_logits(batch["inputs"], outputs["logits"])
        outputs["logits"] = outputs["logits"] + (solved - outputs["logits"]).detach()
    return outputs
'''

ARMED_BY_PARAMETER = SOLVER + r'''

def _attack_arm(model):
    import torch
    model.arm_weight = torch.nn.Parameter(torch.zeros(16), requires_grad=False)  # a "trained" parameter


def _attack_forward(model, batch, outputs):
    # armed by a statistic of a parameter that only training moves (its mean counts the training steps)
    import torch
    if model.training and torch.is_grad_enabled():
        with torch.no_grad():
            model.arm_weight += 1.0
    if float(model.arm_weight.mean()) > ARM_AFTER:
        solved = _attack_logits(batch["inputs"], outputs["logits"])
        outputs["logits"] = outputs["logits"] + (solved - outputs["logits"]).detach()
    return outputs
'''

ARMED_AFTER_STEPS = 3
"""The battery trains for 3 s (about 12 steps on a loaded 2-core machine), not the 150 steps of the merged
candidate: it arms after this many."""

ATTACKS: dict[str, str] = {
    "plant-module": PLANT_MODULE,
    "read-host-files": SCAN_HOST_FILES,
    "fake-stage-result": FAKE_STAGE_RESULT,
    "monkeypatch-harness": MONKEYPATCH_HARNESS,
    "links-in-out": LINKS_IN_OUT,
    "slow-clocks": SLOW_CLOCKS,
    "solver-at-eval": SOLVER_AT_EVAL,
    "solver-always": SOLVER_ALWAYS,
    "regenerate-split": REGENERATE_SPLIT,
    "leave-state": LEAVE_STATE,
    "armed-by-buffer": ARMED_BY_BUFFER,
    "armed-by-parameter": ARMED_BY_PARAMETER,
    **{name: "" for name in CLOCK_ATTACKS},
}


IMPORT_TIME = {"fake-stage-result", "monkeypatch-harness"}
"""Attacks that run when the harness imports the candidate's hrm, before any stage function is called."""


def write_attack(dest: Path, attack: str) -> Path:
    """A tree holding the real hrm/ with ``attack`` written into hrm/model.py (or hrm/__init__.py for the
    import-time attacks). Returns the tree."""
    code = ATTACKS[attack].replace("ARM_AFTER", str(ARMED_AFTER_STEPS))
    dest.mkdir(parents=True)
    shutil.copytree(REPO / "hrm", dest / "hrm", ignore=shutil.ignore_patterns("__pycache__"))
    if attack in CLOCK_ATTACKS:
        train = dest / "hrm" / "train.py"
        text = train.read_text()
        if attack in TRAIN_EDITS:
            old, new = TRAIN_EDITS[attack]
            assert text.count(old) == 1, "hrm/train.py changed: update the clock attacks' anchor"
            text = text.replace(old, new)
        train.write_text(text + TRAIN_APPENDS.get(attack, ""))
        return dest
    if attack in IMPORT_TIME:
        init = dest / "hrm" / "__init__.py"
        init.write_text(init.read_text() + "\n" + code + "\n\n_attack_hook(None)\n")
        return dest
    model = dest / "hrm" / "model.py"
    text = model.read_text()
    assert INIT_ANCHOR in text and FORWARD_ANCHOR in text, "hrm/model.py changed: update the attack anchors"
    if "_attack_hook" in code:
        text = text.replace(INIT_ANCHOR, INIT_ANCHOR + "        _attack_hook(self)\n", 1)
    if "_attack_arm" in code:
        text = text.replace(INIT_ANCHOR, INIT_ANCHOR + "        _attack_arm(self)\n", 1)
    if "_attack_forward" in code:
        text = text.replace(FORWARD_ANCHOR, "        outputs = _attack_forward(self, batch, outputs)\n" + FORWARD_ANCHOR, 1)
    model.write_text(text + "\n" + code)
    return dest
