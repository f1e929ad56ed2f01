"""CLI: `mlxsft models list | pull | quantize | info | fit` (thin clients of this package)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ModelError
from ..store import STORE_ENV

# Handlers import their module (MLX, the hub client) when they run, so building the CLI
# parser stays light for every other command.

MODEL_ARG = "Model folder, its name in the store, or a hub id already pulled."


def add_commands(sub) -> None:
    models = sub.add_parser(
        "models", help="The local model store: catalog, hub pulls, quantized copies, model facts, fit estimates."
    )
    verbs = models.add_subparsers(dest="models_command", required=True, metavar="VERB")

    def add(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--store", default=None, metavar="DIR", help=f"Model store folder (default: ${STORE_ENV} or ./models)."
        )
        p.set_defaults(handler=handler)
        return p

    add("list", "The catalog, and what is in the local store with its size on disk.", cmd_list)
    _pull_args(
        add(
            "pull",
            "Download a model from the Hugging Face hub into the store "
            "(safetensors, config, tokenizer only); run again to resume.",
            cmd_pull,
        )
    )
    quant = add("quantize", "Write a quantized copy of a stored model (works offline).", cmd_quantize)
    quant.add_argument("model", help=MODEL_ARG)
    quant.add_argument("--bits", type=int, default=4, help="2, 3, 4, 5, 6 or 8 (default 4).")
    quant.add_argument("--group-size", type=int, default=64, help="32, 64 or 128 (default 64).")
    quant.add_argument("--name", default=None, help="Name of the copy (default: NAME-<BITS>bit).")
    info = add(
        "info",
        "Architecture, parameters, dtype, quantization, chat template and LoRA targets of a model folder.",
        cmd_info,
    )
    info.add_argument("model", help=MODEL_ARG)
    _fit_args(add("fit", "Will this training run fit in memory here, and how fast will it go?", cmd_fit))


def _pull_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("hub_id", help="Hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct.")
    p.add_argument(
        "--quantize",
        type=int,
        default=None,
        metavar="BITS",
        help="Also write a quantized copy NAME-<BITS>bit (2, 3, 4, 5, 6 or 8).",
    )
    p.add_argument("--group-size", type=int, default=64, help="Quantization group: 32, 64, 128.")
    p.add_argument("--name", default=None, help="Folder name in the store (default: repo name).")
    p.add_argument("--revision", default=None, help="Branch, tag or commit (default: main).")
    p.add_argument(
        "--allow-bin",
        action="store_true",
        help="Also fetch PyTorch .bin weights (pickle: only from sources you trust).",
    )


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_ARG)
    p.add_argument("--method", default="lora", choices=("lora", "dora", "full"))
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16).")
    p.add_argument(
        "--targets", default=None, help="Comma-separated LoRA targets (default: the model's recommended ones)."
    )
    p.add_argument("--layers", default="all", help="Adapt the last N blocks, or 'all'.")
    p.add_argument("--batch-tokens", type=int, default=4096, help="Tokens per micro-batch (default 4096).")
    p.add_argument(
        "--seq-length",
        type=int,
        default=None,
        help="Tokens per row (default: min(batch tokens, 2048)); rows = batch / this.",
    )
    p.add_argument(
        "--quantize", type=int, default=None, metavar="BITS", help="QLoRA: quantize the base to this many bits."
    )
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--grad-checkpoint", action="store_true", help="Recompute blocks in the backward pass.")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument(
        "--trained-fraction",
        type=float,
        default=1.0,
        help="Share of positions whose loss is trained (default 1; chat data with prompt masking is often 0.3-0.6).",
    )
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "adam", "sgd"))
    p.add_argument(
        "--measure",
        action="store_true",
        help="Also run a few compiled training steps here and report the measured peak.",
    )
    p.add_argument("--steps", type=int, default=4, help="Steps of the measured run (default 4).")


def _root(args) -> Path:
    from ..store import store_root

    return store_root(args.store)


def cmd_list(args) -> int:
    from ..store import find_local, human_bytes, list_local, list_partial, read_source
    from .catalog import catalog_path, load_catalog

    root, path = _root(args), catalog_path(args.store)
    claimed: set[Path] = set()
    print(f"Catalog ({path}); store: {root}")
    print(f"  {'hub id':<38} {'params':>6}  {'license':<30} {'gated':<5}  in the store")
    for e in load_catalog(path):
        copies = (find_local(root, e.id, bits) for bits in (None, 2, 3, 4, 5, 6, 8))
        found = [m for m in copies if m]
        claimed.update(m.path for m in found)
        where = "; ".join(f"{m.path} ({human_bytes(m.size_bytes)})" for m in found) or "-"
        params = f"{e.params_b * 1000:.0f}M" if e.params_b < 1 else f"{e.params_b:.1f}B"
        gated = "yes" if e.gated else ""
        print(f"  {e.id:<38} {params:>6}  {e.license:<30} {gated:<5}  {where}")
    others = [m for m in list_local(root) if m.path not in claimed]
    if others:
        print("Other models in the store")
    for m in others:
        extra = (f", {m.bits}-bit" if m.bits else "") + (f", from {m.hub_id}" if m.hub_id else "")
        print(f"  {str(m.path):<40} {m.model_type or '?'}{extra}, {human_bytes(m.size_bytes)}")
    for partial in list_partial(root):
        hub_id = read_source(partial).get("hub_id")
        again = f"`mlxsft models pull {hub_id}`" if hub_id else "the same pull"
        print(f"Unfinished download: {partial}; run {again} again to resume (or delete it).")
    return 0


def cmd_pull(args) -> int:
    from ..store import human_bytes
    from .pull import pull_model
    from .quantize import check_quantize_args

    if args.quantize is not None:
        check_quantize_args(args.quantize, args.group_size)
    result = pull_model(
        args.hub_id,
        _root(args),
        name=args.name,
        revision=args.revision,
        quantize_bits=args.quantize,
        group_size=args.group_size,
        allow_bin=args.allow_bin,
    )
    size = human_bytes(result.size_bytes)
    if result.already_present:
        print(f"{args.hub_id} is already present at {result.path} ({size}).")
    else:
        print(f"Pulled {args.hub_id} into {result.path} ({size}).")
    if result.quantized_path is not None:
        print(f"Quantized copy: {result.quantized_path}")
    return 0


def cmd_quantize(args) -> int:
    from ..store import resolve_local
    from .quantize import check_quantize_args, quantize_into_store

    check_quantize_args(args.bits, args.group_size, bits_flag="--bits")
    root = _root(args)
    src = resolve_local(args.model, root)
    name = args.name or f"{src.name}-{args.bits}bit"
    if "/" in name or name.startswith("."):
        raise ModelError(f"--name must be a plain folder name (no '/', not hidden), got {name!r}.")
    path = quantize_into_store(src, root, name, args.bits, args.group_size, bits_flag="--bits")
    print(f"Quantized copy: {path}")
    return 0


def cmd_info(args) -> int:
    from ..store import resolve_local
    from .info import describe_model, format_facts

    print(format_facts(describe_model(resolve_local(args.model, _root(args)))))
    return 0


def _layers(text: str) -> int | str:
    if text == "all":
        return text
    if not text.isdigit() or int(text) < 1:
        raise ModelError(f"--layers must be 'all' or a number of blocks >= 1, got {text!r}.")
    return int(text)


def fit_settings(args):
    """FitSettings from the `fit` flags, with the checks argparse cannot make."""
    from .fit import FitSettings
    from .quantize import check_quantize_args

    if args.quantize is not None:
        check_quantize_args(args.quantize, args.group_size)
        if args.method == "full":
            raise ModelError("--quantize cannot be used with --method full (a quantized base cannot be trained).")
    if args.rank < 1:
        raise ModelError(f"--rank must be at least 1, got {args.rank}.")
    targets = tuple(t.strip() for t in (args.targets or "").split(",") if t.strip()) or None
    return FitSettings(
        method=args.method,
        rank=args.rank,
        alpha=2.0 * args.rank,
        targets=targets,
        layers=_layers(args.layers),
        batch_tokens=args.batch_tokens,
        seq_length=args.seq_length,
        quantize_bits=args.quantize,
        group_size=args.group_size,
        grad_checkpoint=args.grad_checkpoint,
        dtype=args.dtype,
        trained_fraction=args.trained_fraction,
        optimizer=args.optimizer,
    )


def cmd_fit(args) -> int:
    from ..store import resolve_local
    from .report import build_report, format_report

    settings = fit_settings(args)
    path = resolve_local(args.model, _root(args))
    print(format_report(build_report(path, settings, measure=args.measure, steps=args.steps)))
    return 0
