"""Faster attention, SwiGLU and cross-entropy for training on MLX's CPU backend.

On the CPU backend `exp` runs at about 40-60M elements/s (scalar) while adds and
multiplies run at several G elements/s, so the softmax in attention, the sigmoid in
SwiGLU and the softmax over the vocabulary dominate a step once BLAS is fast. `fast_exp`
computes 2^x as a degree-6 polynomial on the fraction times 2^n built from the float's
exponent bits, in one fused kernel (relative error about 1e-5, exact 0 on underflow,
+inf on overflow; about 6x faster here). `fast_softmax`, `fast_swiglu`, the attention
core and `fast_cross_entropy` use it, with their gradients written out (the bit trick
has no autodiff).

`enable_fast_cpu_ops(model)` swaps attention and SwiGLU into the model's mlx-lm module
only on the CPU backend, checks the model's logits still match (else leaves it alone),
and returns a function that restores the originals; the trainer picks
`fast_cross_entropy` for its loss under the same switch (`fast_ops_apply`). Metal and
CUDA keep MLX's fused kernels.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

LOG2E = 1.4426950408889634
# 2^f for f in [0, 1): Taylor coefficients of e^(f ln 2)
_C = (
    0.6931471805599453,
    0.2402265069591007,
    0.05550410866482158,
    0.009618129107628477,
    0.0013333558146428443,
    0.00015403530393381606,
)


@mx.compile
def fast_exp(x: mx.array) -> mx.array:
    # t is clipped to [-127, 128]: below, n = -127 gives the bit pattern of +0.0, so the result
    # underflows to exactly 0 (a tiny normal value instead, 2^-126, made masked softmax entries
    # denormal, and x86 runs denormal arithmetic, the P @ V products, many times slower); above,
    # n = 128 gives +inf (unclipped, the shifted exponent ran into the sign bit: garbage).
    t = mx.clip(x * LOG2E, -127.0, 128.0)
    # floor(t) + 127 by truncation (t + 127 >= 0): astype fuses with the rest into one kernel,
    # where mx.floor ran as a separate, unfused pass over the data.
    biased = (t + 127.0).astype(mx.int32)
    f = t - (biased.astype(mx.float32) - 127.0)  # in [0, 1)
    poly = 1.0 + f * (_C[0] + f * (_C[1] + f * (_C[2] + f * (_C[3] + f * (_C[4] + f * _C[5])))))
    return poly * mx.view(biased << 23, mx.float32)  # poly * 2^n


@mx.custom_function
def fast_softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis."""
    z = fast_exp(x - mx.stop_gradient(x.max(axis=-1, keepdims=True)))
    return z / z.sum(axis=-1, keepdims=True)


@fast_softmax.vjp
def _fast_softmax_vjp(primals, cotangent, output):
    return (output * (cotangent - (output * cotangent).sum(axis=-1, keepdims=True)),)


@mx.custom_function
def fast_swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """silu(gate) * x."""
    return gate * (1.0 / (1.0 + fast_exp(-gate))) * x


@fast_swiglu.vjp
def _fast_swiglu_vjp(primals, cotangent, output):
    gate, x = primals
    s = 1.0 / (1.0 + fast_exp(-gate))  # sigmoid(gate)
    return cotangent * x * s * (1.0 + gate * (1.0 - s)), cotangent * gate * s


@mx.custom_function
def _cross_entropy_rows(logits: mx.array, targets: mx.array) -> mx.array:
    """Cross-entropy of each row: logits (K, V) fp32, targets (K,) -> (K,)."""
    m = mx.stop_gradient(logits.max(axis=-1, keepdims=True))
    s = fast_exp(logits - m).sum(axis=-1, keepdims=True)  # (K, 1)
    picked = mx.take_along_axis(logits, targets[:, None], axis=-1)
    return (mx.log(s) + m - picked).squeeze(-1)


@_cross_entropy_rows.vjp
def _cross_entropy_rows_vjp(primals, cotangent, output):
    # softmax - onehot, scaled by the cotangent; recomputed rather than kept from the forward, so
    # the backward holds no second (K, V) array beside the logits
    logits, targets = primals
    g = cotangent[:, None]  # (K, 1)
    z = fast_exp(logits - logits.max(axis=-1, keepdims=True))
    s = z.sum(axis=-1, keepdims=True)
    hit = mx.arange(logits.shape[-1], dtype=targets.dtype)[None] == targets[:, None]  # (K, V)
    return z * (g / s) - mx.where(hit, g, 0.0), mx.zeros_like(targets)


