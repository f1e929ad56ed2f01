"""The Live run loss chart: y fitted to the visible window, log-y, smoothing, window and zoom keys."""

from __future__ import annotations

import math

import pytest
from mlxsft.tui import chart_view as cv
from mlxsft.tui.app import MlxsftApp
from mlxsft.tui.screens.live_run import LiveRunScreen
from mlxsft.tui.widgets.loss_chart import LossChart

from .fixtures.tui_helpers import FIXED_NOW, make_project, run_async, wait_for, write_long_run


def test_smoothing_is_debiased_and_follows_the_trend():
    points = [(i, 2.0) for i in range(1, 6)]
    assert [v for _, v in cv.smooth(points, 0.9)] == pytest.approx([2.0] * 5)  # no pull towards 0
    noisy = [(i, 1.0 + (0.5 if i % 2 else -0.5)) for i in range(1, 101)]
    smoothed = [v for _, v in cv.smooth(noisy, 0.9)][50:]
    assert max(smoothed) - min(smoothed) < 0.2  # the raw swing is 1.0
    assert cv.smooth(noisy, 0.0) == noisy


def test_y_range_ignores_the_first_reports_that_would_flatten_the_curve():
    values = [7.0, 6.0] + [1.0 + 0.01 * i for i in range(60)]
    low, high = cv.y_range(values, log_y=False)
    assert low < 1.0 and 1.5 < high < 2.0
    low_log, high_log = cv.y_range(values, log_y=True)
    assert 0.9 < low_log < 1.0 and high_log < 2.0
    assert cv.y_range([], log_y=True) is None
    assert cv.y_range([0.0, -1.0], log_y=True) is None  # nothing a log axis can show


def test_step_ticks_are_whole_round_numbers_inside_the_range():
    assert cv.step_ticks(0, 600, 5) == [0, 200, 400, 600]
    ticks = cv.step_ticks(480, 600, 4)
    assert all(isinstance(t, int) for t in ticks) and ticks[0] >= 480 and ticks[-1] <= 600
    assert cv.step_ticks(0, 3, 6) == [0, 1, 2, 3]  # never a fractional step


def test_y_ticks_label_losses_on_a_log_axis():
    positions, labels = cv.y_ticks(0.5, 5.0, log_y=True, count=3)
    assert positions == pytest.approx([math.log10(0.5), math.log10(math.sqrt(2.5)), math.log10(5.0)])
    assert labels[0] == "0.5" and labels[-1] == "5"


def test_window_cycles_and_starts_at_the_right_step():
    assert cv.next_in(cv.WINDOWS, 1.0) == 0.5 and cv.next_in(cv.WINDOWS, 0.2) == 1.0
    assert cv.window_start(600, 1.0) == 0 and cv.window_start(600, 0.2) == 480


@pytest.fixture
def project(tmp_path):
    root = make_project(tmp_path / "project")
    write_long_run(root / "runs" / "long")
    return root


@run_async
async def test_live_chart_of_a_long_run_keeps_the_late_curve_readable(project):
    app = MlxsftApp(project / "runs" / "long", project_dir=project, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, LiveRunScreen) and app.screen.state.step == 600, what="the replay"
        )
        chart = app.screen.query_one(LossChart)
        await wait_for(pilot, lambda: chart.y_limits is not None, what="the chart")
        first_report = chart.train[0][1]
        low, high = chart.y_limits
        assert high < first_report / 1.5, "the first report must not set the top of the y-axis"
        valid = [v for _, v in chart.valid]
        assert low < min(v for _, v in chart.train[-20:]) and max(valid) < high  # train and valid both in view
        assert chart.x_limits == (0, 600)
        assert chart.options.log_y and chart.options.smoothing > 0

        await pilot.press("w", "w")  # the last fifth: y follows the window
        assert chart.x_limits == (480, 600)
        assert chart.y_limits[1] < high
        await pilot.press("y")
        assert not chart.options.log_y
        smoothing = chart.options.smoothing
        await pilot.press("m")
        assert chart.options.smoothing != smoothing

        assert app.screen.query_one("#run-stats").display
        await pilot.press("z")
        await pilot.pause()
        assert app.screen.has_class("-chart-max") and not app.screen.query_one("#run-stats").display
        assert chart.size.height > 16  # most of the 24 rows
        await pilot.press("z")
        await pilot.pause()
        assert app.screen.query_one("#run-stats").display


@run_async
async def test_samples_of_each_checkpoint_appear_without_asking(tmp_path):
    import json

    root = make_project(tmp_path / "p")
    run = root / "runs" / "quickstart-lora"
    prompts = ["Omar, 62, from Seoul.", "Meet Emeka (47)"]
    with open(run / "events.jsonl", "a") as f:
        for step, answer in ((40, '{"name": "Om'), (60, '{"name": "Omar", "age": 62}')):
            f.write(
                json.dumps(
                    {
                        "event": "SamplesGenerated",
                        "step": step,
                        "prompts": prompts,
                        "completions": [answer, "x"],
                        "elapsed_s": 0.1,
                    }
                )
                + "\n"
            )
    app = MlxsftApp(run, project_dir=root, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, LiveRunScreen) and app.screen.samples_shown == 60, what="the samples"
        )
        from mlxsft.tui.widgets.generation_panes import GenerationPanes

        texts = app.screen.query_one("#samples", GenerationPanes).texts()
        assert list(texts.values()) == ['{"name": "Omar", "age": 62}', "x"]  # the latest checkpoint's
        assert sorted(app.screen.state.samples) == [40, 60]
