"""Pure rules: is SFT done? A verdict per checkpoint, the recommended checkpoint, early stopping.

Each checkpoint is compared with its *reference*: the last earlier checkpoint that
was still learning (or the base), i.e. where the dev loss last made a real gain.
Against it:

- dev gain: relative fall of the dev loss; above `dev_tolerance` the run is
  "still learning", whatever else moves (early SFT lowers entropy too).
- Otherwise (dev gain about zero, or negative) the simultaneous overshoot signals are
  counted: OOD gain at or below `ood_tolerance`, entropy and distinct-2 both
  falling by more than `diversity_tolerance`, pass@k falling while pass@1 holds or
  rises, and the general-text probe loss rising by more than `regression_tolerance`.
  At least `min_signals` of them: "overshooting"; fewer: "plateau".

The choice: among checkpoints whose verdict is not excluded, those with a dev loss
within `within` of the best; then each `prefer` key in turn keeps the candidates
within `tie` of the best value on it; the earliest step left wins (least drift).
Everything here takes plain numbers, so it is tested on synthetic histories.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field

from .metrics import relative_change

STILL_LEARNING, PLATEAU, OVERSHOOTING, BASE = "still learning", "plateau", "overshooting", "base"
VERDICTS = (STILL_LEARNING, PLATEAU, OVERSHOOTING)
SIGNALS = ("ood_no_gain", "diversity_falling", "pass_k_falling", "regression_worsening")


@dataclass(frozen=True)
class Rule:
    """The knobs of the verdict and of the choice (YAML keys of `mlxsft select --rule`)."""

    dev_metric: str = "valid_loss"  # lower is better; falls back to ood_loss when absent
    dev_tolerance: float = 0.01  # relative dev-loss gain at or below this is "about zero"
    ood_tolerance: float = 0.0  # relative OOD-loss gain at or below this is a signal
    diversity_tolerance: float = 0.05  # relative fall of entropy and distinct-2 that counts
    regression_tolerance: float = 0.02  # relative rise of the probe loss that counts
    pass_tolerance: float = 0.0  # absolute fall of pass@k that counts
    min_signals: int = 2  # overshoot signals needed (with no dev gain)
    within: float = 0.02  # choice: dev loss within this share of the best
    exclude: tuple[str, ...] = (OVERSHOOTING,)  # verdicts never chosen while another qualifies
    prefer: tuple[str, ...] = ("pass_at_1:max", "ood_loss:min", "probe_kl:min")
    tie: float = 0.01  # relative difference that counts as a tie on a prefer key
    patience: int = 3  # plateau_reached: evaluations without dev gain before stopping

    def describe(self) -> str:
        return (
            f"verdict: {self.dev_metric} gain > {self.dev_tolerance:.1%} = still learning; "
            f"else >= {self.min_signals} of [{', '.join(SIGNALS)}] = overshooting, else plateau. "
            f"choice: not {'/'.join(self.exclude) or '-'}, "
            f"{self.dev_metric} within {self.within:.1%} of the best, "
            f"then {', '.join(self.prefer) or '-'} (ties within {self.tie:.1%}), "
            "then the earliest step"
        )


class RuleError(ValueError):
    """A rule key or value is invalid (the CLI turns it into a user-facing error)."""


def rule_from_dict(raw: dict, base: Rule | None = None) -> Rule:
    """A Rule from plain values (YAML or flags), each checked; unknown keys are errors."""
    base = base or Rule()
    hints = typing.get_type_hints(Rule)
    values = {}
    for key, value in raw.items():
        if key not in hints:
            raise RuleError(f"unknown rule key '{key}'. Known keys: {', '.join(hints)}.")
        values[key] = _coerce(key, value, hints[key])
    rule = dataclasses.replace(base, **values)
    for verdict in rule.exclude:
        if verdict not in VERDICTS:
            raise RuleError(f"exclude: '{verdict}' is not a verdict; use {', '.join(VERDICTS)}.")
    for pref in rule.prefer:
        if pref.rpartition(":")[2] not in ("max", "min"):
            raise RuleError(
                f"prefer: '{pref}' must look like METRIC:max or METRIC:min, e.g. pass_at_1:max."
            )
    if rule.min_signals < 1 or rule.patience < 1:
        raise RuleError("min_signals and patience must be at least 1.")
    return rule


def _coerce(key: str, value, tp):
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    raise RuleError(
        f"rule key '{key}' must be {getattr(tp, '__name__', 'a list of strings')}, got {value!r}."
    )


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Point:
    """One evaluated checkpoint: its step and metrics (names as in results.json)."""

    step: int
    metrics: dict

    def get(self, name: str) -> float | None:
        return self.metrics.get(name)


@dataclass(frozen=True)
class Verdict:
    step: int
    verdict: str
    reference_step: int | None
    signals: dict = field(
        default_factory=dict
    )  # signal name -> True/False, or None when unmeasured
    numbers: dict = field(default_factory=dict)  # the changes behind the signals

    @property
    def signal_count(self) -> int:
        return sum(1 for v in self.signals.values() if v)


def points(entries: Sequence[dict]) -> list[Point]:
    """Points from results.json entries, by step."""
    return sorted(
        (Point(int(e["step"]), dict(e["metrics"])) for e in entries), key=lambda p: p.step
    )


def dev_metric(history: Sequence[Point], rule: Rule) -> str:
    """The rule's dev metric, or ood_loss when no checkpoint has it."""
    for name in (rule.dev_metric, "ood_loss"):
        if any(p.get(name) is not None for p in history):
            return name
    raise RuleError(
        f"no checkpoint has {rule.dev_metric} or ood_loss; give the run validation data "
        "(data.valid) and evaluate again."
    )


