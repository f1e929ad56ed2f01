"""Preference losses (DPO sigmoid / IPO, ORPO) and their metrics, in MLX.

A batch of N pairs is 2N rows, the chosen sides first, then the rejected ones in the
same order (`data.preference.collate_pairs`). A side's log-prob is the sum of its
trained tokens' log-probs (the reply, as SFT masks it). The formulas follow TRL
(`DPOTrainer._compute_loss`, `experimental.orpo.ORPOTrainer.odds_ratio_loss`), which
`tests/test_preference_trl.py` checks numerically:

- DPO sigmoid: d = (pc - rc) - (pr - rr); loss = -(1-e) logsig(beta d) - e logsig(-beta d)
  (e = label_smoothing: conservative DPO; e = 0 is TRL's `sigmoid`).
- IPO: the same log-ratios averaged per response token; loss = (d_avg - 1/(2 beta))^2.
- ORPO: a = per-token mean log-prob; log_odds = (ac - ar) - (log(1-e^ac) - log(1-e^ar));
  loss = NLL(chosen reply tokens) - beta logsig(log_odds). No reference model.

Rewards are beta (pc - rc) and beta (pr - rr) for DPO/IPO, beta ac and beta ar for ORPO.
`pair_loss` returns sums over pairs (the trainer divides the gradient by the pair count,
as SFT divides by the token count) and a metrics vector summed over pairs (`METRICS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

OBJECTIVES = ("sft", "dpo", "orpo")
LOSS_TYPES = ("sigmoid", "ipo")
# summed over pairs in the metrics vector; means are these / pairs
METRICS = ("rewards_chosen", "rewards_rejected", "accuracy", "logps_chosen", "logps_rejected")


@dataclass(frozen=True)
class PreferenceLoss:
    """Which preference loss, and its knobs (the recipe's `objective` and `preference:`)."""

    objective: str = "dpo"  # dpo | orpo
    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"  # dpo only: sigmoid | ipo

    @property
    def needs_reference(self) -> bool:
        return self.objective == "dpo"


def token_logps(logits: mx.array, targets: mx.array) -> mx.array:
    """Log-prob of each target under fp32 logits: (B, T, V), (B, T) -> (B, T)."""
    return -nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none")


def sequence_logps(model, inputs: mx.array, targets: mx.array, weights: mx.array):
    """(summed log-prob of trained tokens (B,), trained tokens per row (B,)) of one forward pass."""
    logp = token_logps(model(inputs), targets)  # (B, T)
    return (logp * weights).sum(axis=1), weights.sum(axis=1)


def log1mexp(x: mx.array) -> mx.array:
    """log(1 - exp(x)) for x <= 0, stable on both sides of -ln 2 (as TRL computes it)."""
    return mx.where(x < -math.log(2), mx.log1p(-mx.exp(x)), mx.log(-mx.expm1(x)))


def dpo_losses(cfg: PreferenceLoss, pc, pr, rc, rr, nc, nr):
    """Per-pair DPO/IPO losses (N,) and rewards (N,), (N,) from summed log-probs and token counts."""
    if cfg.loss_type == "ipo":
        delta = (pc - rc) / mx.maximum(nc, 1) - (pr - rr) / mx.maximum(nr, 1)
        losses = (delta - 1 / (2 * cfg.beta)) ** 2
    else:
        z = cfg.beta * ((pc - rc) - (pr - rr))
        e = cfg.label_smoothing
        losses = -(1 - e) * nn.log_sigmoid(z) - e * nn.log_sigmoid(-z)
    return losses, cfg.beta * (pc - rc), cfg.beta * (pr - rr)


def orpo_losses(cfg: PreferenceLoss, pc, pr, nc, nr):
    """Per-pair odds-ratio terms -beta logsig(log_odds) (N,), rewards (N,), (N,) from mean log-probs."""
    ac, ar = pc / mx.maximum(nc, 1), pr / mx.maximum(nr, 1)
    log_odds = (ac - ar) - (log1mexp(ac) - log1mexp(ar))
    return -cfg.beta * nn.log_sigmoid(log_odds), cfg.beta * ac, cfg.beta * ar


def pair_loss(cfg: PreferenceLoss, logps: mx.array, counts: mx.array, ref: mx.array):
    """(loss summed over pairs, pairs, metrics (len(METRICS),) summed over pairs).

    logps, counts, ref: (2N,) for N pairs, chosen rows first. Rows without trained
    tokens (padding of an empty shard) are not pairs.
    """
    n = logps.shape[0] // 2
    pc, pr, nc, nr = logps[:n], logps[n:], counts[:n], counts[n:]
    real = (nc > 0).astype(mx.float32)  # (N,)
    if cfg.objective == "orpo":
        losses, reward_c, reward_r = orpo_losses(cfg, pc, pr, nc, nr)
        # NLL of the chosen replies, a token mean over the batch, once per pair in the sum
        nll = -(pc * real).sum() / mx.maximum(nc.sum(), 1)
        losses = losses + nll
    else:
        losses, reward_c, reward_r = dpo_losses(cfg, pc, pr, ref[:n], ref[n:], nc, nr)
    correct = (reward_c > reward_r).astype(mx.float32)
    metrics = mx.stack([(v * real).sum() for v in (reward_c, reward_r, correct, pc, pr)])
    return (losses * real).sum(), real.sum(), mx.stop_gradient(metrics)


def token_kl(policy_logits: mx.array, ref_logits: mx.array, weights: mx.array):
    """(sum over trained positions of KL(policy || reference) of the next-token distribution, positions).

    logits (B, T, V), weights (B, T).
    """
    logp = policy_logits.astype(mx.float32) - mx.logsumexp(policy_logits.astype(mx.float32), axis=-1, keepdims=True)
    logq = ref_logits.astype(mx.float32) - mx.logsumexp(ref_logits.astype(mx.float32), axis=-1, keepdims=True)
    kl = (mx.exp(logp) * (logp - logq)).sum(axis=-1)  # (B, T)
    return (kl * weights).sum(), weights.sum()


def summarize(metrics, pairs: float) -> dict[str, float]:
    """Means per pair of a summed metrics vector, plus the reward margin."""
    values, pairs = [float(v) for v in metrics], float(pairs)
    out = {name: v / max(pairs, 1) for name, v in zip(METRICS, values, strict=True)}
    out["margin"] = out["rewards_chosen"] - out["rewards_rejected"]
    return out
