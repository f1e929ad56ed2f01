"""Every export format by its name: what `mlxsft export --format`, `mlxsft fuse` and `mlxsft verify` use."""

from __future__ import annotations

from .errors import ExportError
from .gguf import GGUF
from .gguf_lora import GGUF_LORA
from .lmstudio import LMSTUDIO
from .merged import FUSED, HF
from .mlx_adapter import MLX
from .ollama import OLLAMA
from .peft import PEFT
from .pipeline import Format

FORMATS: dict[str, Format] = {f.name: f for f in (PEFT, HF, GGUF, MLX, GGUF_LORA, OLLAMA, LMSTUDIO, FUSED)}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ExportError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}.")
    return FORMATS[name]
