"""Where a CPU training step's time goes: matmuls (replayed alone), op families, the rest.

    python -m mlxsft.bench.profile --model M --data D --batch-size 8 --max-seq-length 128 [--torch]

Times this project's compiled LoRA step, then replays every matmul of that step (the
frozen projections forward and input-gradient, the rank-r LoRA products and their
gradients, attention scores and values both ways, the LM head) alone at the same
shapes, with MLX (and, with --torch, with PyTorch in a clean child process). The step
minus its matmuls is element-wise work plus framework overhead. Also prints fp32 matmul
throughput at a large square shape (the roofline here) and the step's share of it.

Then it times each layer's op families forward + backward at the step's shapes, times
the number of layers: attention (scores, mask, softmax, PV and all their gradients),
SwiGLU, RMSNorm and RoPE; MLX with the ops the step uses (`cpu_ops` on the CPU backend)
and with MLX's own, and PyTorch with its own (`F.scaled_dot_product_attention`, ...).
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
    # the query heads sharing a KV head are stacked as rows of one product (cpu_ops.attention)
    plan.append(("attention (QK^T, PV, 4 grads)", 6 * layers * batch * kv, (heads // kv) * seq, d, seq))
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


def family_shapes(config: dict, batch: int, seq: int) -> dict:
    h, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    return {"B": batch, "T": seq, "H": heads, "KV": kv, "D": config.get("head_dim") or h // heads, "h": h, "I": inter}


def _mlx_families(sh: dict, fast: bool) -> dict:
    """name -> (a function of no arguments returning arrays to evaluate); fwd + bwd, compiled as the step is."""
    import mlx.core as mx
    import mlx.nn as nn

    from ..train import cpu_ops

    B, T, H, KV, D, h, inter = (sh[k] for k in ("B", "T", "H", "KV", "D", "h", "I"))
    rnd = mx.random.normal
    q, k, v = rnd((B, H, T, D)) * D**-0.5, rnd((B, KV, T, D)), rnd((B, KV, T, D))
    g_att, gate, up, g_mlp = rnd((B, H, T, D)), rnd((B, T, inter)), rnd((B, T, inter)), rnd((B, T, inter))
    x, w, g_x = rnd((B, T, h)), rnd((h,)), rnd((B, T, h))
    mx.eval(q, k, v, g_att, gate, up, g_mlp, x, w, g_x)
    if fast:

        def attn(q, k, v):
            out = cpu_ops.attention(q, k, v, None, 1.0, "causal", original=mx.fast.scaled_dot_product_attention)
            return (out * g_att).sum()

        def mlp(a, b):
            return (cpu_ops.fast_swiglu(a, b) * g_mlp).sum()
    else:

        def attn(q, k, v):
            return (mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask="causal") * g_att).sum()

        def mlp(a, b):
            return (nn.silu(a) * b * g_mlp).sum()

    rope = nn.RoPE(D, traditional=False, base=10000.0)
    fns = {
        "attention (QK^T, mask, softmax, PV; fwd+bwd)": (mx.grad(attn, argnums=(0, 1, 2)), (q, k, v), 1),
        "SwiGLU (fwd+bwd)": (mx.grad(mlp, argnums=(0, 1)), (gate, up), 1),
        "RMSNorm x2 (fwd+bwd)": (mx.grad(lambda a, b: (mx.fast.rms_norm(a, b, 1e-5) * g_x).sum(), (0, 1)), (x, w), 2),
        "RoPE on q and k (fwd+bwd)": (mx.grad(lambda a, b: rope(a).sum() + rope(b).sum(), (0, 1)), (q, k), 1),
    }
    out = {}
    for name, (fn, args, times) in fns.items():
        compiled = mx.compile(fn)
        out[name] = (lambda c=compiled, a=args: mx.eval(c(*a)), times)
    return out


def _torch_families(sh: dict) -> dict:
    import torch
    import torch.nn.functional as F

    B, T, H, KV, D, h, inter = (sh[k] for k in ("B", "T", "H", "KV", "D", "h", "I"))

    def leaf(*shape):
        return torch.randn(*shape, requires_grad=True)

    q, k, v = leaf(B, H, T, D), leaf(B, KV, T, D), leaf(B, KV, T, D)
    gate, up, x, w = leaf(B, T, inter), leaf(B, T, inter), leaf(B, T, h), leaf(h)
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(t):  # the rotate-half form transformers' Llama uses
        t1, t2 = t[..., : D // 2], t[..., D // 2 :]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def attn():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out.sum().backward()

    fns = {
        "attention (QK^T, mask, softmax, PV; fwd+bwd)": (attn, 1),
        "SwiGLU (fwd+bwd)": (lambda: (F.silu(gate) * up).sum().backward(), 1),
        "RMSNorm x2 (fwd+bwd)": (lambda: F.rms_norm(x, (h,), w, 1e-5).sum().backward(), 2),
        "RoPE on q and k (fwd+bwd)": (lambda: (rope(q).sum() + rope(k).sum()).backward(), 1),
    }
    return fns


def time_families(config: dict, batch: int, seq: int, backend: str, repeats: int = 10) -> dict[str, float]:
    """Seconds per op family for all layers of one step (best of `repeats`)."""
    sh = family_shapes(config, batch, seq)
    if backend == "torch":
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        fns = _torch_families(sh)
    else:
        fns = _mlx_families(sh, fast=backend == "mlx")
    out = {}
    for name, (fn, times) in fns.items():
        fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        out[name] = best * times * config["num_hidden_layers"]
    return out


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
        print(
            json.dumps(
                {
                    "families": time_matmuls(plan, args.matmuls_only),
                    "roofline": roofline(args.matmuls_only),
                    "ops": time_families(config, args.batch_size, args.max_seq_length, args.matmuls_only),
                }
            )
        )
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
    sides = {
        "mlx": {
            "families": time_matmuls(plan, "mlx"),
            "roofline": roofline("mlx"),
            "ops": time_families(config, args.batch_size, args.max_seq_length, "mlx"),
            "stock_ops": time_families(config, args.batch_size, args.max_seq_length, "mlx-stock"),
        }
    }
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
    print("\nop families, fwd + bwd for all layers at the step's shapes (attention includes its matmuls):")
    names = list(sides["mlx"]["ops"])
    header = f"  {'':<46}{'mlxsft':>9}{'MLX stock':>11}" + (f"{'torch':>9}" if "torch" in sides else "")
    print(header)
    for name in names:
        row = (
            f"  {name:<46}{sides['mlx']['ops'][name] * 1000:>6.0f} ms{sides['mlx']['stock_ops'][name] * 1000:>8.0f} ms"
        )
        if "torch" in sides:
            row += f"{sides['torch']['ops'][name] * 1000:>6.0f} ms"
        print(row)
    mm = sum(sides["mlx"]["families"].values())
    print(
        f"\nmlxsft step = {mm * 1000:.0f} ms matmuls + {(step_s - mm) * 1000:.0f} ms element-wise and overhead "
        f"({100 * (step_s - mm) / step_s:.0f}%); step at {flops / step_s / 1e9:.0f} GFLOP/s = "
        f"{100 * flops / step_s / 1e9 / sides['mlx']['roofline']:.0f}% of the fp32 matmul roofline"
    )


if __name__ == "__main__":
    main()
