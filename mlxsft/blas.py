"""Fast BLAS on Linux CPU: preload Debian's OpenBLAS under MLX's reference BLAS.

MLX's Linux CPU wheel links a reference BLAS (a few GFLOP/s for fp32 matmul);
OpenBLAS preloaded with LD_PRELOAD is tens of times faster. The dynamic loader reads
LD_PRELOAD only at process start, so the CLI re-executes itself once with it set.
Set MLXSFT_NO_OPENBLAS=1 to opt out.

Debian's OpenBLAS (0.3.21, DYNAMIC_ARCH) does not recognise some newer CPUs and falls
back to its "Prescott" (SSE3) kernels: fp32 matmul at under 10 GFLOP/s on this project's
AVX-512 machine, against 50-100 with the SkylakeX kernels. When the library reports such
a baseline core on a CPU with AVX2+FMA (or AVX-512), OPENBLAS_CORETYPE names the right
kernels (read at library start, so it is set before the re-exec too). A value the user
set is kept.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from . import __version__
from .kernel_cache import use_persistent_kernel_cache

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
)
_MARK = "MLXSFT_BLAS_REEXEC"
# OpenBLAS cores without AVX: what DYNAMIC_ARCH picks when it does not know the CPU
BASELINE_CORES = {
    "prescott",
    "core2",
    "penryn",
    "dunnington",
    "nehalem",
    "atom",
    "katmai",
    "coppermine",
    "northwood",
    "banias",
    "barcelona",
    "opteron",
    "generic",
    "unknown",
}


def find_openblas() -> str | None:
    for candidate in OPENBLAS_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return None


def openblas_preloaded() -> bool:
    lib = find_openblas()
    return bool(lib) and lib in os.environ.get("LD_PRELOAD", "")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_core(lib: str) -> str:
    """The kernel set OpenBLAS picks on its own for this CPU (e.g. "SkylakeX", "Haswell", "Prescott")."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        # this process's copy was forced at load time: ask a fresh process what OpenBLAS picks itself
        return _core_in_fresh_process(lib)
    return _core_name(lib)


def _core_name(lib: str) -> str:
    import ctypes

    try:
        fn = ctypes.CDLL(lib).openblas_get_corename
    except (OSError, AttributeError):
        return "unknown"
    fn.restype = ctypes.c_char_p
    return (fn() or b"unknown").decode()


def _core_in_fresh_process(lib: str) -> str:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "LD_PRELOAD")}
    code = f"from mlxsft.blas import _core_name; print(_core_name({lib!r}))"
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def better_coretype(detected: str, flags: set[str]) -> str | None:
    """The OPENBLAS_CORETYPE to force when OpenBLAS fell back to a baseline core, else None."""
    if detected.lower() not in BASELINE_CORES:
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def openblas_env(env: dict) -> dict:
    """`env` with OpenBLAS preloaded and, where it would pick baseline kernels, the right core type."""
    lib = find_openblas()
    if lib is None or env.get("MLXSFT_NO_OPENBLAS"):
        return dict(env)
    env = dict(env)
    if lib not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    if not env.get("OPENBLAS_CORETYPE") and platform.machine() in ("x86_64", "AMD64"):
        core = better_coretype(openblas_core(lib), cpu_flags())
        if core:
            env["OPENBLAS_CORETYPE"] = core
    return env


def maybe_reexec_with_openblas(argv: list[str]) -> None:
    """On Linux, restart this process once with OpenBLAS preloaded (if installed) and its core type set."""
    if platform.system() != "Linux" or os.environ.get("MLXSFT_NO_OPENBLAS") or os.environ.get(_MARK):
        return
    env = openblas_env(dict(os.environ))
    if env == dict(os.environ):
        return
    env[_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "mlxsft.cli", *argv], env)


def describe_backend() -> dict[str, str]:
    import mlx.core as mx

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
            blas = f"OpenBLAS preloaded ({lib}), kernels {_core_name(lib)}"
        else:
            blas = f"OpenBLAS found but not preloaded ({lib}); the mlxsft command preloads it"

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
