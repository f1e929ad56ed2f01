"""The judge on a base that knows something (tests/fixtures/tiny_base, pretrained on stdlib docstrings).

Planted cases of issue 17 on real fine-tunes of that base, with the base's own
held-out documents as general-text probes (forgetting is measured on text it knows):
- a full fine-tune trained far past convergence: validation loss rises while train
  loss falls -> overshooting (not plateau), and the earliest good step is chosen;
- a sensible LoRA run that forgets general text against the base -> a warning in
  `select`'s table, its JSON and the SelectionMade event the TUI shows;
- text probes are scored without the chat end marker, truncated rows are noted;
- the base's ChatML markers are detected as untrained at data check and train start.
"""

import json

import numpy as np
import pytest

from mlxsft.cli import main
from mlxsft.data.formats import load_jsonl
from mlxsft.data.masking import tokenize_dataset
from mlxsft.events import RunStarted, SelectionMade, StepReported, read_events
from mlxsft.judge.battery import evaluate_checkpoint, evaluate_run, open_bench
from mlxsft.judge.scoring import score_rows
from mlxsft.judge.suite import Suite
from mlxsft.judge.verdict import OVERSHOOTING, PLATEAU, STILL_LEARNING, Rule, choose, judge_history, points
from mlxsft.rundir import RunDir
from mlxsft.untrained_tokens import check_tokens, read_embedding

from .conftest import BASE_TASK, PRETRAINED_BASE
from .test_judge_eval import train as train_run

PROBES = PRETRAINED_BASE / "heldout.jsonl"
SUITE = Suite(k=3, max_tokens=16, prompts=4, regex=r"^\w+: ", probes=str(PROBES), probe_rows=40)


def train(out, method, iters, every, lr):
    """A run on the pretrained base and its narrow task (the same recipe as test_judge_eval's)."""
    return train_run(PRETRAINED_BASE, BASE_TASK, out, iters, every, method=method, lr=lr)


@pytest.fixture(scope="module")
def sensible(tmp_path_factory):
    """LoRA, lr 2e-3, 20 steps: validation falls 14% by step 10, general text gets ~10% worse."""
    run = train(tmp_path_factory.mktemp("sensible") / "run", "lora", 20, 10, 2e-3)
    return run, evaluate_run(run, SUITE)


def test_the_base_learned_its_corpus():
    info = json.loads((PRETRAINED_BASE / "pretrain.json").read_text())
    assert info["heldout_perplexity"] < 100  # uniform over 1,024 tokens would be 1,024
    assert info["parameters"] < 1_000_000 and (PRETRAINED_BASE / "model.safetensors").stat().st_size < 4e6


