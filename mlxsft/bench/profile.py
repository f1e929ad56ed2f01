"""Where a CPU training step's time goes: matmuls (replayed alone) vs everything else.

    python -m mlxsft.bench.profile --model M --data D --batch-size 8 --max-seq-length 128 [--torch]

Times this project's compiled LoRA step, then replays every matmul of that step (the
frozen projections forward and input-gradient, the rank-r LoRA products and their
gradients, attention scores and values both ways, the LM head) alone at the same
shapes, with MLX (and, with --torch, with PyTorch in a clean child process). The step
minus its matmuls is element-wise work plus framework overhead. Also prints fp32 matmul
throughput at a large square shape (the roofline here) and the step's share of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def matmul_plan(config: dict, batch: int, seq: int, rank: int, trained: int) -> list[tuple[str, int, int, int, int]]:
    """(family, count, m, k, n) for one LoRA step on all 7 projections (base weights frozen)."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    d = config.get("head_dim") or h // heads
    n = batch * seq
    projections = [(h, h), (h, kv * d), (h, kv * d), (h, h), (h, inter), (h, inter), (inter, h)]
    plan = []
    for k_in, out in projections:
        plan.append(("frozen projections (fwd + dx)", 2 * layers, n, k_in, out))
        # x A, (x A) B, then dy B^T, dB = (x A)^T dy, dA = x^T d(xA), dx += d(xA) A^T
        for m, k, c in (
            (n, k_in, rank),
            (n, rank, out),
            (n, out, rank),
            (rank, n, out),
            (k_in, n, rank),
            (n, rank, k_in),
        ):
            plan.append(("LoRA products (fwd + grads)", layers, m, k, c))
    plan.append(("attention (QK^T, PV, 4 grads)", 6 * layers * batch * heads, seq, d, seq))
    plan.append(("LM head (fwd + dx, trained rows)", 2, trained, h, config["vocab_size"]))
    return plan


def time_matmuls(plan, backend: str, repeats: int = 3) -> dict[str, float]:
    """Seconds per family for one step's matmuls, best of `repeats`."""
    if backend == "torch":
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))

        def make(m, k, n):
            a, b = torch.randn(m, k), torch.randn(k, n)
            return lambda: a @ b
    else:
        import mlx.core as mx

        def make(m, k, n):
            a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
            mx.eval(a, b)
            return lambda: mx.eval(a @ b)

    families: dict[str, float] = {}
    for family, count, m, k, n in plan:
        fn = make(m, k, n)
        fn()
        best = float("inf")
        for _ in range(repeats):
            reps = max(1, min(count, 20))
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            best = min(best, (time.perf_counter() - start) / reps)
        families[family] = families.get(family, 0.0) + best * count
    return families


def roofline(backend: str, size: int = 1024) -> float:
    plan = [("square", 1, size, size, size)]
    seconds = time_matmuls(plan, backend, repeats=5)["square"]
    return 2 * size**3 / seconds / 1e9


def step_time(args) -> tuple[float, int]:
    # imported here: the --matmuls-only torch child runs this module without loading MLX
    import tempfile

    import mlx.core as mx

    from ..kernel_cache import use_persistent_kernel_cache
    from ..rundir import RunDir
    from ..train.checkpoint import TrainerState
    from ..train.loop import take_step
    from ..train.prepare import prepare
    from .ours import spec_to_recipe
    from .spec import BenchSpec

    use_persistent_kernel_cache()
    spec = BenchSpec(
        model=args.model,
        data=args.data,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        steps=args.steps,
        warmup=3,
        rank=args.rank,
    )
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(spec_to_recipe(spec), RunDir(tmp))
        state = TrainerState()
        for _ in range(3):
            take_step(prepared, state)
        times, trained = [], 0
        for _ in range(args.steps):
            start = time.perf_counter()
            stats = take_step(prepared, state)
            mx.synchronize()
            times.append(time.perf_counter() - start)
            trained = max(trained, stats.trained)
    return sorted(times)[len(times) // 2], trained


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--torch", action="store_true", help="Also replay the matmuls with PyTorch (clean child).")
    p.add_argument("--matmuls-only", default=None, help=argparse.SUPPRESS)  # child mode: backend name
    p.add_argument("--trained", type=int, default=0, help=argparse.SUPPRESS)  # child mode: LM-head rows
    args = p.parse_args()
    config = json.loads((Path(args.model) / "config.json").read_text())
    if args.matmuls_only:
        plan = matmul_plan(config, args.batch_size, args.max_seq_length, args.rank, args.trained)
        print(json.dumps({"families": time_matmuls(plan, args.matmuls_only), "roofline": roofline(args.matmuls_only)}))
        return
    from ..blas import openblas_env
    from .runner import torch_env

    if openblas_env(dict(os.environ)) != dict(os.environ) and not os.environ.get("MLXSFT_PROFILE_REEXEC"):
        os.execve(
            sys.executable,
            [sys.executable, "-m", "mlxsft.bench.profile", *sys.argv[1:]],
            openblas_env(dict(os.environ)) | {"MLXSFT_PROFILE_REEXEC": "1"},
        )
    step_s, trained = step_time(args)
    plan = matmul_plan(config, args.batch_size, args.max_seq_length, args.rank, trained)
    flops = sum(2 * count * m * k * n for _, count, m, k, n in plan)
    sides = {"mlx": {"families": time_matmuls(plan, "mlx"), "roofline": roofline("mlx")}}
    if args.torch:
        cmd = [
            sys.executable,
            "-m",
            "mlxsft.bench.profile",
            *sys.argv[1:],
            "--trained",
            str(trained),
            "--matmuls-only",
            "torch",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=torch_env(), check=True).stdout
        sides["torch"] = json.loads(out.strip().splitlines()[-1])
    tokens = args.batch_size * args.max_seq_length
    print(
        f"step (mlxsft, compiled, median of {args.steps}): {step_s * 1000:.0f} ms for {tokens} positions; "
        f"matmul work {flops / 1e9:.1f} GFLOP"
    )
    for name, side in sides.items():
        total = sum(side["families"].values())
        print(
            f"\n{name}: fp32 matmul roofline (1024^3) {side['roofline']:.0f} GFLOP/s; "
            f"the step's matmuls alone {total * 1000:.0f} ms"
        )
        for family, seconds in sorted(side["families"].items(), key=lambda kv: -kv[1]):
            print(f"  {family:<36}{seconds * 1000:>8.0f} ms")
    mm = sum(sides["mlx"]["families"].values())
    print(
        f"\nmlxsft step = {mm * 1000:.0f} ms matmuls + {(step_s - mm) * 1000:.0f} ms element-wise and overhead "
        f"({100 * (step_s - mm) / step_s:.0f}%); step at {flops / step_s / 1e9:.0f} GFLOP/s = "
        f"{100 * flops / step_s / 1e9 / sides['mlx']['roofline']:.0f}% of the fp32 matmul roofline"
    )


if __name__ == "__main__":
    main()
