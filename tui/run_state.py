"""What a run has done so far, rebuilt from its typed event stream.

`EventTail` reads the new complete lines of `events.jsonl` each time it is polled
(a torn last line waits for its newline), and `RunState.apply` folds each event
into the numbers the Live run screen draws. Replaying a finished run and watching
a live one are the same code path: the tail simply starts at byte 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlxsft.events import (
    CheckpointSaved,
    DataPrepared,
    EvalFinished,
    PreferenceReported,
    RunFailed,
    RunFinished,
    RunStarted,
    RunStopped,
    SamplesGenerated,
    StdoutSink,
    StepReported,
    decode_event_line,
)


class LineTail:
    """The complete lines appended to a text file since the last poll."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self._partial = b""
        self.restarts = 0  # times the file was replaced or truncated

    def read_lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # replaced or truncated: start over
            self.offset, self._partial = 0, b""
            self.restarts += 1
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]


class EventTail:
    """New events of an `events.jsonl`, as typed event objects (read by the core's decoder).

    Lines the decoder cannot read (cut off, unknown, missing fields) are skipped and kept
    in `skipped` as "events.jsonl line N: why", for the screen to show.
    """

    def __init__(self, path: str | Path):
        self.lines = LineTail(path)
        self.line_number = 0
        self.skipped: list[str] = []

    def read_events(self) -> list:
        events = []
        restarts = self.lines.restarts
        lines = self.lines.read_lines()
        if self.lines.restarts != restarts:
            self.line_number = 0
        for line in lines:
            self.line_number += 1
            event, problem = decode_event_line(line)
            if event is not None:
                events.append(event)
            elif problem:
                self.skipped.append(f"{self.lines.path.name} line {self.line_number}: {problem}")
        return events


@dataclass
class RunState:
    """The Live run screen's model: curves, latest metrics, checkpoints, outcome, log."""

    status: str = "waiting"  # waiting | running | finished | stopped | failed
    model: str = ""
    method: str = ""
    total_steps: int = 0
    step: int = 0
    start_step: int = 0
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    valid_loss: list[tuple[int, float]] = field(default_factory=list)
    learning_rate: list[tuple[int, float]] = field(default_factory=list)
    last_report: StepReported | None = None
    last_eval: EvalFinished | None = None
    evaluations: list[EvalFinished] = field(default_factory=list)
    checkpoints: dict[int, CheckpointSaved] = field(default_factory=dict)
    samples: dict[int, SamplesGenerated] = field(default_factory=dict)  # by checkpoint step
    preference: dict[str, PreferenceReported] = field(default_factory=dict)  # DPO/ORPO: latest per split
    latest_checkpoint: CheckpointSaved | None = None
    best_step: int | None = None
    best_val_loss: float | None = None
    trainable_parameters: int = 0
    total_parameters: int = 0
    train_rows: int = 0
    valid_rows: int = 0
    data: dict[str, DataPrepared] = field(default_factory=dict)
    reason: str | None = None  # why it stopped or failed
    log: list[str] = field(default_factory=list)
    num_events: int = 0

    def apply(self, event) -> None:
        self.num_events += 1
        line = StdoutSink.format(event)
        if line:
            self.log.extend(line.splitlines())
        match event:
            case RunStarted():
                self._started(event)
            case DataPrepared():
                self.data[event.split] = event
            case StepReported():
                self.step, self.total_steps, self.last_report = event.step, event.total_steps, event
                self.train_loss.append((event.step, event.loss))
                self.learning_rate.append((event.step, event.learning_rate))
            case EvalFinished():
                self.last_eval = event
                self.evaluations.append(event)
                self.valid_loss.append((event.step, event.loss))
                if self.best_val_loss is None or event.loss < self.best_val_loss:
                    self.best_step, self.best_val_loss = event.step, event.loss
            case CheckpointSaved():
                self.checkpoints[event.step] = event
                self.latest_checkpoint = event
            case SamplesGenerated():
                self.samples[event.step] = event
            case PreferenceReported():
                self.preference[event.split] = event
            case RunFinished():
                self.status, self.step = "finished", event.step
                self.best_step, self.best_val_loss = event.best_step, event.best_val_loss
            case RunStopped():
                self.status, self.step, self.reason = "stopped", event.step, event.reason
            case RunFailed():
                self.status, self.step, self.reason = "failed", event.step, event.reason

    def _started(self, event: RunStarted) -> None:
        self.status, self.reason = "running", None
        self.model, self.method = event.model, event.method
        self.total_steps, self.start_step, self.step = (
            event.total_steps,
            event.start_step,
            event.start_step,
        )
        self.trainable_parameters, self.total_parameters = (
            event.trainable_parameters,
            event.total_parameters,
        )
        self.train_rows, self.valid_rows = event.num_train_rows, event.num_valid_rows
        if event.resumed:
            # A resumed run repeats the steps after its last checkpoint: drop the old ones.
            keep = event.start_step
            self.train_loss = [p for p in self.train_loss if p[0] <= keep]
            self.valid_loss = [p for p in self.valid_loss if p[0] <= keep]
            self.learning_rate = [p for p in self.learning_rate if p[0] <= keep]
            self.checkpoints = {s: c for s, c in self.checkpoints.items() if s <= keep}
            self.samples = {s: c for s, c in self.samples.items() if s <= keep}
            self.evaluations = [e for e in self.evaluations if e.step <= keep]

    @property
    def progress(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def is_over(self) -> bool:
        return self.status in ("finished", "stopped", "failed")

    def train_loss_near(self, step: int) -> float | None:
        """The last reported training loss at or before `step`."""
        before = [loss for s, loss in self.train_loss if s <= step]
        return before[-1] if before else None


def replay(path: str | Path) -> RunState:
    """The state of a run after every event in its `events.jsonl` so far."""
    state = RunState()
    for event in EventTail(path).read_events():
        state.apply(event)
    return state
