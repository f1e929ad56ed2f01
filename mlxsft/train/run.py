"""A training run: the one entry point the CLI and the TUI call, `run_training`.

It checks the run folder, prepares (`prepare.py`) before writing anything, creates the
run directory, announces the run (RunStarted, DataPrepared, warnings), trains
(`loop.train`) with SIGINT/SIGTERM turned into a graceful stop, and records the status.
Under `mlx.launch` every rank calls it; only rank 0 touches the run directory and the sinks.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..config import Recipe, with_absolute_paths
from ..data.templates import chat_template_of
from ..errors import MlxsftError, TrainingError
from ..events import BatchTokensChosen, DataPrepared, Emitter, JsonlSink, RunFailed, RunStarted, RunWarning
from ..model import count_parameters
from ..rundir import RunDir
from ..runlock import RunLock
from .checkpoint import TrainerState
from .distributed import World, init_world
from .loop import CheckpointHook, StopFlag, train
from .prepare import Prepared, prepare


@dataclass
class RunResult:
    run_dir: Path
    status: str  # finished | stopped | failed
    state: TrainerState


def default_output(recipe: Recipe) -> Path:
    name = Path(recipe.model.rstrip("/")).name or "model"
    return Path("runs") / f"{name}-{recipe.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_training(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    sinks=(),
    resume: bool = False,
    stop: StopFlag | None = None,
    world: World | None = None,
    on_checkpoint: CheckpointHook | None = None,
) -> RunResult:
    """Train `recipe` into `run_dir` (or resume the run there); every outcome is an event.

    Rank 0 holds the run folder's lock (`RUN/trainer.lock`) while it trains: a second
    trainer on the same folder is refused with the holder's pid.
    """
    world = world or init_world()
    run = RunDir(run_dir or recipe.output or default_output(recipe))
    stop = stop if stop is not None else StopFlag()  # an unset StopFlag is falsy
    lock = RunLock(run.path) if world.is_main else None
    try:
        if lock and resume and run.path.is_dir():
            lock.acquire()  # before anything is read or written: a second trainer is refused here
        if world.is_main:
            _check_run_dir(run, resume)
        recipe = with_absolute_paths(recipe)
        emit = Emitter(list(sinks) if world.is_main else [])
        with _stop_on_signals(stop, world):
            # Load model and data before touching the run directory: a typo in the recipe
            # must not leave a half-made run behind that blocks the corrected command.
            prepared = prepare(recipe, run, world, resume=resume)
            try:
                if not world.is_main:
                    outcome = train(prepared, emit, stop)
                    return RunResult(run.path, outcome.status, outcome.state)
                return _run_main(prepared, emit, stop, resume, lock, on_checkpoint)
            finally:
                prepared.restore_ops()
    finally:
        if lock:
            lock.release()  # a refused run leaves the folder as it was


def _run_main(
    prepared: Prepared,
    emit: Emitter,
    stop: StopFlag,
    resume: bool,
    lock: RunLock | None,
    on_checkpoint: CheckpointHook | None,
) -> RunResult:
    run = prepared.run
    if not resume:
        run.create(prepared.recipe)
        if lock:
            lock.acquire()
        run.save_chat_template(chat_template_of(prepared.tokenizer))
    leftovers = run.clean_staging()
    jsonl = JsonlSink(run.events_file)
    emit.sinks.insert(0, jsonl)
    try:
        try:
            announce(prepared, emit, resumed=resume)
            warn(prepared, emit, leftovers)
        except MlxsftError as exc:
            _emit_failure(emit, prepared, str(exc))
            raise
        outcome = train(prepared, emit, stop, on_checkpoint=on_checkpoint)  # emits its outcome, RunFailed too
    except MlxsftError as exc:
        _mark_failed(run, str(exc))
        raise
    finally:
        jsonl.close()
    run.update_meta(status=outcome.status, updated=time.time())
    return RunResult(run.path, outcome.status, outcome.state)


def announce(p: Prepared, emit: Emitter, resumed: bool) -> None:
    """RunStarted, DataPrepared per split, the chosen token budget, and the run's metadata."""
    run, recipe = p.run, p.recipe
    counts = count_parameters(p.model)
    if p.budget is not None:
        emit(
            BatchTokensChosen(
                batch_tokens=p.budget.batch_tokens,
                memory_limit_gb=p.budget.memory_limit_gb,
                probed_tokens=tuple(probe.batch_tokens for probe in p.budget.probes),
                probed_peak_gb=tuple(probe.peak_gb for probe in p.budget.probes),
            )
        )
        run.update_meta(batch_tokens_chosen=p.train.batch_tokens)
    if p.world.distributed:
        run.update_meta(world_size=p.world.size)
    if p.preference is not None:
        p.preference.write_cache(run.path)
        run.update_meta(objective=recipe.objective)
    emit(
        RunStarted(
            run_dir=str(run.path),
            model=recipe.model,
            method=recipe.method,
            total_steps=p.total_steps,
            start_step=p.start.step,
            num_train_rows=len(p.train_src.dataset.examples),
            num_valid_rows=len(p.valid_src.dataset.examples) if p.valid_src else 0,
            total_parameters=counts.total,
            trainable_parameters=counts.trainable,
            resumed=resumed,
            time=time.time(),
            warnings=p.token_warnings(),
        )
    )
    for split, src in (("train", p.train_src), ("valid", p.valid_src)):
        if src is None:
            continue
        ds = src.dataset
        emit(
            DataPrepared(
                split=split,
                num_rows=len(ds.examples),
                num_skipped=len(ds.skipped),
                num_truncated=ds.num_truncated,
                num_batches=src.batches_per_epoch(),
                padding_waste=src.padding_waste(),
                trained_tokens=src.trained_tokens(),
                skipped=tuple(f"{s.path}:{s.line}: {s.reason}" for s in ds.skipped),
                num_bad_rows=len(ds.bad_rows),
                layouts=tuple(f"{layout}: {n} rows" for layout, n in sorted(ds.layouts.items())),
                split_extra_tokens=ds.split_extra_tokens,
            )
        )
    run.update_meta(
        mlxsft_version=__version__,
        status="running",
        pid=os.getpid(),
        model=recipe.model,
        model_path=str(p.model_path),
        method=recipe.method,
        total_steps=p.total_steps,
        trainable_parameters=counts.trainable,
        total_parameters=counts.total,
        created=run.read_meta().get("created", time.time()),
        updated=time.time(),
    )


