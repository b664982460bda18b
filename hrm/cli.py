"""Command line for the HRM package: build data, train, evaluate, benchmark.

    python -m hrm data build --task sudoku4 --out data/sudoku4 [--seed 0] [--n-train 2000] ...
    python -m hrm train --task sudoku4 --budget-seconds 150 --seed 0 --out runs/s4 [--max-steps K]
        [--config JSON-or-file] [--data-dir D] [--device cpu] [--threads 2] [--fresh] [--no-progress]
    python -m hrm eval --checkpoint runs/s4/checkpoint.pt [--task sudoku4] [--data-dir D] [--split test]
    python -m hrm bench [--presets sudoku4 sudoku6] [--steps 20] [--device cpu] [--batch-size B]
    python -m hrm act --checkpoint C (--state '["tok", ...]' | --file F.jsonl) [--vocab-from D/train/dataset.json]

``--task`` names a preset (``hrm.presets.PRESETS``) or a dataset task (``sudoku4``, ``maze``, ``jsonl``...);
``--config`` takes a JSON object (inline or a file path) with any of ``task``, ``data``, ``model``,
``train`` whose fields override the preset's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hrm.config import RunConfig

console = Console(stderr=True)
SUMMARY_KEYS = (
    "exact_accuracy", "token_accuracy", "mean_act_steps", "q_halt_accuracy", "eval_split", "eval_count", "steps",
    "epochs", "seconds", "eval_seconds", "steps_per_second", "train_loss", "stop_reason", "num_parameters",
)  # fmt: skip


def base_run(task: str, data_dir: str | None = None) -> RunConfig:
    """The preset named ``task`` (a data-fitted one, ``file``, from ``data_dir/train/dataset.json``; a built
    ``jsonl`` dataset gets the ``file`` preset too), or a default RunConfig for a plain dataset task."""
    from hrm.presets import DATA_PRESETS, PRESETS, get_preset

    meta = Path(data_dir or "") / "train" / "dataset.json"
    if task == "jsonl" and data_dir and meta.is_file():  # a built jsonl dataset: the preset fitted to it
        run = get_preset("file", meta=json.loads(meta.read_text()))
        run.task = task
        return run
    if task in DATA_PRESETS:
        if not data_dir or not meta.is_file():
            raise ValueError(f"the {task!r} preset is fitted to its dataset: pass --data-dir, a dataset holding "
                             "train/dataset.json (a run's .hrm-evolve/runs/<run>/data)")
        return get_preset(task, meta=json.loads(meta.read_text()))
    if task in PRESETS:
        return get_preset(task)
    return RunConfig(task=task)


def load_overrides(text: str | None) -> dict[str, Any]:
    """A JSON object given inline or as a path to a JSON file."""
    if not text:
        return {}
    path = Path(text)
    raw = path.read_text() if not text.lstrip().startswith("{") and path.is_file() else text
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--config: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SystemExit("--config: expected a JSON object")
    return data


def apply_overrides(run: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Merge ``{"task", "data", "model", "train"}`` overrides into ``run`` (unknown fields are errors)."""
    unknown = sorted(set(overrides) - {"task", "data", "model", "train"})
    if unknown:
        raise ValueError(f"--config: unknown section(s) {unknown}; use task, data, model, train")
    merged = run.to_dict()
    if "task" in overrides:
        merged["task"] = overrides["task"]
    for section in ("data", "model", "train"):
        merged[section].update(overrides.get(section, {}))
    return RunConfig.from_dict(merged)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in rows.items():
        table.add_row(key, _fmt(value))
    return table


# ------------------------------------------------------------------------------------------ commands


