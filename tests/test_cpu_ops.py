"""Fast CPU ops: same function and gradients as MLX's own softmax, SwiGLU and attention."""

import dataclasses

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxsft.config import recipe_from_dict
from mlxsft.model import attach_adapters, load_base
from mlxsft.rundir import RunDir
from mlxsft.train.cpu_ops import enable_fast_cpu_ops, fast_cross_entropy, fast_exp, fast_softmax, fast_swiglu
from mlxsft.train.prepare import prepare
from mlxsft.train.step import LossPlan, split_head, stock_cross_entropy

from .test_loss import batch
from .test_train import make_recipe


def test_fast_exp_matches_exp():
    x = mx.linspace(-80, 80, 100_001)
    rel = mx.abs(fast_exp(x) - mx.exp(x)) / mx.exp(x)
    assert rel.max().item() < 2e-5
    assert fast_exp(mx.array([-1000.0])).item() == 0.0  # underflows to exactly 0, no garbage
    big = np.array(fast_exp(mx.array([88.0, 89.0, 100.0, 1e9, float("inf")])))
    assert np.isclose(big[0], np.exp(np.float32(88.0)), rtol=2e-5) and np.isposinf(big[1:]).all()  # overflow: +inf
    assert np.isnan(np.array(fast_exp(mx.array([float("nan")])))).all()
    # a very negative gate: silu(gate) * x is ~0, as MLX's own (the overflowing exp once gave garbage)
    gate, up = mx.array([-100.0, -1000.0, 100.0]), mx.array([1.0, 1.0, 1.0])
    np.testing.assert_allclose(fast_swiglu(gate, up), nn.silu(gate) * up, atol=1e-6)
    grads = mx.grad(lambda a: fast_swiglu(a, up).sum())(gate)
    np.testing.assert_allclose(grads, mx.grad(lambda a: (nn.silu(a) * up).sum())(gate), atol=1e-6)


def test_fast_ops_never_make_denormals():
    # x86 runs arithmetic on denormal floats ~10x slower: a masked score that became a tiny
    # probability instead of 0 made every P @ V in attention (and its backward) crawl.
    tiny = float(np.finfo(np.float32).tiny)  # smallest normal float32
    x = mx.concatenate([mx.linspace(-1000, -80, 10_001), mx.array([-1e9, -float("inf")])])
    e = np.array(fast_exp(x))
    assert not ((e > 0) & (e < tiny)).any()
    scores = mx.random.normal((2, 3, 16, 16))
    keep = mx.tril(mx.ones((16, 16), dtype=mx.bool_))
    p = np.array(fast_softmax(mx.where(keep, scores, -1e9)))
    assert (p[..., ~np.tril(np.ones((16, 16), bool))] == 0).all()
    assert not ((p > 0) & (p < tiny)).any()


def test_fast_softmax_and_swiglu_values_and_gradients():
    mx.random.seed(0)
    x = mx.random.normal((4, 7, 33)) * 5
    g = mx.random.normal(x.shape)
    np.testing.assert_allclose(fast_softmax(x), mx.softmax(x, axis=-1), rtol=1e-4, atol=1e-7)
    grad_fast = mx.grad(lambda a: (fast_softmax(a) * g).sum())(x)
    grad_ref = mx.grad(lambda a: (mx.softmax(a, axis=-1) * g).sum())(x)
    np.testing.assert_allclose(grad_fast, grad_ref, rtol=1e-3, atol=1e-6)
    gate, up = mx.random.normal((64, 48)) * 4, mx.random.normal((64, 48))
    np.testing.assert_allclose(fast_swiglu(gate, up), nn.silu(gate) * up, rtol=1e-4, atol=1e-6)
    w = mx.random.normal(gate.shape)
    fast = mx.grad(lambda a, b: (fast_swiglu(a, b) * w).sum(), argnums=(0, 1))(gate, up)
    ref = mx.grad(lambda a, b: (nn.silu(a) * b * w).sum(), argnums=(0, 1))(gate, up)
    for f, r in zip(fast, ref, strict=True):
        np.testing.assert_allclose(f, r, rtol=1e-3, atol=1e-5)


def test_fast_cross_entropy_values_and_gradients():
    mx.random.seed(3)
    logits = mx.random.normal((2, 5, 1000)) * 8  # a peaked softmax, as a trained head gives
    logits = logits.at[0, 0, 7].add(60.0)  # one near-certain token: its loss is ~0
    targets = mx.random.randint(0, 1000, (2, 5))
    targets = targets.at[0, 0].add(7 - targets[0, 0])
    np.testing.assert_allclose(
        fast_cross_entropy(logits, targets), stock_cross_entropy(logits, targets), rtol=1e-4, atol=1e-5
    )
    w = mx.random.uniform(shape=targets.shape)
    fast = mx.grad(lambda a: (fast_cross_entropy(a, targets) * w).sum())(logits)
    ref = mx.grad(lambda a: (stock_cross_entropy(a, targets) * w).sum())(logits)
    np.testing.assert_allclose(fast, ref, rtol=1e-3, atol=1e-6)
    compiled = mx.compile(mx.grad(lambda a: (fast_cross_entropy(a, targets) * w).sum()))
    np.testing.assert_allclose(compiled(logits), ref, rtol=1e-3, atol=1e-6)


def test_prepare_uses_the_fast_cross_entropy_only_with_fast_ops_on_cpu(tiny_llama, tmp_path):
    for fast in (True, False):
        recipe = make_recipe(tiny_llama, tmp_path / "run", iters=2)
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, fast_cpu_ops=fast))
        prepared = prepare(recipe, RunDir(tmp_path / f"run-{fast}"))
        try:
            want = fast_cross_entropy if fast and mx.default_device() == mx.cpu else stock_cross_entropy
            assert prepared.steps.plan.cross_entropy is want
        finally:
            prepared.restore_ops()


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen_llama3"])
def test_model_loss_and_gradients_match_with_fast_ops(fixture, packed, request):
    recipe = recipe_from_dict({"model": str(request.getfixturevalue(fixture)), "data": "x"})
    model, *_ = load_base(recipe)
    attach_adapters(model, recipe)
    mx.random.seed(1)
    model.update(nn.utils.tree_map(lambda p: p + 0.01 * mx.random.normal(p.shape), model.trainable_parameters()))
    plan = LossPlan(packed=packed, split=split_head(model), chunk_tokens=10_000)
    arrays = plan.arrays(batch(packed))

    def run():
        (loss, _), grads = nn.value_and_grad(model, plan.loss)(model, *arrays)
        mx.eval(loss, grads)
        return loss.item(), dict(tree_flatten(grads))

    want = run()
    restore = enable_fast_cpu_ops(model)
    try:
        module = __import__(type(model).__module__, fromlist=["x"])
        assert module.swiglu is fast_swiglu  # really swapped in (the check passed)
        plan = dataclasses.replace(plan, cross_entropy=fast_cross_entropy)
        got = run()
    finally:
        restore()
    assert module.swiglu is not fast_swiglu
    assert got[0] == pytest.approx(want[0], rel=1e-4)
    for name, g in want[1].items():
        np.testing.assert_allclose(np.array(got[1][name]), np.array(g), rtol=2e-3, atol=1e-5, err_msg=name)
