"""batch_tokens: auto picks the largest measured budget under the memory limit (CPU backend)."""

import pytest

from mlxsft.config import recipe_from_dict
from mlxsft.events import BatchTokensChosen, read_events
from mlxsft.model import attach_adapters, load_base, vocab_size
from mlxsft.rundir import RunDir
from mlxsft.train.autobatch import choose_batch_tokens
from mlxsft.train.run import run_training
from mlxsft.train.schedule import build_optimizer
from mlxsft.train.step import build_steps

from .conftest import QUICKSTART_DATA


def test_search_picks_largest_budget_under_limit(tiny_llama):
    recipe = recipe_from_dict({"model": str(tiny_llama), "data": "x"})
    model, *_ = load_base(recipe)
    attach_adapters(model, recipe)
    steps = build_steps(model, build_optimizer(recipe.train, 1), None, packed=False)
    T = 128
    _, probes = choose_batch_tokens(model, steps, T, vocab_size(model), limit_bytes=10**12, max_tokens=16 * T)
    peaks = [p.peak_gb for p in probes]
    assert [p.batch_tokens for p in probes] == [T, 2 * T, 4 * T, 8 * T, 16 * T]
    assert peaks == sorted(peaks) and peaks[-1] > peaks[0]  # memory grows with the budget
    limit = (peaks[2] + peaks[3]) / 2 * 1e9
    chosen, probes = choose_batch_tokens(model, steps, T, vocab_size(model), limit_bytes=int(limit))
    assert chosen == 4 * T
    assert probes[-1].fits is False and all(p.fits for p in probes[:-1])


def test_auto_budget_in_a_run_is_recorded_and_reused_on_resume(tiny_llama, tmp_path):
    recipe = recipe_from_dict(
        {
            "model": str(tiny_llama),
            "data": str(QUICKSTART_DATA),
            "output": str(tmp_path / "run"),
            "train": {
                "iters": 4,
                "batch_tokens": "auto",
                "memory_limit_gb": 0.2,
                "max_seq_length": 128,
                "steps_per_save": 2,
                "steps_per_eval": 0,
            },
        }
    )
    run_training(recipe)
    events = read_events(RunDir(tmp_path / "run").events_file)
    chosen = [e for e in events if isinstance(e, BatchTokensChosen)]
    assert len(chosen) == 1 and chosen[0].batch_tokens % 128 == 0
    fit = [t for t, gb in zip(chosen[0].probed_tokens, chosen[0].probed_peak_gb, strict=True) if gb <= 0.2]
    assert chosen[0].batch_tokens == max(fit)
    assert RunDir(tmp_path / "run").read_meta()["batch_tokens_chosen"] == chosen[0].batch_tokens


def test_auto_is_the_only_word_allowed():
    from mlxsft.errors import RecipeError

    with pytest.raises(RecipeError, match="'auto'"):
        recipe_from_dict({"model": "m", "data": "d", "train": {"batch_tokens": "lots"}})
