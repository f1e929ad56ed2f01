"""Run benchmark sides in child processes, each in the environment its users give it.

- MLX sides (ours and mlx-lm) get what `mlxsft train` gets: Debian's OpenBLAS preloaded
  (mlx-lm's own users would not have it, so this flatters mlx-lm, never us).
- PyTorch + PEFT gets a clean environment: no LD_PRELOAD of a BLAS (ours would replace
  the MKL PyTorch calls), none of our variables; it sets its threads to the cores itself.

Warm runs give the steady state; with `cold=True` each side first runs once in an empty
temp dir (and, for ours, an empty kernel cache: a first run after install), and ours once
more in another empty temp dir with the cache kept (a first run after a reboot).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..blas import openblas_env
from ..errors import MlxsftError
from .spec import BenchResult, BenchSpec
from .worker import ERROR_MARKER, RESULT_MARKER

BLAS_NAMES = ("blas", "lapack", "mkl")


def mlx_env(base: dict | None = None) -> dict:
    """What `mlxsft train` runs with: OpenBLAS preloaded (with the right kernels) when the machine has it."""
    return openblas_env(dict(os.environ if base is None else base))


def torch_env(base: dict | None = None) -> dict:
    """What a PyTorch user runs with: no preloaded BLAS, none of this project's variables."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith("MLXSFT_") and k != "OPENBLAS_CORETYPE"
    }
    kept = [
        p
        for p in env.pop("LD_PRELOAD", "").split(":")
        if p and not any(name in Path(p).name.lower() for name in BLAS_NAMES)
    ]
    if kept:
        env["LD_PRELOAD"] = ":".join(kept)
    return env


def side_env(side: str, base: dict | None = None) -> dict:
    return torch_env(base) if side == "peft" else mlx_env(base)


def check_inputs(spec: BenchSpec) -> None:
    """Say what is wrong with --data/--model before any child starts."""
    data = Path(spec.data)
    if not data.exists():
        raise MlxsftError(
            "no such file or folder; give --data a JSONL file or a folder holding train.jsonl.", path=str(data)
        )
    if data.is_dir() and not (data / "train.jsonl").is_file():
        raise MlxsftError(
            "this folder has no train.jsonl; give --data a JSONL file or a folder holding train.jsonl.", path=str(data)
        )
    model = Path(spec.model)
    if not model.exists() and (spec.model.startswith((".", "/", "~")) or spec.model.count("/") > 1):
        raise MlxsftError("model folder not found; give --model a local model folder or a hub id.", path=spec.model)


def run_side_in_child(side: str, spec: BenchSpec, env: dict, run: str = "warm", timeout_s: float = 3600) -> BenchResult:
    cmd = [sys.executable, "-m", "mlxsft.bench.worker", side, json.dumps(spec.to_dict())]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    wall = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = BenchResult.from_dict(json.loads(line[len(RESULT_MARKER) :]))
            result.wall_s, result.run = wall, run
            return result
        if line.startswith(ERROR_MARKER):
            raise MlxsftError(f"the {side} benchmark: {json.loads(line[len(ERROR_MARKER) :])['message']}")
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    raise MlxsftError(f"the {side} benchmark failed (exit {proc.returncode}):\n  " + "\n  ".join(tail))


def _cold_envs(side: str, root: Path) -> list[tuple[str, dict]]:
    """(run name, env) for the cold runs of one side, under a private temp root."""

    def env_with(tmp: str) -> dict:
        (root / tmp).mkdir(parents=True, exist_ok=True)
        env = side_env(side) | {"TMPDIR": str(root / tmp)}
        if side == "mlxsft":
            env["MLXSFT_KERNEL_CACHE"] = str(root / "kernel-cache")
        return env

    runs = [("first-install", env_with(f"{side}-install"))]
    if side == "mlxsft":
        runs.append(("after-reboot", env_with(f"{side}-reboot")))
    return runs