def _gain(new: float | None, old: float | None) -> float | None:
    """Relative improvement of a loss: positive when `new` is lower."""
    change = relative_change(new, old)
    return None if change is None else -change


def _below(change: float | None, tolerance: float) -> bool | None:
    return None if change is None else change <= -tolerance


def judge_point(point: Point, reference: Point, dev: str, rule: Rule) -> Verdict:
    """The verdict of `point` against its reference (where the dev loss last gained)."""
    n = {
        "dev_gain": _gain(point.get(dev), reference.get(dev)),
        "ood_gain": _gain(point.get("ood_loss"), reference.get("ood_loss")),
        "entropy_change": relative_change(point.get("entropy"), reference.get("entropy")),
        "distinct_2_change": relative_change(point.get("distinct_2"), reference.get("distinct_2")),
        "pass_at_1_change": _diff(point.get("pass_at_1"), reference.get("pass_at_1")),
        "pass_at_k_change": _diff(point.get("pass_at_k"), reference.get("pass_at_k")),
        "probe_loss_change": relative_change(point.get("probe_loss"), reference.get("probe_loss")),
    }
    diversity = [
        _below(n[k], rule.diversity_tolerance) for k in ("entropy_change", "distinct_2_change")
    ]
    diversity = [d for d in diversity if d is not None]
    pk, p1 = n["pass_at_k_change"], n["pass_at_1_change"]
    signals = {
        "ood_no_gain": None if n["ood_gain"] is None else n["ood_gain"] <= rule.ood_tolerance,
        "diversity_falling": all(diversity) if diversity else None,
        "pass_k_falling": None
        if pk is None or p1 is None
        else (pk < -rule.pass_tolerance and p1 >= 0),
        "regression_worsening": (
            None
            if n["probe_loss_change"] is None
            else n["probe_loss_change"] > rule.regression_tolerance
        ),
    }
    if n["dev_gain"] is not None and n["dev_gain"] > rule.dev_tolerance:
        verdict = STILL_LEARNING
    elif sum(1 for v in signals.values() if v) >= rule.min_signals:
        verdict = OVERSHOOTING
    else:
        verdict = PLATEAU
    return Verdict(point.step, verdict, reference.step, signals, n)


