"""The compiled training step, the masked loss, packed attention and gradient checkpointing.

Packed rows need attention that stops at row boundaries. mlx-lm models build their
mask through the KV cache's `make_mask`, so `SegmentCache` stands in for a cache:
it has offset 0, passes keys/values through, and hands every layer our
block-diagonal causal mask. Positions are not reset per packed row; with RoPE the
attention scores depend only on relative positions, so inside a segment they are
the same as for the row alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from ..model import vocab_size
from .cpu_ops import fast_cross_entropy
from .distributed import World


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


@dataclass(frozen=True)
class HeadSplit:
    """The model as body (tokens -> hidden states) and head (hidden -> logits).

    Splitting lets the loss run the LM head only on trained positions: on chat data
    most positions are prompt, and the head plus its softmax over the vocabulary is
    the largest cost of a small model's step.
    """

    body: Callable  # (inputs (B, T), cache) -> hidden (B, T, D)
    head_module: nn.Module  # the module whose weights the head uses
    head: Callable  # hidden (..., D) -> logits (..., V)


def split_head(model: nn.Module) -> HeadSplit | None:
    """A verified body/head split of an mlx-lm model, or None to use full logits.

    Models that post-process logits (soft-capping, scaling) fail the check and fall back.
    """
    inner = getattr(model, "model", None)
    if inner is None or not callable(inner):
        return None
    if isinstance(getattr(model, "lm_head", None), nn.Module):
        split = HeadSplit(lambda x, cache=None: inner(x, cache=cache), model.lm_head, lambda h: model.lm_head(h))
    elif hasattr(getattr(inner, "embed_tokens", None), "as_linear"):
        embed = inner.embed_tokens
        split = HeadSplit(lambda x, cache=None: inner(x, cache=cache), embed, lambda h: embed.as_linear(h))
    else:
        return None
    training = model.training
    model.eval()  # no dropout while comparing
    try:
        probe = mx.arange(1, 9, dtype=mx.int32)[None] % 7 + 1  # (1, 8)
        full = model(probe).astype(mx.float32)
        parts = split.head(split.body(probe)).astype(mx.float32)
        same = full.shape == parts.shape and mx.allclose(full, parts, rtol=1e-3, atol=1e-3).item()
    except Exception:  # noqa: BLE001 - any failure means "do not split this model"
        same = False
    finally:
        model.train(training)
    return split if same else None


def gather_trained(weights: np.ndarray, targets: np.ndarray, bucket_fraction: int = 8):
    """Flat indices of trained positions, and their targets/weights, padded to a bucket.

    weights/targets (B, T) -> positions, targets, weights (K,). K is rounded up to a
    multiple of B*T/bucket_fraction so compiled steps see few distinct shapes; the
    padding entries point at position 0 with weight 0.
    """
    flat = np.flatnonzero(weights.reshape(-1))
    step = max(weights.size // bucket_fraction, 1)
    K = min(max(-(-len(flat) // step) * step, step), weights.size)
    positions = np.zeros(K, np.int32)
    positions[: len(flat)] = flat
    sel_weights = np.zeros(K, np.float32)
    sel_weights[: len(flat)] = weights.reshape(-1)[flat]
    sel_targets = np.zeros(K, np.int32)
    sel_targets[: len(flat)] = targets.reshape(-1)[flat]
    return positions, sel_targets, sel_weights


def trained_hidden(split: HeadSplit, inputs: mx.array, positions: mx.array, cache=None) -> mx.array:
    """Hidden states at the flat `positions` (K,) of `inputs` (B, T): the head's input, (K, D)."""
    hidden = split.body(inputs, cache)  # (B, T, D)
    return hidden.reshape(-1, hidden.shape[-1])[positions]


def stock_cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Per-token cross-entropy with MLX's own ops: (..., V), (...) -> (...)."""
    return nn.losses.cross_entropy(logits, targets, reduction="none")


