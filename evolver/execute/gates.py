"""The host's judgement of each cascade stage, from measurements it reads back and checks itself.

Candidate code runs in the same process as the harness stage that measures it, so a stage's own `ok` is a
claim: a stage that reports failure has failed, and a pass needs the raw numbers the rules below check.
The score never comes from the sandbox at all: the host scores the predictions against labels that never
entered it. Three learning-dependence checks guard the score:

- **fresh initialisation**: the candidate's architecture with untrained weights, rolled out the same way,
  must not score above chance on the selection split: exact accuracy at most FRESH_EXACT_MAX, or, where the
  best constant answer scores more (a task of a few output classes), above that by at most a quarter of the
  way to 1 and at most its own score; token accuracy at most half-way to 1 from the better of the
  copy-the-givens baseline and the best constant answer. A puzzle solver written into the model scores
  there without any learning;
- **train/eval agreement**: in train mode (halting exploration off, no gradients) and eval mode the model
  must give the same argmax wherever both compute the same function (every row before it halts in train
  mode); a solver switched on by `not self.training` breaks that.

- **learned state**: the same bounds for two controls that keep what training left in the model except what
  it learned: fresh parameters with the trained buffers, and the trained parameters shuffled within each
  tensor (with the trained buffers). A solver armed by a trained buffer (a step counter), a scalar
  parameter or a weight statistic (a norm, a mean) solves in one of them.

What they cannot catch: a solver armed by the value at one position of a trained tensor (shuffling moves
it; only a control run trained on mislabelled data would see it), one keyed to the segment count beyond the
first halt, and any candidate that forges the arrays themselves (it runs in the process that writes them). Those would have to get past the
static gate and the reviewer; the labels, the clock and the scoring stay on the host whatever they do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from puzzles.scoring import score_predictions

TRAINABILITY_LOSS_RATIO = 0.75
GRAD_MODULES = ("H_level", "L_level", "embed_tokens", "lm_head", "q_head")
FRESH_EXACT_MAX = 0.02
FRESH_EXACT_OVER_CONSTANT = 0.25
"""Where the best constant answer already scores (a task of a few output classes), fresh weights may score
above it by up to a quarter of the way to 1, and by no more than its own score (so puzzles, where it is near 0,
keep FRESH_EXACT_MAX)."""
MODE_AGREEMENT_MIN = 0.999


@dataclass
class Gate:
    ok: bool
    reason: str = ""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def judge_report(stage: str, report: dict[str, Any] | None) -> Gate:
    """The host's verdict on a stage from its report: failure claims stand, passes need checked numbers."""
    if report is None:
        return Gate(False, f"no readable {stage}.json")
    if report.get("ok") is not True:
        return Gate(False, str(report.get("reason") or "stage failed without a reason"))
    metrics = report.get("metrics")
    if not isinstance(metrics, dict):
        return Gate(False, f"{stage}.json has no metrics object; the host decides from measurements only")
    check = _RULES.get(stage)
    return check(metrics) if check else Gate(True)


def _smoke(metrics: dict[str, Any]) -> Gate:
    if not _finite(metrics.get("loss")):
        return Gate(False, f"smoke: the report holds no finite loss ({metrics.get('loss')!r}); "
                           "the host does not take a stage's word for a pass")
    if not isinstance(metrics.get("parameters"), int) or metrics["parameters"] <= 0:
        return Gate(False, f"smoke: the report holds no parameter count ({metrics.get('parameters')!r})")
    return Gate(True)