def warn(p: Prepared, emit: Emitter, leftovers: list[Path]) -> None:
    """Warnings worth an event: no validation data, leftovers of a killed checkpoint save."""
    if p.valid_src is None:
        valid = p.files.get("valid")
        why = (
            f"every row of {valid} was skipped"
            if valid
            else "no valid.jsonl beside the training data and no data.valid in the recipe"
        )
        emit(
            RunWarning(
                message=f"no validation data ({why}): validation loss, best-checkpoint tracking and early "
                "stopping are off. Add a valid.jsonl (or set data.valid) to get them.",
                path=str(valid or p.files["train"]),
            )
        )
    if leftovers:
        emit(
            RunWarning(
                message=f"removed {len(leftovers)} unfinished checkpoint folder(s) left by an interrupted save.",
                path=str(p.run.checkpoints_dir),
            )
        )


def _check_run_dir(run: RunDir, resume: bool) -> None:
    """Refuse, before anything is loaded or written, a run folder this command cannot use."""
    if not resume:
        run.require_creatable()
        return
    run.require_existing()
    if run.read_meta().get("status") == "finished":
        raise MlxsftError(
            "this run already finished; start a new run (or raise train.iters in a new recipe).",
            path=str(run.path),
        )
    if run.latest_checkpoint() is None:
        where = "is missing" if not run.checkpoints_dir.is_dir() else "holds no complete checkpoint"
        raise TrainingError(
            f"nothing to resume from: {run.checkpoints_dir} {where} (the run stopped before its first "
            "save, or the folder was removed). Nothing was changed. Start over as a new run: "
            f"`mlxsft train {run.recipe_file} --set output=NEW_FOLDER`.",
            path=str(run.path),
        )


def _emit_failure(emit: Emitter, p: Prepared, reason: str) -> None:
    last = str(p.last_checkpoint) if p.last_checkpoint else None
    try:
        emit(RunFailed(step=p.start.step, reason=reason, last_checkpoint=last))
    except (OSError, MlxsftError):
        pass  # on a full disk the error message itself is what counts


def _mark_failed(run: RunDir, reason: str) -> None:
    try:
        run.update_meta(status="failed", updated=time.time(), error=reason)
    except (OSError, MlxsftError):
        pass


class _stop_on_signals:
    """Turn SIGINT/SIGTERM into a graceful stop (checkpoint, then exit) while training.

    Under `mlx.launch`, SIGTERM is how the launcher ends the other ranks when one dies;
    a graceful stop would wait on the dead rank's collectives, so SIGTERM keeps its
    default (exit now) there and only SIGINT stops gracefully.
    """

    def __init__(self, stop: StopFlag, world: World | None = None):
        self.stop = stop
        self.signals = (signal.SIGINT,) if world is not None and world.distributed else (signal.SIGINT, signal.SIGTERM)
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.signals:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.stop:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop.set(f"received {signal.Signals(signum).name}")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