def fast_cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Per-token cross-entropy (as `nn.losses.cross_entropy(..., reduction="none")`): (..., V), (...) -> (...).

    MLX's own goes through `logsumexp` and a scalar `exp` over the whole vocabulary, the
    largest element-wise cost of a step on a 32k-vocabulary model on CPU (about a third
    slower than this, measured on 384 x 32,000 logits).
    """
    rows = _cross_entropy_rows(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return rows.reshape(targets.shape)


def fast_ops_apply() -> bool:
    """Whether `train.fast_cpu_ops` takes effect here: on the CPU backend only."""
    return mx.default_device() == mx.cpu


@mx.custom_function
def _attention_core(q: mx.array, k: mx.array, v: mx.array, keep: mx.array):
    """(softmax(q k^T masked) v, the probabilities); q (B, KV, rep*T, D), k/v (B, KV, S, D).

    The `rep` query heads that share a KV head are stacked as rows of one matrix, so each
    product is one (rep*T)-row GEMM per KV head instead of `rep` small ones, and the key and
    value gradients come out summed over those heads. keep: (rep*T, S) or (B, 1, rep*T, S).
    Returning the probabilities lets the backward use them without keeping the raw scores
    alive too (one (rep*T, S) tensor per KV head less, about a fifth of a step's memory).
    """
    scores = mx.where(keep, q @ k.swapaxes(-1, -2), -1e9)  # (B, KV, rep*T, S)
    p = fast_softmax(scores)
    return p @ v, p


@_attention_core.vjp
def _attention_core_vjp(primals, cotangents, outputs):
    q, k, v, keep = primals
    d_out = cotangents[0]  # (B, KV, rep*T, Dv)
    p = outputs[1]
    d_v = p.swapaxes(-1, -2) @ d_out  # (B, KV, S, Dv)
    d_p = d_out @ v.swapaxes(-1, -2)  # (B, KV, rep*T, S)
    d_s = p * (d_p - (d_p * p).sum(axis=-1, keepdims=True))
    return d_s @ k, d_s.swapaxes(-1, -2) @ q, d_v, mx.zeros_like(keep)


def attention(queries, keys, values, cache, scale, mask, sinks=None, *, original: Callable):
    """mlx-lm's `scaled_dot_product_attention` with `fast_softmax`; other cases go to `original`.

    queries (B, H, T, D), keys/values (B, KV, S, D); grouped heads share keys without copies.
    """
    if sinks is not None or hasattr(cache, "bits") or queries.dtype != mx.float32:
        return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
    if mask is not None and not isinstance(mask, str) and mask.dtype != mx.bool_:
        return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)  # additive
    B, H, T, D = queries.shape
    KV, S = keys.shape[1], keys.shape[2]
    rep = H // KV
    q = (queries * scale).reshape(B, KV, rep * T, D)  # head h = kv * rep + r: rows r*T .. r*T+T-1
    if isinstance(mask, str):  # "causal"
        keep = mx.tril(mx.ones((T, S), dtype=mx.bool_), k=S - T)
    elif mask is None:
        keep = mx.ones((T, S), dtype=mx.bool_)
    else:
        keep = mask  # (T, S), (B, 1, T, S) or broadcastable
    if rep > 1:
        reps = (1,) * (keep.ndim - 2) + (rep, 1)
        keep = mx.tile(keep, reps) if keep.shape[-2] == T else keep
    out, _ = _attention_core(q, keys, values, keep)  # (B, KV, rep*T, Dv)
    return out.reshape(B, H, T, -1)


def _probe_logits(model: nn.Module) -> mx.array:
    vocab = model.model.embed_tokens.weight.shape[0] if hasattr(model, "model") else 2
    ids = (mx.arange(24, dtype=mx.int32)[None] * 7 + 3) % vocab
    return model(ids).astype(mx.float32)


def enable_fast_cpu_ops(model: nn.Module) -> Callable[[], None]:
    """Use the fast ops for `model` on the CPU backend; return the undo function."""
    if not fast_ops_apply():
        return lambda: None
    module = sys.modules.get(type(model).__module__)
    names = [n for n in ("scaled_dot_product_attention", "swiglu") if hasattr(module, n)]
    if not names:
        return lambda: None
    originals = {n: getattr(module, n) for n in names}

    def restore() -> None:
        for name, fn in originals.items():
            setattr(module, name, fn)

    training = model.training
    model.eval()
    try:
        reference = _probe_logits(model)
        if "scaled_dot_product_attention" in originals:
            sdpa = originals["scaled_dot_product_attention"]
            module.scaled_dot_product_attention = lambda *a, **k: attention(*a, **k, original=sdpa)
        if "swiglu" in originals:
            module.swiglu = fast_swiglu
        same = mx.allclose(_probe_logits(model), reference, rtol=1e-3, atol=1e-3).item()
    except Exception:  # noqa: BLE001 - an architecture these ops do not fit keeps MLX's own
        same = False
    finally:
        model.train(training)
    if not same:
        restore()
        return lambda: None
    return restore
