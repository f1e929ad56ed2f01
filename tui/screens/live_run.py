"""Live run: loss curves, metrics, progress with ETA, checkpoints, samples and the log.

The screen only renders events: a worker thread tails RUN/events.jsonl (from byte 0,
so reattaching replays the whole run) and the trainer child's log, and hands new
events to the UI thread. It also watches the trainer process, so a trainer that dies
without a final event (a crash, an out-of-memory abort, a bad recipe at start-up) is
reported as such instead of "running" forever.
"""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar, RichLog, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from mlxsft.rundir import RunDir
from mlxsft.runlock import lock_holder

from .. import generate
from ..data_prompts import sample_prompts, system_prompt
from ..run_estimate import format_duration
from ..run_state import EventTail, LineTail, RunState
from ..runs import LAUNCH_LOG, exit_reason, last_log_error, pid_alive, read_meta
from ..widgets.generation_panes import GenerationPanes
from ..widgets.loss_chart import LossChart
from ..widgets.run_stats import RunStats

POLL_S = 0.25
NUM_SAMPLE_PROMPTS = 3  # the first user turns of the validation set, the same every time
STATUS_CLASSES = ("running", "finished", "stopped", "failed", "waiting")


class LiveRunScreen(Screen):
    TITLE = "Live run"
    HELP = (
        "Watches one run. Curves, numbers and the log come from the run's events.jsonl; opening a "
        "finished run replays it. **s** asks the trainer to stop: it finishes the current step, "
        "saves a "
        "checkpoint and exits (press s again to stop at once, without that checkpoint). **g** "
        "generates "
        "from the latest checkpoint on a few fixed prompts from the validation set (Samples tab).\n\n"
        "The chart: **z** maximises it (again to restore), **y** switches between a log and a linear "
        "y-axis, **m** cycles the smoothing of the training curve (the raw curve stays, dimmed), **w** "
        "cycles the window (the whole run, the last half, the last fifth). The y-axis is fitted to "
        "what is visible, ignoring the highest 5% of points (the first reports run off the top); "
        "validation points are drawn on top in orange."
    )
    BINDINGS = [
        Binding("s", "stop", "Stop & save"),
        Binding("c", "checkpoints", "Checkpoints"),
        Binding("e", "export", "Export"),
        Binding("t", "chat", "Chat"),
        Binding("g", "sample", "Sample"),
        Binding("z", "maximise_chart", "Zoom chart"),
        Binding("y", "chart('toggle_log_y')", "Log y", show=False),
        Binding("m", "chart('cycle_smoothing')", "Smoothing", show=False),
        Binding("w", "chart('cycle_window')", "Window", show=False),
        Binding("l", "show_tab('log-tab')", "Log", show=False),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.state = RunState()
        self.process_note: str | None = None  # what the trainer process did, beyond the events
        self.stop_requested_at: float | None = None
        self.log_lines_shown = 0
        self.samples_shown: int | None = None  # the checkpoint step whose samples the tab shows

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="run-status")
        with Horizontal(id="live-top"):
            yield LossChart(id="loss-chart")
            yield RunStats(id="run-stats")
        with Horizontal(id="progress-row"):
            yield ProgressBar(total=1, show_eta=False, id="run-progress")
            yield Static("", id="run-eta")
        with TabbedContent(id="live-tabs", initial="log-tab"):
            with TabPane("Log", id="log-tab"):
                yield RichLog(id="run-log", wrap=True, max_lines=5000, markup=False)
            with TabPane("Samples", id="samples-tab"):
                yield GenerationPanes(
                    "At each checkpoint the trainer answers the same few validation prompts; they "
                    "appear here. Press g to generate from the latest checkpoint now.",
                    id="samples",
                )
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.app.display_path(self.run_dir)
        self.render_state()
        self.watch_run()

    # ------------------------------------------------------------ watching
    @work(thread=True, exclusive=True, group="watch")
    def watch_run(self) -> None:
        worker = get_current_worker()
        events = EventTail(self.run_dir / "events.jsonl")
        log = LineTail(self.run_dir / LAUNCH_LOG)
        while not worker.is_cancelled:
            new_events = events.read_events()
            skipped, events.skipped = events.skipped, []
            new_log = [line for line in log.read_lines() if line.strip()]
            note = self.check_process()
            if new_events or new_log or note != self.process_note:
                self.app.call_from_thread(self.apply, new_events, new_log, note)
            if skipped:
                self.app.call_from_thread(self.report_skipped, skipped)
            time.sleep(POLL_S)

    def check_process(self) -> str | None:
        """A note when the trainer process ended without the final event saying so."""
        if self.state.is_over:
            return None
        trainer = self.app.trainer_for(self.run_dir)
        if trainer is not None:
            code = trainer.poll()
            if code is None:
                return None
            return exit_reason(code, last_log_error(self.run_dir))
        meta = read_meta(self.run_dir)
        if lock_holder(self.run_dir) is not None:
            return None  # a trainer (maybe started elsewhere) holds the run
        if meta.get("status") == "running" and not pid_alive(meta.get("pid")):
            return (
                "interrupted: run.json says running but the trainer process is gone; resume it from the Runs screen (r)"
            )
        if not meta and not (self.run_dir / "events.jsonl").exists():
            error = last_log_error(self.run_dir)
            if error and "error" in error.lower():
                return f"the trainer did not start: {error}"
        return None

    def apply(self, events: list, log_lines: list[str], note: str | None) -> None:
        bad = []
        for event in events:
            try:
                self.state.apply(event)
            except (TypeError, ValueError) as exc:  # a field of the wrong type (a hand-edited file)
                bad.append(f"{type(event).__name__} with a bad field ({exc})")
        if bad:
            self.report_skipped(bad)
        if note != self.process_note:
            self.refresh_bindings()
        self.process_note = note
        log = self.query_one("#run-log", RichLog)
        for line in self.state.log[self.log_lines_shown :]:
            log.write(line)
        self.log_lines_shown = len(self.state.log)
        for line in log_lines:
            if not line.startswith("$ ") and not line.startswith("Run "):
                log.write(f"[trainer] {line}")
        self.render_state()

    def report_skipped(self, skipped: list[str]) -> None:
        """Lines of events.jsonl the core's decoder could not read: shown, never fatal."""
        log = self.query_one("#run-log", RichLog)
        for line in skipped:
            log.write(f"[skipped] {line}")
        more = f" (and {len(skipped) - 1} more, in the log)" if len(skipped) > 1 else ""
        self.notify(f"Skipped an event line: {skipped[0]}{more}", severity="warning", timeout=8)

    # ------------------------------------------------------------ rendering
    def status_text(self) -> tuple[str, str]:
        s = self.state
        if self.process_note and not s.is_over:
            return "failed", self.process_note
        what = f"{s.method} on {s.model}" if s.model else ""
        if s.status == "waiting":
            return "waiting", "starting: loading the model and data…"
        if s.status == "running":
            stopping = "  — stopping (saving a checkpoint)…" if self.stop_requested_at else ""
            return "running", f"running  {what}{stopping}"
        if s.status == "finished":
            best = ""
            if s.best_step is not None and s.best_val_loss is not None:
                best = f"; best validation loss {s.best_val_loss:.4f} at step {s.best_step}"
            return "finished", f"finished  {what} at step {s.step}{best}"
        return s.status, f"{s.status} at step {s.step}: {s.reason}"

    def render_state(self) -> None:
        s = self.state
        kind, text = self.status_text()
        status = self.query_one("#run-status", Static)
        status.update(f"● {text}")
        for name in STATUS_CLASSES:
            status.set_class(name == kind, f"status-{name}")
        self.query_one(LossChart).show(s.train_loss, s.valid_loss, s.total_steps)
        self.show_samples()
        self.query_one(RunStats).show(s)
        bar = self.query_one(ProgressBar)
        bar.update(total=max(s.total_steps, 1), progress=s.step)
        eta = self.query_one("#run-eta", Static)
        r = s.last_report
        if s.status == "running" and r is not None and not self.process_note:  # no ETA for a dead trainer
            eta.update(f"{s.step}/{s.total_steps}  ETA {format_duration(r.eta_s)}")
        else:
            eta.update(f"{s.step}/{s.total_steps or '?'}")

    def show_samples(self) -> None:
        """The trainer's samples of the latest checkpoint, one pane per prompt (same prompts each time)."""
        if not self.state.samples:
            return
        step = max(self.state.samples)
        panes = self.query_one("#samples", GenerationPanes)
        if step == self.samples_shown or panes.running:
            return
        self.samples_shown = step
        sample = self.state.samples[step]
        keys = [(f"trainer#{i}", f"step {step}: {p[:40]}") for i, p in enumerate(sample.prompts)]
        panes.reset(keys, {key: text for (key, _), text in zip(keys, sample.completions, strict=True)})

    # ------------------------------------------------------------ actions
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Offer only what can work: no Stop once the run is over or its trainer is gone."""
        if action == "stop" and (self.state.is_over or self.process_note):
            return None  # shown greyed out
        return True

    def action_stop(self) -> None:
        import os
        import signal

        if self.state.is_over:
            self.notify(f"This run is already {self.state.status}.", severity="warning")
            return
        again = self.stop_requested_at is not None
        trainer = self.app.trainer_for(self.run_dir)
        if trainer is not None and trainer.poll() is None:
            trainer.stop()
        else:
            pid = lock_holder(self.run_dir) or read_meta(self.run_dir).get("pid")
            if not pid_alive(pid):
                self.notify("No live trainer process for this run.", severity="warning")
                return
            os.kill(pid, signal.SIGINT)
        self.stop_requested_at = time.time()
        if again:
            self.notify("Stopping now, without a final checkpoint (the last saved one is kept).")
        else:
            self.notify(
                "Stopping after this step; the trainer saves a checkpoint first. Press s again to stop at once."
            )
        self.render_state()

    def action_maximise_chart(self) -> None:
        self.toggle_class("-chart-max")

    def action_chart(self, method: str) -> None:
        getattr(self.query_one(LossChart), method)()

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_sample(self) -> None:
        panes = self.query_one("#samples", GenerationPanes)
        if panes.running:
            self.notify("Samples are still generating.", severity="warning")
            return
        steps = RunDir(self.run_dir).checkpoint_steps()
        if not steps:
            self.notify("No checkpoint yet: samples need one.", severity="warning")
            return
        prompts = sample_prompts(self.run_dir, NUM_SAMPLE_PROMPTS)
        if not prompts:
            self.notify("No prompts: the run's data could not be read.", severity="warning")
            return
        step = steps[-1]
        label = f"step {step}"
        keys = [(f"{label}#{i}", f"{label}: {p[:40]}") for i, p in enumerate(prompts)]
        if note := self.app.training_note():
            self.notify(note, severity="warning")
        panes.generate(
            generate.command(
                self.run_dir, [(label, str(step))], prompts, max_tokens=48, system=system_prompt(self.run_dir)
            ),
            keys,
            key_of=lambda r: f"{r['label']}#{r['prompt']}",
            cwd=self.app.project_dir,
        )
        self.action_show_tab("samples-tab")

    def on_generation_panes_finished(self, event: GenerationPanes.Finished) -> None:
        if event.error:
            self.notify(f"Generation failed: {event.error}", severity="error")

    def action_checkpoints(self) -> None:
        from .checkpoints import CheckpointsScreen

        self.app.push_screen(CheckpointsScreen(self.run_dir))

    def action_export(self) -> None:
        from .export import ExportScreen

        self.app.push_screen(ExportScreen(self.run_dir))

    def action_chat(self) -> None:
        from .chat import ChatScreen

        self.app.push_screen(ChatScreen(self.run_dir))
