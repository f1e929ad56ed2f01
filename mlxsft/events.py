"""The typed event stream a run emits, and the sinks that consume it.

Events are frozen dataclasses holding plain Python numbers and strings, so a sink
can serialize them without touching MLX. The JSONL sink writes `events.jsonl` in
the run directory; `read_events` replays it (the TUI and `mlxsft` reports use it).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from .errors import TrainingError
from .safeio import write_guard


@dataclass(frozen=True)
class RunStarted:
    run_dir: str
    model: str
    method: str
    total_steps: int
    start_step: int
    num_train_rows: int
    num_valid_rows: int
    total_parameters: int
    trainable_parameters: int
    resumed: bool
    time: float
    warnings: tuple[str, ...] = ()  # e.g. template tokens whose base embeddings look untrained


@dataclass(frozen=True)
class DataPrepared:
    split: str
    num_rows: int
    num_skipped: int
    num_truncated: int
    num_batches: int
    padding_waste: float
    trained_tokens: int
    skipped: tuple[str, ...]  # "path:line: reason" for each skipped row
    num_bad_rows: int = 0  # rows the chat template cannot train (data.on_bad_row: skip), among skipped
    layouts: tuple[str, ...] = ()  # "one sequence: 40 rows", "split into 3 sequences: 5 rows"
    split_extra_tokens: int = 0  # tokens added by splitting multi-turn rows per turn


@dataclass(frozen=True)
class BatchTokensChosen:
    """`batch_tokens: auto` measured these budgets and chose the largest that fit."""

    batch_tokens: int
    memory_limit_gb: float
    probed_tokens: tuple[int, ...]
    probed_peak_gb: tuple[float, ...]


@dataclass(frozen=True)
class StepReported:
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_second: float
    trained_tokens_per_second: float
    tokens_seen: int
    peak_memory_gb: float
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class EvalFinished:
    step: int
    split: str
    loss: float
    perplexity: float
    token_accuracy: float
    num_tokens: int
    elapsed_s: float


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: str
    val_loss: float | None
    is_best: bool


@dataclass(frozen=True)
class RunFinished:
    step: int
    final_loss: float | None
    best_step: int | None
    best_val_loss: float | None
    elapsed_s: float
    early_stop_reason: str | None = None  # set when the plateau rule ended the run early


@dataclass(frozen=True)
class RunStopped:
    step: int
    reason: str
    last_checkpoint: str | None


@dataclass(frozen=True)
class RunFailed:
    step: int
    reason: str
    last_checkpoint: str | None


@dataclass(frozen=True)
class RunWarning:
    """Something the user should know before trusting the run (e.g. no validation data)."""

    message: str
    path: str | None = None  # the file or folder it is about


@dataclass(frozen=True)
class PreferenceReported:
    """DPO/ORPO metrics, means per pair: over the report window (train) or the validation set."""

    step: int
    split: str  # train | valid
    loss: float
    rewards_chosen: float
    rewards_rejected: float
    margin: float  # rewards_chosen - rewards_rejected
    accuracy: float  # share of pairs whose chosen reward beats the rejected one
    logps_chosen: float  # summed log-prob of the chosen reply
    logps_rejected: float
    kl: float | None = None  # valid only: mean per-token KL(policy || reference) on the replies


@dataclass(frozen=True)
class CheckpointEvaluated:
    """`mlxsft eval` measured one checkpoint (step 0 is the base model); RUN/eval/results.json has every metric."""

    step: int
    label: str  # "base" or "step N"
    valid_loss: float | None
    assistant_nll: float | None
    token_accuracy: float | None
    ood_loss: float | None
    probe_loss: float | None
    probe_kl: float | None  # KL(checkpoint || base) per probe token, nats
    entropy: float | None  # mean next-token entropy of sampled completions, nats
    distinct_2: float | None
    self_similarity: float | None
    pass_at_1: float | None
    pass_at_k: float | None
    k: int  # samples per prompt
    elapsed_s: float
    results_path: str


@dataclass(frozen=True)
class SelectionMade:
    """`mlxsft select` judged the evaluated checkpoints and recorded its choice as run.json's chosen_step."""

    chosen_step: int | None
    verdicts: tuple[str, ...]  # "STEP: verdict" for each evaluated checkpoint, in step order
    rule: str  # the choice rule, in words
    reason: str