def _trainability(metrics: dict[str, Any]) -> Gate:
    early_raw, late_raw = metrics.get("loss_step_early"), metrics.get("loss_step_final")
    finite = _finite(early_raw) and _finite(late_raw)
    early, late = (float(early_raw or 0.0), float(late_raw or 0.0)) if finite else (0.0, 0.0)
    if not finite or early <= 0:
        return Gate(False, f"trainability: the report lacks finite early/final losses ({early_raw!r}, "
                           f"{late_raw!r})")
    ratio = late / early
    if ratio > TRAINABILITY_LOSS_RATIO:
        return Gate(False, f"trainability: loss ratio {ratio:.3f} (final {float(late):.4f} / early "
                           f"{float(early):.4f}) is above {TRAINABILITY_LOSS_RATIO}, recomputed by the host")
    reach = metrics.get("grad_reach")
    if not isinstance(reach, dict):
        return Gate(False, "trainability: the report has no grad_reach map")
    cut = [m for m in GRAD_MODULES if m in reach and reach[m] is not True]
    if cut:
        return Gate(False, f"trainability: no gradient reaches {cut}")
    if metrics.get("steps") != metrics.get("steps_planned"):
        return Gate(False, f"trainability: ran {metrics.get('steps')!r} of {metrics.get('steps_planned')!r} steps")
    return Gate(True)


_RULES = {"smoke": _smoke, "trainability": _trainability}


# ------------------------------------------------------------------------------------ evaluate stage


def _int_array(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} has dtype {array.dtype}, not integers")
    if tuple(array.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(array.shape)}, expected {shape}")
    return array.astype(np.int64)


def constant_baseline(labels: np.ndarray) -> dict[str, float]:
    """Exact and token accuracy of the best input-blind answer: at every position the most frequent label of
    the split. Near 0 exact on puzzles; on a task with a few output classes (an agent's next action) it is the
    majority class's share, which an untrained network's arbitrary but constant answer can reach."""
    if labels.size == 0:
        return {"exact_accuracy": 0.0, "token_accuracy": 0.0}
    answer = np.full(labels.shape[1], -100, dtype=np.int64)
    for col in range(labels.shape[1]):
        values = labels[:, col][labels[:, col] != -100]
        if values.size:
            uniq, counts = np.unique(values, return_counts=True)
            answer[col] = uniq[int(np.argmax(counts))]
    scored = score_predictions(np.broadcast_to(answer, labels.shape), labels)
    return {"exact_accuracy": scored["exact_accuracy"], "token_accuracy": scored["token_accuracy"]}


def copy_baseline_token_accuracy(inputs: np.ndarray, labels: np.ndarray) -> float:
    """Token accuracy of predicting each given cell as itself and getting every blank wrong."""
    valid = labels != -100
    return float(((inputs == labels) & valid).sum() / max(int(valid.sum()), 1))


def fresh_init_check(init_predictions: np.ndarray, labels: np.ndarray, inputs: np.ndarray) -> tuple[Gate, dict]:
    """Untrained weights must score at chance: see the module docstring for the bounds."""
    scored = score_predictions(init_predictions, labels)
    copy = copy_baseline_token_accuracy(inputs, labels)
    constant = constant_baseline(labels)
    chance = max(copy, constant["token_accuracy"])
    token_max = chance + 0.5 * (1.0 - chance)
    best = constant["exact_accuracy"]  # the slack grows with it: puzzles (best near 0) keep FRESH_EXACT_MAX
    exact_max = max(FRESH_EXACT_MAX, best + min(best, FRESH_EXACT_OVER_CONSTANT * (1.0 - best)))
    numbers = {"fresh_exact_accuracy": scored["exact_accuracy"], "fresh_token_accuracy": scored["token_accuracy"],
               "copy_baseline_token_accuracy": copy, "constant_baseline_exact_accuracy": constant["exact_accuracy"],
               "constant_baseline_token_accuracy": constant["token_accuracy"], "fresh_exact_max": exact_max,
               "fresh_token_max": token_max}
    if scored["exact_accuracy"] > exact_max or scored["token_accuracy"] > token_max:
        return Gate(False, f"solves without learning: freshly initialised weights score exact "
                           f"{scored['exact_accuracy']:.3f} (max {exact_max:.3f}) and token "
                           f"{scored['token_accuracy']:.3f} (max {token_max:.3f}) on the selection split"), numbers
    return Gate(True), numbers


LEARNED_STATE_CONTROLS = {
    "buffers": "freshly initialised parameters with the trained checkpoint's buffers",
    "shuffled": "the trained parameters shuffled within each tensor, with the trained buffers",
}


