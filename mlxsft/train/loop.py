"""The training loop: prepare, (resume,) step, report, evaluate, checkpoint, emit events.

`run_training` is the one entry point the CLI and the TUI call. It evaluates the
graph once per step (`mx.eval`) and reads numbers back (`.item()`) only when it
reports, evaluates or saves.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from .. import __version__
from ..config import Recipe, TrainConfig, with_absolute_paths
from ..data.templates import chat_template_of
from ..errors import DataError, MlxsftError, TrainingError
from ..model import attach_adapters, count_parameters, load_base, vocab_size
from ..rundir import RunDir
from ..runlock import RunLock
from ..token_rows import TRAINABLE_TOKENS
from ..untrained_tokens import check_tokens, describe, embedding_of, template_tokens
from .autobatch import MAX_ROWS, choose_batch_tokens, memory_limit_bytes
from .checkpoint import TrainerState, load_checkpoint, save_checkpoint
from .cpu_ops import enable_fast_cpu_ops
from .distributed import Watchdog, World, init_world, sync_from_main
from .events import (
    BatchTokensChosen,
    CheckpointSaved,
    DataPrepared,
    Emitter,
    EvalFinished,
    JsonlSink,
    RunFailed,
    RunFinished,
    RunStarted,
    RunStopped,
    RunWarning,
    StepReported,
)
from .prepare import BatchSource, load_split, pad_token_id, resolve_data_files
from .schedule import build_optimizer
from .step import build_steps, enable_grad_checkpoint


@dataclass
class RunResult:
    run_dir: Path
    status: str  # finished | stopped | failed
    state: TrainerState


class StopFlag:
    """Set by SIGINT/SIGTERM (or a UI) to end the run after the current step, with a checkpoint."""

    def __init__(self):
        self.reason: str | None = None

    def set(self, reason: str = "stop requested") -> None:
        self.reason = reason

    def __bool__(self) -> bool:
        return self.reason is not None


def total_steps(recipe: Recipe, batches_per_epoch: int) -> int:
    t = recipe.train
    if t.iters is not None:
        return t.iters
    epochs = t.epochs if t.epochs is not None else 1.0
    return max(1, math.ceil(epochs * batches_per_epoch / t.grad_accumulation))


def default_output(recipe: Recipe) -> Path:
    name = Path(recipe.model.rstrip("/")).name or "model"
    return Path("runs") / f"{name}-{recipe.method}-{time.strftime('%Y%m%d-%H%M%S')}"


class Trainer:
    """One run's state machine; `run_training` builds and drives it."""

    def __init__(self, recipe: Recipe, run: RunDir, emit: Emitter, stop: StopFlag, world: World | None = None):
        self.recipe, self.run, self.emit, self.stop = recipe, run, emit, stop
        self.world = world or World(None)
        self.t = recipe.train
        self.last_checkpoint: Path | None = None
        self.window_tokens = self.window_trained = 0  # this rank's, since the last report
        self.evaluations: list[EvalFinished] = []  # this session's, for the early-stop rule
        self.restore_ops = lambda: None  # undoes enable_fast_cpu_ops
        self.early_stop_reason: str | None = None
        self.on_checkpoint = None  # called with the trainer after each save (the CLI's samples hook)

    # ------------------------------------------------------------ setup
    def prepare(self, resume: bool) -> None:
        mx.random.seed(self.t.seed)
        self.model, self.tokenizer, self.model_path, _ = load_base(self.recipe)
        self.untrained_tokens = check_tokens(embedding_of(self.model), self.tokenizer)
        self.files = files = resolve_data_files(self.recipe.data)
        self.pad_id = pad_token_id(self.tokenizer)
        train_ds = load_split(files["train"], self.tokenizer, self.recipe.data, self.t)
        valid_ds = load_split(files["valid"], self.tokenizer, self.recipe.data, self.t) if files["valid"] else None
        self.adapter_config = attach_adapters(self.model, self.recipe, self._new_token_ids()) | {
            "model": str(self.model_path)}
        if self.t.grad_checkpoint:
            enable_grad_checkpoint(self.model)
        if self.t.fast_cpu_ops:
            self.restore_ops = enable_fast_cpu_ops(self.model)
        if self.t.batch_tokens == "auto":
            self.t = self._resolve_auto_budget(resume)
        self.train_src = BatchSource(train_ds, self.t, self.pad_id, shuffle=True)
        has_valid = valid_ds is not None and bool(valid_ds.examples)
        self.valid_src = BatchSource(valid_ds, self.t, self.pad_id, shuffle=False) if has_valid else None
        self._check_data(files["train"])
        self.total_steps = total_steps(self.recipe, self.train_src.batches_per_epoch())
        self.optimizer = build_optimizer(self.t, self.total_steps)
        self.state = TrainerState()
        if resume and self.world.is_main:
            self.last_checkpoint = self.run.latest_checkpoint()
            if self.last_checkpoint is not None:
                self.state = load_checkpoint(self.last_checkpoint, self.model, self.optimizer)
        if resume and self.world.distributed:
            self.state = sync_from_main(self.world, self.model, self.optimizer, self.state)
        self.start_step = self.state.step
        self.steps = build_steps(self.model, self.optimizer, self.t.max_grad_norm, packed=self.t.pack,
                                 world=self.world)

    def _resolve_auto_budget(self, resume: bool) -> TrainConfig:
        """Measure (or, on resume, reuse) the token budget; the batch plan depends on it."""
        chosen = self.run.read_meta().get("batch_tokens_chosen") if resume else None
        self.budget_probes: list = []
        if chosen is None:
            probe_steps = build_steps(self.model, build_optimizer(self.t, 1), self.t.max_grad_norm, packed=self.t.pack)
            limit = memory_limit_bytes(self.t.memory_limit_gb)
            chosen, self.budget_probes = choose_batch_tokens(
                self.model, probe_steps, self.t.max_seq_length, vocab_size(self.model), limit)
            self.budget_limit_gb = limit / 1e9
            # every rank takes 1/N of each global batch: the global budget is N times the
            # smallest budget any rank can hold
            chosen = self.world.size * self.world.min_int(chosen)
        # the budget alone sizes batches: no separate row cap
        return dataclasses.replace(self.t, batch_tokens=int(chosen), batch_size=MAX_ROWS)

    def _new_token_ids(self) -> list[int]:
        """lora.train_new_tokens: auto trains the rows of template tokens that look untrained."""
        setting = self.recipe.lora.train_new_tokens
        if self.recipe.method == "full" or setting is False:
            return []
        if setting is True:
            return sorted(template_tokens(self.tokenizer).values())
        return [t.id for t in self.untrained_tokens]

    def _token_warnings(self) -> tuple[str, ...]:
        if self.recipe.method == "full":
            return ()  # every row trains
        trained = self.adapter_config.get(TRAINABLE_TOKENS) or []
        out = (describe(self.untrained_tokens),) if self.untrained_tokens and not trained else ()
        if trained:
            out += (f"training the embedding and LM-head rows of token ids {trained} beside the adapter "
                    f"(lora.train_new_tokens: {self.recipe.lora.train_new_tokens}).",)
        return out

    def _check_data(self, train_file: Path) -> None:
        rows = len(self.train_src.dataset.examples)
        if rows == 0:
            raise DataError(
                "no trainable rows: every row was skipped (see the reasons above); "
                "check data.mask and train.max_seq_length.",
                path=str(train_file),
            )
        if not self.t.pack and self.t.batch_tokens is None and self.t.batch_size > rows:
            raise DataError(
                f"train.batch_size={self.t.batch_size} is larger than the {rows} trainable rows; "
                "lower train.batch_size or add data.",
                path=str(train_file),
            )

    def announce(self, resumed: bool) -> None:
        counts = count_parameters(self.model)
        if getattr(self, "budget_probes", None):
            self.emit(BatchTokensChosen(
                batch_tokens=self.t.batch_tokens, memory_limit_gb=self.budget_limit_gb,
                probed_tokens=tuple(p.batch_tokens for p in self.budget_probes),
                probed_peak_gb=tuple(p.peak_gb for p in self.budget_probes),
            ))
            self.run.update_meta(batch_tokens_chosen=self.t.batch_tokens)
        if self.world.distributed:
            self.run.update_meta(world_size=self.world.size)
        valid_rows = len(self.valid_src.dataset.examples) if self.valid_src else 0
        self.emit(RunStarted(
            run_dir=str(self.run.path), model=self.recipe.model, method=self.recipe.method,
            total_steps=self.total_steps, start_step=self.state.step,
            num_train_rows=len(self.train_src.dataset.examples), num_valid_rows=valid_rows,
            total_parameters=counts.total, trainable_parameters=counts.trainable,
            resumed=resumed, time=time.time(),
            warnings=self._token_warnings(),
        ))
        for split, src in (("train", self.train_src), ("valid", self.valid_src)):
            if src is None:
                continue
            ds = src.dataset
            self.emit(DataPrepared(
                split=split, num_rows=len(ds.examples), num_skipped=len(ds.skipped),
                num_truncated=ds.num_truncated, num_batches=src.batches_per_epoch(),
                padding_waste=src.padding_waste(), trained_tokens=src.trained_tokens(),
                skipped=tuple(f"{s.path}:{s.line}: {s.reason}" for s in ds.skipped),
                num_bad_rows=len(ds.bad_rows),
                layouts=tuple(f"{layout}: {n} rows" for layout, n in sorted(ds.layouts.items())),
                split_extra_tokens=ds.split_extra_tokens,
            ))
        self.run.update_meta(
            mlxsft_version=__version__, status="running", pid=os.getpid(), model=self.recipe.model,
            model_path=str(self.model_path), method=self.recipe.method, total_steps=self.total_steps,
            trainable_parameters=counts.trainable, total_parameters=counts.total,
            created=self.run.read_meta().get("created", time.time()), updated=time.time(),
        )

    def warn(self, leftovers: list[Path]) -> None:
        """Warnings worth an event: no validation data, leftovers of a killed checkpoint save."""
        if self.valid_src is None:
            valid = self.files.get("valid")
            why = (f"every row of {valid} was skipped" if valid else
                   "no valid.jsonl beside the training data and no data.valid in the recipe")
            self.emit(RunWarning(
                message=f"no validation data ({why}): validation loss, best-checkpoint tracking and early "
                        "stopping are off. Add a valid.jsonl (or set data.valid) to get them.",
                path=str(valid or self.files["train"]),
            ))
        if leftovers:
            self.emit(RunWarning(
                message=f"removed {len(leftovers)} unfinished checkpoint folder(s) left by an interrupted save.",
                path=str(self.run.checkpoints_dir),
            ))

    # ------------------------------------------------------------ stepping
    def _next_batch(self):
        s = self.state
        if s.cursor >= self.train_src.batches_per_epoch():
            s.epoch, s.cursor = s.epoch + 1, 0
        batch = self.train_src.batch(s.epoch, s.cursor, self.world)
        # Dropout's randomness is a function of (seed, position in the data stream),
        # so a resumed run draws exactly what the uninterrupted run drew.
        mx.random.seed((self.t.seed * 1_000_003 + s.epoch * 65_537 + s.cursor + 7919 * self.world.rank) % 2**32)
        s.cursor += 1
        return batch

    def _arrays(self, batch):
        return self.steps.plan.arrays(batch)

    def one_step(self):
        """One optimizer step over `grad_accumulation` micro-batches; returns (loss_sum, ntok) summed
        over ranks. This rank's token counts go to `last_step_tokens` and the report window."""
        tokens = trained = 0
        self.last_batch_positions = 0
        if self.t.grad_accumulation == 1:
            batch = self._next_batch()
            loss_sum, ntok = self.steps.train_step(*self._arrays(batch))
            tokens, trained = batch.num_tokens, batch.num_trained
            self.last_batch_positions = batch.inputs.size
        else:
            grads = loss_sum = ntok = None
            for _ in range(self.t.grad_accumulation):
                batch = self._next_batch()
                ls, nt, g = self.steps.grad_step(*self._arrays(batch))
                grads = g if grads is None else _tree_add(grads, g)
                loss_sum = ls if loss_sum is None else loss_sum + ls
                ntok = nt if ntok is None else ntok + nt
                tokens, trained = tokens + batch.num_tokens, trained + batch.num_trained
                self.last_batch_positions += batch.inputs.size
                mx.eval(grads, loss_sum, ntok)  # bound memory: one micro-batch graph at a time
            self.steps.apply_grads(grads, ntok)
        mx.eval(loss_sum, ntok, self.model.state, self.optimizer.state)
        self.last_step_tokens = (tokens, trained)
        self.window_tokens += tokens
        self.window_trained += trained
        return loss_sum, ntok

    def _flush_token_counts(self) -> int:
        """Add the report window's tokens (all ranks) to the totals; return the window's count."""
        tokens, trained = self.window_tokens, self.window_trained
        if self.world.distributed:
            summed = self.world.all_sum(mx.array([tokens, trained], dtype=mx.float32))
            tokens, trained = (int(v) for v in summed.tolist())
        self.state.tokens_seen += tokens
        self.state.trained_tokens_seen += trained
        self.window_tokens = self.window_trained = 0
        return tokens

    def evaluate(self) -> EvalFinished | None:
        if self.valid_src is None:
            return None
        start = time.time()
        n = self.valid_src.batches_per_epoch()
        if self.t.val_batches > 0:
            n = min(n, self.t.val_batches)
        loss = tokens = correct = 0.0
        self.model.eval()  # no dropout: evaluation must not draw from the training RNG
        try:
            for i in range(n):
                batch = self.valid_src.batch(0, i, self.world)
                ls, nt, c = self.world.all_sum(self.steps.eval_step(*self._arrays(batch)))
                mx.eval(ls, nt, c)
                loss, tokens, correct = loss + ls.item(), tokens + nt.item(), correct + c.item()
        finally:
            self.model.train()
        mean = loss / max(tokens, 1)
        return EvalFinished(
            step=self.state.step, split="valid", loss=mean, perplexity=math.exp(min(mean, 50)),
            token_accuracy=correct / max(tokens, 1), num_tokens=int(tokens), elapsed_s=time.time() - start,
        )

    def save(self, val_loss: float | None, is_best: bool) -> None:
        self._check_finite_weights()
        if not self.world.is_main:
            return  # every rank holds the same weights; rank 0 writes them
        path = save_checkpoint(self.run, self.model, self.optimizer, self.state, self.adapter_config)
        self.last_checkpoint = path
        self.run.update_meta(
            updated=time.time(), last_step=self.state.step,
            best_step=self.state.best_step, best_val_loss=self.state.best_val_loss,
        )
        self.emit(CheckpointSaved(step=self.state.step, path=str(path), val_loss=val_loss, is_best=is_best))
        if self.on_checkpoint is not None:
            self.on_checkpoint(self)

    # ------------------------------------------------------------ the loop
    def loop(self) -> str:
        t, s = self.t, self.state
        window_loss = mx.array(0.0)
        window_tok = mx.array(0.0)
        window_start = time.time()
        run_start = time.time() - s.elapsed_s
        self.session_start = time.time()
        watchdog = Watchdog(self.world).start()
        try:
            return self._steps(t, s, window_loss, window_tok, window_start, run_start, watchdog)
        finally:
            watchdog.stop()

    def _steps(self, t, s, window_loss, window_tok, window_start, run_start, watchdog) -> str:
        while s.step < self.total_steps:
            loss_sum, ntok = self.one_step()
            watchdog.beat()
            s.step += 1
            window_loss, window_tok = window_loss + loss_sum, window_tok + ntok
            last = s.step == self.total_steps
            stopping = self.world.any(bool(self.stop))  # every rank agrees on the step it stops at
            must_save = last or s.step % t.steps_per_save == 0 or stopping
            if s.step % t.steps_per_report == 0 or must_save:
                s.last_loss = self._finite_loss(window_loss, window_tok)
                now = time.time()
                s.elapsed_s = now - run_start
                self._report(self._flush_token_counts(), now - window_start)
                window_loss, window_tok = mx.array(0.0), mx.array(0.0)
                window_start = now
            evaluation = None
            if (t.steps_per_eval and s.step % t.steps_per_eval == 0) or last:
                evaluation = self.evaluate()
            is_best = False
            if evaluation is not None:
                self.emit(evaluation)
                self.evaluations.append(evaluation)
                if s.best_val_loss is None or evaluation.loss < s.best_val_loss:
                    s.best_val_loss, s.best_step, is_best = evaluation.loss, s.step, True
                if not last and self._plateau_reached():
                    must_save, last = True, True
            if must_save or is_best:
                s.elapsed_s = time.time() - run_start
                self.save(evaluation.loss if evaluation else None, is_best)
            if stopping and not last:
                if not self.stop:
                    self.stop.set("another rank was asked to stop")
                return "stopped"
            if last:
                break
        return "finished"

    def _plateau_reached(self) -> bool:
        """The judge's plateau rule over this run's evaluations (train.early_stop_patience)."""
        patience = self.t.early_stop_patience
        if patience is None:
            return False
        from ..judge.verdict import Rule, plateau_reached  # pure rule, no I/O

        if plateau_reached(self.evaluations, Rule(patience=patience, dev_tolerance=self.t.early_stop_tolerance)):
            self.early_stop_reason = (
                f"validation loss gained at most {self.t.early_stop_tolerance:.1%} over {patience} evaluations "
                f"(best {self.state.best_val_loss:.4f} at step {self.state.best_step})"
            )
            return True
        return False

    def _finite_loss(self, window_loss: mx.array, window_tok: mx.array) -> float:
        loss = (window_loss / mx.maximum(window_tok, 1)).item()
        if not math.isfinite(loss):
            raise TrainingError(
                f"the training loss became {loss} by step {self.state.step}. Lower train.learning_rate, "
                "set train.max_grad_norm, or check the data; the last good checkpoint is kept."
            )
        return loss

    def _check_finite_weights(self) -> None:
        """Never write a checkpoint with inf/NaN weights over the last good one."""
        finite = [mx.isfinite(v).all() for _, v in tree_flatten(self.model.trainable_parameters())]
        if not mx.stack(finite).all().item():
            raise TrainingError(
                f"the weights became inf/NaN by step {self.state.step}. Lower train.learning_rate or set "
                "train.max_grad_norm; the last good checkpoint is kept."
            )

    def _report(self, tokens: int, seconds: float) -> None:
        s = self.state
        rate = tokens / max(seconds, 1e-9)
        trained_share = s.trained_tokens_seen / max(s.tokens_seen, 1)
        per_step = (time.time() - self.session_start) / max(s.step - self.start_step, 1)
        self.emit(StepReported(
            step=s.step, total_steps=self.total_steps,
            epoch=s.epoch + s.cursor / max(self.train_src.batches_per_epoch(), 1),
            loss=s.last_loss, learning_rate=float(self.optimizer.learning_rate.item()),
            tokens_per_second=rate, trained_tokens_per_second=rate * trained_share,
            tokens_seen=s.tokens_seen, peak_memory_gb=mx.get_peak_memory() / 1e9,
            elapsed_s=s.elapsed_s, eta_s=per_step * (self.total_steps - s.step),
        ))


