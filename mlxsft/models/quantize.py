"""A quantized copy of a stored model (`models/NAME-4bit`), through mlx-lm's converter.

`mlx_lm.convert` loads the folder, quantizes every linear and embedding layer whose
width divides the group size, and saves an MLX-format folder (weights, config with a
`quantization` section, tokenizer). It writes into `.partial-NAME-4bit` and the folder
is renamed into place only when complete, so an interrupted conversion never leaves a
half-written model that looks usable.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path

from ..errors import ModelError
from ..model import check_model_dir
from ..safeio import commit_staging, write_guard
from ..store import folder_size, human_bytes, partial_dir, read_source, write_source

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


def check_quantize_args(bits: int, group_size: int, bits_flag: str = "--quantize") -> None:
    if bits not in BITS:
        raise ModelError(f"{bits_flag} must be one of {', '.join(map(str, BITS))} bits, got {bits}.")
    if group_size not in GROUP_SIZES:
        raise ModelError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}.")


def quantize_into_store(
    src: Path,
    root: Path,
    name: str,
    bits: int,
    group_size: int = 64,
    hub_id: str | None = None,
    bits_flag: str = "--quantize",
) -> Path:
    """Write `root/name` as a `bits`-bit copy of the model folder `src`; return its path.

    A failed write (a full disk) removes the partial copy and says so; the store is
    otherwise untouched.
    """
    check_quantize_args(bits, group_size, bits_flag)
    dest = root / name
    if dest.exists() or dest.is_symlink():
        if not _same_copy(dest, src, bits, group_size):
            raise ModelError(
                f"the store already holds '{name}' ({dest}), which is not a {bits}-bit copy of {src.name}; "
                "choose another name with --name (or move that folder away).",
                path=str(dest),
            )
        check_model_dir(dest)
        print(f"{dest} is already present.", file=sys.stderr)
        return dest
    check_model_dir(src)
    partial = partial_dir(root, name)
    if partial.exists():  # a conversion cannot resume: start it again
        print(f"Removing {partial}, left behind by an interrupted quantize.", file=sys.stderr)
        shutil.rmtree(partial, ignore_errors=True)
    start = time.monotonic()
    print(
        f"Quantizing {src} to {bits} bits (group size {group_size}) into {dest} ...",
        file=sys.stderr,
    )
    try:
        with write_guard(root, f"the quantized copy {dest}", kept="Nothing was left in the store.", error=ModelError):
            _convert(src, partial, bits, group_size)
            check_model_dir(partial)
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
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, ModelError) or not isinstance(exc, Exception):
            raise
        raise ModelError(f"quantizing failed ({type(exc).__name__}: {exc}).", path=str(src)) from None
    commit_staging(partial, dest)  # fsync the files, then rename into place
    print(
        f"Wrote {dest} ({human_bytes(folder_size(dest))} in {time.monotonic() - start:.0f} s).",
        file=sys.stderr,
    )
    return dest


def _same_copy(dest: Path, src: Path, bits: int, group_size: int) -> bool:
    """Is `dest` the copy this command would write (so asking again is a no-op)?"""
    record = read_source(dest)
    return (
        record.get("quantized_from") == src.name
        and record.get("bits") == bits
        and record.get("group_size", group_size) == group_size
    )


def _convert(src: Path, out: Path, bits: int, group_size: int) -> None:
    from mlx_lm import convert

    # mlx-lm's converter reports progress with print(); keep stdout for our own results
    with contextlib.redirect_stdout(sys.stderr):
        convert(str(src), mlx_path=str(out), quantize=True, q_bits=bits, q_group_size=group_size)
