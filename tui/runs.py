"""Find runs on disk and say honestly what state each one is in.

A run folder is one with a `recipe.yaml` (a run the trainer created) or a
`tui-recipe.yaml` (a run the TUI launched whose trainer has not created it yet, or
never did). Status comes from `run.json`, checked against reality: a run that says
"running" but whose trainer pid is gone was interrupted (killed, crashed, machine
restarted). Nothing here imports Textual, so the logic is testable on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlxsft.errors import MlxsftError
from mlxsft.rundir import RunDir
from mlxsft.runlock import lock_holder, trainer_alive

LAUNCH_RECIPE = "tui-recipe.yaml"  # the recipe the TUI wrote and ran (repeatable headless)
LAUNCH_LOG = "tui-train.log"  # the trainer child's stdout and stderr

# Statuses shown to people; "interrupted" is a "running" run whose trainer is gone.
RUNNING, FINISHED, FAILED, STOPPED, INTERRUPTED = (
    "running",
    "finished",
    "failed",
    "stopped",
    "stopped (interrupted)",
)
STARTING, NOT_STARTED = "starting", "not started"


@dataclass(frozen=True)
class RunSummary:
    """One row of the Runs screen."""

    path: Path
    status: str
    method: str
    model: str
    best_val_loss: float | None
    tokens_seen: int | None
    last_step: int | None
    total_steps: int | None
    tokens_per_second: float | None
    created: float
    pid: int | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_live(self) -> bool:
        return self.status in (RUNNING, STARTING)


def pid_alive(pid: int | None) -> bool:
    """True when `pid` is a live mlxsft process (a recycled pid held by another program is not)."""
    return trainer_alive(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def is_run_folder(path: Path) -> bool:
    return (path / "recipe.yaml").is_file() or (path / LAUNCH_RECIPE).is_file()


def find_runs(root: Path) -> list[Path]:
    """Run folders directly under `root`, newest first."""
    if not root.is_dir():
        return []
    runs = [child for child in root.iterdir() if child.is_dir() and is_run_folder(child)]
    return sorted(runs, key=_created, reverse=True)


def _created(path: Path) -> float:
    try:
        return float(RunDir(path).read_meta().get("created") or path.stat().st_mtime)
    except (OSError, ValueError):
        return path.stat().st_mtime


def read_meta(path: Path) -> dict:
    """run.json, or {} when missing or torn (a run being created)."""
    try:
        return RunDir(path).read_meta()
    except (OSError, json.JSONDecodeError):
        return {}


def run_status(path: Path, meta: dict, launched_pid: int | None = None) -> str:
    """The honest status of a run: run.json's word, checked against the trainer's pid."""
    status = meta.get("status")
    if lock_holder(path) is not None:
        return RUNNING  # a trainer holds the run's lock, whatever run.json said last
    if status == RUNNING:
        return RUNNING if pid_alive(meta.get("pid")) or _alive(launched_pid) else INTERRUPTED
    if status in (FINISHED, FAILED, STOPPED):
        return status
    # No run.json yet: the trainer is loading the model and data, or died doing so.
    if _alive(launched_pid):
        return STARTING
    log = path / LAUNCH_LOG
    if log.is_file() and "error" in log.read_text(encoding="utf-8", errors="replace"):
        return FAILED
    return NOT_STARTED


def _alive(pid: int | None) -> bool:
    """Liveness of a child this process launched (its cmdline is known to be ours)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return not _is_zombie(pid)


def last_log_error(path: Path) -> str | None:
    """The last `mlxsft: error:` (or other) line of the trainer child's log."""
    log = path / LAUNCH_LOG
    if not log.is_file():
        return None
    lines = [  # the "$ command" lines are the UI's record of what it ran, never a reason
        line.strip()
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
        if line.strip() and not line.startswith("$ ")
    ]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [None])[-1]


def last_events(path: Path, max_bytes: int = 65536) -> list:
    """The events in the last `max_bytes` of an events file (cheap, for summaries), by the core's decoder."""
    from mlxsft.events import decode_event_line

    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").split("\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is probably cut
    return [event for event, _ in map(decode_event_line, lines) if event is not None]


