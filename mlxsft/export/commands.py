"""CLI wiring of `mlxsft fuse | export | verify | import-adapter | push`: thin handlers over the API.

`add_commands(sub)` adds the five subparsers to the CLI's argparse subparsers and
sets `handler=` on each; the CLI dispatches `args.handler(args)` and turns an
`MlxsftError` into one message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import re

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
    fuse.add_argument(
        "--dtype", choices=DTYPE_CHOICES, help="Weight dtype (default: the base model's)."
    )
    _common(fuse)
    fuse.set_defaults(handler=cmd_fuse)

    export = sub.add_parser(
        "export", help="Export a run's adapter: PEFT, merged HF, GGUF or MLX adapter."
    )
    export.add_argument("run", help="Run directory.")
    export.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="peft: PEFT adapter; hf: merged Hugging Face model; gguf: llama.cpp file; "
        "mlx: mlx-lm adapter folder; gguf-lora: llama.cpp --lora adapter file; ollama: "
        "folder with GGUF + Modelfile; lmstudio: LM Studio's publisher/model/ folder layout.",
    )
    export.add_argument(
        "--out", required=True, help="Output folder (a .gguf file for --format gguf)."
    )
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

    verify = sub.add_parser(
        "verify", help="Check an export's logits against the run's trained adapter."
    )
    verify.add_argument("export", help="An export folder or .gguf file.")
    verify.add_argument(
        "--against", required=True, metavar="RUN", help="The run it was exported from."
    )
    verify.add_argument(
        "--checkpoint",
        metavar="STEP",
        help="Checkpoint to compare with (default: the one the export recorded).",
    )
    verify.set_defaults(handler=cmd_verify)

    imp = sub.add_parser("import-adapter", help="Bring a PEFT LoRA/DoRA adapter in as a run.")
    imp.add_argument(
        "peft_dir", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."
    )
    imp.add_argument(
        "--base",
        help="Base model folder or hub id (default: the adapter's base_model_name_or_path).",
    )
    imp.add_argument("--out", required=True, help="Run directory to create.")
    imp.add_argument(
        "--data", help="Training data for continuing (sets data.train in the run's recipe)."
    )
    imp.add_argument(
        "--force", action="store_true", help="Replace an earlier, untrained import at --out."
    )
    imp.set_defaults(handler=cmd_import_adapter)

    push = sub.add_parser("push", help="Upload a run's adapter or an export to the Hugging Face hub.")
    push.add_argument("target", help="A run directory (its PEFT adapter is uploaded) or an export.")
    push.add_argument("--repo", required=True, help="Hub repository, user/name.")
    push.add_argument("--private", action="store_true", help="Create the repository private.")
    push.add_argument("--checkpoint", metavar="STEP", help="For a run: the checkpoint to upload (default: chosen).")
    push.set_defaults(handler=cmd_push)


def cmd_fuse(args) -> int:
    from .merged import fuse_run

    fuse_run(
        args.run,
        args.out,
        checkpoint=args.checkpoint,
        dequantize=args.dequantize,
        dtype=args.dtype,
        force=args.force,
        verify=args.verify,
    )
    return 0


def cmd_export(args) -> int:
    common = dict(checkpoint=args.checkpoint, force=args.force, verify=args.verify)
    if getattr(args, "quant", None) and args.format in ("peft", "mlx", "hf"):
        from .mlx_adapter import ExportError

        raise ExportError(f"--quant applies to GGUF-based formats (gguf, ollama, lmstudio), not {args.format}.")
    if args.format == "peft":
        from .peft import export_peft

        _no_dtype(args)
        export_peft(args.run, args.out, **common)
    elif args.format == "mlx":
        from .mlx_adapter import export_mlx_adapter

        _no_dtype(args)
        export_mlx_adapter(args.run, args.out, **common)
    elif args.format == "hf":
        from .merged import export_hf

        export_hf(
            args.run, args.out, dtype=args.dtype, max_shard_bytes=args.max_shard_size, **common
        )
    elif args.format == "gguf":
        from .gguf import export_gguf

        export_gguf(args.run, args.out, dtype=args.dtype, quant=args.quant, **common)
    else:
        _deploy_export(args, common)
    return 0


def _deploy_export(args, common: dict) -> None:
    """gguf-lora, ollama and lmstudio (export/gguf_lora.py, ollama.py, lmstudio.py)."""
    _no_dtype(args)
    if args.format == "gguf-lora":
        from .gguf_lora import export_gguf_lora
        from .mlx_adapter import ExportError

        if args.quant:
            raise ExportError("--quant applies to merged GGUF exports; the adapter file is float32.")
        export_gguf_lora(args.run, args.out, **common)
    elif args.format == "ollama":
        from .ollama import export_ollama

        export_ollama(args.run, args.out, quant=args.quant, **common)
    else:
        from .lmstudio import export_lmstudio

        export_lmstudio(args.run, args.out, quant=args.quant, **common)


def _no_dtype(args) -> None:
    from .mlx_adapter import ExportError

    if args.dtype:
        raise ExportError(
            f"--dtype applies to --format hf and gguf; for {args.format} use --quant "
            "(GGUF-based formats) or nothing (adapters keep the dtype they were trained in)."
        )


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
