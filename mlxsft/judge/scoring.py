"""Teacher-forced scores of tokenized rows: per-row NLL and accuracy, and KL to the base.

Rows are batched by length (the data layer's plan, no shuffle) and run through the
trainer's `LossPlan`, so evaluation computes the loss exactly as training does:
the LM head only on trained positions when the model allows the split. Per-row sums
(rather than one total) let every metric be reported per bucket as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..data.batching import collate, plan_batches
from ..data.masking import TokenizedExample
from ..model import vocab_size
from ..train.step import LossPlan, chunk_tokens_for, gather_trained, split_head


@dataclass(frozen=True)
class RowScore:
    """Sums over one row's trained tokens."""

    nll: float  # summed negative log-likelihood, nats
    tokens: int
    correct: int  # argmax prediction equal to the target
    kl: float = 0.0  # summed KL(model || base), nats (probe rows only)


def loss_plan(model: nn.Module) -> LossPlan:
    return LossPlan(packed=False, split=split_head(model), chunk_tokens=chunk_tokens_for(vocab_size(model)))


def _batches(examples: Sequence[TokenizedExample], batch_size: int, pad_id: int):
    lengths = [len(ex.ids) for ex in examples]
    longest = max(lengths, default=1)
    plan = plan_batches(
        lengths,
        batch_size=batch_size,
        batch_tokens=None,
        max_seq_length=longest,
        pack=False,
        shuffle=False,
        seed=0,
    )
    for batch_rows in plan:
        yield [row[0] for row in batch_rows], collate(examples, batch_rows, pad_id)


def score_rows(
    model: nn.Module,
    plan: LossPlan,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
) -> list[RowScore]:
    """NLL, trained tokens and correct predictions of every row, in input order."""
    nll = np.zeros(len(examples))
    tokens = np.zeros(len(examples), dtype=np.int64)
    correct = np.zeros(len(examples), dtype=np.int64)
    for indices, batch in _batches(examples, batch_size, pad_id):
        B, T = batch.inputs.shape
        if plan.split is not None:
            positions, targets, weights = gather_trained(batch.weights, batch.targets)
            ce, h, tgt, w = plan.per_token(
                model,
                mx.array(batch.inputs),
                mx.array(positions),
                mx.array(targets),
                mx.array(weights),
            )  # (K,) each, h (K, D)
            hit = plan.split.head(h).argmax(axis=-1) == tgt
            row_of = positions // T
        else:
            ce, logits, tgt, w = plan.per_token(
                model, mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.weights)
            )  # (B, T), logits (B, T, V)
            hit = logits.argmax(axis=-1) == tgt
            row_of = np.repeat(np.arange(B), T)
        mx.eval(ce, hit, w)
        w_np = np.asarray(w, dtype=np.float64).reshape(-1)
        rows = np.asarray(indices)[row_of]
        np.add.at(nll, rows, np.asarray(ce, dtype=np.float64).reshape(-1) * w_np)
        np.add.at(tokens, rows, (w_np > 0).astype(np.int64))
        np.add.at(correct, rows, (np.asarray(hit).reshape(-1) & (w_np > 0)).astype(np.int64))
    return [RowScore(float(a), int(b), int(c)) for a, b, c in zip(nll, tokens, correct, strict=True)]


def _log_probs(model: nn.Module, inputs: mx.array) -> mx.array:
    logits = model(inputs, cache=None).astype(mx.float32)  # (B, T, V)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def score_rows_with_kl(
    model: nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    use_base: Callable[[], None],
    use_model: Callable[[], None],
) -> list[RowScore]:
    """Like `score_rows`, plus KL(model || base) summed over each row's trained positions.

    The base's log-probabilities come from swapping the base weights in for each batch
    (`use_base`, then `use_model` again): no (tokens, vocabulary) table is ever cached.
    """
    out = [RowScore(0.0, 0, 0)] * len(examples)
    for indices, batch in _batches(examples, batch_size, pad_id):
        inputs = mx.array(batch.inputs)  # (B, T)
        targets = mx.array(batch.targets)
        logp = _log_probs(model, inputs)  # (B, T, V)
        mx.eval(logp)
        use_base()
        logq = _log_probs(model, inputs)
        mx.eval(logq)
        use_model()
        kl = (mx.exp(logp) * (logp - logq)).sum(axis=-1)  # (B, T)
        nll = -mx.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
        hit = logp.argmax(axis=-1) == targets
        w = mx.array(batch.weights)
        sums = [(x * w).sum(axis=-1) for x in (nll, kl, hit.astype(mx.float32))]
        mx.eval(*sums)
        ntok = batch.weights.sum(axis=-1)
        for b, i in enumerate(indices):
            out[i] = RowScore(float(sums[0][b]), int(ntok[b]), int(round(float(sums[2][b]))), float(sums[1][b]))
    return out
