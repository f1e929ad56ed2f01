"""The verdict's noise model on the issue's planted histories (pure: per-row values, no model).

Each case is a history of checkpoints with the per-row values `mlxsft eval` stores
(summed NLL and tokens per validation/OOD/probe row, per-prompt pass values), built
so that the aggregate numbers are the ones reported in the issue.
"""

import numpy as np
import pytest

from mlxsft.judge.noise import beyond_noise, change_se
from mlxsft.judge.report import format_verdicts
from mlxsft.judge.verdict import (
    OVERSHOOTING,
    PLATEAU,
    STILL_LEARNING,
    Point,
    Rule,
    choose,
    explain,
    judge_history,
)

ROWS = 50


def loss_rows(mean: float, spread: float, seed: int, tokens: int = 20, base: np.ndarray | None = None):
    """Per-row (nll sum, tokens) whose token-weighted loss is exactly `mean`.

    `base`: per-row losses to perturb (paired rows: the same row is easy or hard at
    every checkpoint); `spread`: the relative per-row scatter of this checkpoint's change.
    """
    rng = np.random.default_rng(seed)
    per_row = base if base is not None else rng.gamma(4.0, 0.25, ROWS)
    per_row = per_row * (1 + spread * rng.standard_normal(ROWS))
    per_row = per_row * mean / per_row.mean()
    return {"nll": list(per_row * tokens), "tokens": [tokens] * ROWS}, per_row


def point(step, valid, ood, probe, pass_k, pass_1, rows):
    metrics = {"valid_loss": valid, "ood_loss": ood, "probe_loss": probe, "pass_at_k": pass_k, "pass_at_1": pass_1}
    return Point(step, metrics, rows)


def pass_rows(p1, pk, n=8):
    return {"pass_at_1": [p1] * n, "pass_at_k": [pk] * n}


def history(spread_at_late: float):
    """base -> 100 (a real gain) -> 200: +1.8% validation gain, OOD +10.6%, pass@k down, probe +2.3%."""
    _, shape = loss_rows(1.0, 0.0, 1)
    v0, _ = loss_rows(3.0, 0.05, 2, base=shape)
    v1, s1 = loss_rows(1.50, 0.05, 3, base=shape)
    v2, _ = loss_rows(1.50 * (1 - 0.018), spread_at_late, 4, base=s1)
    o0, oshape = loss_rows(3.2, 0.05, 5)
    o1, os1 = loss_rows(2.00, 0.05, 6, base=oshape)
    o2, _ = loss_rows(2.00 * 1.106, 0.02, 7, base=os1)
    p0, pshape = loss_rows(2.0, 0.0, 8)
    p1, ps1 = loss_rows(2.05, 0.01, 9, base=pshape)
    p2, _ = loss_rows(2.05 * 1.023, 0.005, 10, base=ps1)
    return [
        point(0, 3.0, 3.2, 2.0, 0.0, 0.0, {"valid": v0, "ood": o0, "probes": p0, "prompts": pass_rows(0.0, 0.0)}),
        point(100, 1.5, 2.0, 2.05, 0.8, 0.4, {"valid": v1, "ood": o1, "probes": p1, "prompts": pass_rows(0.4, 0.8)}),
        point(
            200,
            1.5 * (1 - 0.018),
            2.0 * 1.106,
            2.05 * 1.023,
            0.55,
            0.45,
            {"valid": v2, "ood": o2, "probes": p2, "prompts": {"pass_at_1": [0.45] * 8, "pass_at_k": [0.3, 0.8] * 4}},
        ),
    ]


def test_bootstrap_se_is_paired_and_shrinks_with_agreeing_rows():
    _, shape = loss_rows(1.0, 0.0, 1)
    old, s = loss_rows(2.0, 0.0, 2, base=shape)
    noisy, _ = loss_rows(1.96, 0.10, 3, base=s)
    steady, _ = loss_rows(1.96, 0.001, 3, base=s)
    se_noisy = change_se({"valid": noisy}, {"valid": old}, "valid_loss", relative=True)
    se_steady = change_se({"valid": steady}, {"valid": old}, "valid_loss", relative=True)
    # 10% per-row scatter over 50 rows: about 0.1 / sqrt(50) = 1.4% standard error
    assert 0.008 < se_noisy < 0.025
    assert se_steady < 0.001
    assert beyond_noise(-0.02, se_noisy, 2.0) is False and beyond_noise(-0.02, se_steady, 2.0) is True
    # different rows (token counts differ) cannot be paired: no estimate
    other = {"nll": noisy["nll"], "tokens": [21] * ROWS}
    assert change_se({"valid": other}, {"valid": old}, "valid_loss", relative=True) is None


