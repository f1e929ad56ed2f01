"""Measurements on this machine: its memory, its matmul speed, and a dry run of real training steps.

`measure_fit` builds the model and adapters the way `mlxsft train` does (`load_base`,
`attach_adapters`, `build_optimizer`, `build_steps`), runs a few compiled steps on a
synthetic batch of the requested shape and reads `mx.get_peak_memory()` (reset after
loading). It is what `mlxsft models fit --measure` reports next to the estimate.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ..data.batching import Batch
from ..model import attach_adapters, load_base
from ..store import read_config
from ..train.schedule import build_optimizer
from ..train.step import build_steps, enable_grad_checkpoint
from .fit import FitSettings, resolve_targets
from .info import ArchShape


@dataclass(frozen=True)
class Measured:
    steps: int
    peak_bytes: int
    step_seconds: float  # median of the steps after the first (which compiles)
    tokens_per_second: float
    loss: float  # mean loss of the last step (random targets: about log V)


@dataclass(frozen=True)
class MachineMemory:
    budget_bytes: int | None  # what a training process may use
    total_bytes: int | None
    description: str


def synthetic_batch(rows: int, seq: int, vocab: int, fraction: float, seed: int = 0):
    """A data-layer Batch of random tokens with `fraction` of its positions trained."""
    import numpy as np

    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, vocab, (rows, seq)).astype(np.int32)
    targets = rng.integers(0, vocab, (rows, seq)).astype(np.int32)
    trained = max(1, round(fraction * rows * seq))
    weights = np.zeros(rows * seq, np.float32)
    weights[rng.choice(rows * seq, trained, replace=False)] = 1.0
    segments = np.ones((rows, seq), np.int32)
    return Batch(inputs, targets, weights.reshape(rows, seq), segments, rows, rows * seq, trained)


def measure_fit(path: Path, settings: FitSettings, steps: int = 4) -> Measured:
    """Run `steps` compiled training steps on a synthetic batch; read MLX's peak memory.

    Gradient checkpointing patches the block class for the rest of this process, as
    training does.
    """
    import mlx.core as mx

    settings.check()
    steps = max(2, steps)
    recipe = settings.recipe(path, resolve_targets(path, settings))
    mx.random.seed(0)
    model, _tokenizer, _path, _config = load_base(recipe)
    attach_adapters(model, recipe)
    if settings.grad_checkpoint:
        enable_grad_checkpoint(model)
    optimizer = build_optimizer(recipe.train, steps)
    fns = build_steps(model, optimizer, recipe.train.max_grad_norm, packed=False)
    vocab = ArchShape.from_config(read_config(path)).vocab_size
    batch = synthetic_batch(settings.rows, settings.seq, vocab, settings.trained_fraction)
    arrays = fns.plan.arrays(batch)
    mx.eval(arrays, model.parameters())
    mx.reset_peak_memory()
    times, loss = [], math.nan
    for _ in range(steps):
        start = time.perf_counter()
        loss_sum, ntok = fns.train_step(*arrays)
        mx.eval(loss_sum, ntok, model.state, optimizer.state)
        times.append(time.perf_counter() - start)
        loss = loss_sum.item() / max(ntok.item(), 1)
    step_s = statistics.median(times[1:])
    return Measured(
        steps=steps,
        peak_bytes=int(mx.get_peak_memory()),
        step_seconds=step_s,
        tokens_per_second=batch.num_tokens / step_s,
        loss=loss,
    )


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * 1024  # kB
    except OSError:
        pass
    return out


def _device_info() -> dict:
    import mlx.core as mx

    for get in (lambda: mx.device_info(), lambda: mx.metal.device_info()):
        try:
            return dict(get())
        except Exception:  # noqa: BLE001 - older MLX has only the Metal variant; CPU may have none
            continue
    return {}


def machine_memory() -> MachineMemory:
    """The memory a training process may use here, and where that figure comes from."""
    import mlx.core as mx

    info = _device_info()
    recommended = info.get("max_recommended_working_set_size")
    if recommended:  # Apple silicon: unified memory, of which Metal recommends this much
        total = info.get("memory_size")
        return MachineMemory(
            int(recommended), int(total) if total else None, "unified memory, Metal's recommended working set"
        )
    gpu_memory = info.get("total_memory") or info.get("memory_size")
    if gpu_memory and mx.default_device() == mx.gpu:
        return MachineMemory(int(gpu_memory), int(gpu_memory), "GPU memory")
    meminfo = _meminfo()
    if "MemAvailable" in meminfo:
        return MachineMemory(meminfo["MemAvailable"], meminfo.get("MemTotal"), "system memory available now")
    try:
        import psutil
    except ImportError:
        return MachineMemory(None, None, "unknown (no /proc/meminfo and no psutil)")
    vm = psutil.virtual_memory()
    return MachineMemory(int(vm.available), int(vm.total), "system memory available now")


def matmul_flops(dtype_name: str = "float32", size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul in `dtype_name` on the default device (best of `repeats`)."""
    import mlx.core as mx

    n = size or (2048 if mx.default_device() == mx.gpu else 1024)
    dtype = getattr(mx, dtype_name)
    a = mx.random.normal((n, n)).astype(dtype)
    b = mx.random.normal((n, n)).astype(dtype)
    mx.eval(a, b, a @ b)  # warm up kernels and allocations
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
