"""CLI wiring of `mlxsft fuse | export | verify | import-adapter | push`: thin handlers over the API.

`add_commands(sub)` adds the five subparsers to the CLI's argparse subparsers and
sets `handler=` on each; the CLI dispatches `args.handler(args)` and turns an
`MlxsftError` into one message and a non-zero exit. `export` and `fuse` run the one
pipeline (`pipeline.export_run`) with the format the registry names.

The handlers import the wing's modules when they run, not at import: `mlxsft --help`
imports this module, and the formats pull in MLX, mlx-lm and numpy.
"""

from __future__ import annotations

import argparse
import re

from .errors import ExportError

FORMATS = ("peft", "hf", "gguf", "mlx", "gguf-lora", "ollama", "lmstudio")
QUANT_CHOICES = ("f32", "f16", "q8_0", "q4_0", "q4_k_m")
DTYPE_CHOICES = ("float32", "float16", "bfloat16")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*$", re.I)


def parse_size(text: str) -> int:
    """'5GB', '500MB', '1024' -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB or 500MB, got {text!r}")
    unit = (match[2] or "B").upper()[0]
    return int(float(match[1]) * {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit])


def _common(parser: argparse.ArgumentParser, verify: bool = True) -> None:
    parser.add_argument(
        "--checkpoint",
        metavar="STEP",
        help="A checkpoint step, 'best' or 'latest' (default: the step `mlxsft select` chose, else the latest).",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="Replace an existing output that an earlier export wrote.",
    )
    if verify:
        parser.add_argument(
            "--no-verify",
            dest="verify",
            action="store_false",
            help="Skip the parity check against the trained adapter.",
        )


def add_commands(sub) -> None:
    """Add fuse, export, verify and import-adapter to an argparse subparsers object."""
    fuse = sub.add_parser("fuse", help="Fuse a run's adapter into its base: a merged MLX model.")
    fuse.add_argument("run", help="Run directory.")
    fuse.add_argument("--out", required=True, help="Output folder for the fused model.")
    fuse.add_argument(
        "--dequantize",
        action="store_true",
        help="Write full-precision weights instead of re-quantizing a quantized (QLoRA) base.",
    )
    fuse.add_argument("--dtype", choices=DTYPE_CHOICES, help="Weight dtype (default: the base model's).")
    _common(fuse)
    fuse.set_defaults(handler=cmd_fuse)

    export = sub.add_parser("export", help="Export a run's adapter: PEFT, merged HF, GGUF or MLX adapter.")
    export.add_argument("run", help="Run directory.")
    export.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="peft: PEFT adapter; hf: merged Hugging Face model; gguf: llama.cpp file; "
        "mlx: mlx-lm adapter folder; gguf-lora: llama.cpp --lora adapter file; ollama: "
        "folder with GGUF + Modelfile; lmstudio: LM Studio's publisher/model/ folder layout.",
    )
    export.add_argument("--out", required=True, help="Output folder (a .gguf file for --format gguf).")
    export.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        help="hf: weight dtype (default: the base's); gguf: float32 or float16 (default).",
    )
    export.add_argument(
        "--quant",
        choices=QUANT_CHOICES,
        help="gguf, ollama, lmstudio: llama.cpp quantization of the merged model (default: f16).",
    )
    export.add_argument(
        "--max-shard-size",
        type=parse_size,
        default="5GB",
        metavar="SIZE",
        help="hf: largest safetensors shard (default: 5GB).",
    )
    _common(export)
    export.set_defaults(handler=cmd_export)

    verify = sub.add_parser("verify", help="Check an export's logits against the run's trained adapter.")
    verify.add_argument("export", help="An export folder or .gguf file.")
    verify.add_argument("--against", required=True, metavar="RUN", help="The run it was exported from.")
    verify.add_argument(
        "--checkpoint",
        metavar="STEP",
        help="Checkpoint to compare with (default: the one the export recorded).",
    )
    verify.set_defaults(handler=cmd_verify)

    imp = sub.add_parser("import-adapter", help="Bring a PEFT LoRA/DoRA adapter in as a run.")
    imp.add_argument("peft_dir", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors).")
    imp.add_argument(
        "--base",
        help="Base model folder or hub id (default: the adapter's base_model_name_or_path).",
    )
    imp.add_argument("--out", required=True, help="Run directory to create.")
    imp.add_argument("--data", help="Training data for continuing (sets data.train in the run's recipe).")
    imp.add_argument("--force", action="store_true", help="Replace an earlier, untrained import at --out.")
    imp.set_defaults(handler=cmd_import_adapter)

    push = sub.add_parser("push", help="Upload a run's adapter or an export to the Hugging Face hub.")
    push.add_argument("target", help="A run directory (its PEFT adapter is uploaded) or an export.")
    push.add_argument("--repo", required=True, help="Hub repository, user/name.")
    push.add_argument("--private", action="store_true", help="Create the repository private.")
    push.add_argument("--checkpoint", metavar="STEP", help="For a run: the checkpoint to upload (default: chosen).")
    push.set_defaults(handler=cmd_push)


def cmd_fuse(args) -> int:
    from .pipeline import ExportOptions, export_run
    from .registry import get_format

    options = ExportOptions(dtype=args.dtype, dequantize=args.dequantize)
    export_run(
        get_format("fused"),
        args.run,
        args.out,
        checkpoint=args.checkpoint,
        force=args.force,
        verify=args.verify,
        options=options,
    )
    return 0


def cmd_export(args) -> int:
    from .pipeline import ExportOptions, export_run
    from .registry import get_format

    _check_options(args)
    options = ExportOptions(dtype=args.dtype, quant=args.quant, max_shard_bytes=args.max_shard_size)
    export_run(
        get_format(args.format),
        args.run,
        args.out,
        checkpoint=args.checkpoint,
        force=args.force,
        verify=args.verify,
        options=options,
    )
    return 0


def _check_options(args) -> None:
    """Refuse --quant and --dtype where the format has no use for them."""
    if args.quant and args.format in ("peft", "mlx", "hf"):
        raise ExportError(f"--quant applies to GGUF-based formats (gguf, ollama, lmstudio), not {args.format}.")
    if args.dtype and args.format not in ("hf", "gguf"):
        raise ExportError(
            f"--dtype applies to --format hf and gguf; for {args.format} use --quant "
            "(GGUF-based formats) or nothing (adapters keep the dtype they were trained in)."
        )
    if args.quant and args.format == "gguf-lora":
        raise ExportError("--quant applies to merged GGUF exports; the adapter file is float32.")


def cmd_verify(args) -> int:
    from .verify import verify_export

    verify_export(args.export, args.against, checkpoint=args.checkpoint)
    return 0


def cmd_import_adapter(args) -> int:
    from .import_adapter import import_peft_adapter

    import_peft_adapter(args.peft_dir, args.out, base=args.base, data=args.data, force=args.force)
    return 0


def cmd_push(args) -> int:
    from .push import push

    push(args.target, args.repo, private=args.private, checkpoint=args.checkpoint)
    return 0
