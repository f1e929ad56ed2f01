"""What each benchmark side really ran with, read from inside its own process.

Versions, threads, and the BLAS libraries actually mapped into the process (from
/proc/self/maps, so a preload cannot hide), plus the environment variables that steer
them. Stored with every result so a figure can be checked, not trusted.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata

BLAS_LIB = re.compile(r"(blas|mkl|lapack|accelerate|gomp|iomp)", re.IGNORECASE)
STEERING_VARS = (
    "LD_PRELOAD",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "MLXSFT_NO_OPENBLAS",
    "MLXSFT_NO_KERNEL_CACHE",
    "TMPDIR",
)


def cores() -> int:
    """CPUs this process may run on (what a user's `torch.set_num_threads` should get)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


# MLX's compiled CPU kernels are named after their ops ("...OMinimumKL_..." holds "mkl")
MLX_KERNEL_DIR = re.compile(r"(/mlx-kernels/|/mlx/[^/]+/cpu/)")


def blas_libraries(paths) -> list[str]:
    """The paths among `paths` whose file names say BLAS/MKL/LAPACK/OpenMP (not MLX's kernels)."""
    return sorted(
        p
        for p in set(paths)
        if p.startswith("/") and BLAS_LIB.search(os.path.basename(p)) and not MLX_KERNEL_DIR.search(p)
    )


def loaded_blas_libraries() -> list[str]:
    """Shared libraries mapped into this process whose names say BLAS/MKL/OpenMP."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}
    except OSError:
        return []
    return blas_libraries(paths)


def _versions(*names: str) -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _openblas(name: str):
    """Call an OpenBLAS query in this process, if OpenBLAS is loaded."""
    import ctypes

    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None
    if name == "openblas_get_corename":
        fn.restype = ctypes.c_char_p
        return (fn() or b"").decode()
    return int(fn())


def mlx_side_info(kernel_cache: str | None = None) -> dict:
    import mlx.core as mx

    return {
        "versions": _versions("mlx", "mlx-lm"),
        "device": str(mx.default_device()),
        "threads": {"openblas": _openblas("openblas_get_num_threads"), "cores": cores()},
        "blas": f"OpenBLAS ({_openblas('openblas_get_corename')} kernels)"
        if _openblas("openblas_get_corename")
        else "MLX's bundled reference BLAS",
        "blas_loaded": loaded_blas_libraries(),
        "env": {k: os.environ[k] for k in STEERING_VARS if k in os.environ},
        "kernel_cache": kernel_cache,
    }


def torch_side_info() -> dict:
    import torch

    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    return {
        "versions": _versions("torch", "transformers", "peft"),
        "device": "cpu",
        "threads": {
            "torch": torch.get_num_threads(),
            "torch_interop": torch.get_num_interop_threads(),
            "cores": cores(),
        },
        "blas": blas.group(1) if blas else "unknown",
        "blas_loaded": loaded_blas_libraries(),
        "env": {k: os.environ[k] for k in STEERING_VARS if k in os.environ},
    }
