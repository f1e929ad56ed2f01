"""Checkpoints: the judge's table (base row, verdict per checkpoint, chosen step), comparisons.

Rows and verdicts come from `tui.checkpoint_table`, which reads RUN/eval/results.json with
the judge's reader and judges it with the judge's rules. **v** runs `mlxsft eval RUN` and
then `mlxsft select RUN` in a child process, showing its progress lines, and reloads.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from mlxsft.rundir import RunDir

from .. import generate
from ..checkpoint_table import (
    CheckpointRow,
    CheckpointTable,
    cell,
    checkpoint_table,
    fit_columns,
    header,
    present_columns,
)
from ..data_prompts import system_prompt
from ..processes import StreamingChild
from ..run_state import RunState, replay
from ..runs import python_command
from ..widgets.generation_panes import GenerationPanes

MAX_COMPARED = 3
PANEL_WIDTH = 40  # the judge panel beside the table on wide screens
MARKS_LEGEND = "◆ compared  ✓ chosen (run.json)  → judge's pick  ★ lowest valid loss in training"


class CheckpointsScreen(Screen):
    TITLE = "Checkpoints"
    HELP = (
        "The judge's table: the base model and every saved checkpoint with the judge's numbers "
        "(validation and OOD loss, general-text probe and KL against the base, entropy, distinct-2, "
        "task metrics) and its verdict (still learning, plateau, overshooting). The side panel "
        "explains the highlighted row and the rule that chose. **v** evaluates and selects "
        "(`mlxsft eval` then `mlxsft select`, in a child process). Marks: " + MARKS_LEGEND + ". "
        "Mark up to three with **space**, type a prompt and press **enter** to see their answers "
        "side by side (next to the base model unless **b** turns it off). **c** records the "
        "highlighted checkpoint as chosen (run.json `chosen_step`); **e** exports the highlighted "
        "one. On narrow screens columns are dropped in this order: train, dist-2, entropy, "
        "probe Δ, task metrics, KL, ood."
    )
    BINDINGS = [
        Binding("space", "mark", "Mark"),
        Binding("enter", "mark", "Mark", show=False),
        Binding("v", "evaluate", "Eval+select"),
        Binding("c", "choose", "Choose"),
        Binding("b", "toggle_base", "Base on/off"),
        Binding("g", "generate", "Generate"),
        Binding("p", "focus_prompt", "Prompt", show=False),
        Binding("e", "export", "Export this"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.table = CheckpointTable(rows=[])
        self.marked: list[int] = []
        self.include_base = True
        self.child: StreamingChild | None = None

    @property
    def rows(self) -> list[CheckpointRow]:
        return self.table.rows

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="ckpt-top"):
            yield DataTable(id="ckpt-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="judge-panel")
        yield Static("", id="judge-progress")
        with Horizontal(id="compare-bar"):
            yield Input(
                placeholder="Prompt to compare the marked checkpoints on (enter)",
                id="compare-prompt",
            )
        yield Static("", id="compare-info")
        yield GenerationPanes("Mark checkpoints with space, then type a prompt and press enter.", id="compare")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.app.display_path(self.run_dir)
        self.query_one("#judge-panel", Static).border_title = "Judge"
        self.load()

    def on_resize(self) -> None:
        if self.rows:
            self.show(self.table)

    @work(thread=True, exclusive=True, group="load")
    def load(self) -> None:
        events = self.run_dir / "events.jsonl"
        state = replay(events) if events.is_file() else RunState()
        self.app.call_from_thread(self.show, checkpoint_table(self.run_dir, state))

    def table_width(self) -> int:
        wide = self.size.width >= 110
        return self.size.width - (PANEL_WIDTH if wide else 0) - 2

    def show(self, table: CheckpointTable) -> None:
        first = not self.rows
        self.table = table
        if first and not self.marked:
            self.marked = self._default_marks()
        widget = self.query_one(DataTable)
        cursor = widget.cursor_row
        widget.clear(columns=True)
        keys = fit_columns(present_columns(table.rows), self.table_width())
        for key in keys:
            widget.add_column(header(key), key=key)
        for row in table.rows:
            cells = [self._marks(row) if key == "mark" else self._cell(row, key) for key in keys]
            widget.add_row(*cells, key=str(row.step))
        if table.rows:
            widget.move_cursor(row=min(max(cursor, 0), len(table.rows) - 1), animate=False)
        self.show_info()
        self.show_panel()

    def _marks(self, row: CheckpointRow) -> Text:
        marks = Text()
        marks.append("◆" if row.step in self.marked else " ", style="bold magenta")
        marks.append("✓" if row.is_chosen else " ", style="bold green")
        marks.append("→" if row.is_recommended and not row.is_chosen else " ", style="cyan")
        marks.append("★" if row.is_best else " ", style="yellow")
        if not row.exists:
            marks.append("✗", style="dim")
        return marks

    @staticmethod
    def _cell(row: CheckpointRow, key: str) -> Text | str:
        text = cell(row, key)
        if key == "verdict":
            style = {"overshooting": "red", "plateau": "yellow", "still learning": "green"}.get(text, "dim")
            return Text(text, style=style)
        return text

    def show_panel(self) -> None:
        t = self.table
        panel = self.query_one("#judge-panel", Static)
        lines = []
        if t.error:
            lines.append(f"[b]results.json:[/b] {t.error}")
        if not t.evaluated:
            lines.append("Not judged yet: press v to run `mlxsft eval` and `mlxsft select` here.")
        else:
            chosen = next((r for r in t.rows if r.is_chosen), None)
            pick = next((r for r in t.rows if r.is_recommended), None)
            if chosen is not None:
                lines.append(f"[b]Chosen:[/b] step {chosen.step} (run.json)")
            if pick is not None and pick is not chosen:
                lines.append(f"[b]Judge's pick:[/b] step {pick.step}")
        row = self.highlighted()
        if row is not None and row.explanation:
            lines.append("[b]This row:[/b] " + row.explanation)
        if t.evaluated:
            lines.append("[b]Why:[/b] " + "; ".join(t.reasons))
            lines.append("[b]Rule:[/b] " + t.rule)
        panel.update("\n".join(_escape(line) for line in lines))

    def _default_marks(self) -> list[int]:
        existing = [r for r in self.rows if r.exists]
        picks = [r.step for r in existing if r.is_chosen] or [r.step for r in existing if r.is_best]
        if existing and existing[-1].step not in picks:
            picks.append(existing[-1].step)
        return picks[:MAX_COMPARED]

    def show_info(self) -> None:
        marked = ", ".join(f"step {s}" for s in self.marked) or "none"
        base = "base model + " if self.include_base else ""
        text = f"compare: {base}{marked}" if self.rows else "This run has no checkpoints yet."
        self.query_one("#compare-info", Static).update(text)

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.show_panel()

    def highlighted(self) -> CheckpointRow | None:
        table = self.query_one(DataTable)
        if not self.rows:
            return None
        return self.rows[min(max(table.cursor_row, 0), len(self.rows) - 1)]

    # ------------------------------------------------------------ actions
    def action_mark(self) -> None:
        row = self.highlighted()
        if row is None:
            return
        if not row.exists or row.step == 0:
            self.notify("Mark a checkpoint on disk (the base is compared when b is on).", severity="warning")
            return
        if row.step in self.marked:
            self.marked.remove(row.step)
        elif len(self.marked) >= MAX_COMPARED:
            self.notify(
                f"At most {MAX_COMPARED} checkpoints side by side; unmark one first.",
                severity="warning",
            )
            return
        else:
            self.marked.append(row.step)
        self.show(self.table)

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_mark()

    def action_choose(self) -> None:
        row = self.highlighted()
        if row is None or not row.exists or row.step == 0:
            self.notify("Highlight a checkpoint that is on disk.", severity="warning")
            return
        RunDir(self.run_dir).update_meta(chosen_step=row.step, chosen_rule="picked by hand in mlxsft tui")
        self.notify(f"Step {row.step} is now the chosen checkpoint (run.json chosen_step).")
        self.load()

    def action_toggle_base(self) -> None:
        self.include_base = not self.include_base
        self.show_info()

    def action_focus_prompt(self) -> None:
        self.query_one("#compare-prompt", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "compare-prompt":
            self.action_generate()

    def action_generate(self) -> None:
        prompt = self.query_one("#compare-prompt", Input).value.strip()
        if not prompt:
            self.notify("Type a prompt first.", severity="warning")
            self.action_focus_prompt()
            return
        if not self.marked and not self.include_base:
            self.notify("Mark at least one checkpoint (space).", severity="warning")
            return
        variants = [("base", "base")] if self.include_base else []
        variants += [(f"step {s}", str(s)) for s in self.marked]
        panes = self.query_one("#compare", GenerationPanes)
        if note := self.app.training_note():
            self.notify(note, severity="warning")
        panes.generate(
            generate.command(self.run_dir, variants, [prompt], max_tokens=96, system=system_prompt(self.run_dir)),
            [(label, label) for label, _ in variants],
            key_of=lambda r: r["label"],
            cwd=self.app.project_dir,
        )

    def on_generation_panes_finished(self, event: GenerationPanes.Finished) -> None:
        if event.error:
            self.notify(f"Generation failed: {event.error}", severity="error")

    def action_export(self) -> None:
        from .export import ExportScreen

        row = self.highlighted()
        step = row.step if row is not None and row.exists and row.step else None
        self.app.push_screen(ExportScreen(self.run_dir, step=step))

    # ------------------------------------------------------------ eval + select
    def action_evaluate(self) -> None:
        if self.child is not None:
            self.notify("The evaluation is still running.", severity="warning")
            return
        run = str(self.run_dir)
        self.query_one("#judge-progress", Static).update("evaluating: starting mlxsft eval…")
        self.run_judge([python_command("eval", run), python_command("select", run)])

    @work(thread=True, exclusive=True, group="judge")
    def run_judge(self, commands: list[list[str]]) -> None:
        """Each command in turn in a child process; its output lines are the progress."""
        last = ""
        for command in commands:
            self.child = StreamingChild(command, cwd=self.app.project_dir)
            for line in self.child.lines():
                if line.strip():
                    last = line.strip()
                    self.app.call_from_thread(self.progress, f"{command[3]}: {last}")
            code = self.child.wait()
            if code != 0:
                self.child = None
                self.app.call_from_thread(self.judge_done, f"mlxsft {command[3]} failed: {last}")
                return
        self.child = None
        self.app.call_from_thread(self.judge_done, None)

    def progress(self, text: str) -> None:
        self.query_one("#judge-progress", Static).update(text)

    def judge_done(self, error: str | None) -> None:
        progress = self.query_one("#judge-progress", Static)
        if error:
            progress.update(error)
            self.notify(error, severity="error")
        else:
            progress.update("evaluated and selected; the table is up to date.")
        self.load()

    def on_unmount(self) -> None:
        if self.child is not None:
            self.child.cancel()


def _escape(line: str) -> str:
    """Console markup in a line, with the judge's own text (which may hold [ ]) escaped."""
    from rich.markup import escape

    if line.startswith("[b]"):
        head, _, rest = line.partition("[/b]")
        return head + "[/b]" + escape(rest)
    return escape(line)