def _tree_add(a, b):
    return tree_map(lambda x, y: x + y, a, b)


def run_training(
    recipe: Recipe, run_dir: str | Path | None = None, sinks=(), resume: bool = False, stop: StopFlag | None = None,
    world: World | None = None, on_checkpoint=None,
) -> RunResult:
    """Train `recipe` into `run_dir` (or resume the run there); every outcome is an event.

    Under `mlx.launch` every rank calls this; only rank 0 touches the run directory and
    the sinks.
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
        trainer = Trainer(recipe, run, emit, stop, world)
        trainer.on_checkpoint = on_checkpoint
        try:
            return _drive(trainer, run, emit, stop, world, resume, lock)
        finally:
            trainer.restore_ops()
    finally:
        if lock:
            lock.release()  # a refused run leaves the folder as it was


def _drive(trainer: Trainer, run: RunDir, emit: Emitter, stop: StopFlag, world: World, resume: bool,
           lock: RunLock | None = None) -> RunResult:
    recipe = trainer.recipe
    with _stop_on_signals(stop, world):
        # Load model and data before touching the run directory: a typo in the recipe
        # must not leave a half-made run behind that blocks the corrected command.
        trainer.prepare(resume)
        if not world.is_main:
            return RunResult(run.path, trainer.loop(), trainer.state)
        if not resume:
            run.create(recipe)
            if lock:
                lock.acquire()
            run.save_chat_template(chat_template_of(trainer.tokenizer))
        leftovers = run.clean_staging()
        jsonl = JsonlSink(run.events_file)
        emit.sinks.insert(0, jsonl)
        try:
            trainer.announce(resumed=resume)
            trainer.warn(leftovers)
            status = trainer.loop()
            _emit_outcome(emit, trainer, status, stop)
        except MlxsftError as exc:
            _record_failure(run, emit, trainer, str(exc))
            raise
        finally:
            jsonl.close()
    run.update_meta(status=status, updated=time.time())
    return RunResult(run.path, status, trainer.state)


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


def _emit_outcome(emit: Emitter, trainer: Trainer, status: str, stop: StopFlag) -> None:
    state = trainer.state
    if status == "stopped":
        emit(RunStopped(step=state.step, reason=stop.reason or "stopped",
                        last_checkpoint=str(trainer.last_checkpoint)))
    else:
        emit(RunFinished(step=state.step, final_loss=state.last_loss, best_step=state.best_step,
                         best_val_loss=state.best_val_loss, elapsed_s=state.elapsed_s,
                         early_stop_reason=trainer.early_stop_reason))


def _record_failure(run: RunDir, emit: Emitter, trainer: Trainer, reason: str) -> None:
    """Record the failure where it can be; on a full disk the error message itself is what counts."""
    state = getattr(trainer, "state", None)
    step = state.step if state else 0
    last = str(trainer.last_checkpoint) if trainer.last_checkpoint else None
    try:
        emit(RunFailed(step=step, reason=reason, last_checkpoint=last))
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
        import threading

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