def test_sensible_run_that_forgets_against_the_base_warns(sensible, capsys):
    run, doc = sensible
    history = points(doc["checkpoints"])
    verdicts = judge_history(history)
    assert verdicts[1].verdict == STILL_LEARNING
    first = verdicts[1].numbers
    assert first["dev_gain"] > 0.05 and first["probe_loss_vs_base"] > 0.05
    assert first["probe_kl_vs_base"] > 0  # KL to the base is reported beside the loss ...
    second = verdicts[2].numbers  # ... and its change since the reference (step 10 or the base)
    ref = {p.step: p for p in history}[verdicts[2].reference_step]
    assert second["probe_kl_change"] == pytest.approx(history[2].get("probe_kl") - ref.get("probe_kl"))
    assert verdicts[1].warnings and "against the base" in verdicts[1].warnings[0]
    # the threshold is the user's: a looser one silences the warning
    assert not any(v.warnings for v in judge_history(history, Rule(forgetting_threshold=0.5)))
    assert main(["select", str(run)]) == 0
    out = capsys.readouterr().out
    assert "WARNING step 10: forgetting" in out and "Why:" in out and "probe/base" in out and "KL change" in out
    # the event the TUI folds carries the warning in its reason line
    event = [e for e in read_events(RunDir(run).events_file) if isinstance(e, SelectionMade)][-1]
    assert "WARNING step 10: forgetting" in event.reason
    assert main(["select", str(run), "--dry-run", "--json", "--forgetting-threshold", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []


def test_results_keep_per_row_values_and_note_every_truncated_row(sensible):
    run, doc = sensible
    entry = doc["checkpoints"][1]
    assert len(entry["rows"]["valid"]["nll"]) == 50 and len(entry["rows"]["probes"]["kl"]) == 40
    assert len(entry["rows"]["prompts"]["pass_at_k"]) == 4
    total = sum(entry["rows"]["valid"]["nll"]) / sum(entry["rows"]["valid"]["tokens"])
    assert total == pytest.approx(entry["metrics"]["valid_loss"], rel=1e-4)
    rows = load_jsonl(PROBES)[:40]
    from mlx_lm.utils import load_tokenizer

    ds = tokenize_dataset(rows, load_tokenizer(PRETRAINED_BASE), mask="none", max_seq_length=128)
    truncated = [ex.line for ex in ds.examples if ex.truncated]
    assert truncated  # the fixture has long documents
    notes = [n for n in doc["notes"] if "truncated" in n]
    assert sorted(int(n.split(" line ")[1].split()[0]) for n in notes) == truncated


def test_text_probes_are_scored_without_the_chat_end_marker(sensible):
    run, _ = sensible
    bench = open_bench(run, SUITE)
    eos = bench.tokenizer.eos_token_id
    assert all(int(ex.ids[-1]) != eos for ex in bench.probes)
    # what the marker would have cost on this base, which never saw it
    marked = tokenize_dataset(load_jsonl(PROBES)[:40], bench.tokenizer, mask="none", max_seq_length=128).examples
    bench.weights.use_base()
    plain = score_rows(bench.model, bench.plan, bench.probes, 4, bench.pad_id)
    with_marker = score_rows(bench.model, bench.plan, marked, 4, bench.pad_id)
    extra = [m.nll - p.nll for m, p, ex in zip(with_marker, plain, marked, strict=True) if not ex.truncated]
    assert np.mean(extra) > 5.0  # nats per row, the marker token alone
    base = evaluate_checkpoint(bench, 0)["metrics"]["probe_loss"]
    assert base == pytest.approx(sum(p.nll for p in plain) / sum(p.tokens for p in plain), rel=1e-5)


@pytest.mark.slow
def test_over_trained_full_fine_tune_is_overshooting_and_rewinds(tmp_path):
    run = train(tmp_path / "run", "full", 36, 12, 1e-3)
    doc = evaluate_run(run, SUITE)
    history = points(doc["checkpoints"])
    verdicts = judge_history(history)
    losses = {e.step: e.loss for e in read_events(RunDir(run).events_file) if isinstance(e, StepReported)}
    assert losses[36] < losses[24] < losses[12]  # train loss falls throughout ...
    valid = [p.get("valid_loss") for p in history]
    assert valid[3] > valid[2] > valid[1]  # ... while validation loss rises after step 12
    assert [v.verdict for v in verdicts[2:]] == [OVERSHOOTING, OVERSHOOTING]
    assert all(v.signals["dev_rising"] and v.verdict != PLATEAU for v in verdicts[2:])
    assert choose(history, verdicts).step == 12


def test_untrained_chat_markers_are_found_at_data_check_and_train_start(tiny_llama, tmp_path, capsys):
    from mlx_lm.utils import load_tokenizer

    found = check_tokens(read_embedding(PRETRAINED_BASE), load_tokenizer(PRETRAINED_BASE))
    assert [t.token for t in found] == ["<|im_start|>", "<|im_end|>"]
    assert all(t.reason == "norm at initialisation scale" for t in found)
    # a random-weight model: every row at the same scale, nothing flagged
    assert check_tokens(read_embedding(tiny_llama), load_tokenizer(tiny_llama)) == []
    assert main(["data", "check", str(BASE_TASK), "--model", str(PRETRAINED_BASE)]) == 0
    out = capsys.readouterr().out
    assert "untrained" in out and "<|im_end|>" in out
    # train start: by default the rows train (and it says so); tests/test_token_rows.py covers the key off
    run = train(tmp_path / "run", "lora", 1, 1, 1e-3)
    started = [e for e in read_events(RunDir(run).events_file) if isinstance(e, RunStarted)][0]
    assert started.warnings and "rows of token ids [1, 2]" in started.warnings[0]
