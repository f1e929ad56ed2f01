"""Verdict and choice rules on synthetic metric histories (pure functions, known answers)."""

import pytest

from mlxsft.events import EvalFinished
from mlxsft.judge.verdict import (
    OVERSHOOTING,
    PLATEAU,
    STILL_LEARNING,
    Point,
    Rule,
    RuleError,
    choose,
    judge_history,
    plateau_reached,
    rule_from_dict,
)


def history(rows):
    """Points from rows (step, valid, ood, entropy, distinct-2, probe loss, pass@1, pass@k)."""
    names = (
        "valid_loss",
        "ood_loss",
        "entropy",
        "distinct_2",
        "probe_loss",
        "pass_at_1",
        "pass_at_k",
    )
    return [Point(step, dict(zip(names, values, strict=True))) for step, *values in rows]


OVERSHOOT = history(
    [
        (0, 3.00, 3.20, 2.00, 0.90, 2.00, 0.00, 0.00),
        (100, 1.50, 2.00, 1.60, 0.80, 2.05, 0.40, 0.80),
        (200, 1.20, 1.80, 1.40, 0.75, 2.08, 0.55, 0.85),  # best dev
        (
            300,
            1.195,
            1.85,
            1.10,
            0.60,
            2.20,
            0.60,
            0.80,
        ),  # dev flat, OOD worse, diversity falling, probe worse
        (400, 1.25, 2.10, 0.70, 0.45, 2.40, 0.65, 0.70),  # dev worse and everything else too
    ]
)


def test_overshooting_run_is_called_so_and_an_earlier_checkpoint_is_chosen():
    verdicts = judge_history(OVERSHOOT)
    assert [v.verdict for v in verdicts] == [
        "base",
        STILL_LEARNING,
        STILL_LEARNING,
        OVERSHOOTING,
        OVERSHOOTING,
    ]
    last = verdicts[-1]
    assert last.reference_step == 200
    assert last.signals == {
        "dev_rising": True,
        "ood_worsening": True,
        "diversity_falling": True,
        "pass_k_falling": True,
        "regression_worsening": True,
    }
    assert last.numbers["dev_gain"] == pytest.approx((1.20 - 1.25) / 1.20)
    assert last.numbers["entropy_change"] == pytest.approx(0.7 / 1.4 - 1)
    choice = choose(OVERSHOOT, verdicts)
    assert choice.step == 200
    assert any("overshooting" in r for r in choice.reasons)


def test_run_stopped_early_is_still_learning():
    rows = history(
        [
            (0, 3.0, 3.2, 2.0, 0.9, 2.0, 0.0, 0.0),
            (10, 2.5, 2.9, 1.9, 0.9, 2.02, 0.1, 0.3),
            (
                20,
                2.1,
                2.6,
                1.7,
                0.85,
                2.1,
                0.2,
                0.4,
            ),  # diversity and probe move, but dev still falls fast
        ]
    )
    verdicts = judge_history(rows)
    assert [v.verdict for v in verdicts][1:] == [STILL_LEARNING, STILL_LEARNING]
    assert choose(rows, verdicts).step == 20


def test_flat_dev_with_one_signal_is_a_plateau():
    rows = history(
        [
            (0, 3.0, 3.0, 2.0, 0.9, 2.0, 0.0, 0.0),
            (10, 2.0, 2.5, 1.5, 0.8, 2.0, 0.3, 0.5),
            (20, 1.995, 2.4, 1.2, 0.6, 2.01, 0.3, 0.5),  # only diversity falls
        ]
    )
    verdicts = judge_history(rows)
    assert verdicts[-1].verdict == PLATEAU
    assert verdicts[-1].signal_count == 1
    # a stricter rule (one signal suffices) calls it overshooting
    assert judge_history(rows, Rule(min_signals=1))[-1].verdict == OVERSHOOTING


def test_pass_k_falling_needs_pass_1_holding():
    base = (0, 3.0, None, None, None, None, 0.0, 0.0)
    rising_1 = history(
        [
            base,
            (10, 2.0, None, None, None, None, 0.3, 0.9),
            (20, 2.0, None, None, None, None, 0.4, 0.7),
        ]
    )
    assert judge_history(rising_1)[-1].signals["pass_k_falling"] is True
    falling_1 = history(
        [
            base,
            (10, 2.0, None, None, None, None, 0.3, 0.9),
            (20, 2.0, None, None, None, None, 0.2, 0.7),
        ]
    )
    assert judge_history(falling_1)[-1].signals["pass_k_falling"] is False
    # unmeasured signals are None, not False
    assert judge_history(falling_1)[-1].signals["ood_worsening"] is None


