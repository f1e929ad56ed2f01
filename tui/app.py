"""The Textual app: holds the paths and the trainer children, and routes between screens.

Screens: Runs (the home screen) -> New run, Live run, Checkpoints, Export, Chat.
`MlxsftApp(path)` opens the Runs screen for a folder of runs, or the Live run screen
for one run folder (with the Runs screen of its parent underneath).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from .processes import TrainerProcess
from .runs import is_run_folder

RUN_COMMANDS = {  # palette verbs on the current run: verb -> (title, help)
    "checkpoints": ("Checkpoints of", "The judge's table: verdicts, the chosen step, comparisons"),
    "eval": ("Evaluate and select", "Run mlxsft eval then mlxsft select on the run's checkpoints"),
    "export": ("Export", "PEFT, merged HF, GGUF, Ollama, LM Studio or MLX, with a parity check"),
    "chat": ("Chat with", "Talk to the tuned model, side by side with the base"),
}


class MlxsftApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "mlxsft"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("f1", "help", "Help", show=False, priority=True),  # priority: works inside text fields
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        path: str | Path = "runs",
        *,
        project_dir: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        refresh_s: float = 2.0,
    ):
        super().__init__()
        self.project_dir = Path(project_dir) if project_dir is not None else Path.cwd()
        target = Path(path)
        self.open_run: Path | None = target if is_run_folder(target) else None
        self.runs_root = target.parent if self.open_run is not None else target
        self.models_dir = self.project_dir / "models"
        self.recipes_dir = self.project_dir / "recipes"
        self.clock = clock  # injectable, so tests see fixed ages
        self.refresh_s = refresh_s
        self.trainers: dict[Path, TrainerProcess] = {}
        # The New run estimate's speeds: tok/s of earlier runs by run_estimate.speed_key (read once),
        # and this machine's matmul rate (timed once); tests set them to skip the work.
        self.measured_speeds: dict[tuple, float] | None = None
        self.matmul_flops_per_s: float | None = None

    def get_default_screen(self):
        from .screens.runs import RunsScreen

        return RunsScreen(self.runs_root)

    def on_mount(self) -> None:
        if self.open_run is not None:
            from .screens.live_run import LiveRunScreen

            self.push_screen(LiveRunScreen(self.open_run))

    # ------------------------------------------------------------ trainers
    def trainer_for(self, run_dir: Path) -> TrainerProcess | None:
        return self.trainers.get(Path(run_dir).resolve())

    def add_trainer(self, process: TrainerProcess) -> None:
        self.trainers[process.run_dir.resolve()] = process

    def launched_pids(self) -> dict[Path, int]:
        return {path: proc.pid for path, proc in self.trainers.items() if proc.poll() is None}

    def running_trainers(self) -> list[TrainerProcess]:
        return [proc for proc in self.trainers.values() if proc.poll() is None]

    def training_note(self) -> str | None:
        """A warning when trainers this app started are running: another model load competes with them."""
        running = self.running_trainers()
        if not running:
            return None
        pids = ", ".join(str(t.pid) for t in running)
        return (
            f"{len(running)} trainer(s) running (pid {pids}): this loads another copy of the model "
            "beside it, sharing memory and CPU."
        )

    def display_path(self, path: Path) -> str:
        """A path as people typed it: relative to the project folder when inside it."""
        absolute, project = Path(os.path.abspath(path)), Path(os.path.abspath(self.project_dir))
        try:
            return str(absolute.relative_to(project))
        except ValueError:
            return str(path)

    # ------------------------------------------------------------ commands
    def get_system_commands(self, screen):
        """The command palette: the app's own verbs first, then Textual's (themes, screenshot)."""
        from textual.app import SystemCommand

        yield SystemCommand("New run", "Start a fine-tune from a recipe, model and dataset", self.command_new_run)
        yield SystemCommand("Runs", "Back to the list of runs", self.command_runs)
        for run in self.run_paths():
            name = self.display_path(run)
            yield SystemCommand(
                f"Open run {name}", "Watch or replay it (Live run)", lambda run=run: self.command_open(run, "live")
            )
        run = self.current_run()
        if run is not None:
            name = self.display_path(run)
            for verb, (what, help_text) in RUN_COMMANDS.items():
                yield SystemCommand(
                    f"{what} {name}", help_text, lambda verb=verb, run=run: self.command_open(run, verb)
                )
        yield from super().get_system_commands(screen)

    def run_paths(self) -> list[Path]:
        from .runs import find_runs

        return find_runs(self.runs_root if self.runs_root.is_absolute() else self.project_dir / self.runs_root)

    def current_run(self) -> Path | None:
        """The run the screen is about (its run_dir), or the one highlighted on the Runs screen."""
        run = getattr(self.screen, "run_dir", None)
        if run is None and hasattr(self.screen, "selected"):
            summary = self.screen.selected()
            run = summary.path if summary is not None else None
        return run

    def command_new_run(self) -> None:
        from .screens.new_run import NewRunScreen

        self.push_screen(NewRunScreen(self.runs_root))

    def command_runs(self) -> None:
        from .screens.runs import RunsScreen

        while len(self.screen_stack) > 1 and not isinstance(self.screen, RunsScreen):
            self.pop_screen()

    def command_open(self, run: Path, verb: str) -> None:
        from .screens.chat import ChatScreen
        from .screens.checkpoints import CheckpointsScreen
        from .screens.export import ExportScreen
        from .screens.live_run import LiveRunScreen

        screen = {
            "live": LiveRunScreen,
            "checkpoints": CheckpointsScreen,
            "export": ExportScreen,
            "chat": ChatScreen,
            "eval": CheckpointsScreen,
        }[verb](run)
        self.push_screen(screen)
        if verb == "eval":
            self.call_after_refresh(screen.action_evaluate)

    # ------------------------------------------------------------ actions
    def action_help(self) -> None:
        from .screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss()
            return
        self.push_screen(HelpScreen(self.screen))
