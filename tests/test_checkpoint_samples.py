"""Samples at each checkpoint: the same validation prompts answered greedily, without touching training."""

from __future__ import annotations

from mlxsft.events import SamplesGenerated, StdoutSink, StepReported, read_events
from mlxsft.judge.samples import checkpoint_samples
from mlxsft.rundir import RunDir
from mlxsft.train.run import run_training

from .test_train import make_recipe


def events_of(run_dir):
    return read_events(RunDir(run_dir).events_file)


def test_each_checkpoint_answers_the_same_prompts_and_training_is_unchanged(tiny_llama, tmp_path):
    settings = {"iters": 6, "steps_per_save": 3, "steps_per_eval": 3, "steps_per_report": 1}
    with_samples = run_training(
        make_recipe(tiny_llama, tmp_path / "a", **settings),
        on_checkpoint=checkpoint_samples(num_prompts=2, max_tokens=8),
    )
    plain = run_training(make_recipe(tiny_llama, tmp_path / "b", **settings))
    samples = [e for e in events_of(with_samples.run_dir) if isinstance(e, SamplesGenerated)]
    assert [s.step for s in samples] == [3, 6]
    assert samples[0].prompts == samples[1].prompts and len(samples[0].prompts) == 2
    assert all(isinstance(c, str) for s in samples for c in s.completions)
    # the row's last user turn, as people know it (the system prompt is rendered, not shown)
    assert samples[0].prompts[0] == "Omar, 62, from Seoul."
    assert "step 3  samples:\n  Omar, 62, from Seoul. -> " in StdoutSink.format(samples[0])

    def losses(run):
        return [e.loss for e in events_of(run.run_dir) if isinstance(e, StepReported)]

    assert losses(with_samples) == losses(plain)  # greedy decoding draws nothing from the training RNG
