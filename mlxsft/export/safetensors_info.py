"""What a safetensors file holds, read from its JSON header alone (names, dtypes, shapes).

Exports check names and shapes against the base checkpoint, and parity reports say how
an artifact stores its weights, without loading a single tensor.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes) without reading tensors."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size))


def read_safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} over a model folder's model*.safetensors files."""
    shapes = {}
    for path in sorted(folder.glob("model*.safetensors")):
        for name, info in read_safetensors_header(path).items():
            if name != "__metadata__":
                shapes[name] = tuple(info["shape"])
    return shapes


def stored_dtype(path: Path) -> str:
    """The coarsest floating dtype in a safetensors file (read from its header)."""
    header = read_safetensors_header(path)
    names = {_SAFETENSORS_DTYPES.get(v["dtype"]) for k, v in header.items() if k != "__metadata__"}
    for name in ("bfloat16", "float16"):
        if name in names:
            return name
    return "float32"
