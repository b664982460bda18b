"""What a run does when its best is saturated (the rule: evolver/judge/saturation.py).

After every measurement of the best (the run's start, each merge), the loop asks `check_ceiling`. A best that
is not saturated changes nothing. A saturated one is reported (the display's header and log, the baseline's
``saturation`` in every later result.json, and on the record branch ``runs/<run-id>/ladder.json`` or
``saturation.json``), and then either the run moves to the next task of its ``--task-ladder`` (its baseline is
measured there by the caller, and candidates are judged there from then on), or, with no task left, the run
ends with a message saying why: on a saturated best no verdict can tell a candidate from its parent.
"""

from __future__ import annotations

from rich.markup import escape

from evolver.judge.saturation import assess, rule_text
from evolver.run.context import RunContext
from evolver.run.state import Baseline, StopRun, utc_now

SATURATION_FILE = "saturation.json"


def check_ceiling(ctx: RunContext, baseline: Baseline) -> bool:
    """Apply the saturation rule to ``baseline`` (the run's best, just measured). Returns False when it is not
    saturated, True when the run moved up its ladder (the caller measures the new task's baseline); raises
    StopRun when the best is saturated and no task is left."""
    s = ctx.settings
    task = baseline.task or s.task
    finding = assess(baseline.scores, task=task, metric=s.metric, margin=s.margin, ceiling=s.solved_at,
                     commit=baseline.commit)
    baseline.saturation = finding.to_dict()
    d = ctx.display
    if not finding.saturated:
        d.set_header(saturated="no")
        return False
    d.set_header(saturated=f"yes ({task})")
    d.notice(f"[bold yellow]saturated:[/] the best {baseline.commit[:10]} on {task}: {escape(finding.reason)}")
    rule = rule_text(s.margin, s.solved_at)
    ladder = ctx.ladder
    if ladder is None:
        with ctx.lock:
            ctx.store.save_run_file(SATURATION_FILE, {"rule": rule, "time": utc_now(), **finding.to_dict()},
                                    f"Saturated on {task} at {baseline.commit[:10]} (run {ctx.run_id})")
        raise StopRun(f"the best {baseline.commit[:10]} is saturated on {task} ({finding.reason}); no verdict "
                      f"could tell a candidate from it, so the run stops here. Give the next task with "
                      f"--task-ladder {task},<next> (or a new run's --task)")
    nxt = ladder.climb(finding, utc_now())
    ladder.steps[-1]["rule"] = rule
    ctx.save_ladder(ladder)
    if nxt is None:
        raise StopRun(f"the best {baseline.commit[:10]} is saturated on {task}, the last task of the ladder "
                      f"{','.join(ladder.tasks)} ({finding.reason}); every task of the ladder is solved, so the run "
                      "stops here")
    s.task = nxt
    ctx.baseline = None
    ctx.save_run_settings()
    d.set_header(task=nxt, saturated="no", ladder=f"{ladder.position + 1}/{len(ladder.tasks)}")
    d.log(f"[bold]ladder:[/] {task} is solved; moving to {nxt} ({ladder.position + 1} of {len(ladder.tasks)}): "
          "its baseline is measured and candidates are judged there from now on")
    return True
