"""Export: pick a format and options, run `mlxsft export`/`fuse`/`push` as a child, show its parity."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Button,
    Checkbox,
    Footer,
    Header,
    Input,
    Label,
    ProgressBar,
    RichLog,
    Select,
    Static,
)
from textual.worker import get_current_worker

from mlxsft.rundir import RunDir

from ..export_job import (
    DTYPES,
    FORMAT_HELP,
    FORMATS,
    QUANTS,
    USES_DTYPE,
    USES_QUANT,
    ExportOptions,
    default_out,
    describe_parity,
    export_command,
    push_args,
    read_parity,
)
from ..processes import StreamingChild
from ..runs import python_command, read_meta


class ExportScreen(Screen):
    TITLE = "Export"
    HELP = (
        "Runs the same command you could type (shown above the log) in a child process and shows "
        "its "
        "output. Every export is checked against the trained adapter (logits on fixed prompts) and "
        "writes parity.json; the result appears under the form. The checkpoint defaults to the one "
        "chosen on the Checkpoints screen. Push uploads the run's PEFT adapter (or the export at "
        "'out') to the Hugging Face hub with a model card; it needs HF_TOKEN or `hf auth login`."
    )
    BINDINGS = [
        Binding("ctrl+e", "export", "Export", priority=True),
        Binding("ctrl+x", "cancel", "Cancel export", priority=True),
        Binding("ctrl+u", "push", "Push to hub", priority=True),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: Path, step: int | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.step = step  # the checkpoint to preselect (from the Checkpoints screen), else the chosen one
        self.child: StreamingChild | None = None
        self.out_edited = False
        self.started_at: float | None = None

    def compose(self) -> ComposeResult:
        run = RunDir(self.run_dir)
        chosen = read_meta(self.run_dir).get("chosen_step")
        checkpoints = [("latest adapters", "latest"), ("best (lowest val loss)", "best")]
        checkpoints += [(f"step {s}" + (" (chosen)" if s == chosen else ""), str(s)) for s in run.checkpoint_steps()]
        yield Header()
        with VerticalScroll(id="export-form"):
            with Horizontal(classes="field-row"):
                yield Label("format", classes="field-label")
                yield Select(
                    [(f"{f}: {FORMAT_HELP[f]}", f) for f in FORMATS],
                    value="peft",
                    allow_blank=False,
                    id="export-format",
                    compact=True,
                )
            with Horizontal(classes="field-row"):
                yield Label("checkpoint", classes="field-label")
                yield Select(
                    checkpoints,
                    value=str(self.step if self.step is not None else chosen)
                    if (self.step is not None or chosen is not None)
                    else "latest",
                    allow_blank=False,
                    id="export-checkpoint",
                    compact=True,
                )
            with Horizontal(classes="field-row"):
                yield Label("out", classes="field-label")
                yield Input(
                    self.app.display_path(default_out(self.run_dir, "peft")),
                    id="export-out",
                    compact=True,
                )
            with Horizontal(classes="field-row", id="row-dtype"):
                yield Label("dtype", classes="field-label")
                yield Select(
                    [(d, d) for d in DTYPES],
                    prompt="the model's own",
                    id="export-dtype",
                    compact=True,
                )
            with Horizontal(classes="field-row", id="row-quant"):
                yield Label("quantization", classes="field-label")
                yield Select([(q, q) for q in QUANTS], value="f16", allow_blank=False, id="export-quant", compact=True)
            with Horizontal(classes="field-row", id="row-shard"):
                yield Label("max shard size", classes="field-label")
                yield Input("5GB", id="export-shard", compact=True)
            with Horizontal(classes="field-row checks"):
                yield Checkbox("check parity", True, id="export-verify", compact=True)
                yield Checkbox("replace earlier export", False, id="export-force", compact=True)
                yield Checkbox("dequantize", False, id="export-dequantize", compact=True)
            yield Static("", id="export-command")
            yield Button("Export (ctrl+e)", variant="primary", id="export-start")
            with Horizontal(classes="field-row"):
                yield Label("hub repo", classes="field-label")
                yield Input(placeholder="user/name", id="push-repo", compact=True)
            with Horizontal(classes="field-row checks"):
                yield Checkbox("private", False, id="push-private", compact=True)
                yield Checkbox("push the export at out", False, id="push-export", compact=True)
            yield Button("Push to hub (ctrl+u)", id="push-start")
        with Horizontal(id="export-status-row"):
            yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="export-bar")
            yield Static("ready", id="export-state")
        yield Static("", id="parity-result")
        yield RichLog(id="export-log", wrap=True, markup=False, max_lines=5000)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.app.display_path(self.run_dir)
        self.query_one("#export-bar").display = False
        self.update_form()

    # ------------------------------------------------------------ the form
    def options(self) -> ExportOptions:
        fmt = self.query_one("#export-format", Select).value
        dtype = self.query_one("#export-dtype", Select).value
        checkpoint = self.query_one("#export-checkpoint", Select).value
        return ExportOptions(
            format=fmt,
            out=Path(self.query_one("#export-out", Input).value.strip()),
            checkpoint=None if checkpoint == "latest" else str(checkpoint),
            dtype=None if dtype is Select.NULL else str(dtype),
            max_shard_size=self.query_one("#export-shard", Input).value.strip() or None,
            dequantize=self.query_one("#export-dequantize", Checkbox).value,
            verify=self.query_one("#export-verify", Checkbox).value,
            force=self.query_one("#export-force", Checkbox).value,
            quant=str(self.query_one("#export-quant", Select).value),
        )

    def update_form(self) -> None:
        opts = self.options()
        self.query_one("#row-dtype").display = opts.format in USES_DTYPE
        self.query_one("#row-quant").display = opts.format in USES_QUANT
        self.query_one("#row-shard").display = opts.format == "hf"
        self.query_one("#export-dequantize").display = opts.format == "fused"
        command = export_command(Path(self.app.display_path(self.run_dir)), opts)
        self.query_one("#export-command", Static).update("$ mlxsft " + shlex.join(command[3:]))

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "export-format" and not self.out_edited:
            out = self.query_one("#export-out", Input)
            out.value = self.app.display_path(default_out(self.run_dir, str(event.value)))
            self.out_edited = False
        self.update_form()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "export-out" and event.input.has_focus:
            self.out_edited = True
        self.update_form()

    def on_checkbox_changed(self, _event: Checkbox.Changed) -> None:
        self.update_form()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export-start":
            self.action_export()
        elif event.button.id == "push-start":
            self.action_push()

    # ------------------------------------------------------------ running
    def action_export(self) -> None:
        if self.child is not None:
            self.notify("An export is already running (ctrl+x cancels it).", severity="warning")
            return
        opts = self.options()
        if not str(opts.out) or str(opts.out) == ".":
            self.notify("Give an output path.", severity="warning")
            return
        out = opts.out if opts.out.is_absolute() else self.app.project_dir / opts.out
        command = export_command(self.run_dir.resolve(), ExportOptions(**{**opts.__dict__, "out": out}))
        result = self.query_one("#parity-result", Static)
        result.update("")
        result.set_classes("")  # no colour left from the previous export
        log = self.query_one("#export-log", RichLog)
        log.write("$ mlxsft " + shlex.join(command[3:]))
        self.set_running(True, f"exporting {opts.format}…")
        self.run_export(command, out, opts.format)

    def action_push(self) -> None:
        if self.child is not None:
            self.notify("A command is already running (ctrl+x cancels it).", severity="warning")
            return
        repo = self.query_one("#push-repo", Input).value.strip()
        if "/" not in repo:
            self.notify("Give the hub repository as user/name.", severity="warning")
            return
        opts = self.options()
        out = opts.out if opts.out.is_absolute() else self.app.project_dir / opts.out
        if self.query_one("#push-export", Checkbox).value:
            args = push_args(out, repo, private=self.query_one("#push-private", Checkbox).value)
        else:
            args = push_args(
                self.run_dir.resolve(),
                repo,
                private=self.query_one("#push-private", Checkbox).value,
                checkpoint=opts.checkpoint,
            )
        command = python_command(*args)
        self.query_one("#parity-result", Static).update("")
        self.query_one("#export-log", RichLog).write("$ mlxsft " + shlex.join(args))
        self.set_running(True, f"pushing to {repo}…")
        self.run_export(command, out, None)

    def set_running(self, running: bool, state: str) -> None:
        self.query_one("#export-bar").display = running
        self.query_one("#export-start", Button).disabled = running
        self.query_one("#push-start", Button).disabled = running
        self.query_one("#export-state", Static).update(state)
        self.started_at = time.time() if running else None

    @work(thread=True, exclusive=True, group="export")
    def run_export(self, command: list[str], out: Path, fmt: str | None) -> None:
        worker = get_current_worker()
        started = time.time()
        child = self.child = StreamingChild(command, cwd=self.app.project_dir)
        for line in child.lines():
            if worker.is_cancelled:
                child.cancel()
                break
            self.app.call_from_thread(self.query_one("#export-log", RichLog).write, line)
        code = child.wait()
        # Only a parity.json this export wrote counts (an older one would show a stale PASSED).
        parity = read_parity(out, fmt, since=started) if fmt is not None else None
        self.app.call_from_thread(self.finished, code, out, fmt, parity)

    def finished(self, code: int, out: Path, fmt: str | None, parity=None) -> None:
        elapsed = time.time() - (self.started_at or time.time())
        self.child = None
        if fmt is None:  # a push: the log says where it went
            done = code == 0
            self.set_running(False, "pushed" if done else f"push failed (exit code {code}); see the log")
            self.notify("Pushed to the hub." if done else "Push failed.", severity="information" if done else "error")
            return
        result = self.query_one("#parity-result", Static)
        result.set_class(False, "parity-ok")
        result.set_class(False, "parity-bad")
        if parity is not None:
            result.update(describe_parity(parity))
            result.set_class(parity.passed and not parity.skipped, "parity-ok")
            result.set_class(not parity.passed, "parity-bad")
        elif code == 0:
            result.update("no parity.json was written (verify was off, or the exporter does not write one)")
        else:
            result.update("no parity result: this export failed before its parity check (see the log)")
            result.set_class(True, "parity-bad")
        if code == 0:
            self.set_running(False, f"done in {elapsed:.0f}s: {self.app.display_path(out)}")
            self.notify(f"Exported {fmt} to {self.app.display_path(out)}.")
        else:
            self.set_running(False, f"failed (exit code {code}); see the log")
            self.notify(f"Export failed (exit code {code}).", severity="error")

    def action_cancel(self) -> None:
        if self.child is None:
            return
        self.child.cancel()
        self.notify("Export cancelled.")

    def on_unmount(self) -> None:
        if self.child is not None:
            self.child.cancel()
