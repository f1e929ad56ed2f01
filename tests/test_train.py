"""End-to-end training on tiny local models: every method learns, events and run dir are complete."""

import json

import mlx.core as mx
import pytest

from mlxsft.config import recipe_from_dict
from mlxsft.errors import DataError, MlxsftError
from mlxsft.events import CheckpointSaved, EvalFinished, RunFinished, StepReported, read_events
from mlxsft.rundir import RunDir
from mlxsft.train.run import run_training

from .conftest import QUICKSTART_DATA, write_jsonl


def make_recipe(model, out, **train):
    settings = {
        "iters": 30,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "max_seq_length": 128,
        "steps_per_report": 5,
        "steps_per_eval": 15,
        "steps_per_save": 15,
        "warmup_steps": 3,
    }
    settings.update(train)
    return recipe_from_dict(
        {
            "model": str(model),
            "data": str(QUICKSTART_DATA),
            "output": str(out),
            "lora": {"rank": 8, "alpha": 16},
            "train": settings,
        }
    )


def val_losses(run_dir):
    return [e.loss for e in read_events(RunDir(run_dir).events_file) if isinstance(e, EvalFinished)]


@pytest.mark.parametrize("method,quant", [("lora", None), ("dora", None), ("full", None), ("lora", 4)])
def test_methods_lower_validation_loss(tiny_llama, tmp_path, method, quant):
    recipe = make_recipe(tiny_llama, tmp_path / "run", learning_rate=3e-3 if method != "full" else 1e-3)
    recipe.method = method
    if quant:
        recipe.quantize.bits, recipe.quantize.group_size = quant, 32
    result = run_training(recipe)
    assert result.status == "finished"
    losses = val_losses(tmp_path / "run")
    assert len(losses) == 2
    # the base model's loss on this vocabulary is ~ln(V) = 6.4; training must cut it hard
    first_step_loss = [e.loss for e in read_events(RunDir(result.run_dir).events_file) if isinstance(e, StepReported)][
        0
    ]
    assert losses[-1] < 0.6 * first_step_loss


def test_run_dir_describes_itself(tiny_llama, tmp_path):
    result = run_training(make_recipe(tiny_llama, tmp_path / "run", iters=6, steps_per_save=3, steps_per_eval=3))
    run = RunDir(result.run_dir)
    assert run.load_recipe().train.iters == 6
    meta = run.read_meta()
    assert meta["status"] == "finished" and meta["model_path"] == str(tiny_llama)
    assert run.checkpoint_steps() == [3, 6]
    config = json.loads(run.adapter_config_file.read_text())
    assert config["fine_tune_type"] == "lora" and config["lora_parameters"]["scale"] == 2.0
    events = read_events(run.events_file)
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [3, 6]
    evals = [e for e in events if isinstance(e, EvalFinished)]
    assert isinstance(events[-1], RunFinished) and events[-1].best_step == min(evals, key=lambda e: e.loss).step
    # the run root's adapters load in mlx-lm as they are, and change what the model computes
    from mlx_lm.utils import load

    tokens = mx.array([[1, 2, 3]])
    tuned = load(str(tiny_llama), adapter_path=str(run.path))[0](tokens)
    base = load(str(tiny_llama))[0](tokens)
    assert tuned.shape == base.shape and not mx.allclose(tuned, base, atol=1e-4).item()


def test_tiny_model_learns_toy_task_to_near_zero(tiny_llama, tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"code {i}"},
                {"role": "assistant", "content": ["alpha", "bravo", "charlie", "delta"][i]},
            ]
        }
        for i in range(4)
    ]
    data = tmp_path / "toy"
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "valid.jsonl", rows)
    recipe = recipe_from_dict(
        {
            "model": str(tiny_llama),
            "data": str(data),
            "output": str(tmp_path / "run"),
            "method": "full",
            "train": {
                "iters": 80,
                "batch_size": 4,
                "learning_rate": 3e-3,
                "lr_schedule": "constant",
                "steps_per_eval": 80,
                "steps_per_save": 80,
                "max_grad_norm": None,
            },
        }
    )
    run_training(recipe)
    assert val_losses(tmp_path / "run")[-1] < 0.05


