"""The checkpoint choice for preference runs (DPO, ORPO); the collapse flag is `train.collapse`'s.

- choice: leave out collapse-flagged checkpoints (unless every one is); keep those whose
  validation preference accuracy is within `tie` of the best, then those whose margin is
  within `tie` (relative) of their best, then the lowest chosen-reply perplexity (the SFT
  signal: the chosen replies must stay likely); ties go to the earliest step.
Everything takes plain numbers, so it is tested on synthetic histories.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..train.collapse import PrefPoint, flagged_steps


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
