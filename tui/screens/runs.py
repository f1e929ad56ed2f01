"""The home screen: every run under the runs folder, its honest status, and what to do next."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from mlxsft.errors import MlxsftError
from mlxsft.runlock import lock_holder

from ..processes import resume_run
from ..runs import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    RUNNING,
    STARTING,
    STOPPED,
    RunSummary,
    can_resume,
    delete_run,
    deletion_contents,
    format_age,
    format_tokens,
    scan_runs,
    stop_run,
)

STATUS_STYLE = {
    RUNNING: "bold green",
    STARTING: "green",
    FINISHED: "cyan",
    FAILED: "bold red",
    STOPPED: "yellow",
    INTERRUPTED: "yellow",
}
# What decides between runs first: at 80 columns method and model run off the right edge
# (the detail line below the table repeats them), never the numbers.
COLUMNS = ("run", "status", "best val", "tokens", "age", "method", "model")


class RunsScreen(Screen):
    TITLE = "Runs"
    HELP = (
        "Every run under the runs folder. **running** means its trainer process is alive; a run "
        "whose "
        "run.json still says running but whose trainer is gone shows as **stopped "
        "(interrupted)** and "
        "can be resumed from its last checkpoint."
    )
    BINDINGS = [
        Binding("n", "new_run", "New"),
        # priority: the table's own (hidden) enter binding would otherwise hide this one in the footer
        Binding("enter", "open_run", "Open", key_display="⏎", priority=True),
        Binding("o", "open_run", "Open", show=False),
        Binding("c", "checkpoints", "Ckpts"),
        Binding("e", "export", "Export"),
        Binding("t", "chat", "Chat"),
        Binding("r", "resume", "Resume"),
        Binding("s", "stop", "Stop"),
        Binding("d", "delete", "Delete"),
        Binding("f5", "rescan", "Refresh", show=False),
        Binding("q", "app.quit", "Quit", show=False),
    ]

    def __init__(self, runs_root: Path):
        super().__init__()
        self.runs_root = Path(runs_root)
        self.summaries: list[RunSummary] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="run-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.app.display_path(self.runs_root)
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.action_rescan()
        self.set_interval(self.app.refresh_s, self.action_rescan)

    def on_screen_resume(self) -> None:
        self.action_rescan()

    # ------------------------------------------------------------ scanning
    def action_rescan(self) -> None:
        self.scan()

    @work(thread=True, exclusive=True, group="scan")
    def scan(self) -> None:
        summaries = scan_runs(self.runs_root, self.app.launched_pids())
        self.app.call_from_thread(self.show, summaries)

    def show(self, summaries: list[RunSummary]) -> None:
        if summaries != self.summaries:
            self.app.measured_speeds = None  # the New run estimate re-reads the runs' speeds
        table = self.query_one(DataTable)
        selected = self.selected()
        same_rows = [s.path for s in summaries] == [s.path for s in self.summaries] and table.row_count
        self.summaries = summaries
        now = self.app.clock()
        if same_rows:
            # Update cells in place: clearing the table would reset its scroll and cursor every refresh.
            for s in summaries:
                for column, value in zip(COLUMNS, self.cells(s, now), strict=True):
                    table.update_cell(str(s.path), column, value)
        else:
            table.clear()
            for s in summaries:
                table.add_row(*self.cells(s, now), key=str(s.path))
            if selected is not None:
                for i, s in enumerate(summaries):
                    if s.path == selected.path:
                        table.move_cursor(row=i, animate=False)
        self.show_detail()

    def cells(self, s: RunSummary, now: float) -> tuple:
        best = "-" if s.best_val_loss is None else f"{s.best_val_loss:.4f}"
        status = Text(s.status, style=STATUS_STYLE.get(s.status, "dim"))
        # Long names would push the numbers off an 80-column screen; the detail line has it in full.
        room = max(16, self.size.width - 50)
        name = s.name if len(s.name) <= room else s.name[: room - 1] + "…"
        return (
            name,
            status,
            best,
            format_tokens(s.tokens_seen),
            format_age(s.created, now),
            s.method,
            self.model_name(s.model),
        )

    def model_name(self, model: str) -> str:
        """A local model folder by its name; a hub id as it is."""
        path = Path(model)
        local = path if path.is_absolute() else self.app.project_dir / path
        return path.name if local.is_dir() else model

    def selected(self) -> RunSummary | None:
        table = self.query_one(DataTable)
        if not self.summaries or table.row_count == 0:
            return None
        row = min(max(table.cursor_row, 0), len(self.summaries) - 1)
        return self.summaries[row]

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.show_detail()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Offer only actions that can work on the highlighted run (others shown greyed out)."""
        s = self.selected() if self.is_mounted else None
        if s is None:
            return True
        if action == "resume":
            return None if can_resume(s) else True
        if action == "stop":
            return True if s.is_live else None
        if action == "delete":
            return None if s.is_live else True
        return True

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def show_detail(self) -> None:
        detail = self.query_one("#run-detail", Static)
        s = self.selected()
        if s is None:
            root = self.app.display_path(self.runs_root)
            detail.update(
                f"No runs in {root}/ yet. Press [b]n[/b] to start one "
                "(or run `mlxsft demo` for a one-minute offline example)."
            )
            return
        text = Text()
        text.append(self.app.display_path(s.path), style="bold")
        text.append(f"  {s.method} on {self.model_name(s.model)}")
        if s.last_step is not None and s.total_steps:
            text.append(f"  step {s.last_step}/{s.total_steps}")
        if s.pid and s.is_live:
            text.append(f"  pid {s.pid}")
        why_not = can_resume(s) if s.status in (STOPPED, INTERRUPTED, FAILED) else None
        if s.error:
            text.append(f"\n{s.error}", style="red")
        if why_not:
            text.append(f"\nNo resume: {why_not}", style="yellow")
        elif s.status == INTERRUPTED:
            text.append(
                "\nThe trainer is gone without a final event (killed or crashed): press r to "
                "resume "
                "from the last checkpoint.",
                style="yellow",
            )
        detail.update(text)

    # ------------------------------------------------------------ actions
    def _need_run(self) -> RunSummary | None:
        s = self.selected()
        if s is None:
            self.notify("No run selected.", severity="warning")
        return s

    def action_new_run(self) -> None:
        from .new_run import NewRunScreen

        self.app.push_screen(NewRunScreen(self.runs_root))

    def action_open_run(self) -> None:
        from .live_run import LiveRunScreen

        if s := self._need_run():
            self.app.push_screen(LiveRunScreen(s.path))

    def action_checkpoints(self) -> None:
        from .checkpoints import CheckpointsScreen

        if s := self._need_run():
            self.app.push_screen(CheckpointsScreen(s.path))

    def action_export(self) -> None:
        from .export import ExportScreen

        if s := self._need_run():
            self.app.push_screen(ExportScreen(s.path))

    def action_chat(self) -> None:
        from .chat import ChatScreen

        if s := self._need_run():
            self.app.push_screen(ChatScreen(s.path))

    def action_resume(self) -> None:
        from .live_run import LiveRunScreen

        s = self._need_run()
        if s is None:
            return
        why_not = can_resume(s)
        if why_not is not None:
            self.notify(why_not[0].upper() + why_not[1:], severity="warning")
            return
        holder = lock_holder(s.path)
        if holder is not None:
            self.notify(f"Trainer pid {holder} is training this run; stop it (s) before resuming.", severity="error")
            return
        self.app.add_trainer(resume_run(s.path, cwd=self.app.project_dir))
        self.notify(f"Resuming {s.name} from its last checkpoint.")
        self.app.push_screen(LiveRunScreen(s.path))

    def action_stop(self) -> None:
        s = self._need_run()
        if s is None:
            return
        try:
            trainer = self.app.trainer_for(s.path)
            if trainer is not None and trainer.poll() is None:
                trainer.stop()
            else:
                stop_run(s)
        except MlxsftError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.notify(f"Stopping {s.name}: it saves a checkpoint, then exits.")
        self.action_rescan()

    def action_delete(self) -> None:
        from .confirm import ConfirmScreen

        s = self._need_run()
        if s is None:
            return
        if s.is_live:
            self.notify("This run is still running; stop it first (s).", severity="warning")
            return

        def answer(yes: bool | None) -> None:
            if not yes:
                return
            try:
                delete_run(s)
            except (MlxsftError, OSError) as exc:
                self.notify(str(exc), severity="error")
                return
            self.notify(f"Deleted {self.app.display_path(s.path)}.")
            self.action_rescan()

        contents = "\n".join(f"  • {line}" for line in deletion_contents(s.path))
        question = (
            f"Delete the run {self.app.display_path(s.path)}?\n\nThis removes from disk:\n{contents}\n\n"
            "Exports inside the run folder go with it; copy any you want to keep first. "
            "This cannot be undone."
        )
        self.app.push_screen(ConfirmScreen(question, yes="Delete"), answer)
