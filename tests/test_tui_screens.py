"""Pilot tests of every TUI screen, driven by the recorded run in tests/fixtures/tui_run (no MLX).

Children the screens start are real (the CLI, the generation module), but only on
paths that fail fast before any model loads; the MLX paths are in test_tui_e2e.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlxsft.tui.app import MlxsftApp
from mlxsft.tui.processes import TrainerProcess, start_trainer
from mlxsft.tui.runs import LAUNCH_LOG
from mlxsft.tui.screens.checkpoints import CheckpointsScreen
from mlxsft.tui.screens.confirm import ConfirmScreen
from mlxsft.tui.screens.export import ExportScreen
from mlxsft.tui.screens.help import HelpScreen
from mlxsft.tui.screens.live_run import LiveRunScreen
from mlxsft.tui.screens.new_run import NewRunScreen
from mlxsft.tui.screens.runs import RunsScreen
from mlxsft.tui.widgets.loss_chart import LossChart
from textual.widgets import Checkbox, DataTable, Input, RichLog, Select, Static

from .fixtures.tui_helpers import (
    FIXED_NOW,
    FIXTURE_RUN,
    ROOT,
    make_project,
    run_async,
    set_meta,
    wait_for,
    write_judge_results,
)

# A stand-in trainer: writes the recorded events at a walking pace; on SIGINT it stops at
# the next checkpoint with RunStopped and exit code 130, as the real trainer does.
FAKE_TRAINER = r"""
import json, os, signal, sys, time
run, source = sys.argv[1], sys.argv[2]
stop = []
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
meta = {"status": "running", "pid": os.getpid(), "model": "models/tiny-chat", "method": "lora"}
open(os.path.join(run, "run.json"), "w").write(json.dumps(meta))
with open(os.path.join(run, "events.jsonl"), "a") as f:
    for line in open(source).read().splitlines():
        record = json.loads(line)
        if record["event"] == "RunFinished":
            break
        f.write(line + "\n"); f.flush()
        if stop and record["event"] == "CheckpointSaved":
            stopped = {"event": "RunStopped", "step": record["step"], "reason": "received SIGINT",
                       "last_checkpoint": record["path"]}
            f.write(json.dumps(stopped) + "\n"); f.flush()
            meta["status"] = "stopped"
            open(os.path.join(run, "run.json"), "w").write(json.dumps(meta))
            sys.exit(130)
        time.sleep(0.15)