def test_choice_prefers_task_metric_among_near_best_dev_then_earliest():
    rows = history(
        [
            (0, 3.0, 3.0, 2.0, 0.9, 2.0, 0.0, 0.0),
            (10, 1.52, 2.0, 1.5, 0.8, 2.0, 0.50, 0.8),
            (20, 1.50, 2.0, 1.5, 0.8, 2.0, 0.40, 0.8),  # best dev
            (30, 1.51, 2.0, 1.5, 0.8, 2.0, 0.50, 0.8),
            (40, 1.60, 2.0, 1.5, 0.8, 2.0, 0.90, 0.9),  # best pass@1, but dev 6.7% worse
        ]
    )
    verdicts = judge_history(rows)
    choice = choose(rows, verdicts)
    assert choice.step == 10  # pass@1 ties 10 and 30 within 1%; the earliest wins
    # step 40's dev loss rose 6.7% past the reference: overshooting, so only chosen when
    # nothing is excluded
    assert verdicts[-1].verdict == OVERSHOOTING and verdicts[-1].signals["dev_rising"]
    assert choose(rows, verdicts, Rule(within=0.1)).step == 10
    assert choose(rows, verdicts, Rule(within=0.1, exclude=())).step == 40
    assert choose(rows, verdicts, Rule(prefer=())).step == 10
    assert choose(rows, verdicts, Rule(within=0.0, prefer=())).step == 20  # best dev alone


def test_dev_metric_falls_back_to_ood_and_fails_without_either():
    rows = [Point(0, {"ood_loss": 3.0}), Point(5, {"ood_loss": 2.0}), Point(10, {"ood_loss": 2.5})]
    verdicts = judge_history(rows)
    assert verdicts[1].verdict == STILL_LEARNING and verdicts[2].numbers["dev_gain"] < 0
    with pytest.raises(RuleError, match="valid_loss or ood_loss"):
        judge_history([Point(0, {"entropy": 1.0}), Point(5, {"entropy": 0.5})])


def test_choose_never_picks_the_base():
    rows = history([(0, 1.0, 1.0, 1.0, 1.0, 1.0, 0, 0), (10, 2.0, 2.0, 0.5, 0.5, 2.0, 0, 0)])
    verdicts = judge_history(rows)
    assert choose(rows, verdicts).step == 10
    assert choose(rows[:1], verdicts[:1]).step is None


def _evals(losses):
    return [
        EvalFinished(
            step=10 * (i + 1),
            split="valid",
            loss=loss,
            perplexity=0.0,
            token_accuracy=0.0,
            num_tokens=1,
            elapsed_s=0.0,
        )
        for i, loss in enumerate(losses)
    ]


def test_plateau_reached_for_early_stopping():
    assert not plateau_reached(_evals([3.0, 2.5, 2.0, 1.6, 1.3]))
    assert plateau_reached(_evals([3.0, 2.0, 1.5, 1.499, 1.51, 1.52]))
    assert not plateau_reached(_evals([3.0, 2.0, 1.5]))  # too few evaluations for patience 3
    assert not plateau_reached(_evals([3.0, 2.0, 1.5, 1.6, 1.6, 1.4]))  # a late gain
    assert plateau_reached(_evals([3.0, 2.0, 1.5, 1.49, 1.48]), Rule(patience=2, dev_tolerance=0.02))
    # dicts and other splits work too
    records = [{"loss": v} for v in (3.0, 2.0, 2.0, 2.0, 2.0)] + [{"split": "test", "loss": 0.1}]
    assert plateau_reached(records)


def test_rule_from_dict_checks_keys_and_values():
    rule = rule_from_dict({"within": 0.05, "prefer": "ood_loss:min, pass_at_k:max", "min_signals": 3})
    assert rule.within == 0.05 and rule.prefer == ("ood_loss:min", "pass_at_k:max") and rule.min_signals == 3
    for bad, message in [
        ({"withn": 1}, "unknown rule key"),
        ({"within": "x"}, "must be a number"),
        ({"exclude": ["bad"]}, "not a verdict"),
        ({"prefer": ["pass_at_1"]}, "METRIC:max"),
        ({"min_signals": 0}, "at least 1"),
    ]:
        with pytest.raises(RuleError, match=message):
            rule_from_dict(bad)
