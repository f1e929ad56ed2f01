"""Fast BLAS on Linux CPU: preload Debian's OpenBLAS under MLX's reference BLAS.

MLX's Linux CPU wheel links a reference BLAS (a few GFLOP/s for fp32 matmul);
OpenBLAS preloaded with LD_PRELOAD is tens of times faster. The dynamic loader reads
LD_PRELOAD only at process start, so the CLI re-executes itself once with it set.
Set MLXSFT_NO_OPENBLAS=1 to opt out.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
)
_MARK = "MLXSFT_BLAS_REEXEC"


def find_openblas() -> str | None:
    for candidate in OPENBLAS_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return None


def openblas_preloaded() -> bool:
    lib = find_openblas()
    return bool(lib) and lib in os.environ.get("LD_PRELOAD", "")


def maybe_reexec_with_openblas(argv: list[str]) -> None:
    """On Linux, restart this process once with OpenBLAS preloaded (if installed)."""
    if platform.system() != "Linux" or os.environ.get("MLXSFT_NO_OPENBLAS") or os.environ.get(_MARK):
        return
    lib = find_openblas()
    if lib is None or openblas_preloaded():
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env[_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "mlxsft.cli", *argv], env)


def describe_backend() -> dict[str, str]:
    import mlx.core as mx

    from . import __version__

    try:
        import mlx_lm

        mlx_lm_version = mlx_lm.__version__
    except Exception:  # noqa: BLE001 - reporting only
        mlx_lm_version = "not importable"
    blas = "n/a (not Linux)"
    if platform.system() == "Linux":
        lib = find_openblas()
        if lib is None:
            blas = "reference BLAS (slow): apt-get install libopenblas0-pthread"
        elif openblas_preloaded():
            blas = f"OpenBLAS preloaded ({lib})"
        else:
            blas = f"OpenBLAS found but not preloaded ({lib}); the mlxsft command preloads it"
    from .kernel_cache import use_persistent_kernel_cache

    return {
        "mlxsft": __version__,
        "mlx": mx.__version__,
        "mlx-lm": mlx_lm_version,
        "device": str(mx.default_device()),
        "metal": str(mx.metal.is_available()),
        "blas": blas,
        "kernel cache": use_persistent_kernel_cache().describe(),
        "python": sys.version.split()[0],
    }
