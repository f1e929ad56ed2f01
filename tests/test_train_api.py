"""Training as prepared state plus a function: `prepare`, `take_step`, `train(..., loss=, batches=)`."""

import dataclasses

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlxsft.events import Emitter, RunFinished, StepReported
from mlxsft.rundir import RunDir
from mlxsft.train.checkpoint import TrainerState
from mlxsft.train.loop import StopFlag, take_step, train
from mlxsft.train.prepare import prepare

from .test_train import make_recipe


def _weights(model) -> dict:
    return {k: mx.array(v) for k, v in tree_flatten(model.trainable_parameters())}


def test_prepare_is_frozen_and_writes_nothing(tiny_llama, tmp_path):
    recipe = make_recipe(tiny_llama, tmp_path / "run", iters=4)
    prepared = prepare(recipe, RunDir(tmp_path / "run"))
    try:
        assert not (tmp_path / "run").exists()  # a recipe typo must not leave a run folder behind
        assert prepared.total_steps == 4 and prepared.start == TrainerState()
        with pytest.raises(dataclasses.FrozenInstanceError):
            prepared.total_steps = 5
    finally:
        prepared.restore_ops()


def test_take_step_returns_its_statistics(tiny_llama, tmp_path):
    prepared = prepare(make_recipe(tiny_llama, tmp_path / "run", iters=4, grad_accumulation=2), RunDir(tmp_path / "r"))
    try:
        first, second = prepared.train_src.batch(0, 0), prepared.train_src.batch(0, 1)
        state = TrainerState()
        stats = take_step(prepared, state)
        assert (state.epoch, state.cursor) == (0, 2)  # two micro-batches consumed
        assert stats.tokens == first.num_tokens + second.num_tokens
        assert stats.trained == first.num_trained + second.num_trained
        assert stats.positions == first.inputs.size + second.inputs.size
        assert stats.ntok.item() == stats.trained and stats.loss_sum.item() > 0
    finally:
        prepared.restore_ops()


class _ZeroLoss:
    """The default loss times zero: gradients vanish, so Adam leaves the weights where they are."""

    def __init__(self, plan):
        self.plan, self.calls = plan, 0

    def arrays(self, batch):
        self.calls += 1
        return self.plan.arrays(batch)

    def loss(self, model, *arrays):
        loss_sum, ntok = self.plan.loss(model, *arrays)
        return loss_sum * 0.0, ntok

    def metrics(self, model, *arrays):
        return self.plan.metrics(model, *arrays)


class _FirstBatchOnly:
    """A batch stream that repeats batch 0 and counts what it hands out."""

    def __init__(self, src):
        self.src, self.served = src, []

    def batch(self, epoch, index, world=None):
        self.served.append((epoch, index))
        return self.src.batch(0, 0, world)

    def batches_per_epoch(self):
        return 3


def test_train_takes_a_loss_and_a_batch_stream(tiny_llama, tmp_path):
    recipe = make_recipe(
        tiny_llama, tmp_path / "run", iters=5, steps_per_report=1, steps_per_eval=0, steps_per_save=100
    )
    prepared = prepare(recipe, RunDir(tmp_path / "run"))
    try:
        prepared.run.create(prepared.recipe)
        before = _weights(prepared.model)
        events = []
        loss, batches = _ZeroLoss(prepared.steps.plan), _FirstBatchOnly(prepared.train_src)
        outcome = train(prepared, Emitter([events.append]), StopFlag(), loss=loss, batches=batches)
        assert outcome.status == "finished" and outcome.state.step == 5
        assert prepared.start.step == 0  # train worked on a copy of the prepared start
        # the stream was read in order, wrapping to the next epoch after 3 batches
        assert batches.served == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
        assert loss.calls >= 5  # every step's arguments came through the plugged-in loss
        reports = [e for e in events if isinstance(e, StepReported)]
        assert [e.step for e in reports] == [1, 2, 3, 4, 5] and all(e.loss == 0.0 for e in reports)
        after = _weights(prepared.model)
        assert all(mx.array_equal(before[k], after[k]).item() for k in before)
        assert isinstance(events[-1], RunFinished) and events[-1].step == 5
    finally:
        prepared.restore_ops()


def test_train_with_the_default_loss_moves_the_weights(tiny_llama, tmp_path):
    """The counterpart of the zero-loss run: the same setup with the default loss changes the adapters."""
    recipe = make_recipe(tiny_llama, tmp_path / "run", iters=2, steps_per_eval=0, steps_per_save=100)
    prepared = prepare(recipe, RunDir(tmp_path / "run"))
    try:
        prepared.run.create(prepared.recipe)
        before = _weights(prepared.model)
        train(prepared, Emitter([]), StopFlag())
        after = _weights(prepared.model)
        assert not all(mx.array_equal(before[k], after[k]).item() for k in before)
    finally:
        prepared.restore_ops()
