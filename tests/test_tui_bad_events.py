"""Event lines the app cannot read (cut off, unknown, from an older version) never crash it."""

from __future__ import annotations

import json
from argparse import Namespace

from mlxsft.tui import commands
from mlxsft.tui.app import MlxsftApp
from mlxsft.tui.screens.live_run import LiveRunScreen
from textual.app import App
from textual.widgets import RichLog

from mlxsft.events import StepReported, decode_event_line, read_events

from .fixtures.tui_helpers import FIXED_NOW, FIXTURE_RUN, make_project, run_async, wait_for

STEP = {
    "event": "StepReported",
    "step": 2,
    "total_steps": 60,
    "epoch": 0.1,
    "loss": 3.0,
    "learning_rate": 1e-4,
    "tokens_per_second": 1.0,
    "trained_tokens_per_second": 1.0,
    "tokens_seen": 10,
    "peak_memory_gb": 0.1,
    "elapsed_s": 1.0,
    "eta_s": 1.0,
}


def test_decoder_names_why_a_line_is_skipped():
    event, problem = decode_event_line(json.dumps(STEP))
    assert isinstance(event, StepReported) and problem is None
    assert decode_event_line('{"event": "StepReported", "step": 4, "lo')[1].startswith("not a complete JSON")
    assert "unknown event 'FutureThing'" in decode_event_line('{"event": "FutureThing"}')[1]
    old = {k: v for k, v in STEP.items() if k not in ("eta_s", "peak_memory_gb")}
    assert decode_event_line(json.dumps(old)) == (
        None,
        "StepReported without eta_s, peak_memory_gb (written by another mlxsft version?)",
    )
    assert decode_event_line("\n") == (None, None)
    assert decode_event_line("[1, 2]")[1] == "not a JSON object"


def test_read_events_skips_what_it_cannot_read(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"event": "StepReported", "step": 1}) + "\n" + json.dumps(STEP) + '\n{"event": "Ste')
    assert [e.step for e in read_events(path)] == [2]


def damaged_run(project):
    run = project / "runs" / "quickstart-lora"
    lines = (FIXTURE_RUN / "events.jsonl").read_text().splitlines()
    lines.insert(5, lines[5][:40])  # a line cut off by a crash, with more after it
    lines.insert(8, json.dumps({"event": "FutureThing", "x": 1}))
    lines.insert(9, json.dumps({"event": "StepReported", "step": 7}))  # an older version's line
    lines.insert(10, json.dumps({**STEP, "loss": None}))  # a field of the wrong type
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    return run


@run_async
async def test_live_screen_skips_bad_event_lines_with_a_notice(tmp_path):
    project = make_project(tmp_path / "project")
    run = damaged_run(project)
    app = MlxsftApp(run, project_dir=project, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, LiveRunScreen) and app.screen.state.status == "finished",
            what="the replay",
        )
        await pilot.pause()
        notices = " ".join(str(n.message) for n in app._notifications)
        assert "Skipped an event line: events.jsonl line 6: not a complete JSON line" in notices
        log = "\n".join(line.text for line in app.screen.query_one("#run-log", RichLog).lines)
        assert "[skipped] events.jsonl line 9: unknown event 'FutureThing'" in log
        assert "[skipped] events.jsonl line 10: StepReported without" in log
        assert "StepReported with a bad field" in log
        assert app.screen.state.best_step == 60  # everything readable was applied


def test_tui_command_exits_non_zero_when_the_app_crashes(tmp_path, monkeypatch, capsys):
    project = make_project(tmp_path / "project")
    monkeypatch.setattr(MlxsftApp, "run", lambda self: App.run(self, headless=True))

    def crash(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(LiveRunScreen, "on_mount", crash)
    code = commands.cmd_tui(Namespace(path=str(project / "runs" / "quickstart-lora")))
    assert code != 0
    assert "the TUI stopped on an unexpected error" in capsys.readouterr().err
