"""End to end on a tiny model: train, evaluate every checkpoint, judge, choose, rewind.

The task: "Tell me about the <animal>." -> "The <animal> <fact>." Eight training
rows; validation pairs other animals with the same facts; the OOD split asks the
same thing in other words. Trained far past convergence, the model memorizes: the
validation and OOD losses turn up, sampled outputs collapse (entropy, distinct-2),
general text gets worse, while the training loss keeps falling.
"""

import dataclasses
import json

import mlx.core as mx
import pytest

from mlxsft.cli import main
from mlxsft.config import recipe_from_dict
from mlxsft.events import (
    CheckpointEvaluated,
    EvalFinished,
    SelectionMade,
    StepReported,
    read_events,
)
from mlxsft.judge.battery import evaluate_checkpoint, evaluate_run, open_bench
from mlxsft.judge.results import read_results
from mlxsft.judge.suite import Suite
from mlxsft.judge.verdict import OVERSHOOTING, STILL_LEARNING, choose, judge_history, points
from mlxsft.rundir import RunDir
from mlxsft.train.run import run_training

from .conftest import write_jsonl

ANIMALS = [
    "cat",
    "dog",
    "horse",
    "sheep",
    "goat",
    "mouse",
    "fox",
    "bear",
    "wolf",
    "duck",
    "owl",
    "frog",
    "crab",
    "seal",
    "deer",
    "lion",
    "hare",
    "mole",
    "lynx",
    "toad",
    "swan",
    "crow",
    "yak",
    "eel",
]
FACTS = [
    "lives on farms",
    "likes to sleep",
    "runs in fields",
    "eats green grass",
    "climbs steep hills",
    "hides in holes",
    "hunts at night",
    "fishes in rivers",
]
SUITE = Suite(k=4, max_tokens=20, prompts=6, regex=r"^The \w+")


def row(animal, fact, question="Tell me about the {}.", **extra):
    return {
        "messages": [
            {"role": "user", "content": question.format(ANIMALS[animal])},
            {"role": "assistant", "content": f"The {ANIMALS[animal]} {FACTS[fact]}."},
        ],
        "animal": ANIMALS[animal],
        **extra,
    }


@pytest.fixture(scope="module")
def animals(tmp_path_factory):
    root = tmp_path_factory.mktemp("animals")
    write_jsonl(root / "train.jsonl", [row(i, i) for i in range(8)])
    write_jsonl(root / "valid.jsonl", [row(8 + i, (3 * i + 1) % 8, bucket="ab"[i % 2]) for i in range(8)])
    write_jsonl(root / "ood.jsonl", [row(16 + i, (5 * i + 2) % 8, "What does the {} do?") for i in range(8)])
    return root


def train(model, data, out, iters, every, method="full", lr=1e-3):
    recipe = recipe_from_dict(
        {
            "model": str(model),
            "data": {"train": str(data), "ood": str(data / "ood.jsonl")},
            "output": str(out),
            "method": method,
            "lora": {"rank": 8, "alpha": 16},
            "train": {
                "iters": iters,
                "batch_size": 4,
                "learning_rate": lr,
                "lr_schedule": "constant",
                "max_seq_length": 128,
                "steps_per_report": every,
                "steps_per_eval": every,
                "steps_per_save": every,
            },
        }
    )
    run_training(recipe)
    return out


@pytest.fixture(scope="module")
def overshot(tiny_llama, animals, tmp_path_factory):
    run = train(tiny_llama, animals, tmp_path_factory.mktemp("overshot") / "run", iters=100, every=10)
    return run, evaluate_run(run, SUITE)


def metric(doc, step, name):
    return next(e["metrics"][name] for e in doc["checkpoints"] if e["step"] == step)


