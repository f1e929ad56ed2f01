"""Pure rules: is SFT done? A verdict per checkpoint, the recommended checkpoint, early stopping.

Each checkpoint is compared with its *reference*: the last earlier checkpoint that
was cleanly still learning (or the base), i.e. where the dev loss last made a real
gain that nothing contradicted. Every change is measured against its noise: the
standard error of the change, from a paired bootstrap over the evaluation's rows
(`noise.py`). A change counts only beyond `noise_z` standard errors *and* beyond its
tolerance; a change past the tolerance but inside the noise is reported as "within
noise" and does not count.

- dev gain: relative fall of the dev loss beyond tolerance and noise.
- overshoot signals: the dev loss rising (`dev_rising`), the OOD loss rising
  (`ood_worsening`), the entropy of samples falling while distinct-2 does not rise
  (`diversity_falling`: distinct-2 cannot fall any more once outputs are templated),
  pass@k falling while pass@1 does not (`pass_k_falling`), the general-text probe loss
  rising (`regression_worsening`).
- verdict: a dev loss rising beyond noise is "overshooting" on its own (the classic
  early-stopping sign). Otherwise a dev gain is "still learning", unless a
  generalization signal (OOD loss or pass@k) fired with it: SFT lowers entropy and
  costs some general text while it learns, but getting worse outside the training
  distribution contradicts the gain. That is a *disagreement*, reported as such:
  "overshooting" with at least `min_signals` signals, else "still learning"; either
  way the reference does not move to it and the choice prefers the earlier
  checkpoint. With no dev gain, at least `min_signals` signals make "overshooting",
  fewer "plateau".
- forgetting: the probe loss against the *base* (not only the reference); a rise
  beyond `forgetting_threshold` and beyond noise is a warning on the checkpoint.

The choice: among checkpoints whose verdict is not excluded, minus those that
disagreed with an earlier candidate, those with a dev loss within `within` of the
best; then each `prefer` key in turn keeps the candidates within `tie` of the best
value on it; the earliest step left wins (least drift).
Everything here takes plain numbers, so it is tested on synthetic histories.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..train import early_stop
from ..train.early_stop import loss_gain
from ..typed_yaml import coerce
from .metrics import relative_change
from .noise import beyond_noise, change_se

STILL_LEARNING, PLATEAU, OVERSHOOTING, BASE = "still learning", "plateau", "overshooting", "base"
VERDICTS = (STILL_LEARNING, PLATEAU, OVERSHOOTING)
SIGNALS = ("dev_rising", "ood_worsening", "diversity_falling", "pass_k_falling", "regression_worsening")
GENERALIZATION = ("ood_worsening", "pass_k_falling")  # the signals that can contradict a dev gain


@dataclass(frozen=True)
class Rule:
    """The knobs of the verdict and of the choice (YAML keys of `mlxsft select --rule`)."""

    dev_metric: str = "valid_loss"  # lower is better; falls back to ood_loss when absent
    dev_tolerance: float = 0.01  # relative dev-loss change at or below this is "about zero"
    ood_tolerance: float = 0.0  # relative OOD-loss rise above this is a signal
    diversity_tolerance: float = 0.05  # relative fall of entropy that counts
    regression_tolerance: float = 0.02  # relative rise of the probe loss (vs the reference) that counts
    pass_tolerance: float = 0.0  # absolute fall of pass@k that counts
    min_signals: int = 2  # overshoot signals needed (a dev rise alone is enough)
    noise_z: float = 2.0  # a change counts only beyond this many bootstrap standard errors
    bootstrap_samples: int = 400  # resamples of the rows per standard error
    forgetting_threshold: float = 0.05  # probe-loss rise against the base that warns
    within: float = 0.02  # choice: dev loss within this share of the best
    exclude: tuple[str, ...] = (OVERSHOOTING,)  # verdicts never chosen while another qualifies
    prefer: tuple[str, ...] = ("pass_at_1:max", "ood_loss:min", "probe_kl:min")
    tie: float = 0.01  # relative difference that counts as a tie on a prefer key
    patience: int = 3  # plateau_reached: evaluations without dev gain before stopping

    def describe(self) -> str:
        return (
            f"verdict (changes count beyond {self.noise_z:g} bootstrap SE and their tolerance): "
            f"{self.dev_metric} rising > {self.dev_tolerance:.1%} = overshooting; gain > "
            f"{self.dev_tolerance:.1%} = still learning, unless {'/'.join(GENERALIZATION)} disagree (then "
            f"the earlier checkpoint is preferred); else >= {self.min_signals} of [{', '.join(SIGNALS[1:])}] = "
            f"overshooting, else plateau. forgetting warning: probe loss > +{self.forgetting_threshold:.1%} "
            "vs the base. "
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
            raise RuleError(f"prefer: '{pref}' must look like METRIC:max or METRIC:min, e.g. pass_at_1:max.")
    if rule.min_signals < 1 or rule.patience < 1 or rule.bootstrap_samples < 10:
        raise RuleError("min_signals and patience must be at least 1, bootstrap_samples at least 10.")
    if rule.noise_z < 0 or rule.forgetting_threshold < 0:
        raise RuleError("noise_z and forgetting_threshold must not be negative.")
    return rule


def _coerce(key: str, value, tp):
    try:
        return coerce(value, tp)
    except TypeError as exc:
        raise RuleError(f"rule key '{key}' must be {exc}, got {value!r}.") from None


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Point:
    """One evaluated checkpoint: its step, metrics (names as in results.json) and per-row values."""

    step: int
    metrics: dict
    rows: dict = field(default_factory=dict)  # results.json entry["rows"]: the noise model's input

    def get(self, name: str) -> float | None:
        return self.metrics.get(name)


@dataclass(frozen=True)
class Verdict:
    step: int
    verdict: str
    reference_step: int | None
    signals: dict = field(default_factory=dict)  # signal -> True (fired) / False / None (unmeasured)
    numbers: dict = field(default_factory=dict)  # the changes behind the signals, and "<change>_se"
    within_noise: tuple[str, ...] = ()  # signals (and "dev_gain") past tolerance but inside the noise
    disagree: bool = False  # the dev loss gained while overshoot signals fired
    warnings: tuple[str, ...] = ()

    @property
    def signal_count(self) -> int:
        return sum(1 for v in self.signals.values() if v)

    @property
    def fired(self) -> list[str]:
        return [k for k, v in self.signals.items() if v]


def points(entries: Sequence[dict]) -> list[Point]:
    """Points from results.json entries, by step."""
    return sorted(
        (Point(int(e["step"]), dict(e["metrics"]), dict(e.get("rows") or {})) for e in entries),
        key=lambda p: p.step,
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
    return loss_gain(new, old)


def _diff(new: float | None, old: float | None) -> float | None:
    return None if new is None or old is None else new - old


# change name -> (metric, relative?, sign): sign -1 turns a loss change into a gain
_CHANGES = {
    "dev_gain": (None, True, -1),
    "ood_gain": ("ood_loss", True, -1),
    "entropy_change": ("entropy", True, 1),
    "distinct_2_change": ("distinct_2", True, 1),
    "pass_at_1_change": ("pass_at_1", False, 1),
    "pass_at_k_change": ("pass_at_k", False, 1),
    "probe_loss_change": ("probe_loss", True, 1),
    # KL to the base is what is measured; its change is the drift since the reference
    "probe_kl_change": ("probe_kl", False, 1),
}


def _changes(point: Point, reference: Point, dev: str, rule: Rule) -> dict:
    """Every change of `point` against `reference`, with its bootstrap standard error."""
    n: dict[str, float | None] = {}
    for name, (metric, relative, sign) in _CHANGES.items():
        metric = metric or dev
        new, old = point.get(metric), reference.get(metric)
        change = relative_change(new, old) if relative else _diff(new, old)
        n[name] = None if change is None else sign * change
        se = None
        if change is not None:
            se = change_se(point.rows, reference.rows, metric, relative=relative, samples=rule.bootstrap_samples)
        n[name + "_se"] = se
    return n


class _Tests:
    """Signal outcomes: fired (past tolerance and noise), within noise, or not."""

    def __init__(self, numbers: dict, z: float):
        self.n, self.z, self.within_noise = numbers, z, []

    def counts(self, name: str, past_tolerance, record: bool = True) -> bool | None:
        """Does change `name` count? `past_tolerance(change)` says it points the tested way far
        enough; then it must also be beyond noise. `record`: list it as within noise if not."""
        change = self.n.get(name)
        if change is None:
            return None
        if not past_tolerance(change):
            return False
        if beyond_noise(change, self.n.get(name + "_se"), self.z):
            return True
        if record:
            self.within_noise.append(name)
        return False


def _signals(t: _Tests, rule: Rule) -> dict:
    n = t.n
    p1_falling = t.counts("pass_at_1_change", lambda c: c < 0, record=False)  # a condition, not a signal
    entropy = t.counts("entropy_change", lambda c: c < -rule.diversity_tolerance)
    d2 = n.get("distinct_2_change")
    d2_rising = d2 is not None and d2 > rule.diversity_tolerance
    pk = t.counts("pass_at_k_change", lambda c: c < -rule.pass_tolerance)
    return {
        "dev_rising": t.counts("dev_gain", lambda c: c < -rule.dev_tolerance),
        "ood_worsening": t.counts("ood_gain", lambda c: c < -rule.ood_tolerance),
        "diversity_falling": None if entropy is None else entropy and not d2_rising,
        "pass_k_falling": None if pk is None or n.get("pass_at_1_change") is None else pk and not p1_falling,
        "regression_worsening": t.counts("probe_loss_change", lambda c: c > rule.regression_tolerance),
    }


def _forgetting(point: Point, base: Point | None, rule: Rule, n: dict) -> tuple[str, ...]:
    """Probe loss and KL against the base; a warning past `forgetting_threshold` and noise."""
    if base is None or base.step == point.step:
        return ()
    change = relative_change(point.get("probe_loss"), base.get("probe_loss"))
    se = None
    if change is not None:
        se = change_se(point.rows, base.rows, "probe_loss", relative=True, samples=rule.bootstrap_samples)
    n["probe_loss_vs_base"], n["probe_loss_vs_base_se"] = change, se
    n["probe_kl_vs_base"] = point.get("probe_kl")
    if change is None or change <= rule.forgetting_threshold or not beyond_noise(change, se, rule.noise_z):
        return ()
    noise = f" ± {se:.1%}" if se is not None else ""
    return (
        f"forgetting: general-text probe loss {change:+.1%}{noise} against the base "
        f"(threshold {rule.forgetting_threshold:.1%})",
    )


def judge_point(point: Point, reference: Point, dev: str, rule: Rule, base: Point | None = None) -> Verdict:
    """The verdict of `point` against its reference (where the dev loss last gained cleanly)."""
    n = _changes(point, reference, dev, rule)
    tests = _Tests(n, rule.noise_z)
    gained = tests.counts("dev_gain", lambda c: c > rule.dev_tolerance)
    signals = _signals(tests, rule)
    fired = [k for k, v in signals.items() if v]
    # SFT lowers entropy and costs some general text while it learns; only a model that
    # gets worse outside the training distribution contradicts a dev gain.
    disagree = bool(gained) and any(s in GENERALIZATION for s in fired)
    if signals["dev_rising"]:
        verdict = OVERSHOOTING
    elif gained:
        verdict = OVERSHOOTING if disagree and len(fired) >= rule.min_signals else STILL_LEARNING
    else:
        verdict = OVERSHOOTING if len(fired) >= rule.min_signals else PLATEAU
    warnings = _forgetting(point, base, rule, n)
    return Verdict(point.step, verdict, reference.step, signals, n, tuple(tests.within_noise), disagree, warnings)


def judge_history(history: Sequence[Point], rule: Rule = Rule()) -> list[Verdict]:
    """A verdict for every point; the first (normally the base, step 0) is the baseline."""
    history = sorted(history, key=lambda p: p.step)
    if not history:
        return []
    dev = dev_metric(history, rule)
    base = history[0]
    verdicts = [Verdict(base.step, BASE, None)]
    reference = base
    for point in history[1:]:
        verdict = judge_point(point, reference, dev, rule, base)
        verdicts.append(verdict)
        clean_gain = verdict.verdict == STILL_LEARNING and not verdict.disagree
        if clean_gain or reference.get(dev) is None:
            # Only a real, uncontradicted gain moves the reference: creeping gains below
            # the tolerance must not hide a collapse that builds up over several checkpoints.
            reference = point
    return verdicts


def _pct_se(value: float | None, se: float | None) -> str:
    if value is None:
        return "unmeasured"
    return f"{value:+.1%}" + (f" ± {se:.1%}" if se is not None else "")


_SIGNAL_CHANGE = {
    "dev_rising": "dev_gain",
    "ood_worsening": "ood_gain",
    "diversity_falling": "entropy_change",
    "pass_k_falling": "pass_at_k_change",
    "regression_worsening": "probe_loss_change",
}


def explain(verdict: Verdict) -> str:
    """One line for people: the verdict, what fired, what stayed within noise, and why."""
    if verdict.verdict == BASE:
        return f"step {verdict.step}: the base (baseline for every comparison)"
    n = verdict.numbers

    def show(name: str) -> str:
        change = _SIGNAL_CHANGE.get(name, name)
        return f"{name} ({_pct_se(n.get(change), n.get(change + '_se'))})"

    parts = [f"step {verdict.step}: {verdict.verdict} vs step {verdict.reference_step}"]
    parts.append(f"dev gain {_pct_se(n.get('dev_gain'), n.get('dev_gain_se'))}")
    parts.append("fired: " + (", ".join(show(s) for s in verdict.fired) or "none"))
    if verdict.within_noise:
        parts.append("within noise: " + ", ".join(show(s) for s in verdict.within_noise))
    unmeasured = [k for k, v in verdict.signals.items() if v is None]
    if unmeasured:
        parts.append("unmeasured: " + ", ".join(unmeasured))
    if verdict.disagree:
        parts.append(
            f"signals disagree (the dev loss gained while {', '.join(verdict.fired)} fired): "
            f"the earlier step {verdict.reference_step} is preferred"
        )
    parts.extend(verdict.warnings)
    return "; ".join(parts)


# --------------------------------------------------------------------------- choice


@dataclass(frozen=True)
class Choice:
    step: int | None
    reasons: tuple[str, ...]  # how the candidates were narrowed, in order


def _drop_disagreeing(pool: list[Point], verdicts: Sequence[Verdict]) -> tuple[list[Point], list[str]]:
    """Leave out checkpoints whose signals disagreed, when an earlier candidate remains."""
    by_step = {v.step: v for v in verdicts}
    earliest = min((p.step for p in pool), default=None)
    kept, reasons = [], []
    for p in pool:
        v = by_step.get(p.step)
        if v is not None and v.disagree and p.step != earliest:
            reasons.append(
                f"step {p.step}: signals disagree ({', '.join(v.fired)} fired while the dev loss gained); "
                "an earlier checkpoint is preferred"
            )
        else:
            kept.append(p)
    return kept, reasons


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
            left = [p.step for p in pool if p not in kept]
            reasons.append(f"left out step(s) {', '.join(map(str, left))} judged {'/'.join(rule.exclude)}")
        pool = kept
    else:
        reasons.append(f"every checkpoint is {'/'.join(rule.exclude)}; choosing among all of them")
    pool, why = _drop_disagreeing(pool, verdicts)
    reasons.extend(why)
    dev = dev_metric(history, rule)
    values = [p.get(dev) for p in pool if p.get(dev) is not None]
    if values:
        best = min(values)
        limit = best + abs(best) * rule.within
        pool = [p for p in pool if p.get(dev) is not None and p.get(dev) <= limit]
        reasons.append(f"{dev} within {rule.within:.1%} of the best {best:.4f}: steps {_steps(pool)}")
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
    warned = [v for v in verdicts if v.step == chosen.step and v.warnings]
    if warned:
        reasons.append(f"note: the chosen step carries a warning ({'; '.join(warned[0].warnings)})")
    return Choice(chosen.step, tuple(reasons))


def _steps(pool: Sequence[Point]) -> str:
    return ", ".join(str(p.step) for p in pool)


# --------------------------------------------------------------------------- early stop


def plateau_reached(history: Sequence, rule: Rule = Rule()) -> bool:
    """The trainer's early-stop rule (`train/early_stop.py`) with this rule's `patience` and
    `dev_tolerance`: the last `patience` validation losses gained <= `dev_tolerance` on the best before."""
    return early_stop.plateau_reached(history, rule.patience, rule.dev_tolerance)