def _chunk_ce(head_params, h, targets, *, head_module, head, ce):
    head_module.update(head_params)
    targets = mx.stop_gradient(targets)  # integer ids: no VJP through the checkpoint
    return ce(head(h).astype(mx.float32), targets)


def head_cross_entropy(
    split: HeadSplit, h: mx.array, targets: mx.array, chunk_tokens: int, ce: Callable = stock_cross_entropy
) -> mx.array:
    """Per-token cross-entropy (K,) of hidden states h (K, D) through the head.

    Above `chunk_tokens` rows the head runs chunk by chunk under mx.checkpoint, so the
    backward never holds more than one chunk's (chunk, V) logits.
    """
    K = h.shape[0]
    if K <= chunk_tokens:
        return ce(split.head(h).astype(mx.float32), targets)
    fn = mx.checkpoint(partial(_chunk_ce, head_module=split.head_module, head=split.head, ce=ce))
    params = split.head_module.trainable_parameters()
    pieces = [fn(params, h[i : i + chunk_tokens], targets[i : i + chunk_tokens]) for i in range(0, K, chunk_tokens)]
    return mx.concatenate(pieces)


def chunk_tokens_for(vocab_size: int, budget_bytes: int = 256 * 2**20) -> int:
    """Rows of fp32 logits that fit in `budget_bytes` (at least 64)."""
    return max(64, budget_bytes // (4 * max(vocab_size, 1)))


@dataclass(frozen=True)
class LossPlan:
    """How batches become step arguments: packed or not, gathered head or full logits."""

    packed: bool
    split: HeadSplit | None
    chunk_tokens: int
    cross_entropy: Callable = stock_cross_entropy  # (logits (..., V), targets (...)) -> (...)

    def arrays(self, batch) -> list[mx.array]:
        """Step arguments of a data-layer Batch, in the order `loss` unpacks them."""
        if self.split is not None:
            pos, tgt, w = gather_trained(batch.weights, batch.targets)
            arrays = [mx.array(batch.inputs), mx.array(pos), mx.array(tgt), mx.array(w)]
        else:
            arrays = [mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.weights)]
        if self.packed:
            arrays.append(mx.array(batch.segments))
        return arrays

    def per_token(self, model, *arrays):
        """(ce (N,), logits-argmax (N,), targets (N,), weights (N,)) for the step arguments."""
        segments = arrays[-1] if self.packed else None
        cache = None if segments is None else [SegmentCache(segment_mask(segments))] * len(model.layers)
        if self.split is None:
            inputs, targets, weights = arrays[:3]
            logits = model(inputs, cache=cache).astype(mx.float32)  # (B, T, V)
            return self.cross_entropy(logits, targets), logits, targets, weights
        inputs, positions, targets, weights = arrays[:4]
        h = trained_hidden(self.split, inputs, positions, cache)  # (K, D)
        ce = head_cross_entropy(self.split, h, targets, self.chunk_tokens, self.cross_entropy)
        return ce, h, targets, weights

    def loss(self, model, *arrays):
        """(sum of trained-token cross-entropy, number of trained tokens)."""
        ce, _, _, weights = self.per_token(model, *arrays)
        return (ce * weights).sum(), weights.sum()

    def metrics(self, model, *arrays):
        """(loss sum, trained tokens, correctly predicted trained tokens)."""
        ce, out, targets, weights = self.per_token(model, *arrays)
        logits = out if self.split is None else self.split.head(out)
        correct = (logits.argmax(axis=-1) == targets).astype(mx.float32)
        return (ce * weights).sum(), weights.sum(), (correct * weights).sum()


def default_loss(model: nn.Module, packed: bool, gather_head: bool = True, fast_ce: bool = False) -> LossPlan:
    """The SFT loss: trained-token cross-entropy, through the gathered head when the model splits.

    `fast_ce` uses `cpu_ops.fast_cross_entropy` (the CPU backend's fast ops); else MLX's own.
    """
    split = split_head(model) if gather_head else None
    ce = fast_cross_entropy if fast_ce else stock_cross_entropy
    return LossPlan(packed=packed, split=split, chunk_tokens=chunk_tokens_for(vocab_size(model)), cross_entropy=ce)