def test_run_trained_past_convergence_is_overshooting_and_rewinds(overshot, capsys):
    run, doc = overshot
    steps = [e["step"] for e in doc["checkpoints"]]
    assert steps == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    history = points(doc["checkpoints"])
    verdicts = judge_history(history)
    assert verdicts[-1].verdict == OVERSHOOTING
    chosen = choose(history, verdicts).step
    assert chosen is not None and chosen < 100
    # the situation is what it should be: training loss still falling at the end ...
    losses = {e.step: e.loss for e in read_events(RunDir(run).events_file) if isinstance(e, StepReported)}
    assert losses[100] < losses[chosen]
    # ... while OOD loss rises and the outputs lose diversity after the chosen checkpoint
    assert metric(doc, 100, "ood_loss") > metric(doc, chosen, "ood_loss")
    assert metric(doc, 100, "entropy") < 0.8 * metric(doc, chosen, "entropy")
    assert metric(doc, 100, "distinct_2") < metric(doc, chosen, "distinct_2")
    assert metric(doc, 100, "probe_loss") > metric(doc, chosen, "probe_loss")
    # `mlxsft select` records the choice for export ("rewind") and says why
    assert main(["select", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"Chosen: step {chosen}" in out and "overshooting" in out and "Rule: verdict" in out
    assert RunDir(run).read_meta()["chosen_step"] == chosen
    event = [e for e in read_events(RunDir(run).events_file) if isinstance(e, SelectionMade)][-1]
    assert event.chosen_step == chosen and event.verdicts[-1] == "100: overshooting"


def test_results_file_events_and_buckets(overshot):
    run, doc = overshot
    assert read_results(RunDir(run)) == doc
    events = [e for e in read_events(RunDir(run).events_file) if isinstance(e, CheckpointEvaluated)]
    assert [e.step for e in events][:11] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert events[3].valid_loss == pytest.approx(metric(doc, 30, "valid_loss"))
    base = doc["checkpoints"][0]["metrics"]
    assert base["probe_kl"] == 0.0 and base["probe_loss_delta"] == 0.0
    assert metric(doc, 100, "probe_kl") > metric(doc, 10, "probe_kl") > 0
    for entry in doc["checkpoints"]:
        m = entry["metrics"]
        assert 0 <= m["regex_pass"] <= 1 and m["pass_at_1"] <= m["pass_at_k"] <= 1
        assert set(entry["buckets"]) == {"a", "b"}
        # the overall loss is the token-weighted mean of the two buckets' losses
        a, b = entry["buckets"]["a"]["valid_loss"], entry["buckets"]["b"]["valid_loss"]
        assert min(a, b) <= m["valid_loss"] <= max(a, b)
        assert entry["buckets"]["a"]["entropy"] is not None
    assert metric(doc, 100, "regex_pass") > metric(doc, 0, "regex_pass")  # it learned the format


def test_run_stopped_early_is_still_learning(tiny_llama, animals, tmp_path):
    run = train(tiny_llama, animals, tmp_path / "run", iters=9, every=3)
    doc = evaluate_run(run, Suite(k=2, max_tokens=12, prompts=4, metrics=["fit", "ood", "output"]))
    history = points(doc["checkpoints"])
    verdicts = judge_history(history)
    assert [v.verdict for v in verdicts] == ["base"] + [STILL_LEARNING] * 3
    assert choose(history, verdicts).step == 9


def test_swapped_lora_checkpoints_match_training_and_a_fresh_load(tiny_llama, animals, tmp_path):
    run = train(tiny_llama, animals, tmp_path / "run", iters=6, every=3, method="lora", lr=3e-3)
    bench = open_bench(run, Suite(prompts=0, metrics=["fit", "regression"]))
    first_base = evaluate_checkpoint(bench, 0)["metrics"]
    at6 = evaluate_checkpoint(bench, 6)["metrics"]
    at3 = evaluate_checkpoint(bench, 3)["metrics"]
    again_base = evaluate_checkpoint(bench, 0)["metrics"]
    assert again_base == first_base  # swapping back restores the base exactly
    trained = {e.step: e for e in read_events(RunDir(run).events_file) if isinstance(e, EvalFinished)}
    for step, m in ((3, at3), (6, at6)):
        assert m["valid_loss"] == pytest.approx(trained[step].loss, rel=1e-5)
        assert m["token_accuracy"] == pytest.approx(trained[step].token_accuracy)
        assert m["probe_kl"] > 0
    # the same checkpoint loaded the mlx-lm way gives the same loss
    from mlx_lm.tuner.utils import load_adapters

    from mlxsft.judge.scoring import loss_plan, score_rows
    from mlxsft.model import load_base

    model, _, _, _ = load_base(RunDir(run).load_recipe())
    load_adapters(model, str(RunDir(run).checkpoint_dir(6)))
    model.eval()
    plan = loss_plan(model)
    assert plan.split is not None  # the gathered-head path
    scores = score_rows(model, plan, bench.valid, 4, bench.pad_id)
    assert sum(s.nll for s in scores) / sum(s.tokens for s in scores) == pytest.approx(at6["valid_loss"], rel=1e-5)
    # the full-logits path (models whose head cannot be split) scores every row the same
    full = score_rows(model, dataclasses.replace(plan, split=None), bench.valid, 3, bench.pad_id)
    assert [s.tokens for s in full] == [s.tokens for s in scores]
    assert [s.correct for s in full] == [s.correct for s in scores]
    assert [s.nll for s in full] == pytest.approx([s.nll for s in scores], rel=1e-5)
    mx.clear_cache()


def test_eval_cli_with_a_suite_file(tiny_llama, animals, tmp_path, capsys):
    run = train(tiny_llama, animals, tmp_path / "run", iters=4, every=2)
    (tmp_path / "verify.py").write_text(
        "def verify(prompt, completion, row):\n    return completion.startswith('The ' + row['animal'])\n"
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text("k: 3\nmax_tokens: 8\nprompts: 3\nverifier: verify.py\ntemperature: 0.5\n")
    assert main(["eval", str(run), "--checkpoints", "latest", "--suite", str(suite)]) == 0
    out = capsys.readouterr().out
    assert "evaluated base" in out and "evaluated step 4" in out and "pass@3" in out and "bucket a" in out
    doc = read_results(RunDir(run))
    assert [e["step"] for e in doc["checkpoints"]] == [0, 4]
    m = doc["checkpoints"][1]["metrics"]
    assert m["verifier_pass"] is not None and "verifier_errors" not in doc["checkpoints"][1]
    assert doc["suite"]["k"] == 3
    # the same suite again keeps earlier entries; a different one starts afresh
    assert main(["eval", str(run), "--checkpoints", "2", "--suite", str(suite), "--json"]) == 0
    assert [e["step"] for e in json.loads(capsys.readouterr().out)["checkpoints"]] == [0, 2, 4]
    assert main(["eval", str(run), "--checkpoints", "2"]) == 0
    capsys.readouterr()
    assert [e["step"] for e in read_results(RunDir(run))["checkpoints"]] == [0, 2]


def test_eval_and_select_errors_are_clear(tiny_llama, animals, tmp_path, capsys):
    run = train(tiny_llama, animals, tmp_path / "run", iters=2, every=2)
    assert main(["select", str(run)]) == 2
    assert "no evaluation yet; run `mlxsft eval" in capsys.readouterr().err
    assert main(["eval", str(run), "--checkpoints", "7"]) == 2
    assert "no checkpoint at step 7; this run has checkpoints at steps: 2" in capsys.readouterr().err
    assert main(["eval", str(run), "--checkpoints", "seven"]) == 2
    assert "'seven' is not a step" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    bad = tmp_path / "suite.yaml"
    bad.write_text("k: 2\nsampels: 3\n")
    assert main(["eval", str(run), "--suite", str(bad)]) == 2
    assert f"{bad}:2: unknown key 'sampels'" in capsys.readouterr().err
    rule = tmp_path / "rule.yaml"
    rule.write_text("within: lots\n")
    (RunDir(run).path / "eval").mkdir()
    (RunDir(run).path / "eval" / "results.json").write_text(
        json.dumps(
            {
                "format": 1,
                "suite": {},
                "checkpoints": [
                    {"step": 0, "metrics": {"valid_loss": 1.0}},
                    {"step": 2, "metrics": {"valid_loss": 0.9}},
                ],
            }
        )
    )
    assert main(["select", str(run), "--rule", str(rule)]) == 2
    assert "rule key 'within' must be a number" in capsys.readouterr().err
    assert main(["select", str(run), "--within", "0.1", "--dry-run"]) == 0
    assert "Chosen: step 2" in capsys.readouterr().out
    assert "chosen_step" not in RunDir(run).read_meta()