def test_noisy_validation_gain_does_not_beat_three_overshoot_signals():
    """Issue case 1: +1.8% on a noisy 50-row validation set, while OOD, pass@k and the probe fire."""
    hist = history(spread_at_late=0.15)
    verdicts = judge_history(hist)
    last = verdicts[-1]
    assert last.numbers["dev_gain"] == pytest.approx(0.018, abs=1e-6)
    assert last.numbers["dev_gain_se"] > 0.009  # 2 SE > 1.8%: within noise
    assert "dev_gain" in last.within_noise
    assert set(last.fired) == {"ood_worsening", "pass_k_falling", "regression_worsening"}
    assert last.verdict == OVERSHOOTING
    # without the noise model the gain counts, and the disagreement still rules step 200 out
    assert judge_history(hist, Rule(noise_z=0.0))[-1].disagree
    choice = choose(hist, verdicts)
    assert choice.step == 100
    assert "within noise: dev_gain" in explain(last)


def test_a_gain_beyond_noise_that_other_signals_contradict_prefers_the_earlier_checkpoint():
    """The same numbers with a steady validation set: the gain is real, the signals disagree."""
    hist = history(spread_at_late=0.002)
    last = judge_history(hist)[-1]
    assert "dev_gain" not in last.within_noise
    assert last.disagree and last.verdict == OVERSHOOTING
    assert "signals disagree" in explain(last) and "step 100 is preferred" in explain(last)
    # even a rule that chooses among overshooting checkpoints prefers the earlier one
    choice = choose(hist, judge_history(hist), Rule(exclude=()))
    assert choice.step == 100
    assert any("signals disagree" in r for r in choice.reasons)


def test_rising_validation_loss_is_overshooting_not_plateau():
    """Issue case 2: validation loss 25% worse than the reference, nothing else measured."""
    _, shape = loss_rows(1.0, 0.0, 1)
    v0, _ = loss_rows(3.0, 0.05, 2, base=shape)
    v1, s1 = loss_rows(1.5, 0.05, 3, base=shape)
    v2, _ = loss_rows(1.5 * 1.25, 0.3, 4, base=s1)
    hist = [Point(0, {"valid_loss": 3.0}, {"valid": v0}), Point(10, {"valid_loss": 1.5}, {"valid": v1})]
    hist.append(Point(20, {"valid_loss": 1.5 * 1.25}, {"valid": v2}))
    verdicts = judge_history(hist)
    assert verdicts[-1].verdict == OVERSHOOTING and verdicts[-1].signals["dev_rising"] is True
    assert choose(hist, verdicts).step == 10
    # a rise inside the noise is no signal: plateau
    v3, _ = loss_rows(1.5 * 1.02, 0.3, 4, base=s1)
    flat = hist[:2] + [Point(20, {"valid_loss": 1.5 * 1.02}, {"valid": v3})]
    last = judge_history(flat)[-1]
    assert last.verdict == PLATEAU and last.within_noise == ("dev_gain",)


def test_forgetting_against_the_base_warns_past_a_settable_threshold():
    """Issue case 3: every step gains on validation, but general text is 19% worse than the base."""
    _, shape = loss_rows(1.0, 0.0, 1)
    v = [loss_rows(m, 0.01, 10 + i, base=shape)[0] for i, m in enumerate((3.0, 2.0, 1.6))]
    p = [loss_rows(m, 0.01, 20 + i, base=shape)[0] for i, m in enumerate((2.0, 2.09, 2.38))]
    hist = [
        Point(
            s,
            {"valid_loss": vl, "probe_loss": pl, "probe_kl": kl},
            {"valid": vr, "probes": pr | {"kl": [kl] * ROWS}},
        )
        for s, vl, pl, kl, vr, pr in zip(
            (0, 10, 20), (3.0, 2.0, 1.6), (2.0, 2.09, 2.38), (0.0, 0.1, 0.3), v, p, strict=True
        )
    ]
    verdicts = judge_history(hist)
    assert [v.verdict for v in verdicts[1:]] == [STILL_LEARNING, STILL_LEARNING]
    assert verdicts[1].warnings == ()  # +4.5%: under the threshold
    assert verdicts[2].numbers["probe_loss_vs_base"] == pytest.approx(0.19)
    assert "forgetting" in verdicts[2].warnings[0] and "+19.0%" in verdicts[2].warnings[0]
    choice = choose(hist, verdicts)
    assert choice.step == 20 and any("warning" in r for r in choice.reasons)
    # the threshold is the user's
    assert judge_history(hist, Rule(forgetting_threshold=0.25))[2].warnings == ()
    assert judge_history(hist, Rule(forgetting_threshold=0.01))[1].warnings != ()
    text = format_verdicts(verdicts, choice, Rule(), False)
    assert "WARNING step 20: forgetting" in text and "probe/base" in text and "+19.0%" in text
