"""DPO and ORPO runs end to end: they learn a planted rule, resume exactly, and export."""

import json
import signal

import numpy as np
import pytest
import yaml

from mlxsft.cli import main
from mlxsft.config import recipe_from_dict
from mlxsft.data.preference import collate_pairs, load_pairs
from mlxsft.errors import TrainingError
from mlxsft.events import EvalFinished, PreferenceReported, RunFinished, read_events
from mlxsft.rundir import RunDir
from mlxsft.train.preference_run import batch_arrays, logps_of
from mlxsft.train.run import run_training

from .conftest import write_jsonl
from .preference_task import follows_rule, held_out_pairs, sft_rows, train_pairs
from .test_resume import cli, kill_after_first_checkpoint, step_losses

LORA = {"rank": 8, "alpha": 16}
TRAIN = {"batch_size": 8, "max_seq_length": 64, "steps_per_report": 2, "steps_per_save": 100}


@pytest.fixture(scope="module")
def task(tiny_llama, tmp_path_factory):
    """The planted task's data and an SFT run on it (both openings, equally often)."""
    root = tmp_path_factory.mktemp("pref-task")
    write_jsonl(root / "sft" / "train.jsonl", sft_rows())
    write_jsonl(root / "pref" / "train.jsonl", train_pairs())
    write_jsonl(root / "pref" / "valid.jsonl", held_out_pairs())
    sft = recipe_from_dict(
        {
            "model": str(tiny_llama),
            "data": str(root / "sft"),
            "output": str(root / "sft-run"),
            "lora": LORA,
            "train": TRAIN | {"iters": 60, "learning_rate": 3e-3},
        }
    )
    run_training(sft)
    return root


def held_out_accuracy(base, run, valid) -> float:
    """Share of held-out pairs whose chosen reply the run's model finds likelier than the rejected one."""
    from mlx_lm.utils import load

    model, tok = load(str(base), adapter_path=str(run))
    pairs = load_pairs(valid, tok).pairs
    logps = np.array(logps_of(model, *batch_arrays(collate_pairs(pairs, range(len(pairs)), tok.pad_token_id))))
    n = len(pairs)
    return float(np.mean(logps[:n] > logps[n:]))


def greedy_rule_share(base, run, valid, k=8) -> tuple[float, list[str]]:
    """Share of the first k held-out prompts whose greedy reply follows the rule, and the replies."""
    from mlx_lm import generate
    from mlx_lm.utils import load

    model, tok = load(str(base), adapter_path=str(run))
    ok, replies = 0, []
    for line in valid.read_text().splitlines()[:k]:
        messages = json.loads(line)["prompt"]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        replies.append(generate(model, tok, prompt, max_tokens=6).strip())
        ok += follows_rule(messages[0]["content"], replies[-1])
    return ok / k, replies


def preference_curve(run) -> list[tuple[int, float]]:
    return [
        (e.step, e.accuracy)
        for e in read_events(RunDir(run).events_file)
        if isinstance(e, PreferenceReported) and e.split == "valid"
    ]


