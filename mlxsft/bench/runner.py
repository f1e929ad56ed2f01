"""Run benchmark sides in child processes and put their results side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..blas import find_openblas
from ..errors import MlxsftError
from .spec import BenchResult, BenchSpec

MARKER = "MLXSFT_BENCH_RESULT "


def _child_env() -> dict:
    """Every side gets the same BLAS: OpenBLAS preloaded when the machine has it."""
    env = dict(os.environ)
    lib = find_openblas()
    if lib and lib not in env.get("LD_PRELOAD", "") and not env.get("MLXSFT_NO_OPENBLAS"):
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    return env


def run_side_in_child(side: str, spec: BenchSpec, timeout_s: float = 3600) -> BenchResult:
    cmd = [sys.executable, "-m", "mlxsft.bench.worker", side, json.dumps(spec.to_dict())]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), timeout=timeout_s)
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return BenchResult.from_dict(json.loads(line[len(MARKER):]))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    raise MlxsftError(f"the {side} benchmark failed (exit {proc.returncode}):\n  " + "\n  ".join(tail))


def run_benchmark(
    spec: BenchSpec, against: list[str], repeats: int = 1, progress=print
) -> dict[str, list[BenchResult]]:
    """Results per side; sides alternate within each repeat so drift hits both alike."""
    sides = ["mlxsft", *against]
    results: dict[str, list[BenchResult]] = {side: [] for side in sides}
    for r in range(repeats):
        order = sides if r % 2 == 0 else list(reversed(sides))
        for side in order:
            progress(f"running {side} (repeat {r + 1}/{repeats}) ...")
            results[side].append(run_side_in_child(side, spec))
    return results


def best_of(results: list[BenchResult]) -> BenchResult:
    """The fastest repeat (the least disturbed by other load on the machine)."""
    return min(results, key=lambda r: r.seconds / max(r.trained_tokens, 1))


def format_table(results: dict[str, list[BenchResult]]) -> str:
    best = {side: best_of(rs) for side, rs in results.items()}
    ours = best["mlxsft"]
    header = f"{'':<8}{'tok/s':>10}{'trained tok/s':>15}{'ms/step':>10}{'peak GB':>9}{'padding':>9}"
    lines = [header]
    for side, r in best.items():
        lines.append(f"{side:<8}{r.tokens_per_second:>10,.0f}{r.trained_tokens_per_second:>15,.0f}"
                     f"{r.ms_per_step:>10,.1f}{r.peak_memory_gb:>9.3f}{100 * r.padding_waste:>8.1f}%")
    for side, r in best.items():
        if side == "mlxsft":
            continue
        lines.append(
            f"ours/{side}: tok/s x{ours.tokens_per_second / r.tokens_per_second:.2f}, "
            f"trained tok/s x{ours.trained_tokens_per_second / r.trained_tokens_per_second:.2f}, "
            f"peak memory x{ours.peak_memory_gb / max(r.peak_memory_gb, 1e-9):.2f}"
        )
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
        for side, r in best.items() if side != "mlxsft"
    }
    return {"spec": spec.to_dict(), "results": {s: [r.to_dict() for r in rs] for s, rs in results.items()},
            "best": {s: r.to_dict() for s, r in best.items()}, "ratios": ratios}
