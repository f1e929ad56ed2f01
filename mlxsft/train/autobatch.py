"""`train.batch_tokens: auto`: the largest token budget per batch that fits a memory limit.

Instead of asking users to guess a batch size, probe: run the compiled gradient step
on synthetic batches at the longest sequence length (the worst case: attention grows
with T^2), doubling the number of rows, and read MLX's peak memory after each. The
optimizer's state (two fp32 moments per trainable weight for Adam) is not allocated
yet before the first real step, so it is added to each measurement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..data.batching import Batch
from .step import StepFunctions

MAX_ROWS = 1024


@dataclass(frozen=True)
class BudgetProbe:
    batch_tokens: int
    peak_gb: float
    fits: bool


def memory_limit_bytes(limit_gb: float | None) -> int:
    """The user's limit, or a default share of what the device can give training."""
    if limit_gb is not None:
        return int(limit_gb * 1e9)
    if mx.metal.is_available():
        info = mx.metal.device_info()
        return int(0.9 * info["max_recommended_working_set_size"])
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(0.6 * total)  # leave room for the OS and the rest of the process


def synthetic_batch(rows: int, length: int, vocab: int, seed: int = 0) -> Batch:
    """A worst-case batch: every position real and trained."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(rows, length + 1), dtype=np.int32)
    ones = np.ones((rows, length), np.float32)
    return Batch(
        inputs=ids[:, :-1],
        targets=ids[:, 1:],
        weights=ones,
        segments=ones.astype(np.int32),
        num_sequences=rows,
        num_tokens=rows * length,
        num_trained=rows * length,
    )


def optimizer_state_bytes(model) -> int:
    return 2 * 4 * sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


def measure_peak(steps: StepFunctions, batch: Batch) -> int:
    mx.clear_cache()
    mx.reset_peak_memory()
    for _ in range(2):  # the first call compiles; the second is the steady state
        loss_sum, ntok, grads = steps.grad_step(*steps.plan.arrays(batch))
        mx.eval(loss_sum, ntok, grads)
        del grads
    return mx.get_peak_memory()


def choose_batch_tokens(
    model, steps: StepFunctions, max_seq_length: int, vocab: int, limit_bytes: int, max_tokens: int | None = None
) -> tuple[int, list[BudgetProbe]]:
    """The largest rows x max_seq_length budget whose measured peak fits `limit_bytes`.

    Doubles the rows from 1 until a probe does not fit (or `max_tokens`/MAX_ROWS is
    reached); the grad step does not touch weights or optimizer state.
    """
    extra = optimizer_state_bytes(model)
    probes: list[BudgetProbe] = []
    rows = 1
    while rows <= MAX_ROWS:
        budget = rows * max_seq_length
        peak = measure_peak(steps, synthetic_batch(rows, max_seq_length, vocab)) + extra
        probes.append(BudgetProbe(budget, peak / 1e9, peak <= limit_bytes))
        if peak > limit_bytes or (max_tokens is not None and budget >= max_tokens):
            break
        rows *= 2
    mx.clear_cache()
    fitting = [p.batch_tokens for p in probes if p.fits]
    return (max(fitting) if fitting else max_seq_length), probes