@pytest.mark.slow
def test_dpo_after_sft_learns_the_planted_rule(tiny_llama, task):
    valid = task / "pref" / "valid.jsonl"
    before = held_out_accuracy(tiny_llama, task / "sft-run", valid)
    assert 0.3 <= before <= 0.7  # the SFT model writes both openings: no rule learned
    assert greedy_rule_share(tiny_llama, task / "sft-run", valid)[0] <= 0.75
    recipe = recipe_from_dict(
        {
            "model": str(tiny_llama),
            "data": str(task / "pref"),
            "output": str(task / "dpo"),
            "lora": LORA,
            "objective": "dpo",
            "init": str(task / "sft-run"),
            "preference": {"beta": 0.5},
            "train": TRAIN | {"iters": 12, "learning_rate": 2e-3, "steps_per_eval": 2},
        }
    )
    run_training(recipe)
    curve = preference_curve(task / "dpo")
    print("DPO held-out preference accuracy by step:", curve, "log-prob preference before:", before)
    assert [s for s, _ in curve] == [2, 4, 6, 8, 10, 12]
    assert curve[0][1] < 0.75 and curve[-1][1] > 0.9
    assert held_out_accuracy(tiny_llama, task / "dpo", valid) > 0.9
    # Greedy replies are not asserted for DPO: on this 100k-parameter model, DPO lowers the
    # rejected opening without raising the chosen one enough to become the top token (see the
    # report); ORPO, whose NLL term raises the chosen reply, is checked for it below.
    assert (task / "dpo" / "reference_logps.safetensors").is_file()
    events = read_events(RunDir(task / "dpo").events_file)
    valid = [e for e in events if isinstance(e, PreferenceReported) and e.split == "valid"]
    assert all(e.kl >= 0 for e in valid) and valid[-1].kl > 0  # the policy moved away from the reference
    losses = [e.loss for e in events if isinstance(e, EvalFinished)]  # best checkpoint: the preference loss
    assert losses == pytest.approx([e.loss for e in valid])
    assert isinstance(events[-1], RunFinished) and events[-1].best_val_loss == min(losses)
    assert main(["select", str(task / "dpo")]) == 0  # from the run's validation passes, no `eval` needed
    chosen = RunDir(task / "dpo").read_meta()["chosen_step"]
    best = max(e.accuracy for e in valid)
    assert next(e for e in valid if e.step == chosen).accuracy == best


@pytest.mark.slow
def test_orpo_learns_the_rule_in_one_stage(tiny_llama, task):
    recipe = recipe_from_dict(
        {
            "model": str(tiny_llama),
            "data": str(task / "pref"),
            "output": str(task / "orpo"),
            "lora": LORA,
            "objective": "orpo",
            "train": TRAIN | {"iters": 16, "learning_rate": 3e-3, "steps_per_eval": 2},
        }
    )
    run_training(recipe)
    curve = preference_curve(task / "orpo")
    print("ORPO held-out preference accuracy by step:", curve)
    assert curve[-1][1] > 0.9
    share, replies = greedy_rule_share(tiny_llama, task / "orpo", task / "pref" / "valid.jsonl")
    assert share == 1.0, replies
    assert not (task / "orpo" / "reference_logps.safetensors").exists()  # ORPO has no reference


ITERS = 12