def _diff(new: float | None, old: float | None) -> float | None:
    return None if new is None or old is None else new - old


def judge_history(history: Sequence[Point], rule: Rule = Rule()) -> list[Verdict]:
    """A verdict for every point; the first (normally the base, step 0) is the baseline."""
    history = sorted(history, key=lambda p: p.step)
    if not history:
        return []
    dev = dev_metric(history, rule)
    verdicts = [Verdict(history[0].step, BASE, None)]
    reference = history[0]
    for point in history[1:]:
        verdict = judge_point(point, reference, dev, rule)
        verdicts.append(verdict)
        if verdict.verdict == STILL_LEARNING or reference.get(dev) is None:
            # Only a real gain moves the reference: creeping gains below the tolerance
            # must not hide a collapse that builds up over several checkpoints.
            reference = point
    return verdicts


# --------------------------------------------------------------------------- choice


@dataclass(frozen=True)
class Choice:
    step: int | None
    reasons: tuple[str, ...]  # how the candidates were narrowed, in order


def choose(history: Sequence[Point], verdicts: Sequence[Verdict], rule: Rule = Rule()) -> Choice:
    """The recommended checkpoint under `rule` (never the base)."""
    by_step = {v.step: v.verdict for v in verdicts}
    pool = [p for p in history if by_step.get(p.step) != BASE]
    if not pool:
        return Choice(None, ("no checkpoint besides the base was evaluated",))
    reasons = []
    kept = [p for p in pool if by_step.get(p.step) not in rule.exclude]
    if kept:
        if len(kept) < len(pool):
            reasons.append(
                f"left out {len(pool) - len(kept)} checkpoint(s) judged {'/'.join(rule.exclude)}"
            )
        pool = kept
    else:
        reasons.append(f"every checkpoint is {'/'.join(rule.exclude)}; choosing among all of them")
    dev = dev_metric(history, rule)
    values = [p.get(dev) for p in pool if p.get(dev) is not None]
    if values:
        best = min(values)
        limit = best + abs(best) * rule.within
        pool = [p for p in pool if p.get(dev) is not None and p.get(dev) <= limit]
        reasons.append(
            f"{dev} within {rule.within:.1%} of the best {best:.4f}: steps {_steps(pool)}"
        )
    for pref in rule.prefer:
        name, _, direction = pref.rpartition(":")
        scored = [p for p in pool if p.get(name) is not None]
        if len(scored) < 2 or len(scored) < len(pool):
            continue  # a key not measured on every candidate cannot rank them
        sign = 1 if direction == "min" else -1
        best = min(sign * p.get(name) for p in scored)
        margin = abs(best) * rule.tie
        pool = [p for p in scored if sign * p.get(name) <= best + margin]
        reasons.append(f"best {name} ({direction}): steps {_steps(pool)}")
    chosen = min(pool, key=lambda p: p.step)
    if len(pool) > 1:
        reasons.append(f"earliest of steps {_steps(pool)}")
    return Choice(chosen.step, tuple(reasons))


def _steps(pool: Sequence[Point]) -> str:
    return ", ".join(str(p.step) for p in pool)


# --------------------------------------------------------------------------- early stop


def plateau_reached(history: Sequence, rule: Rule = Rule()) -> bool:
    """True when the last `patience` validation losses gained <= `dev_tolerance` on the best before.

    `history`: EvalFinished events (or anything with `.loss` and optional `.split`, or
    dicts with "loss"), in the order they happened. For the trainer's early stop.
    """
    losses = []
    for record in history:
        get = (
            record.get if isinstance(record, dict) else lambda k, d=None, r=record: getattr(r, k, d)
        )
        if get("split", "valid") != "valid" or get("loss") is None:
            continue
        losses.append(float(get("loss")))
    if len(losses) <= rule.patience:
        return False
    before, recent = min(losses[: -rule.patience]), min(losses[-rule.patience :])
    gain = _gain(recent, before)
    return gain is not None and gain <= rule.dev_tolerance