@dataclass(frozen=True)
class SamplesGenerated:
    """The checkpoint at `step` answered the same fixed validation prompts as every other (greedy)."""

    step: int
    prompts: tuple[str, ...]  # the last user turn (or the prompt) of each row, as shown to people
    completions: tuple[str, ...]
    elapsed_s: float


Event = (
    RunStarted
    | DataPrepared
    | BatchTokensChosen
    | StepReported
    | EvalFinished
    | CheckpointSaved
    | RunFinished
    | RunStopped
    | RunFailed
    | RunWarning
    | CheckpointEvaluated
    | SelectionMade
    | PreferenceReported
    | SamplesGenerated
)
EVENT_TYPES = {cls.__name__: cls for cls in Event.__args__}


def event_to_dict(event) -> dict:
    return {"event": type(event).__name__, **dataclasses.asdict(event)}


def event_from_dict(record: dict):
    """Rebuild an event from its JSON record (unknown fields are ignored, for forward compatibility)."""
    cls = EVENT_TYPES[record["event"]]
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in record.items() if k in names}
    return cls(**values)


def decode_event_line(line: str) -> tuple[object | None, str | None]:
    """One line of `events.jsonl` as (event, None), or (None, why it was skipped).

    Never raises: a line cut off by a crash, an event from a newer version, or one from an
    older version missing fields is skipped with its reason. A blank line is (None, None).
    """
    if not line.strip():
        return None, None
    try:
        record = json.loads(line)
    except ValueError:
        return None, "not a complete JSON line (cut off?)"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    name = record.get("event")
    if name not in EVENT_TYPES:
        return None, f"unknown event {name!r} (written by another mlxsft version?)"
    cls = EVENT_TYPES[name]
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - record.keys())
    if missing:
        return None, f"{name} without {', '.join(missing)} (written by another mlxsft version?)"
    return event_from_dict(record), None


def read_events(path: str | Path) -> list:
    """Replay `events.jsonl`, skipping lines `decode_event_line` cannot read (a torn last line)."""
    with open(path, encoding="utf-8") as f:
        return [event for event, _ in map(decode_event_line, f) if event is not None]


class Sink(Protocol):
    def __call__(self, event) -> None: ...


