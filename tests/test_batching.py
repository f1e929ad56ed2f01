"""Batch plans (length sorting, budgets, packing, determinism) and collated arrays."""

import numpy as np
import pytest

from mlxsft.data.batching import (
    collate,
    count_batches,
    padding_waste,
    plan_batches,
    plan_padding_waste,
)
from mlxsft.data.formats import Example
from mlxsft.data.masking import TokenizedExample, tokenize_dataset

PAD = 0
PLAN_KW = dict(batch_size=8, batch_tokens=None, max_seq_length=1024, pack=False, shuffle=True, seed=0)


def varied_lengths(n=2000, seed=0, high=1024) -> list[int]:
    """Log-normal lengths between 8 and `high`: many short rows, a long tail."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=5.0, sigma=0.8, size=n), 8, high).astype(int).tolist()


def fake_examples(lengths) -> list[TokenizedExample]:
    """ids encode (example, position) as 1000 * (example + 1) + position; odd positions trained."""
    out = []
    for i, n in enumerate(lengths):
        ids = (1000 * (i + 1) + np.arange(n)).astype(np.int32)
        trained = np.arange(n) % 2 == 1
        out.append(TokenizedExample(ids, trained, "f.jsonl", i + 1))
    return out


def plan(lengths, **kw):
    return plan_batches(lengths, **(PLAN_KW | kw))


def flat(batches) -> list[int]:
    return sorted(i for batch in batches for row in batch for i in row)


# --- length sorting -----------------------------------------------------------------


def test_length_sorting_lowers_padding_waste():
    lengths = varied_lengths()
    sorted_plan = plan(lengths)
    rng = np.random.default_rng(1)
    random_order = rng.permutation(len(lengths)).tolist()
    random_plan = [[[i] for i in random_order[k : k + 8]] for k in range(0, len(lengths), 8)]
    sorted_waste = plan_padding_waste(lengths, sorted_plan)
    random_waste = plan_padding_waste(lengths, random_plan)
    assert random_waste > 0.4  # what unsorted batches of this distribution waste
    assert sorted_waste < 0.05
    assert flat(sorted_plan) == list(range(len(lengths)))


def test_plan_waste_matches_collated_batches():
    lengths = varied_lengths(n=200, high=300)
    examples = fake_examples(lengths)
    batches = plan(lengths, batch_size=4)
    collated = [collate(examples, rows, PAD) for rows in batches]
    assert padding_waste(collated) == pytest.approx(plan_padding_waste(lengths, batches))


def test_unshuffled_plan_is_in_increasing_length():
    lengths = [50, 10, 40, 20, 30, 60]
    batches = plan(lengths, batch_size=2, shuffle=False)
    assert batches == [[[1], [3]], [[4], [2]], [[0], [5]]]


# --- caps ---------------------------------------------------------------------------


def test_token_budget_is_respected():
    lengths = varied_lengths(high=512)
    examples = fake_examples(lengths)
    budget = 2048
    batches = plan(lengths, batch_size=None, batch_tokens=budget, max_seq_length=512)
    assert flat(batches) == list(range(len(lengths)))
    for rows in batches:
        batch = collate(examples, rows, PAD)
        assert batch.inputs.size <= budget  # rows x padded length
    # The budget is used: short rows get many per batch.
    assert max(len(rows) for rows in batches) > 8


def test_batch_size_and_token_budget_together():
    lengths = varied_lengths(high=512)
    batches = plan(lengths, batch_size=6, batch_tokens=2048, max_seq_length=512)
    examples = fake_examples(lengths)
    assert all(len(rows) <= 6 for rows in batches)
    assert all(collate(examples, rows, PAD).inputs.size <= 2048 for rows in batches)
    kw = PLAN_KW | dict(batch_size=6, batch_tokens=2048, max_seq_length=512)
    assert count_batches(lengths, **kw) == len(batches)


def test_fixed_batch_size_keeps_every_row():
    batches = plan(list(range(2, 23)), batch_size=4)
    assert sorted(len(rows) for rows in batches) == [1, 4, 4, 4, 4, 4]
    assert flat(batches) == list(range(21))


def test_needs_a_cap():
    with pytest.raises(ValueError):
        plan([3, 4], batch_size=None, batch_tokens=None)


# --- determinism --------------------------------------------------------------------


def test_same_seed_same_plan_other_seed_other_order():
    lengths = varied_lengths(n=500)
    a, b = plan(lengths, seed=3), plan(lengths, seed=3)
    c = plan(lengths, seed=4)
    assert a == b
    assert a != c
    assert flat(a) == flat(c)
    # Shuffling reorders batches, it does not mix lengths: each batch stays homogeneous.
    assert plan_padding_waste(lengths, c) < 0.1


# --- packing ------------------------------------------------------------------------


def test_packing_fills_rows_within_max_seq_length():
    lengths = varied_lengths(n=600, high=256)
    batches = plan(lengths, pack=True, max_seq_length=256, batch_size=4)
    rows = [row for batch in batches for row in batch]
    assert flat(batches) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 256 for row in rows)
    assert any(len(row) > 1 for row in rows)
    lower_bound = -(-sum(lengths) // 256)
    assert len(rows) <= 1.05 * lower_bound + 1  # best-fit decreasing is near optimal


def test_packed_targets_never_cross_a_segment():
    lengths = [5, 9, 3, 14, 7, 2, 11, 6]
    examples = fake_examples(lengths)
    batches = plan(lengths, pack=True, max_seq_length=16, batch_size=2)
    for rows in batches:
        batch = collate(examples, rows, PAD)
        B, T = batch.inputs.shape
        assert T % 8 == 0
        real = batch.segments > 0
        # Same example on both sides of every (input, target) pair.
        assert np.array_equal(batch.inputs[real] // 1000, batch.targets[real] // 1000)
        assert np.array_equal(batch.targets[real] - batch.inputs[real], np.ones(real.sum()))
        assert not batch.weights[~real].any() and (batch.inputs[~real] == PAD).all()
        for b, row in enumerate(rows):
            # Segment k holds example row[k-1], in order, with L - 1 positions each.
            seg = batch.segments[b][real[b]]
            expected = np.concatenate([np.full(lengths[i] - 1, k + 1) for k, i in enumerate(row)])
            assert np.array_equal(seg, expected)
        assert batch.num_sequences == sum(len(row) for row in rows)
        assert batch.num_tokens == sum(lengths[i] - 1 for row in rows for i in row)


def test_packed_budget_counts_rows_not_examples():
    lengths = [4] * 40
    batches = plan(lengths, pack=True, max_seq_length=32, batch_size=None, batch_tokens=64)
    examples = fake_examples(lengths)
    for rows in batches:
        assert collate(examples, rows, PAD).inputs.size <= 64
        assert all(len(row) == 8 for row in rows)  # 8 x 4 ids = 32


# --- collate ------------------------------------------------------------------------


def test_collate_shifts_pads_and_weights():
    examples = fake_examples([5, 3])
    batch = collate(examples, [[0], [1]], pad_id=PAD)
    ids0, ids1 = examples[0].ids, examples[1].ids
    assert batch.inputs.shape == (2, 8) and batch.inputs.dtype == np.int32
    assert batch.inputs[0].tolist() == ids0[:-1].tolist() + [PAD] * 4
    assert batch.targets[0].tolist() == ids0[1:].tolist() + [PAD] * 4
    assert batch.inputs[1].tolist() == ids1[:-1].tolist() + [PAD] * 6
    # trained = odd positions of ids -> targets at positions 0 and 2 of the inputs.
    assert batch.weights.dtype == np.float32
    assert batch.weights[0].tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
    assert batch.weights[1].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert batch.segments.tolist() == [[1] * 4 + [0] * 4, [1] * 2 + [0] * 6]
    assert (batch.num_sequences, batch.num_tokens, batch.num_trained) == (2, 6, 3)


def test_collate_pad_to_multiple():
    examples = fake_examples([18])
    assert collate(examples, [[0]], PAD, pad_to_multiple=16).inputs.shape == (1, 32)
    assert collate(examples, [[0]], PAD, pad_to_multiple=1).inputs.shape == (1, 17)


def test_batches_from_real_tokenized_rows(data_tokenizers):
    tok = data_tokenizers["chatml"]
    rows = [
        Example(kind="completion", prompt="What is the capital of France?", completion=" Paris"),
        Example(kind="completion", prompt="2 3", completion=" 4 5 6 7 8 9"),
        Example(kind="text", text="hello world thanks please"),
    ]
    ds = tokenize_dataset(rows, tok, mask="assistant", max_seq_length=64)
    lengths = [len(ex.ids) for ex in ds.examples]
    batches = plan(lengths, pack=True, max_seq_length=64, batch_size=1)
    batch = collate(ds.examples, batches[0], tok.eos_token_id)
    assert batch.num_sequences == 3
    assert batch.num_trained == sum(int(ex.trained[1:].sum()) for ex in ds.examples)
