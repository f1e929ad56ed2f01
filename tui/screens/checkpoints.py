"""Checkpoints: metrics per saved step, side-by-side generations, and the chosen checkpoint."""

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
from ..checkpoint_table import CheckpointRow, checkpoint_rows, eval_columns, read_eval_results
from ..run_state import RunState, replay
from ..widgets.generation_panes import GenerationPanes

MAX_COMPARED = 3


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


class CheckpointsScreen(Screen):
    TITLE = "Checkpoints"
    HELP = (
        "Every saved checkpoint with its validation metrics (and the eval battery's results when "
        "RUN/eval/results.json exists). Mark up to three with **space**, type a prompt and press "
        "**enter** to see their answers side by side (greedy decoding, next to the base model "
        "unless "
        "**b** turns it off). **c** records the highlighted checkpoint as the run's chosen one "
        "(run.json `chosen_step`), which Export and Chat then use by default."
    )
    BINDINGS = [
        Binding("space", "mark", "Mark"),
        Binding("c", "choose", "Choose"),
        Binding("b", "toggle_base", "Base on/off"),
        Binding("g", "generate", "Generate"),
        Binding("p", "focus_prompt", "Prompt", show=False),
        Binding("e", "export", "Export"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.rows: list[CheckpointRow] = []
        self.marked: list[int] = []
        self.include_base = True

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="ckpt-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="compare-bar"):
            yield Input(
                placeholder="Prompt to compare the marked checkpoints on (enter)",
                id="compare-prompt",
            )
        yield Static("", id="compare-info")
        yield GenerationPanes(
            "Mark checkpoints with space, then type a prompt and press enter.", id="compare"
        )
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.app.display_path(self.run_dir)
        self.load()

    @work(thread=True, exclusive=True, group="load")
    def load(self) -> None:
        events = self.run_dir / "events.jsonl"
        state = replay(events) if events.is_file() else RunState()
        rows = checkpoint_rows(self.run_dir, state, read_eval_results(self.run_dir))
        self.app.call_from_thread(self.show, rows)

    def show(self, rows: list[CheckpointRow]) -> None:
        first = not self.rows
        self.rows = rows
        if first and not self.marked:
            self.marked = self._default_marks()
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        evals = eval_columns(rows)
        table.add_columns("", "step", "val loss", "ppl", "tok acc", "train loss", *evals, "")
        for row in rows:
            notes = Text()
            if row.is_best:
                notes.append("★ best ", style="yellow")
            if row.is_chosen:
                notes.append("✓ chosen ", style="green")
            if not row.exists:
                notes.append("deleted", style="dim")
            mark = Text("◆", style="bold magenta") if row.step in self.marked else Text(" ")
            acc = None if row.token_accuracy is None else 100 * row.token_accuracy
            table.add_row(
                mark,
                str(row.step),
                _num(row.val_loss),
                _num(row.perplexity, ".2f"),
                _num(acc, ".1f"),
                _num(row.train_loss),
                *(_num(row.eval_metrics.get(c)) for c in evals),
                notes,
                key=str(row.step),
            )
        if rows:
            table.move_cursor(row=min(max(cursor, 0), len(rows) - 1), animate=False)
        self.show_info()

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
        if not row.exists:
            self.notify("That checkpoint is no longer on disk.", severity="warning")
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
        self.show(self.rows)

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_mark()

    def action_choose(self) -> None:
        row = self.highlighted()
        if row is None or not row.exists:
            self.notify("Highlight a checkpoint that is on disk.", severity="warning")
            return
        RunDir(self.run_dir).update_meta(chosen_step=row.step)
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
        panes.generate(
            generate.command(self.run_dir, variants, [prompt], max_tokens=96),
            [(label, label) for label, _ in variants],
            key_of=lambda r: r["label"],
            cwd=self.app.project_dir,
        )

    def on_generation_panes_finished(self, event: GenerationPanes.Finished) -> None:
        if event.error:
            self.notify(f"Generation failed: {event.error}", severity="error")

    def action_export(self) -> None:
        from .export import ExportScreen

        self.app.push_screen(ExportScreen(self.run_dir))