def dpo_recipe(path, base, data, out, cache):
    recipe = {
        "model": str(base),
        "data": str(data),
        "output": str(out),
        "objective": "dpo",
        "lora": LORA | {"dropout": 0.1},  # dropout: the RNG must resume too
        "preference": {"cache_reference": cache},
        "train": {
            "iters": ITERS,
            "batch_size": 4,
            "learning_rate": 2e-3,
            "max_seq_length": 64,
            "steps_per_report": 1,
            "steps_per_eval": 0,
            "steps_per_save": 3,
            "grad_accumulation": 2,
        },
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("cache", [True, False], ids=["cached-reference", "reference-per-batch"])
def test_dpo_sigkill_and_resume_gives_identical_losses(tiny_llama, task, tmp_path, cache):
    data = task / "pref"
    reference = tmp_path / "reference"
    proc = cli("train", str(dpo_recipe(tmp_path / "a.yaml", tiny_llama, data, reference, cache)))
    assert proc.wait() == 0, proc.stderr.read()

    killed = tmp_path / "killed"
    proc = cli("train", str(dpo_recipe(tmp_path / "b.yaml", tiny_llama, data, killed, cache)))
    kill_after_first_checkpoint(proc, killed / "events.jsonl")
    assert proc.returncode == -signal.SIGKILL
    resumed_from = RunDir(killed).checkpoint_steps()[-1]
    assert resumed_from < ITERS
    proc = cli("train", "--resume", str(killed))
    assert proc.wait() == 0, proc.stderr.read()

    want, got = step_losses(reference), step_losses(killed)
    assert sorted(got) == list(range(1, ITERS + 1))
    for step in range(resumed_from + 1, ITERS + 1):
        assert abs(got[step] - want[step]) <= 1e-6 * max(1.0, abs(want[step])), (step, got[step], want[step])
    assert (killed / "reference_logps.safetensors").is_file() == cache


def short_dpo_run(tiny_llama, task, run) -> None:
    """Two DPO steps continuing the task's SFT run (for the export tests)."""
    run_training(
        recipe_from_dict(
            {
                "model": str(tiny_llama),
                "data": str(task / "pref"),
                "output": str(run),
                "lora": LORA,
                "objective": "dpo",
                "init": str(task / "sft-run"),
                "train": TRAIN | {"iters": 2, "learning_rate": 2e-3},
            }
        )
    )


def test_dpo_run_exports_to_peft_with_parity(tiny_llama, task, tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from mlxsft.export import export_peft

    from .export_fixtures import max_abs_diff, mlx_reference, torch_logits

    run = tmp_path / "dpo"
    short_dpo_run(tiny_llama, task, run)
    out = export_peft(run, tmp_path / "peft")
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    got = torch_logits(peft.PeftModel.from_pretrained(base, str(out)).eval())
    want = mlx_reference(tiny_llama, run)
    assert max_abs_diff(want, got) < 1e-4


def test_dpo_run_exports_through_every_local_format_with_parity(tiny_llama, task, tmp_path):
    """A DPO adapter is an SFT-shaped adapter: every local format writes it and passes its own parity check."""
    from mlxsft import export

    run = tmp_path / "dpo"
    short_dpo_run(tiny_llama, task, run)
    writers = {
        "mlx": lambda out: export.export_mlx_adapter(run, out),
        "hf": lambda out: export.export_hf(run, out, dtype="float32"),
        "fused": lambda out: export.fuse_run(run, out),
        "gguf": lambda out: export.export_gguf(run, out, quant="f32"),
        "gguf-lora": lambda out: export.export_gguf_lora(run, out),
    }
    for name, write in writers.items():
        out = write(tmp_path / (f"{name}.gguf" if name.startswith("gguf") else name))
        report = export.verify_export(out, against=run)
        assert report.passed, f"{name}: {report.summary()}"
        assert report.adapter_effect_max_abs > 0, f"{name}: the DPO adapter changed nothing"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"init": "nowhere"}, "has no adapters.safetensors"),
        ({"lora": {"rank": 4, "alpha": 8}}, "differs from this recipe's in lora rank"),
    ],
)
def test_init_from_a_run_that_does_not_fit_is_a_clear_error(tiny_llama, task, tmp_path, change, message):
    raw = {
        "model": str(tiny_llama),
        "data": str(task / "pref"),
        "output": str(tmp_path / "run"),
        "lora": LORA,
        "objective": "dpo",
        "init": str(task / "sft-run"),
        "train": TRAIN | {"iters": 1},
    } | change
    if change.get("init") == "nowhere":
        raw["init"] = str(tmp_path / "nowhere")
    with pytest.raises(TrainingError, match=message):
        run_training(recipe_from_dict(raw))
    assert not (tmp_path / "run").exists()  # nothing written before the inputs are right


def test_dpo_on_two_ranks_matches_one_rank(tiny_llama, task, tmp_path):
    from .test_distributed import losses, train

    def recipe(name):
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "model": str(tiny_llama),
                    "data": str(task / "pref"),
                    "output": str(tmp_path / name),
                    "objective": "dpo",
                    "lora": LORA,
                    "train": {
                        "iters": 6,
                        "batch_size": 8,
                        "learning_rate": 2e-3,
                        "max_seq_length": 64,
                        "steps_per_report": 1,
                        "steps_per_eval": 3,
                        "steps_per_save": 3,
                    },
                }
            )
        )
        return str(path)

    for name, extra in (("one", ()), ("two", ("--ranks", "2"))):
        proc = train(recipe(name), *extra)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
    want, got = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(got) == list(range(1, 7))
    for step in want:
        assert abs(got[step] - want[step]) <= 1e-4 * abs(want[step]), (step, got[step], want[step])

    def metrics(name):
        return [e for e in read_events(tmp_path / name / "events.jsonl") if isinstance(e, PreferenceReported)]

    one, two = metrics("one"), metrics("two")
    assert len(one) == len(two) == 8  # 6 train reports, 2 validation passes
    for a, b in zip(one, two, strict=True):
        assert (a.split, a.step, a.accuracy) == (b.split, b.step, b.accuracy)
        assert b.margin == pytest.approx(a.margin, rel=1e-3, abs=1e-5)
