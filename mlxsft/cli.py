"""The `mlxsft` command line: a thin client of the core API.

Every `MlxsftError` becomes one message on stderr and a non-zero exit, never a
traceback. Recipe flags (`--train.learning_rate 2e-4`) are generated from the config
dataclasses, the same source the YAML validation and the TUI forms use.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .blas import describe_backend, maybe_reexec_with_openblas
from .config import dump_recipe, iter_fields, load_recipe, recipe_from_text
from .errors import MlxsftError
from .events import StdoutSink
from .kernel_cache import first_use_message, use_persistent_kernel_cache
from .launch import launch_training
from .rundir import RunDir
from .safeio import describe_write_failure, free_bytes, write_failure

# Modules that load MLX (training, the demo) are imported inside the handler that needs
# them: `mlxsft --help` and the light verbs stay fast, and MLX never loads before
# `maybe_reexec_with_openblas` has restarted the process with OpenBLAS.

# Modules that add their own subcommands: each has `add_commands(subparsers)`, which adds
# subparsers whose defaults set `handler=<function(args) -> exit code>`.
COMMAND_MODULES: tuple[str, ...] = (
    "mlxsft.export.commands",
    "mlxsft.bench.commands",
    "mlxsft.models.commands",
    "mlxsft.judge.commands",
    "mlxsft.hosts",
    "mlxsft.tui.commands",
)


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe keys (each overrides the recipe, like --set KEY=VALUE)")
    for name, _tp, default, help_text, choices in iter_fields():
        extra = f" One of: {', '.join(choices)}." if choices else ""
        text = f"{help_text}{extra} (default: {default})"
        group.add_argument(
            f"--{name}",
            dest=f"flag:{name}",
            metavar="VALUE",
            default=None,
            help=text.replace("%", "%%"),  # argparse %-formats help text
        )


def _overrides(args: argparse.Namespace) -> list[str]:
    flags = [f"{k[5:]}={v}" for k, v in vars(args).items() if k.startswith("flag:") and v is not None]
    return list(args.set or []) + flags


def _flag_labels(args: argparse.Namespace) -> dict[str, str]:
    """Overridden key -> the flag as typed (`--train.iters many`), for error messages."""
    return {k[5:]: f"--{k[5:]} {v}" for k, v in vars(args).items() if k.startswith("flag:") and v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlxsft", description="On-device LLM fine-tuning with MLX.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="Fine-tune from a YAML recipe (or resume a run).")
    train.add_argument("recipe", nargs="?", help="Recipe YAML file.")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="Override a recipe key (dotted).")
    train.add_argument("--resume", metavar="RUN_DIR", help="Resume the run in this folder from its last checkpoint.")
    train.add_argument("--quiet", action="store_true", help="Print only the final line.")
    dist = train.add_argument_group("several processes or machines (data parallel, via mlx.launch)")
    dist.add_argument("--ranks", type=int, default=None, metavar="N", help="Run N ranks on this machine.")
    dist.add_argument("--hosts", default=None, metavar="HOSTS.json", help="Run one rank per host in this file.")
    dist.add_argument(
        "--dist-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="Stop when no step finishes for S seconds (a dead or hung rank).",
    )
    _add_recipe_flags(train)

    demo = sub.add_parser("demo", help="Build a tiny local model and fine-tune it on bundled data (offline).")
    demo.add_argument("--output", default=None, help="Run directory (default: runs/demo-<time>).")

    check = sub.add_parser("recipe", help="Validate a recipe and print it resolved.")
    check.add_argument("recipe")
    check.add_argument("--set", action="append", metavar="KEY=VALUE")

    sub.add_parser("doctor", help="Show the MLX backend, BLAS and versions.")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def _strip_launch_flags(argv: list[str]) -> list[str]:
    """The train arguments each rank gets: ours minus the launch flags."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--ranks", "--hosts", "--dist-timeout"):
            skip = True
            continue
        if arg.split("=", 1)[0] in ("--ranks", "--hosts", "--dist-timeout"):
            continue
        out.append(arg)
    return out


def cmd_train(args) -> int:
    if args.ranks is not None or args.hosts is not None:
        if args.ranks is not None and args.ranks < 1:
            raise MlxsftError("--ranks must be at least 1.")
        train_args = _strip_launch_flags(sys.argv[sys.argv.index("train") + 1 :])
        return launch_training(train_args, args.ranks, args.hosts, args.dist_timeout)
    from .judge.samples import checkpoint_samples  # fixed validation prompts answered at each save
    from .train.run import run_training

    sinks = [] if args.quiet else [StdoutSink()]
    if args.resume:
        if args.recipe:
            raise MlxsftError("give either a recipe or --resume RUN_DIR, not both.")
        run = RunDir(args.resume)
        recipe = _resume_recipe(run)
        if _overrides(args):
            raise MlxsftError("a resumed run keeps its recipe; start a new run to change settings.")
        result = run_training(recipe, run.path, sinks=sinks, resume=True, on_checkpoint=checkpoint_samples())
    else:
        if not args.recipe and not _overrides(args):
            raise MlxsftError("give a recipe file, e.g. `mlxsft train recipes/quickstart.yaml`.")
        recipe = load_recipe(args.recipe, _overrides(args), _flag_labels(args))
        result = run_training(recipe, recipe.output, sinks=sinks, on_checkpoint=checkpoint_samples())
    if os.environ.get("MLX_RANK", "0") == "0":  # under mlx.launch only rank 0 speaks
        print(f"Run {result.status}: {result.run_dir}")
    return 0 if result.status == "finished" else 130


def _resume_recipe(run):
    """The run's recipe; under mlx.launch, other hosts receive it from rank 0."""
    from .train.distributed import init_world

    world = init_world()
    if not world.distributed:
        return run.load_recipe()
    text = run.recipe_file.read_text(encoding="utf-8") if world.is_main and run.exists() else None
    if world.is_main and text is None:
        run.require_existing()
    return recipe_from_text(world.broadcast_text(text), str(run.recipe_file))


def cmd_recipe(args) -> int:
    print(dump_recipe(load_recipe(args.recipe, args.set or [])), end="")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.output)
    return 0


def cmd_doctor(_args) -> int:
    for key, value in describe_backend().items():
        print(f"{key:>14}: {value}")
    return 0


COMMANDS = {"train": cmd_train, "recipe": cmd_recipe, "demo": cmd_demo, "doctor": cmd_doctor}


def _use_kernel_cache(announce: bool) -> None:
    """Keep MLX's compiled CPU kernels across reboots; say so when this run will build them."""
    message = first_use_message(use_persistent_kernel_cache())
    if announce and message:
        print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the program itself: restart once with OpenBLAS set up (never in-process callers)
        argv = list(sys.argv[1:])
        maybe_reexec_with_openblas(argv)
    argv = list(argv)
    args = build_parser().parse_args(argv)
    _use_kernel_cache(announce=args.command == "train")
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        return handler(args)
    except MlxsftError as exc:
        print(f"mlxsft: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mlxsft: interrupted", file=sys.stderr)
        return 130
    except FileNotFoundError as exc:
        print(f"mlxsft: error: {exc.filename}: file not found.", file=sys.stderr)
        return 2
    except OSError as exc:  # a file-system problem no check foresaw: still one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        failure = write_failure(exc)
        what = describe_write_failure(failure, free_bytes(Path(exc.filename or "."))) if failure else exc.strerror
        print(f"mlxsft: error: {where}{what or exc}.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