def test_existing_run_dir_is_not_overwritten(tiny_llama, tmp_path):
    recipe = make_recipe(tiny_llama, tmp_path / "run", iters=2, steps_per_eval=0)
    run_training(recipe)
    events_before = (tmp_path / "run" / "events.jsonl").read_text()
    with pytest.raises(MlxsftError, match="already holds a run"):
        run_training(recipe)
    assert (tmp_path / "run" / "events.jsonl").read_text() == events_before


def test_batch_larger_than_data(tiny_llama, tmp_path):
    data = write_jsonl(
        tmp_path / "two.jsonl",
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}] * 2,
    )
    recipe = make_recipe(tiny_llama, tmp_path / "run", batch_size=4)
    recipe.data.train = str(data)
    with pytest.raises(DataError, match="batch_size=4 is larger than the 2 trainable rows"):
        run_training(recipe)


def test_packing_and_accumulation_train(tiny_llama, tmp_path):
    result = run_training(
        make_recipe(tiny_llama, tmp_path / "run", pack=True, grad_accumulation=2, grad_checkpoint=True, batch_size=2)
    )
    assert result.status == "finished"
    losses = val_losses(result.run_dir)
    assert len(losses) == 2 and losses[-1] < losses[0]


def test_diverging_loss_stops_and_keeps_last_good_checkpoint(tiny_llama, tmp_path):
    from mlxsft.errors import TrainingError
    from mlxsft.events import RunFailed

    recipe = make_recipe(
        tiny_llama,
        tmp_path / "run",
        iters=20,
        learning_rate=1e30,
        max_grad_norm=None,
        steps_per_report=1,
        steps_per_save=1,
        steps_per_eval=0,
        warmup_steps=0,
        lr_schedule="constant",
    )
    with pytest.raises(TrainingError, match="inf|nan"):
        run_training(recipe)
    run = RunDir(tmp_path / "run")
    assert run.read_meta()["status"] == "failed"
    failed = read_events(run.events_file)[-1]
    assert isinstance(failed, RunFailed) and failed.step < 20
    steps = run.checkpoint_steps()
    assert steps and steps[-1] < failed.step
    weights = mx.load(str(run.checkpoint_dir(steps[-1]) / "adapters.safetensors"))
    assert all(mx.isfinite(w).all().item() for w in weights.values())


def test_early_stop_on_plateau(tiny_llama, tmp_path):
    recipe = make_recipe(
        tiny_llama,
        tmp_path / "run",
        iters=60,
        steps_per_eval=2,
        steps_per_save=100,
        early_stop_patience=2,
        early_stop_tolerance=0.5,
    )
    result = run_training(recipe)
    assert result.status == "finished"
    events = read_events(RunDir(result.run_dir).events_file)
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.early_stop_reason
    from mlxsft.judge.verdict import Rule, plateau_reached

    evals = [e for e in events if isinstance(e, EvalFinished)]
    rule = Rule(patience=2, dev_tolerance=0.5)
    # it stopped at the first evaluation where the rule held, and saved that step
    assert finished.step == evals[-1].step < 60
    assert plateau_reached(evals, rule) and not plateau_reached(evals[:-1], rule)
    assert RunDir(result.run_dir).checkpoint_steps()[-1] == finished.step


def test_bad_rows_stop_before_training_or_are_skipped_and_reported(tiny_llama, tmp_path):
    from mlxsft.events import DataPrepared

    rows = [json.loads(line) for line in (QUICKSTART_DATA / "train.jsonl").read_text().splitlines()[:40]]
    rows.append(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ]
        }
    )
    data = write_jsonl(tmp_path / "data" / "train.jsonl", rows).parent
    recipe = make_recipe(tiny_llama, tmp_path / "run", iters=2, steps_per_eval=0)
    recipe.data.train = str(data)
    with pytest.raises(DataError, match="on_bad_row") as info:
        run_training(recipe)
    assert "train.jsonl:41: two user messages in a row" in str(info.value)
    assert not (tmp_path / "run" / "recipe.yaml").exists()  # nothing written before the data is right
    recipe.data.on_bad_row = "skip"
    result = run_training(recipe)
    prepared = [e for e in read_events(RunDir(result.run_dir).events_file) if isinstance(e, DataPrepared)][0]
    assert prepared.num_bad_rows == 1 and any(":41: two user messages" in s for s in prepared.skipped)
    assert prepared.layouts == ("one sequence: 40 rows",)
    # the run keeps the chat template it trained with, for its exports
    assert RunDir(result.run_dir).chat_template() == (tiny_llama / "chat_template.jinja").read_text()
