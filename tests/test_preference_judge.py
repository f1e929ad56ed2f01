"""The judge on preference runs: the likelihood-collapse flag, the checkpoint choice, and recipe errors."""

import pytest

from mlxsft.config import load_recipe
from mlxsft.errors import RecipeError
from mlxsft.judge.preference import choose_preference
from mlxsft.train.collapse import PrefPoint, collapse_warning, flagged_steps


def history(margins, logps, accs=None, ppls=None):
    accs = accs or [0.9] * len(margins)
    ppls = ppls or [2.0] * len(margins)
    rows = zip(margins, logps, accs, ppls, strict=True)
    return [PrefPoint(10 * (i + 1), a, m, lp, p) for i, (m, lp, a, p) in enumerate(rows)]


def test_margin_growing_while_chosen_logprob_falls_is_flagged():
    h = history([0.5, 1.0, 1.5, 2.5], [-10.0, -11.0, -13.0, -16.0])
    warning = collapse_warning(h)
    assert warning and "likelihood collapse" in warning and "-10.00 to -16.00" in warning
    assert flagged_steps(h) == {40}


@pytest.mark.parametrize(
    "margins, logps",
    [
        ([0.5, 1.0, 1.5, 2.5], [-10.0, -9.5, -9.0, -8.0]),  # healthy: chosen rises with the margin
        ([0.5, 1.0, 0.9, 2.5], [-10.0, -11.0, -13.0, -16.0]),  # the margin did not keep growing
        ([0.5, 1.0, 1.5, 2.5], [-10.0, -10.1, -10.2, -10.3]),  # a fall inside the tolerance
        ([0.5, 1.0, 1.5], [-10.0, -11.0, -13.0]),  # too few passes to say
    ],
)
def test_no_flag_without_the_whole_pattern(margins, logps):
    assert collapse_warning(history(margins, logps)) is None


def test_choice_prefers_accuracy_then_margin_then_chosen_perplexity_and_skips_collapse():
    h = history(
        margins=[0.4, 0.8, 1.2, 1.6, 3.0],
        logps=[-10.0, -9.0, -9.5, -12.0, -20.0],
        accs=[0.70, 0.95, 0.95, 0.95, 0.96],
        ppls=[3.0, 2.5, 2.2, 2.0, 9.0],
    )
    assert flagged_steps(h) == {50}  # highest accuracy and margin, but collapsing
    step, reasons = choose_preference(h)
    assert step == 40, reasons  # 20-40 tie on accuracy; 40 has the largest margin
    # a tie on accuracy and margin goes to the lower chosen-reply perplexity, then the earlier step
    assert choose_preference(history([0.8, 0.8], [-9.0, -9.0], ppls=[2.5, 2.0]))[0] == 20
    assert choose_preference(history([0.8, 0.8], [-9.0, -9.0], ppls=[2.0, 2.0]))[0] == 10
    assert choose_preference([])[0] is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("preference.beta=0", "preference.beta"),
        ("preference.label_smoothing=0.5", "preference.label_smoothing"),
        ("preference.loss_type=hinge", "preference.loss_type"),
        ("objective=kto", "objective"),
    ],
)
def test_bad_preference_settings_name_the_key(tmp_path, override, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(None, ["model=m", "data=d", override])


def test_packing_is_refused_for_pairs():
    with pytest.raises(RecipeError, match="train.pack"):
        load_recipe(None, ["model=m", "data=d", "objective=dpo", "train.pack=true"])