class JsonlSink:
    """Appends each event as one JSON line and flushes, so a killed run loses nothing written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")
        self.broken = False  # a write failed (disk full): later events are not written

    def __call__(self, event) -> None:
        if self.broken:
            return
        try:
            with write_guard(self.path, "the run's events", error=TrainingError):
                self._file.write(json.dumps(event_to_dict(event)) + "\n")
                self._file.flush()
        except TrainingError:
            self.broken = True
            raise

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # the failed write was already reported


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


class StdoutSink:
    """Plain-text progress lines with an ETA (no terminal control codes)."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def __call__(self, event) -> None:
        line = self.format(event)
        if line:
            print(line, file=self.stream, flush=True)

    @staticmethod
    def format(event) -> str | None:
        match event:
            case RunStarted():
                verb = f"Resuming at step {event.start_step}" if event.resumed else "Starting"
                share = 100 * event.trainable_parameters / max(event.total_parameters, 1)
                return (
                    f"{verb}: {event.method} on {event.model}, {event.total_steps} steps, "
                    f"{event.num_train_rows} train / {event.num_valid_rows} valid rows, "
                    f"trainable {event.trainable_parameters:,} of {event.total_parameters:,} "
                    f"parameters ({share:.2f}%).\nRun directory: {event.run_dir}"
                ) + "".join(f"\nWARNING: {w}" for w in event.warnings)
            case DataPrepared():
                text = (
                    f"Data [{event.split}]: {event.num_rows} rows in {event.num_batches} batches, "
                    f"{event.trained_tokens:,} trained tokens, padding waste {100 * event.padding_waste:.1f}%"
                )
                if event.num_truncated:
                    text += f", {event.num_truncated} truncated"
                split = [lay for lay in event.layouts if lay.startswith("split")]
                if split:
                    text += (
                        f"; the chat template is not prefix-preserving: {', '.join(split)} "
                        f"(+{event.split_extra_tokens:,} tokens)"
                    )
                if event.num_skipped:
                    text += f", {event.num_skipped} skipped:\n  " + "\n  ".join(event.skipped[:10])
                    if event.num_skipped > 10:
                        text += f"\n  ... and {event.num_skipped - 10} more"
                return text
            case BatchTokensChosen():
                pairs = zip(event.probed_tokens, event.probed_peak_gb, strict=True)
                probes = ", ".join(f"{t:,}: {gb:.2f} GB" for t, gb in pairs)
                return (
                    f"batch_tokens auto: {event.batch_tokens:,} tokens per batch fit the "
                    f"{event.memory_limit_gb:.1f} GB limit (measured {probes})"
                )
            case StepReported():
                return (
                    f"step {event.step}/{event.total_steps}  loss {event.loss:.4f}  "
                    f"lr {event.learning_rate:.2e}  {event.tokens_per_second:,.0f} tok/s  "
                    f"peak {event.peak_memory_gb:.2f} GB  eta {_duration(event.eta_s)}"
                )
            case EvalFinished():
                return (
                    f"step {event.step}  {event.split} loss {event.loss:.4f}  ppl {event.perplexity:.2f}  "
                    f"token acc {100 * event.token_accuracy:.1f}%"
                )
            case CheckpointSaved():
                best = " (best so far)" if event.is_best else ""
                return f"step {event.step}  saved {event.path}{best}"
            case RunFinished():
                best = ""
                if event.best_step is not None:
                    best = f"; best validation loss {event.best_val_loss:.4f} at step {event.best_step}"
                early = f" Stopped early: {event.early_stop_reason}." if event.early_stop_reason else ""
                return f"Finished at step {event.step} in {_duration(event.elapsed_s)}{best}.{early}"
            case CheckpointEvaluated():
                parts = [
                    f"{name} {value:.4f}"
                    for name, value in (
                        ("valid loss", event.valid_loss),
                        ("ood loss", event.ood_loss),
                        ("entropy", event.entropy),
                        ("distinct-2", event.distinct_2),
                    )
                    if value is not None
                ]
                return f"evaluated {event.label}: " + ", ".join(parts)
            case PreferenceReported():
                kl = f"  kl {event.kl:.4f}" if event.kl is not None else ""
                return (
                    f"step {event.step}  {event.split} pref acc {100 * event.accuracy:.1f}%  "
                    f"margin {event.margin:.4f}  rewards {event.rewards_chosen:.4f}/{event.rewards_rejected:.4f}  "
                    f"logps {event.logps_chosen:.2f}/{event.logps_rejected:.2f}{kl}"
                )
            case SelectionMade():
                return f"chose step {event.chosen_step}: {event.reason}"
            case SamplesGenerated():
                pairs = zip(event.prompts, event.completions, strict=True)
                return f"step {event.step}  samples:" + "".join(
                    f"\n  {_short(p, 40)} -> {_short(c, 80)}" for p, c in pairs
                )
            case RunStopped():
                return f"Stopped at step {event.step}: {event.reason}. Last checkpoint: {event.last_checkpoint}"
            case RunWarning():
                return f"Warning: {event.path + ': ' if event.path else ''}{event.message}"
            case RunFailed():
                return f"Failed at step {event.step}: {event.reason} Last good checkpoint: {event.last_checkpoint}"
        return None


class Emitter:
    """Fans one event out to every sink; the loop holds one of these."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = list(sinks)
        self.started = time.time()

    def __call__(self, event) -> None:
        for sink in self.sinks:
            sink(event)