def masked_loss(model, inputs, targets, weights, segments=None):
    """Reference loss on full logits: (sum of trained-token CE, trained tokens)."""
    logits = forward(model, inputs, segments).astype(mx.float32)  # (B, T, V)
    ce = nn.losses.cross_entropy(logits, targets, reduction="none")  # (B, T)
    return (ce * weights).sum(), weights.sum()


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


class StepLoss(Protocol):
    """A per-batch loss the compiled steps differentiate (`LossPlan` is the SFT one).

    `arrays` turns a batch into step arguments; `loss` returns (loss sum, weight sum) over
    them, the step dividing the summed gradients by the weight sum; `metrics` returns
    (loss sum, weight sum, correct) for evaluation. A different objective (e.g. a
    preference loss) plugs in through `loop.train(..., loss=...)`.
    """

    def arrays(self, batch) -> list[mx.array]: ...

    def loss(self, model: nn.Module, *arrays: mx.array) -> tuple[mx.array, mx.array]: ...

    def metrics(self, model: nn.Module, *arrays: mx.array) -> tuple[mx.array, mx.array, mx.array]: ...


@dataclass
class StepFunctions:
    """Compiled functions the loop calls; each returns lazy arrays."""

    plan: StepLoss
    train_step: Callable  # (*plan.arrays(batch)) -> (loss_sum, ntok, *metrics)
    grad_step: Callable  # same -> (loss_sum, ntok, grads, *metrics); for accumulation
    apply_grads: Callable  # (grads, ntok) -> None
    eval_step: Callable  # (*plan.arrays(batch)) -> (loss_sum, ntok, correct)


def build_steps(
    model: nn.Module,
    optimizer: optim.Optimizer,
    max_grad_norm: float | None,
    packed: bool,
    gather_head: bool = True,
    world=None,
    loss: StepLoss | None = None,
    fast_ce: bool = False,
) -> StepFunctions:
    """Compile the step functions over model, optimizer and RNG state.

    With a distributed `world`, gradient sums, loss sums and token counts are summed over
    ranks inside the compiled step, so every rank applies the same update. `loss`
    replaces the default masked cross-entropy (`LossPlan`); its `loss` may return
    metric arrays (no gradient) after (loss sum, count), which `train_step` returns after
    (loss sum, count) and `grad_step` after the gradients (DPO's rewards, for example).
    """
    world = world or World(None)
    plan = loss if loss is not None else default_loss(model, packed, gather_head, fast_ce)
    loss_and_grad = nn.value_and_grad(model, plan.loss)

    def update(grads, ntok):
        grads = tree_map(lambda g: g / ntok, grads)  # token-mean over the whole accumulation
        if max_grad_norm is not None:
            grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
        optimizer.update(model, grads)

    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def train_step(*arrays):
        (loss_sum, ntok, *aux), grads = loss_and_grad(model, *arrays)
        loss_sum, ntok, grads = world.all_sum((loss_sum, ntok, grads))
        aux = [world.all_sum(a) for a in aux]  # apart: a tree round trip would drop an empty list
        update(grads, ntok)
        return (loss_sum, ntok, *aux)

    @partial(mx.compile, inputs=state, outputs=state)
    def grad_step(*arrays):
        (loss_sum, ntok, *aux), grads = loss_and_grad(model, *arrays)
        loss_sum, ntok = world.all_sum((loss_sum, ntok))
        return (loss_sum, ntok, grads, *[world.all_sum(a) for a in aux])

    @partial(mx.compile, inputs=state, outputs=state)
    def apply_grads(grads, ntok):
        update(world.all_sum(grads), ntok)

    # Not compiled: the caller switches the model to eval mode (no dropout, no RNG use)
    # around it, and a compiled trace would freeze whichever mode it first saw.
    eval_step = partial(plan.metrics, model)
    return StepFunctions(plan, train_step, grad_step, apply_grads, eval_step)
