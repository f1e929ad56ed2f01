"""Generation child process: `python -m mlxsft.tui.generate RUN --variant LABEL=WHICH --prompt P`.

Prompts are single user turns (`--prompt`, with an optional `--system` message before
each), or whole conversations (`--chat FILE`: a JSON object mapping each variant's label
to its own list of messages, ending with a user turn), so each model in a side-by-side
chat continues the conversation it had.

It owns MLX (load, attach, generate all on its one main thread) and prints one JSON
object per line for the UI to render as it streams:

    {"type": "loading", "label": ...}
    {"type": "text", "label": ..., "prompt": i, "delta": "..."}
    {"type": "done", "label": ..., "prompt": i, "tokens": n, "tokens_per_second": x}
    {"type": "error", "message": ...}

WHICH is `base` (the base model as the run loaded it: same dtype and quantization),
`latest` (the run's latest adapters) or a checkpoint step. The model is built the
way the trainer built it (`load_base` + `attach_adapters`), then each checkpoint's
trainable weights are loaded into it, so every checkpoint shares one load. Base
generations come first and that model is freed before the tuned one loads, so peak
memory is one model. Decoding is greedy, so the same prompt gives the same text.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

BASE = "base"


def command(
    run_dir,
    variants: list[tuple[str, str]],
    prompts: list[str],
    max_tokens: int = 64,
    system: str | None = None,
    chat_file: Path | None = None,
) -> list[str]:
    """The command line that runs this module as a child for `variants` and `prompts` (or a chat file)."""
    args = [
        sys.executable,
        "-m",
        "mlxsft.tui.generate",
        str(run_dir),
        "--max-tokens",
        str(max_tokens),
    ]
    for label, which in variants:
        args += ["--variant", f"{label}={which}"]
    for prompt in prompts:
        args += ["--prompt", prompt]
    if system:
        args += ["--system", system]
    if chat_file is not None:
        args += ["--chat", str(chat_file)]
    return args


def conversations(args: argparse.Namespace, labels: list[str]) -> dict[str, list[list[dict]]]:
    """Each variant's conversations (one per prompt), each a list of chat messages."""
    if args.chat:
        from mlxsft.errors import MlxsftError

        try:
            chats = json.loads(Path(args.chat).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MlxsftError(f"cannot read the chat file ({exc}).", path=args.chat) from None
        missing = [label for label in labels if label not in chats]
        if missing:
            raise MlxsftError(f"the chat file has no conversation for {', '.join(missing)}.", path=args.chat)
        return {label: [chats[label]] for label in labels}
    system = [{"role": "system", "content": args.system}] if args.system else []
    turns = [system + [{"role": "user", "content": p}] for p in args.prompt or []]
    return {label: turns for label in labels}


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mlxsft.tui.generate")
    p.add_argument("run", help="Run directory.")
    p.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="LABEL=WHICH",
        help="WHICH: base, latest or a checkpoint step (repeatable).",
    )
    p.add_argument("--prompt", action="append", help="A user prompt (repeatable).")
    p.add_argument("--system", help="A system message before each --prompt (the data's own, usually).")
    p.add_argument(
        "--chat",
        metavar="FILE",
        help="JSON: {label: [messages]}, each variant's conversation so far (instead of --prompt).",
    )
    p.add_argument("--max-tokens", type=int, default=64)
    return p.parse_args(argv)


def adapter_file(run, which: str) -> Path:
    from mlxsft.errors import MlxsftError

    if which == "latest":
        path = run.adapters_file
    elif which.isdigit():
        path = run.checkpoint_dir(int(which)) / "adapters.safetensors"
    else:
        raise MlxsftError(f"unknown checkpoint {which!r}: give base, latest or a step number.")
    if not path.is_file():
        raise MlxsftError("no adapter weights here (the checkpoint was deleted or never written).", path=str(path))
    return path


def generate_all(model, tokenizer, label: str, prompts: list[list[dict]], max_tokens: int) -> None:
    from mlxsft.generate import conversation_prompt, stream_text

    for i, prompt in enumerate(prompts):
        tokens, rate = 0, 0.0
        for delta in stream_text(model, tokenizer, conversation_prompt(tokenizer, prompt)[1], max_tokens):
            emit(type="text", label=label, prompt=i, delta=delta.text)
            tokens, rate = delta.tokens, delta.tokens_per_second
        emit(type="done", label=label, prompt=i, tokens=tokens, tokens_per_second=rate)


def run(args: argparse.Namespace) -> None:
    from mlxsft.errors import MlxsftError
    from mlxsft.model import attach_adapters, load_base
    from mlxsft.rundir import RunDir

    run_dir = RunDir(args.run)
    recipe = run_dir.load_recipe()
    variants = [v.split("=", 1) if "=" in v else (v, v) for v in args.variant]
    chats = conversations(args, [label for label, _ in variants])
    if not any(chats.values()):
        raise MlxsftError("nothing to answer: give --prompt or --chat.")
    for _label, which in variants:  # check every file before the slow loads
        if which != BASE:
            adapter_file(run_dir, which)
    if any(which == BASE for _, which in variants):
        for label, _ in [v for v in variants if v[1] == BASE]:
            emit(type="loading", label=label)
        model, tokenizer, _, _ = load_base(recipe)
        for label, which in variants:
            if which == BASE:
                generate_all(model, tokenizer, label, chats[label], args.max_tokens)
        del model
        gc.collect()
    tuned = [(label, which) for label, which in variants if which != BASE]
    if tuned:
        for label, _ in tuned:
            emit(type="loading", label=label)
        model, tokenizer, _, _ = load_base(recipe)
        attach_adapters(model, recipe)
        for label, which in tuned:
            model.load_weights(str(adapter_file(run_dir, which)), strict=False)
            generate_all(model, tokenizer, label, chats[label], args.max_tokens)


def main(argv: list[str] | None = None) -> int:
    from mlxsft.errors import MlxsftError

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except MlxsftError as exc:
        emit(type="error", message=str(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
