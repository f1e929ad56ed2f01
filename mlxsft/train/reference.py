"""The DPO reference model without a second copy of the model, and its cached log-probs.

The reference is the model as training starts: the base with a fresh adapter, or the
base with the adapter an SFT run left (`init: runs/sft-x`). Only the trainable
weights change during training, so `Reference` keeps their initial arrays (for LoRA
a few MB; MLX arrays are immutable, so keeping them copies nothing) and runs the
reference forward pass by swapping them in for one call. A fresh LoRA adapter starts
with B = 0, so its reference is exactly the base with the adapter switched off; a
continued SFT adapter gives the SFT model, as TRL's "ref" adapter copy does.

With `preference.cache_reference` the reference log-probs of every pair are computed
once, before the first step, and written to `reference_logps.safetensors` in the run
dir; a resumed run reads them back instead of recomputing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map
from safetensors.numpy import save as save_safetensors

from ..errors import TrainingError
from ..safeio import atomic_write_bytes, write_guard

CACHE_FILE = "reference_logps.safetensors"


class Reference:
    """The model with its trainable weights as they were when this object was made."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.initial = tree_map(lambda a: a, model.trainable_parameters())

    @contextmanager
    def weights(self):
        """Inside: the model computes the reference (initial weights, eval mode, no dropout)."""
        current = tree_map(lambda a: a, self.model.trainable_parameters())
        training = self.model.training
        self.model.update(self.initial)
        self.model.eval()
        try:
            yield self.model
        finally:
            self.model.update(current)
            self.model.train(training)

    def logps(self, logps_fn: Callable, *arrays) -> mx.array:
        """`logps_fn(model, *arrays)` under the reference weights, evaluated, without gradient."""
        with self.weights() as model:
            out = mx.stop_gradient(logps_fn(model, *arrays))
            mx.eval(out)
        return out


def compute_cache(reference: Reference, logps_fn: Callable, batches) -> np.ndarray:
    """(pairs, 2) reference log-probs [chosen, rejected] for `batches` of (pair indices, arrays)."""
    rows = {}
    for indices, arrays in batches:
        out = np.array(reference.logps(logps_fn, *arrays))
        n = len(indices)
        for k, i in enumerate(indices):
            rows[i] = (out[k], out[n + k])
    return np.array([rows[i] for i in range(len(rows))], dtype=np.float32).reshape(-1, 2)


def save_cache(run_path: Path, caches: dict[str, np.ndarray]) -> Path:
    """Write the per-split caches atomically (safeio's temp file, fsync, rename)."""
    path = Path(run_path) / CACHE_FILE
    with write_guard(path, "the cached reference log-probs", error=TrainingError):
        atomic_write_bytes(path, save_safetensors({k: np.ascontiguousarray(v, np.float32) for k, v in caches.items()}))
    return path


def load_cache(run_path: Path) -> dict[str, np.ndarray] | None:
    path = Path(run_path) / CACHE_FILE
    if not path.is_file():
        return None
    return {k: np.array(v) for k, v in mx.load(str(path)).items()}
