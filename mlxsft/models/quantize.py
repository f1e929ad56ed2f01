"""A quantized copy of a stored model (`models/NAME-4bit`), through mlx-lm's converter.

`mlx_lm.convert` loads the folder, quantizes every linear and embedding layer whose
width divides the group size, and saves an MLX-format folder (weights, config with a
`quantization` section, tokenizer). It writes into `.partial-NAME-4bit` and the folder
is renamed into place only when complete, so an interrupted conversion never leaves a
half-written model that looks usable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from ..errors import ModelError
from ..model import check_model_dir
from .store import folder_size, human_bytes, partial_dir, read_source, write_source

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


def check_quantize_args(bits: int, group_size: int) -> None:
    if bits not in BITS:
        raise ModelError(f"--quantize must be one of {', '.join(map(str, BITS))} bits, got {bits}.")
    if group_size not in GROUP_SIZES:
        raise ModelError(
            f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}."
        )


def quantize_into_store(
    src: Path, root: Path, name: str, bits: int, group_size: int = 64, hub_id: str | None = None
) -> Path:
    """Write `root/name` as a `bits`-bit copy of the model folder `src`; return its path."""
    check_quantize_args(bits, group_size)
    dest = root / name
    if dest.exists():
        check_model_dir(dest)
        print(f"{dest} is already present.", file=sys.stderr)
        return dest
    check_model_dir(src)
    partial = partial_dir(root, name)
    shutil.rmtree(partial, ignore_errors=True)  # a conversion cannot resume: start it again
    start = time.monotonic()
    print(
        f"Quantizing {src} to {bits} bits (group size {group_size}) into {dest} ...",
        file=sys.stderr,
    )
    try:
        _convert(src, partial, bits, group_size)
        check_model_dir(partial)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, ModelError) or not isinstance(exc, Exception):
            raise
        raise ModelError(
            f"quantizing failed ({type(exc).__name__}: {exc}).", path=str(src)
        ) from None
    write_source(
        partial,
        {
            "hub_id": hub_id or read_source(src).get("hub_id"),
            "quantized_from": src.name,
            "bits": bits,
            "group_size": group_size,
            "quantized_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    os.replace(partial, dest)
    print(
        f"Wrote {dest} ({human_bytes(folder_size(dest))} in {time.monotonic() - start:.0f} s).",
        file=sys.stderr,
    )
    return dest


def _convert(src: Path, out: Path, bits: int, group_size: int) -> None:
    from mlx_lm import convert

    # mlx-lm's converter reports progress with print(); keep stdout for our own results
    with contextlib.redirect_stdout(sys.stderr):
        convert(str(src), mlx_path=str(out), quantize=True, q_bits=bits, q_group_size=group_size)
