"""The TUI's non-UI logic: replay and tailing, run status, form -> recipe, estimate, export.

tests/fixtures/tui_run is a real run (the quickstart recipe on the tiny demo model, 60
steps, evaluation every 10, each one a new best and so a checkpoint) with its weights
removed: recipe.yaml, run.json, events.jsonl and each checkpoint's JSON files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlxsft.tui import runs as runs_mod
from mlxsft.tui.checkpoint_table import COLUMNS, DROP_ORDER, checkpoint_table, fit_columns
from mlxsft.tui.dataset import length_histogram, load_preview_tokenizer, preview_dataset
from mlxsft.tui.export_job import (
    ExportOptions,
    describe_parity,
    export_args,
    parity_file,
    push_args,
    read_parity,
)
from mlxsft.tui.recipes import (
    PICKED_FIELDS,
    build_recipe,
    default_values,
    form_fields,
    recipe_file_values,
    write_launch_recipe,
)
from mlxsft.tui.run_estimate import DataShape, estimate_for, measured_speeds, resolve_model
from mlxsft.tui.run_state import EventTail, RunState, replay

from mlxsft.config import iter_fields, load_recipe
from mlxsft.errors import MlxsftError, RecipeError
from mlxsft.events import RunStarted, StepReported

ROOT = Path(__file__).resolve().parents[1]
from .fixtures.tui_helpers import write_judge_results  # noqa: E402

FIXTURE_RUN = ROOT / "tests" / "fixtures" / "tui_run"


@pytest.fixture
def fixture_run(tmp_path) -> Path:
    run = tmp_path / "runs" / "quickstart-lora"
    shutil.copytree(FIXTURE_RUN, run)
    return run


def set_meta(run: Path, **fields) -> None:
    meta = json.loads((run / "run.json").read_text())
    meta.update(fields)
    (run / "run.json").write_text(json.dumps(meta))


# --------------------------------------------------------------- events


def test_replay_of_a_recorded_run_rebuilds_curves_checkpoints_and_outcome():
    state = replay(FIXTURE_RUN / "events.jsonl")
    assert state.status == "finished"
    assert (state.step, state.total_steps) == (60, 60)
    assert [s for s, _ in state.train_loss] == list(range(2, 61, 2))
    assert [s for s, _ in state.valid_loss] == [10, 20, 30, 40, 50, 60]
    assert state.train_loss[0][1] > 5 > 1 > state.train_loss[-1][1]  # it learned
    assert sorted(state.checkpoints) == [10, 20, 30, 40, 50, 60]
    assert state.best_step == 60 and state.best_val_loss == pytest.approx(0.8018930, abs=1e-6)
    assert state.log[-1].startswith("Finished at step 60")
    assert state.last_report.peak_memory_gb > 0


def test_event_tail_waits_for_a_torn_line_and_starts_over_on_truncation(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_events() == []  # no file yet
    lines = (FIXTURE_RUN / "events.jsonl").read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:20])
    assert [type(e).__name__ for e in tail.read_events()] == ["RunStarted"]
    with open(path, "a") as f:
        f.write(lines[1][20:] + "not json\n" + lines[2])
    assert [type(e).__name__ for e in tail.read_events()] == ["DataPrepared", "DataPrepared"]
    assert tail.read_events() == []
    path.write_text(lines[0])  # replaced by a shorter file
    assert [type(e).__name__ for e in tail.read_events()] == ["RunStarted"]


def test_a_resumed_run_drops_the_steps_it_repeats():
    state = RunState()
    start = dict(
        run_dir="r",
        model="m",
        method="lora",
        total_steps=10,
        num_train_rows=1,
        num_valid_rows=0,
        total_parameters=10,
        trainable_parameters=1,
        time=0.0,
    )
    step = dict(
        total_steps=10,
        epoch=0.0,
        learning_rate=1e-3,
        tokens_per_second=1.0,
        trained_tokens_per_second=1.0,
        tokens_seen=1,
        peak_memory_gb=0.1,
        elapsed_s=1.0,
        eta_s=1.0,
    )
    state.apply(RunStarted(start_step=0, resumed=False, **start))
    for s in (2, 4, 6):
        state.apply(StepReported(step=s, loss=float(s), **step))
    state.apply(RunStarted(start_step=4, resumed=True, **start))  # last checkpoint was step 4
    state.apply(StepReported(step=6, loss=0.5, **step))
    assert state.train_loss == [(2, 2.0), (4, 4.0), (6, 0.5)]
    assert state.status == "running"


# --------------------------------------------------------------- run status


def test_status_is_checked_against_the_trainer_pid(fixture_run):
    assert runs_mod.summarize_run(fixture_run).status == "finished"
    set_meta(fixture_run, status="running", pid=2**22 + 12345)  # no such process
    assert runs_mod.summarize_run(fixture_run).status == "stopped (interrupted)"
    # a live process whose command line mentions mlxsft counts as the trainer
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "mlxsft-trainer"])
    try:
        set_meta(fixture_run, pid=child.pid)
        assert runs_mod.summarize_run(fixture_run).status == "running"
        set_meta(fixture_run, pid=os.getpid())  # alive, but not an mlxsft process (pytest)
        if Path("/proc").is_dir() and "mlxsft" not in Path(f"/proc/{os.getpid()}/cmdline").read_text():
            assert runs_mod.summarize_run(fixture_run).status == "stopped (interrupted)"
    finally:
        child.kill()
        child.wait()


def test_a_run_whose_trainer_failed_to_start_shows_the_error(tmp_path):
    run = tmp_path / "runs" / "bad"
    run.mkdir(parents=True)
    (run / runs_mod.LAUNCH_RECIPE).write_text("model: nowhere\nmethod: dora\n")
    (run / runs_mod.LAUNCH_LOG).write_text("$ -m mlxsft.cli train x\nmlxsft: error: nowhere: model folder not found\n")
    [summary] = runs_mod.scan_runs(tmp_path / "runs")
    assert summary.status == "failed"
    assert summary.method == "dora" and summary.model == "nowhere"
    assert "model folder not found" in summary.error


def test_scan_lists_run_folders_newest_first_and_summarizes_them(tmp_path, fixture_run):
    older = tmp_path / "runs" / "older"
    shutil.copytree(FIXTURE_RUN, older)
    set_meta(older, created=1000.0)
    (tmp_path / "runs" / "not-a-run").mkdir()
    summaries = runs_mod.scan_runs(tmp_path / "runs")
    assert [s.name for s in summaries] == ["quickstart-lora", "older"]
    s = summaries[0]
    assert (s.method, s.model, s.last_step, s.total_steps) == ("lora", "models/tiny-chat", 60, 60)
    assert s.tokens_seen == 30748 and s.best_val_loss == pytest.approx(0.80189, abs=1e-5)
    assert runs_mod.format_tokens(s.tokens_seen) == "30.7k"
    assert runs_mod.format_age(1000.0, now=1000.0 + 7200 + 5) == "2h ago"


def test_delete_refuses_a_live_run_and_removes_a_finished_one(fixture_run):
    live = runs_mod.summarize_run(fixture_run, launched_pid=os.getpid())
    set_meta(fixture_run, status="running", pid=os.getpid())
    live = runs_mod.summarize_run(fixture_run, launched_pid=os.getpid())
    assert live.status == "running"
    with pytest.raises(MlxsftError, match="still running"):
        runs_mod.delete_run(live)
    set_meta(fixture_run, status="finished")
    runs_mod.delete_run(runs_mod.summarize_run(fixture_run))
    assert not fixture_run.exists()


# --------------------------------------------------------------- recipes


def test_the_form_covers_every_recipe_field_once():
    main, more = form_fields()
    names = [f.name for f in main + more] + list(PICKED_FIELDS)
    assert sorted(names) == sorted(name for name, *_ in iter_fields())
    assert len(names) == len(set(names))


def test_form_values_validate_like_a_recipe_and_name_the_bad_field():
    values = default_values() | {
        "model": "models/m",
        "data.train": "data/x.jsonl",
        "train.iters": "50",
        "train.learning_rate": "2e-4",
        "lora.targets": "q_proj, v_proj",
        "lora.layers": "8",
        "quantize.bits": "4",
    }
    recipe = build_recipe(values)
    assert recipe.train.iters == 50 and recipe.train.learning_rate == pytest.approx(2e-4)
    assert recipe.lora.targets == ["q_proj", "v_proj"] and recipe.lora.layers == 8 and recipe.quantize.bits == 4
    with pytest.raises(RecipeError, match="train.batch_size"):
        build_recipe(values | {"train.batch_size": "four"})
    with pytest.raises(RecipeError, match="'model' is required"):
        build_recipe(values | {"model": ""})


def test_the_launch_recipe_reloads_to_the_same_recipe(tmp_path):
    values = recipe_file_values(ROOT / "recipes" / "quickstart.yaml")
    assert values["model"] == "models/tiny-chat" and values["train.iters"] == "120"
    recipe = build_recipe(values | {"output": str(tmp_path / "run"), "train.iters": "7"})
    path = write_launch_recipe(recipe, tmp_path / "run", "runs/run")
    assert path.read_text().startswith("# Written by `mlxsft tui`")
    assert "mlxsft train runs/run/tui-recipe.yaml" in path.read_text()
    assert load_recipe(path) == recipe


# --------------------------------------------------------------- estimate


def test_estimate_counts_match_the_loaded_model(tiny_llama):
    from mlxsft.model import attach_adapters, count_parameters, load_base

    recipe = build_recipe(default_values() | {"model": str(tiny_llama), "data.train": "x", "lora.rank": "4"})
    model, *_ = load_base(recipe)
    attach_adapters(model, recipe)
    counts = count_parameters(model)
    data = DataShape(train_rows=100, valid_rows=10, mean_tokens=50, max_tokens=80)
    estimate = estimate_for(recipe, tiny_llama, data, {}, matmul_flops_per_s=1e9)
    assert estimate.trainable_parameters == counts.trainable
    assert estimate.total_parameters == counts.total
    assert "trainable" in estimate.describe() and "timed matmul" in estimate.basis
    assert estimate.steps == 25 and estimate.tokens_per_step == 4 * 50  # 100 rows / batch 4


def test_estimate_grows_with_batch_steps_and_method(tiny_llama):
    base = default_values() | {"model": str(tiny_llama), "data.train": "x", "train.epochs": "1"}
    data = DataShape(train_rows=1000, valid_rows=0, mean_tokens=200, max_tokens=256)

    def estimate(**changes):
        values = base | {k.replace("__", "."): v for k, v in changes.items()}
        return estimate_for(build_recipe(values), tiny_llama, data, {}, 1e9)

    small = estimate()
    assert small.steps == 250  # 1000 rows / batch 4
    big_batch, full = estimate(train__batch_size="16"), estimate(method="full")
    assert big_batch.memory_gb > small.memory_gb and big_batch.steps == 63
    assert full.trainable_parameters == full.total_parameters > small.trainable_parameters
    assert full.seconds > small.seconds


def write_measured_run(root: Path, model_dir: Path, rank: str, tokens_seen: int, elapsed_s: float) -> Path:
    """A finished run of `model_dir` (recipe model as typed, run.json model_path absolute)."""
    run = root / f"run-r{rank}"
    recipe = build_recipe(
        default_values() | {"model": "models/tiny", "data.train": "x", "lora.rank": rank, "train.iters": "10"}
    )
    write_launch_recipe(recipe, run, "runs/run")
    (run / "tui-recipe.yaml").rename(run / "recipe.yaml")
    (run / "run.json").write_text(
        json.dumps({"status": "finished", "model": "models/tiny", "model_path": str(model_dir.resolve())})
    )
    step = {
        "event": "StepReported",
        "step": 10,
        "total_steps": 10,
        "epoch": 1.0,
        "loss": 1.0,
        "learning_rate": 1e-4,
        "tokens_per_second": 99999.0,
        "trained_tokens_per_second": 1.0,
        "tokens_seen": tokens_seen,
        "peak_memory_gb": 0.1,
        "elapsed_s": elapsed_s,
        "eta_s": 0.0,
    }
    (run / "events.jsonl").write_text(json.dumps(step) + "\n")
    return run


def test_measured_speed_of_an_earlier_run_is_found_under_the_absolute_model_path(tmp_path, tiny_llama):
    import shutil

    project = tmp_path / "project"
    shutil.copytree(tiny_llama, project / "models" / "tiny")
    write_measured_run(project / "runs", project / "models" / "tiny", "8", tokens_seen=40_000, elapsed_s=100.0)
    write_measured_run(project / "runs", project / "models" / "tiny", "16", tokens_seen=1_000, elapsed_s=100.0)
    speeds = measured_speeds(project / "runs", project)
    assert sorted(speeds.values()) == [10.0, 400.0]  # tokens seen / elapsed, not the last report's rate
    # The form says "models/tiny" relative to the project; the run recorded the absolute folder.
    model_dir = resolve_model("models/tiny", project)
    recipe = build_recipe(
        default_values() | {"model": "models/tiny", "data.train": "x", "lora.rank": "8", "train.iters": "10"}
    )
    data = DataShape(train_rows=40, valid_rows=0, mean_tokens=50, max_tokens=64)
    estimate = estimate_for(recipe, model_dir, data, speeds, matmul_flops_per_s=1e9)
    assert "measured by an earlier run" in estimate.basis
    assert estimate.seconds == pytest.approx(10 * 4 * 50 / 400.0)
    other_shape = build_recipe(
        default_values() | {"model": "models/tiny", "data.train": "x", "lora.rank": "4", "train.iters": "10"}
    )
    assert "timed matmul" in estimate_for(other_shape, model_dir, data, speeds, 1e9).basis


def test_a_hub_id_pulled_into_the_store_gets_an_estimate(tmp_path, tiny_llama):
    import shutil

    project = tmp_path / "project"
    shutil.copytree(tiny_llama, project / "models" / "Tiny-Chat-0.1B")
    assert resolve_model("someorg/Tiny-Chat-0.1B", project) == (project / "models" / "Tiny-Chat-0.1B").resolve()
    with pytest.raises(MlxsftError, match="mlxsft models pull someorg/Other"):
        resolve_model("someorg/Other", project)


# --------------------------------------------------------------- dataset preview


def test_preview_marks_exactly_the_assistant_tokens(tiny_llama):
    tokenizer = load_preview_tokenizer(tiny_llama)
    preview = preview_dataset(ROOT / "recipes" / "data" / "quickstart", tokenizer)
    assert (preview.num_rows, preview.num_valid_rows, preview.kind) == (280, 40, "chat")
    assert len(preview.lengths) == 280 and 0 < sum(preview.trained_tokens) < sum(preview.lengths)
    first = json.loads((ROOT / "recipes" / "data" / "quickstart" / "train.jsonl").read_text().splitlines()[0])
    trained = "".join(text for text, is_trained in preview.first_spans if is_trained)
    assistant = [m["content"] for m in first["messages"] if m["role"] == "assistant"][0]
    assert assistant in trained
    user = [m["content"] for m in first["messages"] if m["role"] == "user"][0]
    assert user not in trained
    assert "3 rows longer" not in preview.summary(10_000)
    assert f"{preview.num_over(32)} rows longer than max_seq_length=32" in preview.summary(32)


def test_preview_of_bad_data_is_a_clear_error(tmp_path, tiny_llama):
    bad = tmp_path / "train.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"oops": 1\n'
    )
    with pytest.raises(MlxsftError, match=r"train.jsonl:2"):
        preview_dataset(bad, load_preview_tokenizer(tiny_llama))


def test_preview_shows_each_sequence_of_a_split_row_and_bad_rows(tmp_path):
    from tests.real_templates import save_family

    model = save_family("qwen3", tmp_path / "qwen3")
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "hello again"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ]
        },
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preview = preview_dataset(data, load_preview_tokenizer(model))
    assert preview.first_layout == "split into 2 sequences" and preview.split_rows == 1
    texts = [text for text, _ in preview.first_spans]
    assert "── sequence 2 of 2 ──\n" in "".join(texts)
    trained = [text for text, is_trained in preview.first_spans if is_trained]
    assert trained == ["<think>\n\n</think>\n\nhello<|im_end|>", "<think>\n\n</think>\n\nhello again<|im_end|>"]
    assert len(preview.bad_rows) == 1 and "train.jsonl:2: two user messages" in preview.bad_rows[0]
    assert "1 rows split into one sequence per turn" in preview.summary(2048)


def test_length_histogram_has_an_edge_at_the_limit_and_counts_every_row():
    lengths = (5, 10, 60, 64, 65, 200)
    bins = length_histogram(lengths, max_seq_length=64)
    assert sum(count for *_, count in bins) == len(lengths)
    assert any(high == 64 for _, high, _ in bins)
    over = sum(count for low, _, count in bins if low >= 64)
    assert over == 2


# --------------------------------------------------------------- checkpoints and export


def test_checkpoint_table_is_the_judges_verdicts_with_events_and_the_chosen_step(fixture_run):
    set_meta(fixture_run, chosen_step=40)
    write_judge_results(fixture_run)
    shutil.rmtree(fixture_run / "checkpoints" / "step-0000010")
    table = checkpoint_table(fixture_run, replay(fixture_run / "events.jsonl"))
    by_step = {r.step: r for r in table.rows}
    assert sorted(by_step) == [0, 10, 20, 30, 40, 50, 60]  # the base row first
    assert by_step[0].verdict == "base" and by_step[0].exists
    assert not by_step[10].exists and by_step[20].exists
    assert [by_step[s].verdict for s in (20, 40, 60)] == ["still learning", "plateau", "overshooting"]
    assert by_step[30].verdict == "not evaluated"
    assert by_step[40].is_chosen and by_step[60].is_best and not by_step[40].is_best
    assert by_step[20].is_recommended and not by_step[40].is_recommended  # the judge would pick 20
    assert "left out step(s) 60 judged overshooting" in table.reasons
    assert by_step[40].metrics["probe_kl"] == 0.15
    assert by_step[20].val_loss == pytest.approx(1.0968691, abs=1e-6)
    assert by_step[20].train_loss == replay(fixture_run / "events.jsonl").train_loss_near(20)
    assert "dev gain" in by_step[60].explanation


def test_a_results_file_in_another_format_is_an_error_not_a_guess(fixture_run):
    (fixture_run / "eval").mkdir()
    (fixture_run / "eval" / "results.json").write_text(json.dumps([{"step": 20, "acc": 0.1}]))
    table = checkpoint_table(fixture_run, replay(fixture_run / "events.jsonl"))
    assert "not in the format this version writes" in table.error and not table.evaluated
    assert all(r.verdict == "not evaluated" for r in table.rows)


def test_columns_are_dropped_in_the_stated_order_to_fit():
    keys = [key for key, _, _ in COLUMNS]
    assert fit_columns(keys, 1000) == keys
    narrow = fit_columns(keys, 78)
    assert narrow[:4] == ["mark", "step", "verdict", "valid_loss"]
    dropped = {k for k in keys if k not in narrow}
    assert dropped == set(DROP_ORDER[: len(dropped)])  # the first ones of the stated order
    assert sum(w + 2 for k, _, w in COLUMNS if k in narrow) <= 78


def test_export_args_per_format():
    run, out = Path("runs/r"), Path("runs/r/exports/x")
    assert export_args(run, ExportOptions("peft", out, dtype="float16")) == [
        "export",
        "runs/r",
        "--format",
        "peft",
        "--out",
        str(out),
    ]
    assert export_args(
        run,
        ExportOptions("hf", out, checkpoint="40", dtype="bfloat16", max_shard_size="2GB", force=True),
    ) == [
        "export",
        "runs/r",
        "--format",
        "hf",
        "--out",
        str(out),
        "--max-shard-size",
        "2GB",
        "--dtype",
        "bfloat16",
        "--checkpoint",
        "40",
        "--force",
    ]
    assert export_args(run, ExportOptions("fused", out, dequantize=True, verify=False)) == [
        "fuse",
        "runs/r",
        "--out",
        str(out),
        "--dequantize",
        "--no-verify",
    ]
    assert export_args(run, ExportOptions("lmstudio", out, quant="q8_0", dtype="float16")) == [
        "export",
        "runs/r",
        "--format",
        "lmstudio",
        "--out",
        str(out),
        "--quant",
        "q8_0",
    ]
    assert export_args(run, ExportOptions("peft", out, quant="q8_0"))[-1] == str(out)  # no --quant for peft
    assert push_args(Path("runs/r"), "me/x", private=True, checkpoint="40") == [
        "push",
        "runs/r",
        "--repo",
        "me/x",
        "--private",
        "--checkpoint",
        "40",
    ]
    assert parity_file(Path("a/m.gguf"), "gguf") == Path("a/m.gguf.parity.json")
    assert parity_file(Path("a/l.gguf"), "gguf-lora") == Path("a/l.gguf.parity.json")
    assert parity_file(out, "mlx") == out / "parity.json"
    assert parity_file(out, "ollama") == out / "parity.json"


def write_parity(out: Path, **fields) -> None:
    record = {
        "format": "mlx",
        "dtype": "float16",
        "passed": True,
        "max_abs_diff": 3.52e-2,
        "max_rel_diff": 7.1e-4,
        "greedy_agreement": 1.0,
        "tolerance": 5e-3,
        "num_prompts": 3,
        "num_tokens": 40,
        "time": 1000.0,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.json").write_text(json.dumps(record | fields))


def test_parity_line_says_the_tolerance_is_relative_and_comes_from_the_core(tmp_path):
    write_parity(tmp_path / "mlx")
    report = read_parity(tmp_path / "mlx", "mlx")
    text = describe_parity(report)
    assert text.startswith("parity PASSED: ")
    assert "max |Δlogit| 3.52e-02 (relative 7.10e-04 vs relative tolerance 5e-03)" in text
    write_parity(tmp_path / "mlx", passed=False)
    assert describe_parity(read_parity(tmp_path / "mlx", "mlx")).startswith("parity MISMATCH")
    write_parity(tmp_path / "mlx", skipped=True)
    assert "not checked" in describe_parity(read_parity(tmp_path / "mlx", "mlx"))


def test_a_parity_file_older_than_the_export_is_not_its_result(tmp_path):
    write_parity(tmp_path / "mlx", time=1000.0)  # left by an earlier export that passed
    assert read_parity(tmp_path / "mlx", "mlx", since=2000.0) is None
    assert read_parity(tmp_path / "mlx", "mlx", since=500.0).passed


def test_the_cli_registers_tui_without_importing_textual():
    code = (
        "import sys; from mlxsft.cli import build_parser; p = build_parser();"
        "a = p.parse_args(['tui', 'somewhere']); print(a.path, a.handler.__module__);"
        "print(any(m.split('.')[0] in ('textual', 'textual_plotext') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["somewhere", "mlxsft.tui.commands", "False"]


def test_tui_on_a_missing_folder_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mlxsft.cli", "tui", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "no such folder" in result.stderr and "Traceback" not in result.stderr


def test_live_stats_show_preference_accuracy_and_margin_of_a_dpo_run():
    """A DPO run's PreferenceReported events reach Live's numbers: accuracy, margin, chosen log-prob."""
    import asyncio

    from mlxsft.tui.run_state import RunState
    from mlxsft.tui.widgets.run_stats import RunStats
    from textual.app import App

    from mlxsft.events import PreferenceReported

    state = RunState()
    for split, acc, margin in (("train", 0.625, 0.12), ("valid", 0.9, 0.4567)):
        state.apply(
            PreferenceReported(
                step=4,
                split=split,
                loss=0.6,
                rewards_chosen=0.3,
                rewards_rejected=-0.1,
                margin=margin,
                accuracy=acc,
                logps_chosen=-12.5,
                logps_rejected=-15.0,
            )
        )

    class Host(App):
        def compose(self):
            yield RunStats()

    async def render() -> str:
        app = Host()
        async with app.run_test(size=(80, 24)) as pilot:
            app.query_one(RunStats).show(state)
            await pilot.pause()
            return app.export_screenshot().replace("&#160;", " ")  # the SVG's spaces

    text = asyncio.run(render())
    assert "pref acc" in text and "62.5%" in text and "90.0%" in text
    assert "0.457" in text and "-12.50" in text
    plain = RunState()  # an SFT run shows no preference rows
    assert not plain.preference
