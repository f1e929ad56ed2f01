"""Snapshot tests (pytest-textual-snapshot) of the main screens at 80x24 and one large terminal.

The recorded run (tests/fixtures/tui_run) drives them; the clock is fixed and cursors do
not blink, so a screenshot changes only when the UI does. After an intended change of
the UI, review and accept with `pytest tests/test_tui_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import pytest
from mlxsft.tui.app import MlxsftApp
from mlxsft.tui.screens.checkpoints import CheckpointsScreen
from mlxsft.tui.screens.live_run import LiveRunScreen
from mlxsft.tui.screens.runs import RunsScreen

from .fixtures.tui_helpers import (
    FIXED_NOW,
    freeze_cursors,
    live_stand_in,
    make_project,
    use_fake_generation,
    wait_for,
    write_judge_results,
    write_long_run,
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)  # paths show as runs/..., the same on every machine
    return root


def make_app(project, path="runs") -> MlxsftApp:
    return MlxsftApp(path, project_dir=project, clock=lambda: FIXED_NOW, refresh_s=3600)


def settled(predicate, what):
    async def run_before(pilot):
        await wait_for(pilot, lambda: predicate(pilot.app), what=what)
        freeze_cursors(pilot.app)
        await pilot.pause()

    return run_before


def runs_ready(app):
    return isinstance(app.screen, RunsScreen) and app.screen.summaries


def replayed(app):
    return isinstance(app.screen, LiveRunScreen) and app.screen.state.status == "finished"


def test_runs_screen(project, snap_compare):
    assert snap_compare(make_app(project), terminal_size=(80, 24), run_before=settled(runs_ready, "runs"))


def test_live_run_screen_small(project, snap_compare):
    app = make_app(project, "runs/quickstart-lora")
    assert snap_compare(app, terminal_size=(80, 24), run_before=settled(replayed, "the replay"))


def test_live_run_screen_large(project, snap_compare):
    app = make_app(project, "runs/quickstart-lora")
    assert snap_compare(app, terminal_size=(160, 48), run_before=settled(replayed, "the replay"))


@pytest.fixture
def long_run(project):
    """runs/long: 600 of 1,000 steps, its trainer (a stand-in process) still alive."""
    run = project / "runs" / "long"
    write_long_run(run)
    with live_stand_in(run):
        yield run


def mid_run(app):
    return isinstance(app.screen, LiveRunScreen) and app.screen.state.step == 600


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_live_run_mid_way_through_a_long_run(project, long_run, snap_compare, size):
    assert snap_compare(make_app(project, "runs/long"), terminal_size=size, run_before=settled(mid_run, "the replay"))


def test_checkpoints_screen(project, snap_compare):
    async def run_before(pilot):
        await wait_for(pilot, lambda: replayed(pilot.app), what="the replay")
        await pilot.press("c")
        await wait_for(
            pilot,
            lambda: isinstance(pilot.app.screen, CheckpointsScreen) and pilot.app.screen.rows,
            what="the checkpoints",
        )
        freeze_cursors(pilot.app)
        await pilot.pause()

    assert snap_compare(make_app(project, "runs/quickstart-lora"), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_checkpoints_screen_with_judge_results(project, snap_compare, size):
    write_judge_results(project / "runs" / "quickstart-lora")

    async def run_before(pilot):
        await wait_for(pilot, lambda: replayed(pilot.app), what="the replay")
        await pilot.press("c")
        await wait_for(
            pilot,
            lambda: isinstance(pilot.app.screen, CheckpointsScreen) and pilot.app.screen.table.evaluated,
            what="the judged checkpoints",
        )
        freeze_cursors(pilot.app)
        await pilot.pause()

    assert snap_compare(make_app(project, "runs/quickstart-lora"), terminal_size=size, run_before=run_before)


def test_chat_screen_two_panes_multi_turn(project, snap_compare, monkeypatch):
    from mlxsft.tui.screens.chat import ChatScreen
    from mlxsft.tui.widgets.generation_panes import GenerationPanes

    use_fake_generation(project, monkeypatch)

    async def run_before(pilot):
        await wait_for(pilot, lambda: replayed(pilot.app), what="the replay")
        await pilot.press("t")
        screen = pilot.app.screen
        assert isinstance(screen, ChatScreen)
        panes = screen.query_one(GenerationPanes)
        for text in ("Ana, 30, Rome.", "And Bo, 41, Oslo?"):
            screen.query_one("#chat-prompt").value = text
            await pilot.press("enter")
            await wait_for(pilot, lambda: not panes.running and screen.pending is None, what="the answers")
        freeze_cursors(pilot.app)
        await pilot.pause()

    assert snap_compare(make_app(project, "runs/quickstart-lora"), terminal_size=(100, 30), run_before=run_before)


def test_new_run_screen(project, snap_compare):
    async def run_before(pilot):
        await wait_for(pilot, lambda: runs_ready(pilot.app), what="runs")
        await pilot.press("n")
        await pilot.pause()
        freeze_cursors(pilot.app)
        await pilot.pause()

    assert snap_compare(make_app(project), terminal_size=(80, 24), run_before=run_before)


def test_new_run_screen_large_with_recipe(project, snap_compare):
    async def run_before(pilot):
        await wait_for(pilot, lambda: runs_ready(pilot.app), what="runs")
        await pilot.press("n")
        await pilot.pause()
        screen = pilot.app.screen
        screen.query_one("#recipe-select").value = str(project / "recipes" / "quickstart.yaml")
        await wait_for(
            pilot,
            lambda: screen.query_one("#model-path").value == "models/tiny-chat",
            what="values",
        )
        await wait_for(pilot, lambda: screen.preview_error is not None, what="the preview (no tokenizer here)")
        await wait_for(pilot, lambda: screen.estimate is not None and screen.estimate.seconds, what="the estimate")
        pilot.app.clear_notifications()
        freeze_cursors(pilot.app)
        await pilot.pause()

    assert snap_compare(make_app(project), terminal_size=(140, 44), run_before=run_before)


def test_export_screen(project, snap_compare):
    async def run_before(pilot):
        await wait_for(pilot, lambda: replayed(pilot.app), what="the replay")
        await pilot.press("e")
        await pilot.pause()
        freeze_cursors(pilot.app)
        await pilot.pause()

    assert snap_compare(make_app(project, "runs/quickstart-lora"), terminal_size=(80, 24), run_before=run_before)


def test_help_screen(project, snap_compare):
    async def run_before(pilot):
        await wait_for(pilot, lambda: replayed(pilot.app), what="the replay")
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(make_app(project, "runs/quickstart-lora"), terminal_size=(80, 24), run_before=run_before)


def test_the_readme_screenshot_is_a_snapshot_of_this_suite():
    import re
    from pathlib import Path
    from urllib.parse import unquote

    root = Path(__file__).resolve().parents[1]
    links = re.findall(r"!\[[^\]]*\]\(([^)]+\.svg)\)", (root / "README.md").read_text())
    assert links, "the README's TUI section shows a screenshot"
    for link in links:
        path = root / unquote(link)
        assert path.is_file() and path.parent.name == "test_tui_snapshots", link