def cmd_data_build(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from puzzles.build import build_dataset  # trusted generators outside hrm/; imported only by this command

    run = base_run(args.task)
    kwargs = dict(run.data)
    for flag, key in (("n_train", "n_train"), ("n_test", "n_test"), ("min_clues", "min_clues"), ("size", "size"),
                      ("num_aug", "num_aug"), ("min_path_len", "min_path_len"), ("train_file", "train_file"),
                      ("test_file", "test_file")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            kwargs[key] = value
    out = Path(args.out)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(f"building {run.task}", total=None)

        def report(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        meta = build_dataset(run.task, out, seed=args.seed, progress=report, **kwargs)
    from hrm.data.dataset import PuzzleDataset

    rows: dict[str, Any] = {"task": run.task, "out": str(out), "seed": args.seed, "vocab_size": meta.vocab_size,
                            "seq_len": meta.seq_len}  # fmt: skip
    for split in ("train", "test"):
        if (out / split / "dataset.json").is_file():
            rows[f"{split} examples"] = len(PuzzleDataset(out, split))
    console.print(_table("dataset", rows))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hrm.train import prepare_dataset, train

    run = apply_overrides(base_run(args.task, args.data_dir), load_overrides(args.config))
    if args.threads:
        run.train.num_threads = args.threads
    out = Path(args.out)
    seed = args.seed if args.seed is not None else run.train.seed
    data_dir = Path(args.data_dir) if args.data_dir else None
    with console.status(f"preparing the {run.task} dataset"):
        root, built = prepare_dataset(run, out, data_dir, seed)
    console.print(f"dataset {'built' if built else 'found'}: {root}")
    result = train(
        run,
        out,
        data_dir=root,
        budget_seconds=args.budget_seconds,
        max_steps=args.max_steps,
        seed=seed,
        resume=not args.fresh,
        progress=not args.no_progress and console.is_terminal,
        device=args.device,
    )
    console.print(
        _table(f"train {run.task} (seed {seed})", {k: result[k] for k in SUMMARY_KEYS if k in result})
    )
    if result.get("stop_reason") == "interrupted":
        console.print(f"interrupted: checkpoint saved in {out}; run the same command again to resume")
        return 130
    console.print(f"metrics: {out / 'metrics.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hrm.data.dataset import PuzzleDataset
    from hrm.evaluate import evaluate, load_checkpoint
    from hrm.train import prepare_dataset, with_dataset_shape

    ckpt = Path(args.checkpoint)
    run, model = load_checkpoint(ckpt, device=args.device or "cpu")
    seed = run.train.seed
    if args.task and args.task != run.task:
        other = base_run(args.task)
        run = RunConfig(task=other.task, data=other.data, model=run.model, train=run.train)
    data_dir = Path(args.data_dir) if args.data_dir else None
    root, _ = prepare_dataset(run, ckpt.parent, data_dir, seed)
    dataset = PuzzleDataset(root, args.split)
    expected = with_dataset_shape(run, dataset.meta).model
    if (expected.vocab_size, expected.seq_len) != (run.model.vocab_size, run.model.seq_len):
        raise SystemExit(
            f"dataset {root} has vocab {expected.vocab_size} / seq_len {expected.seq_len}, the model was trained "
            f"for {run.model.vocab_size} / {run.model.seq_len}"
        )
    batch_size = args.batch_size or run.train.eval_batch_size
    with console.status(f"evaluating on {len(dataset)} {args.split} examples"):
        result = evaluate(model, dataset, batch_size=batch_size, device=args.device or "cpu")
    result = {**result, "split": args.split, "dataset": str(root), "checkpoint": str(ckpt)}
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        console.print(_table(f"eval {run.task}", result))
    return 0


def cmd_act(args: argparse.Namespace) -> int:
    from hrm.act import Actor, read_states

    actor = Actor.load(args.checkpoint, vocab_from=args.vocab_from, output_len=args.output_len,
                       device=args.device or "cpu")
    if (args.state is None) == (args.file is None):
        raise ValueError("give one of --state JSON-list or --file JSONL")
    if args.state is not None:
        try:
            state = json.loads(args.state)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--state: not valid JSON ({exc.msg})") from None
        if not isinstance(state, list):
            raise ValueError("--state: expected a JSON list of tokens")
        print(json.dumps(actor.answer([state])[0]))
        return 0
    states, expected = read_states(Path(args.file))
    answers: list[list[str]] = []
    for start in range(0, len(states), 256):
        answers += actor.answer(states[start : start + 256])
    for state, answer in zip(states, answers, strict=True):
        print(json.dumps({"input": state, "output": answer}))
    if expected is not None:
        right = sum(1 for a, e in zip(answers, expected, strict=True) if a == e[: len(a)] and len(e) <= len(a))
        console.print(f"{right}/{len(states)} answers equal the file's outputs ({right / len(states):.3f})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from hrm.bench import bench_preset, run_benchmarks

    if args.in_process:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        names = args.presets or []
        if not names:
            from hrm.bench import default_presets

            names = list(
                default_presets(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
            )
        results = [
            bench_preset(n, steps=args.steps, device=args.device, batch_size=args.batch_size) for n in names
        ]
    else:
        results = run_benchmarks(
            args.presets,
            steps=args.steps,
            device=args.device,
            batch_size=args.batch_size,
            threads=args.threads,
        )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    table = Table(title="HRM training throughput")
    for col in ("preset", "device", "params", "batch", "seq", "steps/s", "s/step", "peak memory"):
        table.add_column(col)
    for r in results:
        kind = "RSS" if r["memory_kind"] == "peak_rss" else "CUDA max alloc"
        table.add_row(
            r["preset"], r["device_name"], f"{r['parameters']:,}", str(r["batch_size"]), str(r["seq_len"]),
            f"{r['steps_per_second']:.2f}", f"{r['seconds_per_step']:.3f}", f"{r['memory_mb']:.0f} MiB {kind}",
        )  # fmt: skip
    Console().print(table)
    return 0


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hrm", description="Hierarchical Reasoning Model tools")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser("build", help="generate a dataset in the reference format")
    build.add_argument(
        "--task", required=True, help="a preset or task: sudoku4, sudoku6, sudoku9, maze, jsonl..."
    )
    build.add_argument("--out", required=True)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--n-train", type=int)
    build.add_argument("--n-test", type=int)
    build.add_argument("--min-clues", type=int)
    build.add_argument("--size", type=int, help="maze grid size")
    build.add_argument("--min-path-len", type=int)
    build.add_argument("--num-aug", type=int, help="stored augmentations per train puzzle")
    build.add_argument("--train-file", help="jsonl task: training lines")
    build.add_argument("--test-file", help="jsonl task: test lines")
    build.set_defaults(func=cmd_data_build)

    tr = sub.add_parser("train", help="train a model (resumes from OUT/checkpoint.pt)")
    tr.add_argument("--task", required=True, help="a preset name (sudoku4, sudoku6, ..., sudoku-extreme-gpu)")
    tr.add_argument("--out", required=True)
    tr.add_argument("--budget-seconds", type=float)
    tr.add_argument("--max-steps", type=int)
    tr.add_argument("--seed", type=int)
    tr.add_argument("--config", help="JSON overrides (inline or a file): {task, data, model, train}")
    tr.add_argument("--data-dir", help="a dataset directory, or a cache of datasets (default: OUT/../data)")
    tr.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    tr.add_argument("--threads", type=int, help="torch CPU threads")
    tr.add_argument("--fresh", action="store_true", help="ignore and replace an existing checkpoint")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a held-out split")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--task", help="default: the checkpoint's task")
    ev.add_argument("--data-dir")
    ev.add_argument("--split", default="test")
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--device")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    ev.set_defaults(func=cmd_eval)

    act = sub.add_parser("act", help="answer token sequences with a checkpoint (e.g. an agent's next action)")
    act.add_argument("--checkpoint", required=True)
    act.add_argument("--state", help='one input as a JSON list of tokens, e.g. \'["key:no", ".", "A"]\'')
    act.add_argument("--file", help="a JSONL file of {\"input\": [...]} lines (outputs, when present, are scored)")
    act.add_argument("--vocab-from", help="the train split's dataset.json (default: the checkpoint's vocabulary)")
    act.add_argument("--output-len", type=int, help="output tokens per answer (default: the checkpoint's)")
    act.add_argument("--device")
    act.set_defaults(func=cmd_act)

    be = sub.add_parser("bench", help="training steps/s and peak memory of presets")
    be.add_argument("--presets", nargs="*")
    be.add_argument("--steps", type=int, default=20)
    be.add_argument("--device")
    be.add_argument("--batch-size", type=int)
    be.add_argument("--threads", type=int)
    be.add_argument("--in-process", action="store_true", help="run every preset in this process")
    be.add_argument("--json", action="store_true")
    be.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
