"""What a proposal request holds at each context size: tokens, definitions shown whole, the core's coverage.

    python benchmarks/bench_request.py [--task sudoku4] [--contexts 4096 8192 16384 32768]

For each context size C, the prompt budget is what a provider leaves for the prompt (C minus the reply limit,
the re-ask reserve and the template margin: `Provider.prompt_budget`), tokens are the engine's conservative
estimate (characters / 3), and no LLM is asked: the direct request is built exactly as the loop builds it
(task facts with a made-up parent measurement, the resolved preset, the packed source of this checkout's
hrm/, the run's literature snapshot, no history). It prints, per size: the prompt's tokens and budget, the
code budget the packer got, the definitions shown whole out of all, the core definitions shown, and which
protocol `--protocol auto` would pick.
"""

from __future__ import annotations

import argparse

from common import ROOT

from evolver.propose.literature import literature_context
from evolver.propose.look import RequestContext, choose_protocol
from evolver.propose.providers import get_provider
from evolver.propose.task_facts import task_facts
from evolver.run.state import Baseline
from proposals.schema import proposal_json_schema
from puzzles.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sudoku4")
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    args = parser.parse_args()
    spec = get_task(args.task)
    parent = Baseline("0" * 40, "t", [0, 1, 2], [0.61, 0.63, 0.60], 0.0,
                      evidence=[{"steps": 300, "steps_per_second": 7.5}] * 3)
    papers = literature_context(8, state_dir=None, offline=True)
    print(f"task {args.task}; hrm/ of {ROOT}")
    print(f"{'context':>8} {'prompt':>7} {'budget':>7} {'code budget':>11} {'whole defs':>11} {'core shown':>11}  protocol")
    for context in args.contexts:
        provider = get_provider("lmstudio", model="m", host="http://127.0.0.1:9/v1", context_tokens=context)
        ctx = RequestContext(ROOT, args.task, task_facts(args.task, "token_accuracy", 40.0, baseline=parent,
                                                         eval_segments=spec.eval_segments, n_train=spec.n_train))
        prompt = provider.fit_prompt(ctx.renderer(provider.count_tokens), papers, [], proposal_json_schema(),
                                     metric="token_accuracy", facts=ctx.facts_block(),
                                     code_heading="## Source of hrm/")
        pack = ctx.last_pack
        assert pack is not None
        total = len(pack.included) + len(pack.omitted)
        core = len(pack.core) - len(pack.core_missing)
        print(f"{context:>8} {prompt.prompt_tokens:>7} {prompt.budget_tokens:>7} {pack.budget_tokens:>11} "
              f"{len(pack.included):>5} / {total:<3} {core:>5} / {len(pack.core):<3}  "
              f"{choose_protocol('auto', provider, pack)}")


if __name__ == "__main__":
    main()
