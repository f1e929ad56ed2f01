"""End to end: start a real tiny run from the New run screen and follow it to the end, then
compare checkpoints, export and chat, all through the UI (children own MLX; tiny devmodel)."""

from __future__ import annotations

import json

import pytest
from mlxsft.tui.app import MlxsftApp
from mlxsft.tui.screens.chat import ChatScreen
from mlxsft.tui.screens.checkpoints import CheckpointsScreen
from mlxsft.tui.screens.export import ExportScreen
from mlxsft.tui.screens.live_run import LiveRunScreen
from mlxsft.tui.screens.new_run import NewRunScreen
from mlxsft.tui.widgets.generation_panes import GenerationPanes
from textual.widgets import Input, Select, Static

from mlxsft.config import load_recipe
from mlxsft.rundir import RunDir

from .fixtures.tui_helpers import ROOT, run_async, wait_for

pytestmark = pytest.mark.slow

SETTINGS = {
    "train.iters": "6",
    "train.batch_size": "8",
    "train.max_seq_length": "128",
    "lora.rank": "4",
    "train.learning_rate": "0.002",
}
MORE_SETTINGS = {
    "train.steps_per_report": "1",
    "train.steps_per_eval": "3",
    "train.steps_per_save": "3",
}


def fill(screen, form_id: str, values: dict[str, str]) -> None:
    from mlxsft.tui.widgets.recipe_form import RecipeForm

    screen.query_one(form_id, RecipeForm).set_values(values)


@run_async
async def test_new_run_to_finished_then_compare_export_and_chat(tmp_path, tiny_llama):
    project = tmp_path / "project"
    (project / "runs").mkdir(parents=True)
    app = MlxsftApp(project / "runs", project_dir=project, refresh_s=0.5)
    try:
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("n")
            screen = pilot.app.screen
            assert isinstance(screen, NewRunScreen)
            screen.query_one("#model-path", Input).value = str(tiny_llama)
            screen.query_one("#data-path", Input).value = str(ROOT / "recipes" / "data" / "quickstart")
            fill(screen, "#main-form", SETTINGS)
            fill(screen, "#more-form", MORE_SETTINGS)
            screen.query_one("#output", Input).value = "runs/e2e"
            await wait_for(pilot, lambda: screen.preview is not None, timeout=30, what="the dataset preview")
            await wait_for(
                pilot,
                lambda: "6 steps" in str(screen.query_one("#estimate", Static).render()),
                timeout=30,
                what="the estimate",
            )
            await pilot.press("ctrl+s")

            live = pilot.app.screen
            assert isinstance(live, LiveRunScreen)
            run = project / "runs" / "e2e"
            seen: list[tuple[str, int]] = []

            def finished() -> bool:
                state = live.state
                if not seen or seen[-1] != (state.status, state.step):
                    seen.append((state.status, state.step))
                return state.is_over or live.process_note is not None

            await wait_for(pilot, finished, timeout=180, what="the run to finish")
            assert live.state.status == "finished", (live.process_note, seen)
            assert ("waiting", 0) in seen or seen[0][0] == "running"
            assert len({step for _, step in seen}) >= 2  # the screen moved while it ran
            assert [s for s, _ in live.state.train_loss] == [1, 2, 3, 4, 5, 6]
            assert sorted(live.state.checkpoints) == [3, 6] and len(live.state.valid_loss) == 2
            assert "finished" in str(live.query_one("#run-status", Static).render())
            assert RunDir(run).read_meta()["status"] == "finished"
            repeat = load_recipe(run / "tui-recipe.yaml")
            assert repeat.train.iters == 6 and repeat.lora.rank == 4 and repeat.model == str(tiny_llama)
            assert app.trainer_for(run).popen.wait(timeout=30) == 0

            # side-by-side generations of the base and two checkpoints
            await pilot.press("c")
            ckpts = pilot.app.screen
            assert isinstance(ckpts, CheckpointsScreen)
            await wait_for(pilot, lambda: len(ckpts.rows) == 2, what="checkpoint rows")
            assert ckpts.marked == [6]
            ckpts.marked.append(3)
            ckpts.query_one("#compare-prompt", Input).value = "Lena is 31 and lives in Oslo."
            await pilot.press("g")
            panes = ckpts.query_one(GenerationPanes)
            await wait_for(pilot, lambda: not panes.running, timeout=120, what="the generations")
            texts = panes.texts()
            assert set(texts) == {"base", "step 6", "step 3"}
            assert all(texts.values()), texts
            await pilot.press("escape")

            # export as an mlx-lm adapter, with its parity check
            await pilot.press("e")
            export = pilot.app.screen
            assert isinstance(export, ExportScreen)
            export.query_one("#export-format", Select).value = "mlx"
            await pilot.pause()
            await pilot.press("ctrl+e")
            await wait_for(
                pilot,
                lambda: (
                    export.child is None and "exporting" not in str(export.query_one("#export-state", Static).render())
                ),
                timeout=120,
                what="the export",
            )
            parity = str(export.query_one("#parity-result", Static).render())
            assert parity.startswith("parity PASSED"), [line.text for line in export.query_one("#export-log").lines]
            assert json.loads((run / "exports" / "mlx" / "parity.json").read_text())["passed"] is True
            await pilot.press("escape")

            # chat: base and fine-tuned answer the same prompt
            await pilot.press("t")
            chat = pilot.app.screen
            assert isinstance(chat, ChatScreen)
            await pilot.press(*"Tom is 40 and lives in Lima.", "enter")
            chat_panes = chat.query_one(GenerationPanes)
            await wait_for(
                pilot,
                lambda: chat_panes.texts() and not chat_panes.running,
                timeout=120,
                what="the chat answers",
            )
            answers = chat_panes.texts()
            assert list(answers) == ["base", "fine-tuned"] and all(answers.values()), answers
            # a second turn: each model continues its own conversation (streamed by the real child)
            await pilot.press(*"And Eva, 25, Kyiv?", "enter")
            await wait_for(
                pilot, lambda: not chat_panes.running and chat.pending is None, timeout=120, what="the second answers"
            )
            answers = chat_panes.texts()
            assert all(text.count("You: ") == 2 for text in answers.values()), answers
            assert [m["role"] for m in chat.histories["fine-tuned"]] == ["user", "assistant"] * 2
    finally:
        for trainer in app.trainers.values():
            trainer.kill()