def summarize_run(path: Path, launched_pid: int | None = None) -> RunSummary:
    meta = read_meta(path)
    status = run_status(path, meta, launched_pid)
    from mlxsft.events import StepReported

    steps = [e for e in last_events(path / "events.jsonl") if isinstance(e, StepReported)]
    last = steps[-1] if steps else None
    method, model = meta.get("method"), meta.get("model")
    if method is None or model is None:
        method, model = _recipe_method_model(path, method, model)
    return RunSummary(
        path=path,
        status=status,
        method=method or "?",
        model=model or "?",
        best_val_loss=meta.get("best_val_loss"),
        tokens_seen=last.tokens_seen if last else None,
        last_step=meta.get("last_step", last.step if last else None),
        total_steps=meta.get("total_steps"),
        tokens_per_second=last.tokens_per_second if last else None,
        created=_created(path),
        pid=lock_holder(path) or meta.get("pid") or launched_pid,
        error=meta.get("error") or (last_log_error(path) if status == FAILED else None),
    )


def _recipe_method_model(path: Path, method, model):
    import yaml

    for name in ("recipe.yaml", LAUNCH_RECIPE):
        file = path / name
        if file.is_file():
            try:
                raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                continue
            return method or raw.get("method"), model or raw.get("model")
    return method, model


def scan_runs(root: Path, launched: dict[Path, int] | None = None) -> list[RunSummary]:
    """Summaries of every run under `root` (`launched`: run folder -> pid of a child we started)."""
    launched = {Path(k).resolve(): v for k, v in (launched or {}).items()}
    return [summarize_run(p, launched.get(p.resolve())) for p in find_runs(root)]


def can_resume(summary: RunSummary) -> str | None:
    """None when `summary`'s run can be resumed, else why not (in words, for a notice)."""
    if summary.status not in (STOPPED, INTERRUPTED, FAILED):
        return f"this run is {summary.status}; only a stopped, interrupted or failed run can be resumed."
    if not RunDir(summary.path).checkpoint_steps():
        return (
            "this run has no checkpoint to resume from (it stopped before its first save); "
            "start it again as a new run (n)."
        )
    return None


def exit_reason(code: int, log_error: str | None) -> str:
    """Why a trainer child exited, in words: a signal by name, else its last error line."""
    if code < 0:
        import signal as signals

        try:
            name = signals.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        killed = "killed (out of memory, or kill -9)" if name == "SIGKILL" else f"ended by {name}"
        return f"the trainer was {killed}; resume from its last checkpoint (r on the Runs screen)"
    return f"the trainer exited with code {code}: {log_error or 'no output'}"


def stop_run(summary: RunSummary) -> None:
    """Ask a running trainer to stop: SIGINT makes it save a checkpoint and exit."""
    if not summary.is_live or not summary.pid:
        raise MlxsftError(
            f"this run is {summary.status}; only a running run can be stopped.",
            path=str(summary.path),
        )
    try:
        os.kill(summary.pid, signal.SIGINT)
    except ProcessLookupError:
        raise MlxsftError("the trainer process is already gone.", path=str(summary.path)) from None


EXPORT_SUFFIXES = (".gguf", ".parity.json")  # export files that may sit loose in a run folder


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def deletion_contents(path: Path) -> list[str]:
    """What deleting a run removes, for people: checkpoints, exports (by name), the rest, with sizes."""
    from mlxsft.store import human_bytes

    run = RunDir(path)
    lines = []
    steps = run.checkpoint_steps()
    if steps:
        lines.append(
            f"{len(steps)} checkpoints (steps {steps[0]}-{steps[-1]}), {human_bytes(folder_bytes(run.checkpoints_dir))}"
        )
    exports = sorted(p for p in (path / "exports").glob("*")) if (path / "exports").is_dir() else []
    exports += sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(EXPORT_SUFFIXES))
    for export in exports:
        lines.append(f"export {export.relative_to(path)} ({human_bytes(folder_bytes(export))})")
    if (path / "eval").is_dir():
        lines.append(f"evaluation results eval/ ({human_bytes(folder_bytes(path / 'eval'))})")
    lines.append(f"in all {human_bytes(folder_bytes(path))}: events, recipe, adapters and everything else")
    return lines


def delete_run(summary: RunSummary) -> None:
    """Remove a run folder (never one whose trainer is still running)."""
    if summary.is_live:
        raise MlxsftError("this run is still running; stop it first (s), then delete it.", path=str(summary.path))
    if not is_run_folder(summary.path):
        raise MlxsftError("not a run folder; refusing to delete it.", path=str(summary.path))
    shutil.rmtree(summary.path)


def format_age(created: float, now: float | None = None) -> str:
    seconds = max(0, int((now if now is not None else time.time()) - created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def format_tokens(n: int | None) -> str:
    if n is None:
        return "-"
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def python_command(*args: str) -> list[str]:
    """`python -m mlxsft.cli ARGS`, with this interpreter (the one mlxsft is installed in)."""
    return [sys.executable, "-m", "mlxsft.cli", *args]
