"""Packed rows: attention never crosses a packed example, so per-example losses equal solo runs."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxsft.config import recipe_from_dict
from mlxsft.data.batching import collate
from mlxsft.data.masking import TokenizedExample
from mlxsft.model import load_base
from mlxsft.train.step import forward


def example(ids, trained_from=1):
    ids = np.asarray(ids, np.int32)
    trained = np.arange(len(ids)) >= trained_from
    return TokenizedExample(ids=ids, trained=trained, path="x", line=1)


def per_position_loss(model, batch, packed):
    segments = mx.array(batch.segments) if packed else None
    logits = forward(model, mx.array(batch.inputs), segments).astype(mx.float32)
    return np.array(nn.losses.cross_entropy(logits, mx.array(batch.targets), reduction="none"))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen_llama3"])
def test_packed_losses_equal_solo_losses(fixture, request):
    model, *_ = load_base(recipe_from_dict({"model": str(request.getfixturevalue(fixture)), "data": "x"}))
    rng = np.random.default_rng(0)
    examples = [example(rng.integers(3, 300, size=n), trained_from=n // 3) for n in (9, 23, 14)]
    packed = collate(examples, [[0, 1, 2]], pad_id=0)
    assert packed.inputs.shape[0] == 1 and set(np.unique(packed.segments)) == {0, 1, 2, 3}
    packed_loss = per_position_loss(model, packed, packed=True)[0]
    for k in range(len(examples)):
        solo = collate(examples, [[k]], pad_id=0)
        solo_loss = per_position_loss(model, solo, packed=False)[0]
        in_pack = packed.segments[0] == k + 1
        n = int(in_pack.sum())
        np.testing.assert_allclose(packed_loss[in_pack], solo_loss[:n], rtol=2e-4, atol=2e-5)
        np.testing.assert_array_equal(packed.weights[0][in_pack], solo.weights[0][:n])
    # and without the mask, attention leaks across examples: the check above can fail
    leaky = per_position_loss(model, packed, packed=False)[0]
    second = packed.segments[0] == 2
    assert not np.allclose(leaky[second], packed_loss[second], atol=1e-3)
