"""The compiled training step, the masked loss, packed attention and gradient checkpointing.

Packed rows need attention that stops at row boundaries. mlx-lm models build their
mask through the KV cache's `make_mask`, so `SegmentCache` stands in for a cache:
it has offset 0, passes keys/values through, and hands every layer our
block-diagonal causal mask. Positions are not reset per packed row; with RoPE the
attention scores depend only on relative positions, so inside a segment they are
the same as for the row alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map


class SegmentCache:
    """A pass-through 'cache' that hands the model a fixed attention mask."""

    offset = 0

    def __init__(self, mask: mx.array):
        self.mask = mask

    def make_mask(self, *args, **kwargs) -> mx.array:
        return self.mask

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        return keys, values


def segment_mask(segments: mx.array) -> mx.array:
    """Block-diagonal causal mask from segment ids (B, T) -> bool (B, 1, T, T)."""
    T = segments.shape[1]
    same = segments[:, None, :, None] == segments[:, None, None, :]
    causal = mx.tril(mx.ones((T, T), dtype=mx.bool_))
    return same & causal


def forward(model: nn.Module, inputs: mx.array, segments: mx.array | None) -> mx.array:
    """Logits (B, T, V); with `segments`, attention stays inside each packed row."""
    if segments is None:
        return model(inputs)
    cache = [SegmentCache(segment_mask(segments))] * len(model.layers)
    return model(inputs, cache=cache)


def masked_loss(model, inputs, targets, weights, segments=None):
    """Sum of token cross-entropies over trained positions, and their count.

    inputs/targets (B, T) int32, weights (B, T) float32 in {0, 1}.
    """
    logits = forward(model, inputs, segments).astype(mx.float32)  # (B, T, V)
    ce = nn.losses.cross_entropy(logits, targets, reduction="none")  # (B, T)
    return (ce * weights).sum(), weights.sum()


def eval_metrics(model, inputs, targets, weights, segments=None):
    """(loss sum, trained tokens, correctly predicted trained tokens) for one batch."""
    logits = forward(model, inputs, segments).astype(mx.float32)
    ce = nn.losses.cross_entropy(logits, targets, reduction="none")
    correct = (logits.argmax(axis=-1) == targets).astype(mx.float32)
    return (ce * weights).sum(), weights.sum(), (correct * weights).sum()


def enable_grad_checkpoint(model: nn.Module) -> None:
    """Recompute each block in the backward pass, for every block class in the model.

    mlx-lm patches only the first block's class; hybrid models mix block types.
    """
    for cls in {type(layer) for layer in model.layers}:
        if getattr(cls, "_mlxsft_checkpointed", False):
            continue
        call = cls.__call__

        def checkpointed(self, *args, _call=call, **kwargs):
            def inner(params, *args, **kwargs):
                self.update(params)
                return _call(self, *args, **kwargs)

            return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

        cls.__call__ = checkpointed
        cls._mlxsft_checkpointed = True


@dataclass
class StepFunctions:
    """Compiled functions the loop calls; each returns lazy arrays."""

    train_step: object  # (inputs, targets, weights[, segments]) -> (loss_sum, ntok)
    grad_step: object  # same inputs -> (loss_sum, ntok, grads); for accumulation
    apply_grads: object  # (grads, ntok) -> None
    eval_step: object  # (inputs, targets, weights[, segments]) -> (loss_sum, ntok, correct)


def build_steps(model: nn.Module, optimizer: optim.Optimizer, max_grad_norm: float | None, packed: bool):
    """Compile the step functions over model, optimizer and RNG state."""
    loss_and_grad = nn.value_and_grad(model, masked_loss if packed else _unpacked(masked_loss))

    def update(grads, ntok):
        grads = tree_map(lambda g: g / ntok, grads)  # token-mean over the whole accumulation
        if max_grad_norm is not None:
            grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
        optimizer.update(model, grads)

    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def train_step(*batch):
        (loss_sum, ntok), grads = loss_and_grad(model, *batch)
        update(grads, ntok)
        return loss_sum, ntok

    @partial(mx.compile, inputs=state, outputs=state)
    def grad_step(*batch):
        (loss_sum, ntok), grads = loss_and_grad(model, *batch)
        return loss_sum, ntok, grads

    @partial(mx.compile, inputs=state, outputs=state)
    def apply_grads(grads, ntok):
        update(grads, ntok)

    # Not compiled: the caller switches the model to eval mode (no dropout, no RNG use)
    # around it, and a compiled trace would freeze whichever mode it first saw.
    eval_step = partial(eval_metrics if packed else _unpacked(eval_metrics), model)
    return StepFunctions(train_step, grad_step, apply_grads, eval_step)


def _unpacked(fn):
    """Drop the segments argument: unpacked rows need only the causal mask."""

    def call(model, inputs, targets, weights):
        return fn(model, inputs, targets, weights, None)

    return call
