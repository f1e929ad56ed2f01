"""`mlxsft verify EXPORT --against RUN`: re-check any export's parity, through the format registry.

The export's format is recognised from the files it holds (`detect_format`); that
format reads it back (`load`) and gives its reference (`reference`: the trained
adapter, or for a quantized GGUF the f16 export it was quantized from), and
`parity.check_artifact` compares them and rewrites the export's parity report.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ExportError
from .gguf import gguf_type
from .parity import ParityReport, check_artifact
from .pipeline import ExportOptions, Job
from .registry import get_format
from .safetensors_info import read_safetensors_header
from .source import resolve_source
from .staging import PARITY_FILE, parity_path_for

# ---------------------------------------------------------------- `mlxsft verify`


def detect_format(path: Path) -> str:
    """peft | mlx | hf | fused | gguf | gguf-lora | ollama | lmstudio, from the files an export holds."""
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf-lora" if gguf_type(path) == "adapter" else "gguf"
        raise ExportError("not an export: expected a folder or a .gguf file.", path=str(path))
    if not path.is_dir():
        raise ExportError("export not found.", path=str(path))
    if (path / "adapter_model.safetensors").is_file():
        return "peft"
    if (path / "adapters.safetensors").is_file() and (path / "adapter_config.json").is_file():
        return "mlx"
    if (path / "config.json").is_file() and any(path.glob("model*.safetensors")):
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return "fused" if "quantization" in config or _safetensors_format(path) == "mlx" else "hf"
    if (path / "Modelfile").is_file() and (path / "model.gguf").is_file():
        return "ollama"
    if (path / PARITY_FILE).is_file() and len(list(path.glob("*/*/*.gguf"))) == 1:
        return "lmstudio"
    if (path / "adapter_model.bin").is_file():
        raise ExportError("a PEFT adapter in .bin (pickle) form; save it as safetensors first.", path=str(path))
    raise ExportError(
        "not an mlxsft export: no adapter_model.safetensors, adapters.safetensors "
        "or config.json + model*.safetensors here.",
        path=str(path),
    )


def _safetensors_format(folder: Path) -> str | None:
    first = sorted(folder.glob("model*.safetensors"))[0]
    return read_safetensors_header(first).get("__metadata__", {}).get("format")


def _recorded_checkpoint(path: Path):
    recorded = parity_path_for(path)
    if not recorded.is_file():
        return None
    checkpoint = json.loads(recorded.read_text(encoding="utf-8")).get("source", {}).get("checkpoint")
    return None if checkpoint in (None, "latest") else checkpoint


def verify_export(export: str | Path, against: str | Path, checkpoint=None) -> ParityReport:
    """Check an export against a run (default: the checkpoint it was exported from)."""
    path = Path(export)
    name = detect_format(path)
    fmt = get_format(name)
    source = resolve_source(against, checkpoint if checkpoint is not None else _recorded_checkpoint(path))
    print(f"Verifying {path} ({name}) against {source.run.path}")
    candidate = fmt.load(path, source)
    # a quantized artifact's stored type is the --quant it was written with (its reference differs)
    job = Job(source, path, ExportOptions(quant=candidate.dtype if candidate.quantized else None))
    report = check_artifact(fmt.reference(job), candidate, fmt=name, source=source, parity_path=parity_path_for(path))
    if not report.passed:
        raise ExportError(report.failure(), path=str(path))
    return report
