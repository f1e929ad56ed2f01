"""OpenBLAS under MLX: preloaded, and with the right kernels when Debian's build does not know the CPU."""

import json
import os
import subprocess
import sys

import pytest

from mlxsft.blas import better_coretype, cpu_flags, find_openblas, openblas_env

AVX512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}

MATMUL = """
import ctypes, json
import mlx.core as mx, numpy as np
rng = np.random.default_rng(0)
a, b = rng.standard_normal((300, 257)).astype(np.float32), rng.standard_normal((257, 129)).astype(np.float32)
got = np.array(mx.array(a) @ mx.array(b))
fn = ctypes.CDLL(None).openblas_get_corename
fn.restype = ctypes.c_char_p
ref = a.astype(np.float64) @ b.astype(np.float64)
print(json.dumps({"core": fn().decode(), "err": float(np.abs(got - ref).max() / np.abs(ref).max())}))
"""


@pytest.mark.parametrize(
    "detected, flags, expected",
    [
        ("Prescott", AVX512, "SkylakeX"),
        ("Prescott", {"avx2", "fma"}, "Haswell"),
        ("Core2", {"sse4_2"}, None),  # no AVX2: the baseline is right
        ("SkylakeX", AVX512, None),  # recognised: left alone
        ("Zen", {"avx2", "fma"}, None),
    ],
)
def test_forced_core_only_when_openblas_fell_back_to_baseline(detected, flags, expected):
    assert better_coretype(detected, flags) == expected


def test_a_core_type_the_user_set_is_kept():
    env = openblas_env({"OPENBLAS_CORETYPE": "Haswell", "PATH": "/usr/bin"})
    assert env["OPENBLAS_CORETYPE"] == "Haswell"
    assert openblas_env({"MLXSFT_NO_OPENBLAS": "1"}) == {"MLXSFT_NO_OPENBLAS": "1"}


@pytest.mark.skipif(find_openblas() is None, reason="needs Debian's OpenBLAS installed")
def test_mlx_matmul_under_our_openblas_env_is_right_and_not_baseline():
    env = openblas_env({k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_CORETYPE")})
    assert find_openblas() in env["LD_PRELOAD"]
    proc = subprocess.run([sys.executable, "-c", MATMUL], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["err"] < 1e-5
    if {"avx2", "fma"} <= cpu_flags():
        assert out["core"].lower() not in ("prescott", "core2", "nehalem", "generic")
