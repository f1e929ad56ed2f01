"""The Export screen's model: the `mlxsft export`/`fuse` command to run, and its parity report.

The TUI never exports in-process: it runs the CLI as a child (the same command a
person would type, shown on screen) and reads the `parity.json` the export writes
(`OUT/parity.json` for folders, `OUT.parity.json` beside a .gguf file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .runs import python_command

FORMATS = ("peft", "hf", "gguf", "gguf-lora", "ollama", "lmstudio", "mlx", "fused")
FORMAT_HELP = {
    "peft": "PEFT LoRA/DoRA adapter (transformers + peft)",
    "hf": "merged Hugging Face model (safetensors)",
    "gguf": "merged llama.cpp file, f16 or quantized",
    "gguf-lora": "llama.cpp --lora adapter for the base GGUF",
    "ollama": "GGUF + Modelfile (ollama create)",
    "lmstudio": "LM Studio's publisher/model folder",
    "mlx": "mlx-lm adapter folder",
    "fused": "merged MLX model (mlxsft fuse)",
}
DTYPES = ("float32", "float16", "bfloat16")
USES_DTYPE = ("hf", "fused")
QUANTS = ("f16", "q8_0", "q4_k_m", "q4_0", "f32")
USES_QUANT = ("gguf", "ollama", "lmstudio")
GGUF_FILES = ("gguf", "gguf-lora")  # formats whose output is one .gguf file


@dataclass(frozen=True)
class ExportOptions:
    format: str
    out: Path
    checkpoint: str | None = None  # a step, "best", "latest"; None: the run's latest adapters
    dtype: str | None = None
    max_shard_size: str | None = None  # hf only, e.g. "5GB"
    dequantize: bool = False  # fused only
    verify: bool = True
    force: bool = False
    quant: str | None = None  # gguf, ollama, lmstudio: llama.cpp quantization


def default_out(run_dir: Path, fmt: str) -> Path:
    exports = Path(run_dir) / "exports"
    if fmt == "gguf":
        return exports / f"{Path(run_dir).name}.gguf"
    if fmt == "gguf-lora":
        return exports / f"{Path(run_dir).name}-lora.gguf"
    return exports / fmt


def export_args(run_dir: Path, opts: ExportOptions) -> list[str]:
    """CLI arguments (after `mlxsft`) for these options."""
    if opts.format == "fused":
        args = ["fuse", str(run_dir), "--out", str(opts.out)]
        if opts.dequantize:
            args.append("--dequantize")
    else:
        args = ["export", str(run_dir), "--format", opts.format, "--out", str(opts.out)]
        if opts.format == "hf" and opts.max_shard_size:
            args += ["--max-shard-size", opts.max_shard_size]
    if opts.dtype and opts.format in USES_DTYPE:
        args += ["--dtype", opts.dtype]
    if opts.quant and opts.format in USES_QUANT:
        args += ["--quant", opts.quant]
    if opts.checkpoint:
        args += ["--checkpoint", opts.checkpoint]
    if opts.force:
        args.append("--force")
    if not opts.verify:
        args.append("--no-verify")
    return args


def export_command(run_dir: Path, opts: ExportOptions) -> list[str]:
    return python_command(*export_args(run_dir, opts))


def push_args(target: Path, repo: str, *, private: bool = False, checkpoint: str | None = None) -> list[str]:
    """CLI arguments for `mlxsft push`: a run (its PEFT adapter) or an export folder/file."""
    args = ["push", str(target), "--repo", repo]
    if private:
        args.append("--private")
    if checkpoint:
        args += ["--checkpoint", checkpoint]
    return args


def parity_file(out: Path, fmt: str) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parity.json") if fmt in GGUF_FILES else out / "parity.json"


def read_parity(out: Path, fmt: str, since: float | None = None):
    """The export's parity report as the core's `ParityReport`, or None.

    `since`: when the export was started; a parity.json older than that is left over from
    an earlier export (this one failed before its check) and is not shown as its result.
    """
    import dataclasses

    from mlxsft.export.verify import ParityReport

    try:
        data = json.loads(parity_file(out, fmt).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    names = {f.name for f in dataclasses.fields(ParityReport)}
    try:
        report = ParityReport(**{k: v for k, v in data.items() if k in names})
    except TypeError:  # a record without the required fields
        return None
    written = data.get("time")  # not report.time: the dataclass fills a missing one with "now"
    if since is not None and (not isinstance(written, (int, float)) or written < since):
        return None
    return report


def describe_parity(report) -> str:
    """The core's own summary of a parity check, led by its verdict in words."""
    if report.skipped:
        return report.summary()
    verdict = "PASSED" if report.passed else "MISMATCH"
    return f"parity {verdict}: {report.summary()}"
