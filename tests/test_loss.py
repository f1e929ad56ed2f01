"""The step's loss: gathered-head and chunked cross-entropy equal the plain full-logits loss and gradient."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxsft.config import recipe_from_dict
from mlxsft.data.batching import collate
from mlxsft.data.masking import TokenizedExample
from mlxsft.model import attach_adapters, load_base
from mlxsft.train.step import LossPlan, masked_loss, split_head


def batch(packed: bool, seed=0):
    rng = np.random.default_rng(seed)
    examples = []
    for n in (17, 30, 9, 24):
        ids = rng.integers(3, 300, size=n).astype(np.int32)
        trained = np.zeros(n, bool)
        trained[n // 2 :] = True
        examples.append(TokenizedExample(ids=ids, trained=trained, path="x", line=1))
    rows = [[0, 1], [2, 3]] if packed else [[0], [1], [2], [3]]
    return collate(examples, rows, pad_id=0)


def loaded(model_dir, method="lora"):
    recipe = recipe_from_dict({"model": str(model_dir), "data": "x", "method": method})
    model, *_ = load_base(recipe)
    attach_adapters(model, recipe)
    # non-zero adapters (lora_b starts at 0), so the adapter path matters in the gradients
    mx.random.seed(1)
    model.update(nn.utils.tree_map(lambda p: p + 0.01 * mx.random.normal(p.shape), model.trainable_parameters()))
    return model


def loss_and_grads(model, fn, *arrays):
    (loss, ntok), grads = nn.value_and_grad(model, fn)(model, *arrays)
    mx.eval(loss, ntok, grads)
    return loss.item(), ntok.item(), dict(tree_flatten(grads))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("chunk", [10_000, 16])
def test_gathered_and_chunked_loss_match_plain(tiny_llama, packed, method, chunk):
    model = loaded(tiny_llama, method)
    b = batch(packed)
    split = split_head(model)
    assert split is not None
    plain = LossPlan(packed=packed, split=None, chunk_tokens=chunk)
    gathered = LossPlan(packed=packed, split=split, chunk_tokens=chunk)
    want = loss_and_grads(model, plain.loss, *plain.arrays(b))
    got = loss_and_grads(model, gathered.loss, *gathered.arrays(b))
    assert got[1] == want[1] == b.num_trained
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    assert set(got[2]) == set(want[2])
    for name, g in want[2].items():
        np.testing.assert_allclose(np.array(got[2][name]), np.array(g), rtol=1e-4, atol=1e-6, err_msg=name)
    # and the reference function agrees with the plan's full-logits path
    segments = mx.array(b.segments) if packed else None
    ref, _ = masked_loss(model, mx.array(b.inputs), mx.array(b.targets), mx.array(b.weights), segments)
    assert ref.item() == pytest.approx(want[0], rel=1e-6)


def test_split_is_refused_when_the_head_does_something_else(tiny_llama):
    model = loaded(tiny_llama)
    original = type(model).__call__

    class Capped(type(model)):
        def __call__(self, *args, **kwargs):
            return 30 * mx.tanh(original(self, *args, **kwargs) / 30)  # gemma-style soft cap

    model.__class__ = Capped
    assert split_head(model) is None