def run_benchmark(
    spec: BenchSpec, against: list[str], repeats: int = 1, cold: bool = False, progress=print
) -> dict[str, list[BenchResult]]:
    """Results per side (cold runs first); warm repeats alternate sides so drift hits both alike."""
    check_inputs(spec)
    sides = ["mlxsft", *against]
    results: dict[str, list[BenchResult]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="mlxsft-bench-") as tmp:
        warm_env = {side: side_env(side) for side in sides}
        if cold:
            for side in sides:
                for run, env in _cold_envs(side, Path(tmp)):
                    progress(f"running {side} ({run}: empty temp dir) ...")
                    results[side].append(run_side_in_child(side, spec, env, run))
                    warm_env[side] = env  # warm runs reuse what the cold ones built
        for r in range(repeats):
            order = sides if r % 2 == 0 else list(reversed(sides))
            for side in order:
                progress(f"running {side} (warm, repeat {r + 1}/{repeats}) ...")
                results[side].append(run_side_in_child(side, spec, warm_env[side]))
    return results


def best_of(results: list[BenchResult]) -> BenchResult:
    """The fastest warm repeat (the least disturbed by other load on the machine)."""
    warm = [r for r in results if r.run == "warm"] or results
    return min(warm, key=lambda r: r.seconds / max(r.trained_tokens, 1))


def describe_side(r: BenchResult) -> str:
    info = r.info
    versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
    threads = ", ".join(f"{k} {v}" for k, v in info.get("threads", {}).items())
    loaded = ", ".join(Path(p).name for p in info.get("blas_loaded", [])) or "none"
    preload = info.get("env", {}).get("LD_PRELOAD", "none")
    blas = f"BLAS {info['blas']}; " if "blas" in info else ""
    return f"{r.name}: {versions}; threads: {threads}; {blas}loaded: {loaded}; LD_PRELOAD: {preload}"


def format_table(results: dict[str, list[BenchResult]]) -> str:
    best = {side: best_of(rs) for side, rs in results.items()}
    ours = best["mlxsft"]
    lines = [
        "warm steady state (fastest warm repeat):",
        f"{'':<8}{'tok/s':>10}{'trained tok/s':>15}{'ms/step':>10}{'peak GB':>9}{'padding':>9}",
    ]
    for side, r in best.items():
        lines.append(
            f"{side:<8}{r.tokens_per_second:>10,.0f}{r.trained_tokens_per_second:>15,.0f}"
            f"{r.ms_per_step:>10,.1f}{r.peak_memory_gb:>9.3f}{100 * r.padding_waste:>8.1f}%"
        )
    for side, r in best.items():
        if side != "mlxsft":
            lines.append(
                f"ours/{side}: tok/s x{ours.tokens_per_second / r.tokens_per_second:.2f}, "
                f"trained tok/s x{ours.trained_tokens_per_second / r.trained_tokens_per_second:.2f}, "
                f"peak memory x{ours.peak_memory_gb / max(r.peak_memory_gb, 1e-9):.2f}"
            )
    lines += [
        "",
        "whole runs (process start to exit; first step includes compiling):",
        f"{'':<8}{'run':<15}{'wall s':>8}{'load s':>8}{'1st step s':>11}{'warm-up s':>10}",
    ]
    for side, rs in results.items():
        for r in [x for x in rs if x.run != "warm"] + [best[side]]:
            lines.append(
                f"{side:<8}{r.run:<15}{r.wall_s:>8.1f}{r.prepare_s:>8.1f}{r.first_step_s:>11.2f}{r.warmup_s:>10.2f}"
            )
    reboot = [r for r in results["mlxsft"] if r.run == "after-reboot"]
    if reboot:
        lines.append(f"ours after a reboot / warm: wall x{reboot[0].wall_s / ours.wall_s:.2f}")
    lines += ["", "environments:"] + [f"  {describe_side(r)}" for r in best.values()]
    return "\n".join(lines)


def summary(spec: BenchSpec, results: dict[str, list[BenchResult]]) -> dict:
    best = {side: best_of(rs) for side, rs in results.items()}
    ours = best["mlxsft"]
    ratios = {
        side: {
            "tokens_per_second": ours.tokens_per_second / r.tokens_per_second,
            "trained_tokens_per_second": ours.trained_tokens_per_second / r.trained_tokens_per_second,
            "peak_memory": ours.peak_memory_gb / max(r.peak_memory_gb, 1e-9),
        }
        for side, r in best.items()
        if side != "mlxsft"
    }
    cold = {
        side: {r.run: r.wall_s for r in rs if r.run != "warm"} | {"warm": best[side].wall_s}
        for side, rs in results.items()
    }
    return {
        "spec": spec.to_dict(),
        "results": {s: [r.to_dict() for r in rs] for s, rs in results.items()},
        "best": {s: r.to_dict() for s, r in best.items()},
        "ratios": ratios,
        "wall_s": cold,
    }
