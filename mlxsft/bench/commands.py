"""CLI: `mlxsft bench`."""

from __future__ import annotations

import json
from pathlib import Path

from ..safeio import atomic_write_text
from .spec import BenchSpec

# The runner is imported when `mlxsft bench` runs, so building the CLI parser stays light.


def add_commands(sub) -> None:
    p = sub.add_parser("bench", help="Time training steps; with --against, side by side with mlx-lm or PEFT.")
    p.add_argument("--model", help="Model folder (or hub id).")
    p.add_argument("--data", help="JSONL file or folder with train.jsonl.")
    p.add_argument(
        "--suite",
        metavar="DIR",
        default=None,
        help="Run the README's benchmark cases on the models and data under DIR "
        "(built by scripts/bench_setup.py); --steps, --repeats and --json apply.",
    )
    p.add_argument("--method", default="lora", choices=("lora", "dora", "full"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="Timed steps (after the warm-up).")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--layers", default="all")
    p.add_argument("--pack", action="store_true", help="Pack rows (ours only).")
    p.add_argument("--batch-tokens", type=int, default=None, help="Token budget per batch (ours only).")
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument(
        "--against",
        action="append",
        default=[],
        choices=("mlx-lm", "peft"),
        help="Also run this trainer on the same work (repeatable).",
    )
    p.add_argument("--repeats", type=int, default=1, help="Runs per side; the fastest counts.")
    p.add_argument(
        "--cold",
        action="store_true",
        help="First run each side in an empty temp dir (and, for ours, an empty kernel cache: a first "
        "run after install), and ours once more after a simulated reboot; report cold and warm.",
    )
    p.add_argument("--json", dest="json_out", default=None, help="Write the results here as JSON.")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args) -> int:
    from ..errors import MlxsftError
    from .runner import format_table, run_benchmark, summary

    if args.suite:
        return _cmd_suite(args)
    if not (args.model and args.data):
        raise MlxsftError("give --model and --data (or --suite DIR for the README's benchmark cases).")

    layers = args.layers if args.layers == "all" else int(args.layers)
    spec = BenchSpec(
        model=args.model,
        data=args.data,
        method=args.method,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        steps=args.steps,
        warmup=args.warmup,
        rank=args.rank,
        alpha=2.0 * args.rank,
        layers=layers,
        pack=args.pack,
        batch_tokens=args.batch_tokens,
        grad_checkpoint=args.grad_checkpoint,
    )
    results = run_benchmark(spec, args.against, repeats=args.repeats, cold=args.cold)
    print(format_table(results))
    _save_json(args.json_out, summary(spec, results))
    return 0


def _cmd_suite(args) -> int:
    from .suite import format_suite, run_suite, suite_summary

    done = run_suite(Path(args.suite), steps=args.steps, repeats=args.repeats)
    print("\nsummary (warm, fastest repeat):\n" + format_suite(done))
    _save_json(args.json_out, suite_summary(done))
    return 0


def _save_json(path: str | None, payload: dict) -> None:
    if path:
        atomic_write_text(Path(path), json.dumps(payload, indent=2))
        print(f"Results written to {path}")
