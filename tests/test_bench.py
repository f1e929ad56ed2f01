"""`mlxsft bench` runs each trainer in a child process, in its own users' environment, on the same work."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlxsft.bench.runner import mlx_env, side_env, torch_env
from mlxsft.bench.sideinfo import blas_libraries
from mlxsft.blas import find_openblas

from .conftest import QUICKSTART_DATA

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def bench(*args, env=None, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "mlxsft.cli", "bench", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_torch_side_env_drops_our_preload_and_variables():
    base = {
        "PATH": "/usr/bin",
        "LD_PRELOAD": f"{OPENBLAS}:/opt/libprofiler.so",
        "MLXSFT_BLAS_REEXEC": "1",
        "MLXSFT_NO_KERNEL_CACHE": "1",
        "OMP_NUM_THREADS": "2",
    }
    env = torch_env(base)
    assert env["LD_PRELOAD"] == "/opt/libprofiler.so"  # the user's own preload stays
    assert not any(k.startswith("MLXSFT_") for k in env)
    assert env["OMP_NUM_THREADS"] == "2" and env["PATH"] == "/usr/bin"
    assert "LD_PRELOAD" not in torch_env({"LD_PRELOAD": OPENBLAS})
    assert side_env("peft", base) == env


def test_blas_libraries_are_named_libraries_not_mlx_kernels():
    kernel = "libFf4IBroadcastBGf4OMinimumKL_VVCCC_f4f4_8167840457564869358_strided_2.so"  # holds "mkl"
    paths = [
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r0.3.21.so",
        "/opt/intel/lib/libmkl_rt.so.2",
        f"/root/.cache/mlxsft/mlx-kernels/mlx-0.32.4-x86_64-avx2/{kernel}",
        f"/tmp/mlx/0.32.4/cpu/{kernel}",
        "/usr/lib/libc.so.6",
    ]
    assert blas_libraries(paths) == sorted(paths[:2])


@pytest.mark.skipif(find_openblas() is None, reason="needs Debian's OpenBLAS installed")
def test_mlx_sides_get_openblas_preloaded():
    for side in ("mlxsft", "mlx-lm"):
        assert find_openblas() in side_env(side, {"PATH": "/usr/bin"})["LD_PRELOAD"]
    assert "LD_PRELOAD" not in mlx_env({"MLXSFT_NO_OPENBLAS": "1"})


def test_bench_missing_data_or_model_is_a_clear_error(tiny_llama, tmp_path):
    missing = tmp_path / "nowhere"
    result = bench("--model", tiny_llama, "--data", missing, "--steps", 1, "--warmup", 1)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert f"{missing}: no such file or folder" in result.stderr and "--data" in result.stderr
    (tmp_path / "empty").mkdir()
    result = bench("--model", tiny_llama, "--data", tmp_path / "empty", "--steps", 1, "--warmup", 1)
    assert result.returncode == 2 and "no train.jsonl" in result.stderr and "Traceback" not in result.stderr
    # a model only the child can judge (it could be a hub id): its error, still without a traceback
    result = bench("--model", "no-such-model-here", "--data", QUICKSTART_DATA, "--steps", 1, "--warmup", 1)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert "no-such-model-here: model folder not found" in result.stderr
    result = bench("--steps", 1)
    assert result.returncode == 2 and "give --model and --data" in result.stderr and "Traceback" not in result.stderr


def test_bench_suite_needs_its_folder(tmp_path):
    (tmp_path / "s256").mkdir()
    result = bench("--suite", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert "lacks l768, data-multi, data-single" in result.stderr and "scripts/bench_setup.py" in result.stderr


def test_bench_suite_table_states_each_ratio_and_the_cold_start(tmp_path):
    from mlxsft.bench.spec import BenchResult
    from mlxsft.bench.suite import format_suite, suite_cases

    cases = suite_cases(tmp_path)
    assert [c.against for c in cases] == ["peft", "peft", "peft", "mlx-lm"] and cases[0].cold
    assert (cases[0].spec.batch_size, cases[0].spec.max_seq_length) == (8, 128)
    assert (cases[1].spec.batch_size, cases[1].spec.max_seq_length) == (4, 256)
    assert cases[2].spec.model.endswith("l768") and cases[3].spec.data.endswith("data-single")

    def result(name, seconds, run="warm", wall=10.0, first=1.0, memory=1.0):
        return BenchResult(name, 10, seconds, 1000, 400, 1024, memory, run=run, wall_s=wall, first_step_s=first)

    ours = [
        result("mlxsft", 4.0, "first-install", wall=40.0, first=21.0),
        result("mlxsft", 4.0, "after-reboot", wall=11.0, first=2.0),
        result("mlxsft", 5.0),
        result("mlxsft", 4.0, memory=0.5),  # the fastest warm repeat counts
    ]
    done = [(cases[0], {"mlxsft": ours, "peft": [result("peft", 2.0, memory=2.0)]})]
    table = format_suite(done)
    assert "| 250 | 500 | 0.50x | 0.50x | 0.25x |" in table
    assert "after a reboot / warm x1.10" in table and "one-time compile cost about 20 s" in table


@pytest.mark.slow
def test_bench_against_mlx_lm_and_peft(tiny_llama, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    if find_openblas():  # as the `mlxsft` command runs: our preload in the parent's environment
        env["LD_PRELOAD"] = ":".join(p for p in (find_openblas(), env.get("LD_PRELOAD")) if p)
    result = bench(
        "--model",
        tiny_llama,
        "--data",
        QUICKSTART_DATA,
        "--batch-size",
        8,
        "--max-seq-length",
        128,
        "--steps",
        4,
        "--warmup",
        2,
        "--against",
        "mlx-lm",
        "--against",
        "peft",
        "--json",
        out,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "ours/mlx-lm: tok/s x" in result.stdout and "ours/peft" in result.stdout
    report = json.loads(out.read_text())
    best = report["best"]
    for side in ("mlxsft", "mlx-lm", "peft"):
        assert best[side]["steps"] == 4 and best[side]["tokens_per_second"] > 0
        assert 0 < best[side]["trained_tokens"] <= best[side]["tokens"] <= best[side]["padded_positions"]
        assert best[side]["wall_s"] > best[side]["prepare_s"] > 0 and best[side]["first_step_s"] > 0
    # really length-sorted batches waste far less padding than mlx-lm's unsorted ones
    assert best["mlxsft"]["padding_waste"] < 0.1 < best["mlx-lm"]["padding_waste"]
    # the same batches are fed to PEFT, so both sides process the same tokens
    assert best["peft"]["tokens"] == best["mlxsft"]["tokens"]
    assert set(report["ratios"]) == {"mlx-lm", "peft"}
    # PyTorch ran as its users run it: its own BLAS, no preload of ours, threads = cores
    torch_info = best["peft"]["info"]
    assert "LD_PRELOAD" not in torch_info["env"]
    assert not any("openblas" in Path(p).parent.name or p == find_openblas() for p in torch_info["blas_loaded"])
    assert torch_info["threads"]["torch"] == torch_info["threads"]["cores"]
    assert torch_info["versions"]["torch"] != "not installed"
    if find_openblas():
        assert find_openblas() in best["mlxsft"]["info"]["blas_loaded"]
        assert find_openblas() in best["mlx-lm"]["info"]["blas_loaded"]
    assert "environments:" in result.stdout and "peft: python" in result.stdout


@pytest.mark.slow
def test_bench_cold_runs_pay_the_compile_once(tiny_llama, tmp_path):
    out = tmp_path / "cold.json"
    result = bench(
        "--model",
        tiny_llama,
        "--data",
        QUICKSTART_DATA,
        "--batch-size",
        4,
        "--max-seq-length",
        64,
        "--steps",
        2,
        "--warmup",
        1,
        "--cold",
        "--json",
        out,
    )
    assert result.returncode == 0, result.stderr
    runs = {r["run"]: r for r in json.loads(out.read_text())["results"]["mlxsft"]}
    assert set(runs) == {"first-install", "after-reboot", "warm"}
    assert "(0 kernels" in runs["first-install"]["info"]["kernel_cache"]
    assert "(0 kernels" not in runs["after-reboot"]["info"]["kernel_cache"]
    # the first step of a fresh install compiles the step's kernels with g++; after a reboot they are loaded
    assert runs["after-reboot"]["first_step_s"] < 0.5 * runs["first-install"]["first_step_s"]
    assert "ours after a reboot / warm: wall x" in result.stdout


def test_profile_splits_the_step_into_matmuls_and_op_families(tiny_llama):
    result = subprocess.run(
        [sys.executable, "-m", "mlxsft.bench.profile", "--model", str(tiny_llama), "--data", str(QUICKSTART_DATA)]
        + ["--batch-size", "2", "--max-seq-length", "128", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "step (mlxsft, compiled, median of 2)" in out and "fp32 matmul roofline" in out
    for family in ("frozen projections", "LoRA products", "attention (QK^T, mask, softmax, PV; fwd+bwd)", "SwiGLU"):
        assert family in out
    # each family row has a time for this project's ops and for MLX's stock ops
    row = next(line for line in out.splitlines() if "SwiGLU (fwd+bwd)" in line)
    assert len(re.findall(r"\d+ ms", row)) == 2
    assert re.search(r"step at \d+ GFLOP/s = \d+% of the fp32 matmul roofline", out)
