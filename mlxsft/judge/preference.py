"""Pure rules for preference runs (DPO, ORPO): the likelihood-collapse flag and the checkpoint choice.

- collapse: DPO can raise the reward margin by pushing *both* replies down, the rejected
  one faster: the margin keeps growing while the chosen reply's log-prob falls, and the
  model ends up liking neither (the known failure; generations degrade). Flagged when,
  over the last `window` validation passes, the margin rose at every pass and the chosen
  log-prob fell at every pass, by more than `logp_tolerance` nats in all.
- choice: leave out collapse-flagged checkpoints (unless every one is); keep those whose
  validation preference accuracy is within `tie` of the best, then those whose margin is
  within `tie` (relative) of their best, then the lowest chosen-reply perplexity (the SFT
  signal: the chosen replies must stay likely); ties go to the earliest step.
Everything takes plain numbers, so it is tested on synthetic histories.
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
    recent = list(history)[-(window + 1):]
    pairs = list(zip(recent, recent[1:], strict=False))
    rising = all(b.margin > a.margin for a, b in pairs)
    falling = all(b.logps_chosen < a.logps_chosen for a, b in pairs)
    fell = recent[0].logps_chosen - recent[-1].logps_chosen
    if not (rising and falling and fell > logp_tolerance):
        return None
    first, last = recent[0], recent[-1]
    return (f"the reward margin grew from {first.margin:.3f} to {last.margin:.3f} (steps {first.step}-{last.step}) "
            f"while the chosen replies' log-prob fell from {first.logps_chosen:.2f} to {last.logps_chosen:.2f}: "
            "both replies are losing likelihood (DPO's likelihood collapse). Prefer an earlier checkpoint, "
            "raise preference.beta or lower train.learning_rate.")


def flagged_steps(history: Sequence[PrefPoint], window: int = 3, logp_tolerance: float = 0.5) -> set[int]:
    history = list(history)
    return {history[i].step for i in range(len(history))
            if collapse_warning(history[: i + 1], window, logp_tolerance) is not None}


def choose_preference(history: Sequence[PrefPoint], tie: float = 0.01) -> tuple[int | None, list[str]]:
    """(chosen step, reasons) by the choice rule in the module doc."""
    if not history:
        return None, ["no validation passes to choose from (the run had no validation data)"]
    flagged = flagged_steps(history)
    pool = [p for p in history if p.step not in flagged] or list(history)
    reasons = []
    if len(pool) < len(history):
        reasons.append(f"not the steps flagged for likelihood collapse ({', '.join(map(str, sorted(flagged)))})")
    best_acc = max(p.accuracy for p in pool)
    pool = [p for p in pool if p.accuracy >= best_acc - tie]
    reasons.append(f"preference accuracy within {tie:.0%} of the best ({best_acc:.1%}): steps {_steps(pool)}")
    best_margin = max(p.margin for p in pool)
    pool = [p for p in pool if p.margin >= best_margin - tie * abs(best_margin)]
    reasons.append(f"margin within {tie:.0%} of the best of those ({best_margin:.3f}): steps {_steps(pool)}")
    with_ppl = [p for p in pool if p.perplexity is not None]
    if with_ppl:
        best_ppl = min(p.perplexity for p in with_ppl)
        pool = [p for p in with_ppl if p.perplexity <= best_ppl * (1 + tie)]
        reasons.append(f"lowest chosen-reply perplexity ({best_ppl:.3f}): steps {_steps(pool)}")
    chosen = min(pool, key=lambda p: p.step)
    reasons.append(f"earliest of those: step {chosen.step}")
    return chosen.step, reasons


def _steps(pool: Sequence[PrefPoint]) -> str:
    return ", ".join(str(p.step) for p in pool)