"""


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "project")


def app_for(project: Path, path: str = "runs") -> MlxsftApp:
    return MlxsftApp(project / path, project_dir=project, clock=lambda: FIXED_NOW, refresh_s=0.3)


async def runs_loaded(pilot) -> RunsScreen:
    await wait_for(
        pilot,
        lambda: isinstance(pilot.app.screen, RunsScreen) and pilot.app.screen.summaries,
        what="the runs table",
    )
    return pilot.app.screen


def table_text(table: DataTable) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


# --------------------------------------------------------------- runs


@run_async
async def test_runs_screen_lists_runs_with_honest_statuses(project):
    runs = project / "runs"
    interrupted = runs / "interrupted"
    subprocess.run(["cp", "-r", str(FIXTURE_RUN), str(interrupted)], check=True)
    set_meta(interrupted, status="running", pid=2**22 + 4321, created=FIXED_NOW - 60)
    async with app_for(project).run_test(size=(100, 30)) as pilot:
        screen = await runs_loaded(pilot)
        rows = table_text(screen.query_one(DataTable))
        assert [r[:2] for r in rows] == [
            ["interrupted", "stopped (interrupted)"],
            ["quickstart-lora", "finished"],
        ]
        assert rows[1][2:] == ["0.8019", "30.7k", "3h ago", "lora", "tiny-chat"]
        detail = str(screen.query_one("#run-detail", Static).render())
        assert "press r to resume" in detail
        await pilot.press("down")
        assert "runs/quickstart-lora  lora on tiny-chat  step 60/60" in str(
            screen.query_one("#run-detail", Static).render()
        )


@run_async
async def test_runs_table_at_80_columns_shows_the_numbers_and_keeps_its_scroll(project):
    long = project / "runs" / "qwen2.5-0.5b-instruct-lora-json-extraction"
    shutil.copytree(FIXTURE_RUN, long)
    set_meta(long, model="Qwen/Qwen2.5-0.5B-Instruct-with-a-long-hub-name")
    async with app_for(project).run_test(size=(80, 24)) as pilot:
        screen = await runs_loaded(pilot)
        table = screen.query_one(DataTable)
        right_edge = 0
        for column in table.ordered_columns:
            right_edge += column.get_render_width(table)
            if column.label.plain == "age":
                break
        assert right_edge <= 80, "best val, tokens and age must be on screen at 80 columns"
        await wait_for(pilot, lambda: table.max_scroll_x > 10, what="the table's layout")
        table.scroll_x = 10
        await pilot.pause()
        assert table.scroll_x == 10
        screen.action_rescan()  # what the 2 s refresh does
        await pilot.pause(0.3)
        await pilot.pause()
        assert table.scroll_x == 10 and table.row_count == 2


@run_async
async def test_delete_asks_first_and_removes_only_on_yes(project):
    run = project / "runs" / "quickstart-lora"
    async with app_for(project).run_test(size=(100, 30)) as pilot:
        await runs_loaded(pilot)
        (run / "exports" / "peft").mkdir(parents=True)
        (run / "exports" / "peft" / "adapter_model.safetensors").write_bytes(b"x" * 4000)
        (run / "merged.gguf").write_bytes(b"x" * 2000)  # an export written loose in the run folder
        await pilot.press("d")
        assert isinstance(pilot.app.screen, ConfirmScreen)
        question = str(pilot.app.screen.query_one("#confirm-question", Static).render())
        assert "6 checkpoints (steps 10-60)" in question
        assert "export exports/peft (4.0 KB)" in question and "export merged.gguf (2.0 KB)" in question
        assert "Exports inside the run folder go with it" in question
        await pilot.press("n")
        assert run.exists() and isinstance(pilot.app.screen, RunsScreen)
        await pilot.press("d")
        await pilot.press("y")
        await wait_for(pilot, lambda: not run.exists(), what="the run folder to go")
        await wait_for(
            pilot,
            lambda: pilot.app.screen.query_one(DataTable).row_count == 0,
            what="an empty table",
        )
        assert "No runs in runs/ yet" in str(pilot.app.screen.query_one("#run-detail", Static).render())


@run_async
async def test_help_lists_the_keys_of_the_current_screen(project):
    async with app_for(project).run_test(size=(100, 30)) as pilot:
        await runs_loaded(pilot)
        await pilot.press("question_mark")
        assert isinstance(pilot.app.screen, HelpScreen)
        text = pilot.app.screen.query_one("Markdown").source
        assert "| `n` | New |" in text and "| `d` | Delete |" in text and "interrupted" in text
        await pilot.press("escape")
        assert isinstance(pilot.app.screen, RunsScreen)


@run_async
async def test_resume_is_offered_only_when_it_can_work(project):
    run = project / "runs" / "quickstart-lora"
    async with app_for(project).run_test(size=(100, 30)) as pilot:
        screen = await runs_loaded(pilot)
        assert screen.check_action("resume", ()) is None  # finished: greyed out in the footer
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(pilot.app.screen, RunsScreen) and not pilot.app.trainers
        set_meta(run, status="stopped")
        screen.action_rescan()
        await wait_for(pilot, lambda: screen.summaries[0].status == "stopped", what="the rescan")
        assert screen.check_action("resume", ()) is True
        # A run that failed before its first checkpoint has nothing to resume from.
        set_meta(run, status="failed", error="data error: train.jsonl line 3: no assistant turn")
        shutil.rmtree(run / "checkpoints")
        screen.action_rescan()
        await wait_for(pilot, lambda: screen.summaries[0].status == "failed", what="the rescan")
        assert screen.check_action("resume", ()) is None
        detail = str(screen.query_one("#run-detail", Static).render())
        assert "No resume: this run has no checkpoint to resume from" in detail
        assert "no assistant turn" in detail
        await pilot.press("r")
        await pilot.pause()
        assert not pilot.app.trainers


# --------------------------------------------------------------- live run


@run_async
async def test_live_screen_replays_a_finished_run(project):
    async with app_for(project, "runs/quickstart-lora").run_test(size=(80, 24)) as pilot:
        await wait_for(
            pilot,
            lambda: isinstance(pilot.app.screen, LiveRunScreen) and pilot.app.screen.state.status == "finished",
            what="the replay",
        )
        screen = pilot.app.screen
        chart = screen.query_one(LossChart)
        assert len(chart.train) == 30 and len(chart.valid) == 6 and chart.total_steps == 60
        assert screen.query_one("#run-progress").progress == 60
        status = str(screen.query_one("#run-status", Static).render())
        assert "finished" in status and "best validation loss 0.8019 at step 60" in status
        stats = screen.query_one("#run-stats", Static)
        assert stats.visual is not None
        log = screen.query_one("#run-log", RichLog)
        assert any("Finished at step 60" in line.text for line in log.lines)
        await pilot.press("escape")
        assert isinstance(pilot.app.screen, RunsScreen)  # the Runs screen of the parent folder


@run_async
async def test_live_screen_follows_a_running_trainer_and_stops_it_with_a_checkpoint(project):
    run = project / "runs" / "live"
    run.mkdir()
    (run / "recipe.yaml").write_text((FIXTURE_RUN / "recipe.yaml").read_text())
    script = project / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    app = app_for(project, "runs/live")
    async with app.run_test(size=(80, 24)) as pilot:
        popen = subprocess.Popen([sys.executable, str(script), str(run), str(FIXTURE_RUN / "events.jsonl")])
        app.add_trainer(TrainerProcess(run, popen, []))
        screen = pilot.app.screen
        assert isinstance(screen, LiveRunScreen)
        await wait_for(pilot, lambda: screen.state.step >= 4, what="the first reports")
        assert screen.state.status == "running" and not screen.state.is_over
        assert "running" in str(screen.query_one("#run-status", Static).render())
        seen = len(screen.query_one(LossChart).train)
        assert 2 <= seen < 30
        await pilot.press("s")
        assert screen.stop_requested_at is not None
        # "stopping" until the trainer's RunStopped arrives (on a loaded machine it may already have)
        status = str(screen.query_one("#run-status", Static).render())
        assert "stopping" in status or screen.state.status == "stopped", status
        await wait_for(pilot, lambda: screen.state.status == "stopped", timeout=20, what="the stop")
        assert popen.wait(timeout=10) == 130
        assert screen.state.step in (10, 20) and screen.state.reason == "received SIGINT"
        assert screen.state.latest_checkpoint.step == screen.state.step
        assert screen.check_action("stop", ()) is None  # nothing left to stop: greyed out
        await pilot.press("s")
        await pilot.pause()
        assert screen.state.status == "stopped"


@run_async
async def test_live_screen_reports_a_trainer_that_died_without_a_final_event(project):
    run = project / "runs" / "quickstart-lora"
    lines = (run / "events.jsonl").read_text().splitlines()
    (run / "events.jsonl").write_text("\n".join(lines[:20]) + "\n")
    set_meta(run, status="running", pid=2**22 + 999)
    async with app_for(project, "runs/quickstart-lora").run_test(size=(80, 24)) as pilot:
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.process_note is not None, what="the interruption note")
        status = str(screen.query_one("#run-status", Static).render())
        assert "interrupted" in status and "resume" in status
        assert "ETA" not in str(screen.query_one("#run-eta", Static).render())  # no countdown for a dead run
        assert screen.check_action("stop", ()) is None


@run_async
async def test_a_trainer_killed_with_sigkill_is_reported_as_killed_not_by_its_command_line(project):
    run = project / "runs" / "live"
    run.mkdir()
    (run / "recipe.yaml").write_text((FIXTURE_RUN / "recipe.yaml").read_text())
    lines = (FIXTURE_RUN / "events.jsonl").read_text().splitlines()
    (run / "events.jsonl").write_text("\n".join(lines[:12]) + "\n")
    (run / LAUNCH_LOG).write_text("$ python -m mlxsft.cli train runs/live/tui-recipe.yaml --quiet\n")
    app = app_for(project, "runs/live")
    async with app.run_test(size=(80, 24)) as pilot:
        popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        app.add_trainer(TrainerProcess(run, popen, []))
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.state.step > 0, what="the replay")
        assert "ETA" in str(screen.query_one("#run-eta", Static).render())
        popen.kill()
        popen.wait()
        await wait_for(pilot, lambda: screen.process_note is not None, what="the exit")
        status = str(screen.query_one("#run-status", Static).render())
        assert "killed (out of memory, or kill -9)" in status and "$ python" not in status
        assert "ETA" not in str(screen.query_one("#run-eta", Static).render())


@run_async
async def test_a_trainer_that_fails_at_start_shows_its_error(project):
    run = project / "runs" / "broken"
    run.mkdir()
    recipe = project / "broken.yaml"
    recipe.write_text(
        f"model: {project}/models/missing\ndata: {project}/recipes/data/quickstart\n"
        f"output: {run}\ntrain: {{iters: 2}}\n"
    )
    (run / "tui-recipe.yaml").write_text(recipe.read_text())
    app = app_for(project, "runs/broken")
    async with app.run_test(size=(80, 24)) as pilot:
        trainer = start_trainer([str(recipe)], run, cwd=project)
        app.add_trainer(trainer)
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.process_note is not None, timeout=60, what="the failure")
        status = str(screen.query_one("#run-status", Static).render())
        assert "exited with code 2" in status and "model folder not found" in status
        assert "model folder not found" in (run / LAUNCH_LOG).read_text()


# --------------------------------------------------------------- checkpoints


@run_async
async def test_checkpoints_screen_is_the_judges_table_and_fits_80_columns(project):
    run = project / "runs" / "quickstart-lora"
    write_judge_results(run)
    async with app_for(project).run_test(size=(80, 24)) as pilot:
        await runs_loaded(pilot)
        await pilot.press("c")
        await wait_for(
            pilot,
            lambda: isinstance(pilot.app.screen, CheckpointsScreen) and pilot.app.screen.rows,
            what="the checkpoint table",
        )
        screen = pilot.app.screen
        table = screen.query_one(DataTable)
        headers = [str(c.label) for c in table.columns.values()]
        assert headers[:4] == ["", "step", "verdict", "valid"]
        assert sum(c.get_render_width(table) for c in table.columns.values()) <= 80  # nothing off-screen
        rows = table_text(table)
        assert [r[1] for r in rows] == ["base", "10", "20", "30", "40", "50", "60"]
        assert [r[2] for r in rows] == [
            "base",
            "not evaluated",
            "still learning",
            "not evaluated",
            "plateau",
            "not evaluated",
            "overshooting",
        ]
        assert "→" in rows[2][0] and "★" in rows[6][0]  # the judge's pick; the lowest training val loss
        panel = str(screen.query_one("#judge-panel", Static).render())
        assert "Judge's pick: step 20" in panel and "left out step(s) 60 judged overshooting" in panel
        assert "Rule: verdict" in panel
        assert screen.marked == [60]  # the best (also the latest) is marked by default
        table.focus()
        await pilot.press("down", "down", "space")
        assert screen.marked == [60, 20]
        assert "This row: step 20: still learning" in str(screen.query_one("#judge-panel", Static).render())
        await pilot.press("c")
        assert json.loads((run / "run.json").read_text())["chosen_step"] == 20
        await wait_for(pilot, lambda: "✓" in table_text(table)[2][0], what="the chosen mark")
        await pilot.press("b")
        assert "compare: step 60, step 20" in str(screen.query_one("#compare-info", Static).render())
        await pilot.press("e")  # export the highlighted checkpoint
        assert isinstance(pilot.app.screen, ExportScreen)
        assert pilot.app.screen.query_one("#export-checkpoint", Select).value == "20"


@run_async
async def test_eval_key_runs_eval_and_select_in_a_child_and_reports_a_failure(project):
    async with app_for(project, "runs/quickstart-lora").run_test(size=(120, 36)) as pilot:
        await pilot.press("c")
        await wait_for(
            pilot,
            lambda: isinstance(pilot.app.screen, CheckpointsScreen) and pilot.app.screen.rows,
            what="the checkpoint table",
        )
        screen = pilot.app.screen
        assert "Not judged yet: press v" in str(screen.query_one("#judge-panel", Static).render())
        await pilot.press("v")
        await wait_for(
            pilot,
            lambda: "failed" in str(screen.query_one("#judge-progress", Static).render()),
            timeout=90,
            what="mlxsft eval to fail (the fixture keeps no weights)",
        )
        assert "mlxsft eval failed:" in str(screen.query_one("#judge-progress", Static).render())
        assert screen.child is None


@run_async
async def test_checkpoint_comparison_reports_missing_weights(project):
    async with app_for(project, "runs/quickstart-lora").run_test(size=(100, 30)) as pilot:
        await pilot.press("c")
        await wait_for(
            pilot,
            lambda: isinstance(pilot.app.screen, CheckpointsScreen) and pilot.app.screen.rows,
            what="the checkpoint table",
        )
        screen = pilot.app.screen
        screen.query_one("#compare-prompt", Input).value = "Ana is 30 and lives in Rome."
        await pilot.press("g")
        await wait_for(
            pilot,
            lambda: any("Generation failed" in n.message for n in pilot.app._notifications),
            timeout=60,
            what="the generation error",
        )
        message = next(n.message for n in pilot.app._notifications if "Generation failed" in n.message)
        assert "no adapter weights" in message  # the fixture keeps no weights


# --------------------------------------------------------------- export and chat


@run_async
async def test_export_form_builds_the_command_and_shows_a_failure(project):
    async with app_for(project, "runs/quickstart-lora").run_test(size=(100, 30)) as pilot:
        await pilot.press("e")
        screen = pilot.app.screen
        assert isinstance(screen, ExportScreen)
        command = lambda: str(screen.query_one("#export-command", Static).render())  # noqa: E731
        assert command() == (
            "$ mlxsft export runs/quickstart-lora --format peft --out runs/quickstart-lora/exports/peft"
        )
        assert not screen.query_one("#row-dtype").display
        screen.query_one("#export-format", Select).value = "gguf"
        await pilot.pause()
        assert "--format gguf --out runs/quickstart-lora/exports/quickstart-lora.gguf" in command()
        assert screen.query_one("#row-quant").display and not screen.query_one("#row-dtype").display
        screen.query_one("#export-quant", Select).value = "q4_k_m"
        await pilot.pause()
        assert command().endswith("--quant q4_k_m")
        screen.query_one("#export-format", Select).value = "ollama"
        await pilot.pause()
        assert "--format ollama --out runs/quickstart-lora/exports/ollama --quant q4_k_m" in command()
        screen.query_one("#export-format", Select).value = "gguf-lora"
        await pilot.pause()
        assert "--format gguf-lora --out runs/quickstart-lora/exports/quickstart-lora-lora.gguf" in command()
        assert not screen.query_one("#row-quant").display
        screen.query_one("#export-format", Select).value = "hf"
        await pilot.pause()
        assert screen.query_one("#row-dtype").display
        screen.query_one("#export-format", Select).value = "fused"
        screen.query_one("#export-dequantize", Checkbox).value = True
        screen.query_one("#export-verify", Checkbox).value = False
        screen.query_one("#export-checkpoint", Select).value = "40"
        await pilot.pause()
        assert command() == (
            "$ mlxsft fuse runs/quickstart-lora --out runs/quickstart-lora/exports/fused "
            "--dequantize --checkpoint 40 --no-verify"
        )
        screen.query_one("#export-format", Select).value = "mlx"
        await pilot.pause()
        # An earlier export left a passing parity.json where this one writes.
        earlier = project / "runs" / "quickstart-lora" / "exports" / "mlx"
        earlier.mkdir(parents=True)
        (earlier / "parity.json").write_text(
            json.dumps(
                {
                    "format": "mlx",
                    "dtype": "float32",
                    "passed": True,
                    "max_abs_diff": 1e-6,
                    "max_rel_diff": 1e-7,
                    "greedy_agreement": 1.0,
                    "tolerance": 1e-4,
                }
            )
        )
        await pilot.press("ctrl+e")
        await wait_for(
            pilot,
            lambda: screen.child is None and "failed" in str(screen.query_one("#export-state", Static).render()),
            timeout=60,
            what="the export",
        )
        lines = [line.text for line in screen.query_one("#export-log", RichLog).lines]
        assert lines[0].startswith("$ mlxsft export")
        assert any("error" in line for line in lines[1:])  # the exporter's own message, no weights here
        parity = str(screen.query_one("#parity-result", Static).render())
        assert "PASSED" not in parity and "failed before its parity check" in parity


@run_async
async def test_push_runs_mlxsft_push_and_reports_a_missing_token(project, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(project / "no-hf-home"))  # no stored login either
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never the real hub (refused before any call)
    async with app_for(project, "runs/quickstart-lora").run_test(size=(100, 40)) as pilot:
        await pilot.press("e")
        screen = pilot.app.screen
        await pilot.press("ctrl+u")
        assert screen.child is None  # no repo given: nothing started
        screen.query_one("#push-repo", Input).value = "someone/tuned"
        await pilot.pause()
        await pilot.press("ctrl+u")
        await wait_for(
            pilot,
            lambda: screen.child is None and "push failed" in str(screen.query_one("#export-state", Static).render()),
            timeout=90,
            what="the push",
        )
        text = " ".join(line.text for line in screen.query_one("#export-log", RichLog).lines)  # lines wrap
        assert text.startswith("$ mlxsft push ") and "--repo someone/tuned" in text
        assert "token" in text.lower() and "Traceback" not in text


@run_async
async def test_chat_needs_adapters(project):
    async with app_for(project, "runs/quickstart-lora").run_test(size=(100, 30)) as pilot:
        await pilot.press("t")
        screen = pilot.app.screen
        assert type(screen).__name__ == "ChatScreen"
        assert screen.query_one("#chat-prompt", Input).has_focus
        await pilot.press(*"hello", "enter")
        assert any("no adapters yet" in n.message for n in pilot.app._notifications)


# --------------------------------------------------------------- new run


@run_async
async def test_new_run_form_loads_a_recipe_estimates_and_refuses_bad_values(project):
    async with app_for(project).run_test(size=(120, 40)) as pilot:
        await runs_loaded(pilot)
        await pilot.press("n")
        screen = pilot.app.screen
        assert isinstance(screen, NewRunScreen)
        models = screen.query_one("#model-select", Select)
        assert [str(label) for label, _ in models._options if _ is not Select.NULL] == ["models/tiny-chat"]
        screen.query_one("#recipe-select", Select).value = str(project / "recipes" / "quickstart.yaml")
        await wait_for(
            pilot,
            lambda: screen.query_one("#model-path", Input).value == "models/tiny-chat",
            what="the recipe's values",
        )
        values = screen.values()
        assert values["train.iters"] == "120" and values["lora.rank"] == "8"
        assert values["data.train"] == "recipes/data/quickstart"

        def estimate() -> str:
            return str(screen.query_one("#estimate", Static).render())

        # the estimate follows the form's values one refresh later: wait for it, not a fixed pause
        await wait_for(pilot, lambda: "trainable" in estimate(), what="the estimate")
        assert "0.07M trainable" in estimate() and "120 steps" in estimate()
        screen.query_one("#field-train--batch-size", Input).value = "eight"
        await wait_for(pilot, lambda: "train.batch_size" in estimate(), what="the form error in the estimate")
        await pilot.press("ctrl+s")
        assert "train.batch_size" in str(screen.query_one("#form-error", Static).render())
        assert isinstance(pilot.app.screen, NewRunScreen) and not pilot.app.trainers


@run_async
async def test_new_run_offers_the_preference_objective_and_init_among_the_main_fields(project):
    """DPO from the TUI: loading recipes/dpo.yaml fills objective and init in the main form, not under More."""
    shutil.copy(ROOT / "recipes" / "dpo.yaml", project / "recipes" / "dpo.yaml")
    async with app_for(project).run_test(size=(120, 40)) as pilot:
        await runs_loaded(pilot)
        await pilot.press("n")
        screen = pilot.app.screen
        screen.query_one("#recipe-select", Select).value = str(project / "recipes" / "dpo.yaml")
        await wait_for(pilot, lambda: screen.values().get("objective") == "dpo", what="the recipe's objective")
        assert screen.values()["init"] == "runs/quickstart"
        more = screen.query_one("#more-settings")
        assert not more.query("#field-objective") and not more.query("#field-init")
        assert screen.query_one("#field-objective") and screen.query_one("#field-init")


@run_async
async def test_new_run_preview_reads_the_dataset(project, tiny_llama):
    async with app_for(project).run_test(size=(120, 40)) as pilot:
        await runs_loaded(pilot)
        await pilot.press("n")
        screen = pilot.app.screen
        screen.query_one("#model-path", Input).value = str(tiny_llama)
        screen.query_one("#data-path", Input).value = "recipes/data/quickstart"
        screen.query_one("#field-train--max-seq-length", Input).value = "64"
        await wait_for(pilot, lambda: screen.preview is not None, timeout=30, what="the dataset preview")
        summary = str(screen.query_one("#data-summary", Static).render())
        assert "280 chat rows, 40 valid rows" in summary
        assert f"{screen.preview.num_over(64)} rows longer than max_seq_length=64" in summary
        histogram = str(screen.query_one("#histogram", Static).render())
        assert "max_seq_length 64" in histogram and "truncated" in histogram
        assert "first example" in str(screen.query_one("#first-example", Static).render())
        screen.query_one("#data-path", Input).value = "recipes/data/nothing-here"
        await wait_for(pilot, lambda: screen.preview is None, timeout=30, what="the preview error")
        assert "not found" in str(screen.query_one("#data-summary", Static).render())


@run_async
async def test_a_second_model_load_while_training_is_announced(project):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        app = app_for(project)
        async with app.run_test(size=(120, 40)) as pilot:
            await runs_loaded(pilot)
            app.add_trainer(TrainerProcess(project / "runs" / "other", sleeper, []))
            await pilot.press("n")
            screen = pilot.app.screen
            screen.query_one("#recipe-select", Select).value = str(project / "recipes" / "quickstart.yaml")
            await wait_for(
                pilot,
                lambda: screen.query_one("#model-path", Input).value == "models/tiny-chat",
                what="the recipe's values",
            )
            await pilot.press("ctrl+s")
            assert isinstance(pilot.app.screen, ConfirmScreen)
            question = str(pilot.app.screen.query_one("#confirm-question", Static).render())
            assert f"pid {sleeper.pid}" in question and "another copy of the model" in question
            await pilot.press("n")
            assert pilot.app.screen is screen and list(app.trainers) == [(project / "runs" / "other").resolve()]
            await pilot.press("escape")  # the form was filled from a recipe: Esc asks first
            await pilot.press("y")
            await runs_loaded(pilot)
            await pilot.press("c")  # generating on Checkpoints warns too
            await wait_for(
                pilot,
                lambda: isinstance(pilot.app.screen, CheckpointsScreen) and pilot.app.screen.rows,
                what="the checkpoints",
            )
            pilot.app.screen.query_one("#compare-prompt", Input).value = "hello"
            await pilot.press("g")
            assert any("another copy of the model" in str(n.message) for n in pilot.app._notifications)
    finally:
        sleeper.kill()
        sleeper.wait()


@run_async
async def test_keys_enter_in_the_footer_f1_in_a_text_field_palette_commands_and_esc_asks(project):
    from textual.widgets._footer import FooterKey

    app = app_for(project)
    async with app.run_test(size=(120, 36)) as pilot:
        await runs_loaded(pilot)
        await pilot.pause()
        footer_keys = {key.key: key.description for key in app.screen.query(FooterKey)}
        assert footer_keys.get("enter") == "Open"
        titles = [command.title for command in app.get_system_commands(app.screen)]
        for title in (
            "New run",
            "Open run runs/quickstart-lora",
            "Checkpoints of runs/quickstart-lora",
            "Evaluate and select runs/quickstart-lora",
            "Export runs/quickstart-lora",
            "Chat with runs/quickstart-lora",
        ):
            assert title in titles
        await pilot.press("enter")  # opens the highlighted run
        assert isinstance(app.screen, LiveRunScreen)
        await pilot.press("escape")
        await runs_loaded(pilot)

        await pilot.press("n")
        screen = app.screen
        assert isinstance(screen, NewRunScreen)
        await pilot.press("escape")  # nothing changed: no question
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("n")
        screen = app.screen
        screen.query_one("#field-train--batch-size", Input).focus()
        await pilot.press("f1")  # from inside a text field
        assert isinstance(app.screen, HelpScreen)
        help_text = app.screen.query_one("Markdown").source
        assert "The focused field" in help_text and "train.batch_size: Rows (sequences) per micro-batch" in help_text
        await pilot.press("f1")
        assert app.screen is screen
        screen.query_one("#field-train--batch-size", Input).value = "2"
        await pilot.press("escape")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert app.screen is screen and screen.query_one("#field-train--batch-size", Input).value == "2"
        await pilot.press("escape", "y")
        assert isinstance(app.screen, RunsScreen)
