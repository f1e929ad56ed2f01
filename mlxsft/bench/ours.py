"""Time this project's trainer through its public API: `prepare`, then `take_step`, as `mlxsft train` runs them."""

from __future__ import annotations

import tempfile
import time

import mlx.core as mx

from ..config import recipe_from_dict
from ..kernel_cache import use_persistent_kernel_cache
from ..rundir import RunDir
from ..train.checkpoint import TrainerState
from ..train.loop import take_step
from ..train.prepare import Prepared, prepare
from .sideinfo import mlx_side_info
from .spec import BenchResult, BenchSpec


def spec_to_recipe(spec: BenchSpec, method: str | None = None):
    return recipe_from_dict(
        {
            "model": spec.model,
            "data": spec.data,
            "method": method or spec.method,
            "lora": {"rank": spec.rank, "alpha": spec.alpha, "layers": spec.layers, "targets": list(spec.targets)},
            "train": {
                "iters": spec.warmup + spec.steps,
                "batch_size": spec.batch_size,
                "max_seq_length": spec.max_seq_length,
                "learning_rate": spec.learning_rate,
                "lr_schedule": "constant",
                "max_grad_norm": None,
                "pack": spec.pack,
                "batch_tokens": spec.batch_tokens,
                "grad_checkpoint": spec.grad_checkpoint,
                "seed": spec.seed,
                "steps_per_eval": 0,
            },
        }
    )


def _timed_steps(prepared: Prepared, state: TrainerState, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        take_step(prepared, state)
        times.append(time.perf_counter() - start)
    return times


def run_ours(spec: BenchSpec) -> BenchResult:
    cache = use_persistent_kernel_cache()  # as the `mlxsft` command does at start
    recipe = spec_to_recipe(spec)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prepared = prepare(recipe, RunDir(tmp))
        prepare_s = time.perf_counter() - start
        state = TrainerState()
        warmup = _timed_steps(prepared, state, spec.warmup)
        mx.reset_peak_memory()
        tokens = trained = positions = 0
        start = time.perf_counter()
        for _ in range(spec.steps):
            stats = take_step(prepared, state)
            tokens, trained, positions = tokens + stats.tokens, trained + stats.trained, positions + stats.positions
        seconds = time.perf_counter() - start
    return BenchResult(
        "mlxsft",
        spec.steps,
        seconds,
        tokens,
        trained,
        positions,
        mx.get_peak_memory() / 1e9,
        prepare_s=prepare_s,
        first_step_s=warmup[0] if warmup else 0.0,
        warmup_s=sum(warmup),
        info=mlx_side_info(cache.describe()),
    )
