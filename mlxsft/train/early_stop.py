"""The early-stop rule: stop once the validation loss has stopped gaining.

Pure numbers, no MLX: the trainer applies it after each evaluation
(`train.early_stop_patience`, `train.early_stop_tolerance`) and the judge's verdict
module exposes the same rule with its own `Rule` knobs, so both stop on the same test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def loss_gain(new: float | None, old: float | None) -> float | None:
    """Relative improvement of a loss, (old - new) / |old|: positive when `new` is lower.

    None when either is missing or not finite, or `old` is 0 (no scale to compare on).
    """
    if new is None or old is None or old == 0 or not (math.isfinite(new) and math.isfinite(old)):
        return None
    return (old - new) / abs(old)


def validation_losses(history: Sequence) -> list[float]:
    """The validation losses of `history`, in order.

    `history`: EvalFinished events (or anything with `.loss` and optional `.split`), or
    dicts with "loss" (and optional "split"); other splits and missing losses are skipped.
    """
    losses = []
    for record in history:
        get = record.get if isinstance(record, dict) else lambda k, d=None, r=record: getattr(r, k, d)
        if get("split", "valid") != "valid" or get("loss") is None:
            continue
        losses.append(float(get("loss")))
    return losses


def plateau_reached(history: Sequence, patience: int, tolerance: float) -> bool:
    """True when the best of the last `patience` validation losses gained at most `tolerance`
    (relative) on the best loss before them."""
    losses = validation_losses(history)
    if len(losses) <= patience:
        return False
    before, recent = min(losses[:-patience]), min(losses[-patience:])
    gain = loss_gain(recent, before)
    return gain is not None and gain <= tolerance
