"""DPO's likelihood-collapse rule, shared by the training loop (a run warning) and the judge (`select`).

DPO can raise the reward margin by pushing *both* replies down, the rejected one
faster: the margin keeps growing while the chosen reply's log-prob falls, and the model
ends up liking neither (the known failure; generations degrade). Flagged when, over
the last `window` validation passes, the margin rose at every pass and the chosen
log-prob fell at every pass, by more than `logp_tolerance` nats in all. Plain numbers
in, words out: tested on synthetic histories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PrefPoint:
    """One validation pass of a preference run."""

    step: int
    accuracy: float
    margin: float
    logps_chosen: float
    perplexity: float | None = None  # of the chosen replies (EvalFinished)


def collapse_warning(history: Sequence[PrefPoint], window: int = 3, logp_tolerance: float = 0.5) -> str | None:
    """The flag above for the last point of `history`, in words, or None."""
    if len(history) < window + 1:
        return None
    recent = list(history)[-(window + 1) :]
    pairs = list(zip(recent, recent[1:], strict=False))
    rising = all(b.margin > a.margin for a, b in pairs)
    falling = all(b.logps_chosen < a.logps_chosen for a, b in pairs)
    fell = recent[0].logps_chosen - recent[-1].logps_chosen
    if not (rising and falling and fell > logp_tolerance):
        return None
    first, last = recent[0], recent[-1]
    return (
        f"the reward margin grew from {first.margin:.3f} to {last.margin:.3f} (steps {first.step}-{last.step}) "
        f"while the chosen replies' log-prob fell from {first.logps_chosen:.2f} to {last.logps_chosen:.2f}: "
        "both replies are losing likelihood (DPO's likelihood collapse). Prefer an earlier checkpoint, "
        "raise preference.beta or lower train.learning_rate."
    )


def flagged_steps(history: Sequence[PrefPoint], window: int = 3, logp_tolerance: float = 0.5) -> set[int]:
    history = list(history)
    return {
        history[i].step
        for i in range(len(history))
        if collapse_warning(history[: i + 1], window, logp_tolerance) is not None
    }