def learned_state_check(name: str, predictions: np.ndarray, labels: np.ndarray, inputs: np.ndarray
                        ) -> tuple[Gate, dict]:
    """A control that keeps what training left in the model but not what it learned (see
    smoketests/evaluate_stage.py: learned_state_controls) must score at chance, by the fresh-weights bounds."""
    gate, fresh = fresh_init_check(predictions, labels, inputs)
    numbers = {f"{name}_exact_accuracy": fresh["fresh_exact_accuracy"],
               f"{name}_token_accuracy": fresh["fresh_token_accuracy"]}
    if gate.ok:
        return gate, numbers
    return Gate(False, f"solves without learning: {LEARNED_STATE_CONTROLS[name]} score exact "
                       f"{fresh['fresh_exact_accuracy']:.3f} (max {FRESH_EXACT_MAX}) and token "
                       f"{fresh['fresh_token_accuracy']:.3f} (max {fresh['fresh_token_max']:.3f}) on the selection "
                       "split: its score does not come from what it learned"), numbers


def mode_check(eval_out: np.ndarray, train_out: np.ndarray, comparable: np.ndarray) -> tuple[Gate, dict]:
    """Eval-mode and train-mode argmax must agree wherever both modes compute the same function."""
    if eval_out.shape != train_out.shape or comparable.shape != eval_out.shape[:2]:
        return Gate(False, f"mode probe arrays disagree in shape: {eval_out.shape}, {train_out.shape}, "
                           f"{comparable.shape}"), {}
    mask = np.broadcast_to(comparable.astype(bool)[..., None], eval_out.shape)
    count = int(mask.sum())
    if count == 0:
        return Gate(False, "mode probe: no comparable outputs (every row halted before its first segment?)"), {}
    agreement = float(((eval_out == train_out) & mask).sum() / count)
    numbers = {"mode_agreement": agreement, "mode_agreement_min": MODE_AGREEMENT_MIN, "mode_compared": count}
    if agreement < MODE_AGREEMENT_MIN:
        return Gate(False, f"eval-mode outputs differ from train-mode outputs on the same inputs (agreement "
                           f"{agreement:.4f} < {MODE_AGREEMENT_MIN} over {count} tokens): the model behaves "
                           "differently when it is scored"), numbers
    return Gate(True), numbers


def judge_evaluation(arrays: dict[str, np.ndarray], labels: np.ndarray, inputs: np.ndarray,
                     ) -> tuple[Gate, dict[str, Any]]:
    """Score the trained predictions and run both learning-dependence checks."""
    numbers: dict[str, Any] = {}
    try:
        predictions = _int_array("predictions.npy", arrays["predictions"], labels.shape)
        init = _int_array("init_predictions.npy", arrays["init_predictions"], labels.shape)
        rows = arrays["mode_comparable"].shape[1] if arrays["mode_comparable"].ndim == 2 else -1
        probe_shape = (arrays["mode_eval"].shape[0], rows, labels.shape[1])
        mode_eval = _int_array("mode_eval.npy", arrays["mode_eval"], probe_shape)
        mode_train = _int_array("mode_train.npy", arrays["mode_train"], probe_shape)
        if arrays["mode_comparable"].dtype != np.bool_:
            raise ValueError("mode_comparable.npy is not boolean")
    except (KeyError, ValueError) as exc:
        return Gate(False, f"evaluate outputs not scorable: {exc}"), numbers
    numbers.update(score_predictions(predictions, labels))
    gate, fresh = fresh_init_check(init, labels, inputs)
    numbers.update(fresh)
    if not gate.ok:
        return gate, numbers
    try:
        controls = {name: _int_array(f"{name}_predictions.npy", arrays[f"{name}_predictions"], labels.shape)
                    for name in LEARNED_STATE_CONTROLS}
    except (KeyError, ValueError) as exc:
        return Gate(False, f"evaluate outputs not scorable: {exc}"), numbers
    for name, control in controls.items():
        gate, found = learned_state_check(name, control, labels, inputs)
        numbers.update(found)
        if not gate.ok:
            return gate, numbers
    gate, mode = mode_check(mode_eval, mode_train, arrays["mode_comparable"])
    numbers.update(mode)
    return gate, numbers
