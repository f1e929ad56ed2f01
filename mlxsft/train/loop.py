"""The training loop as a function of prepared state: `train(prepared, emit, stop)`.

It steps, reports, evaluates, applies the early-stop rule and checkpoints, and says
how it ended (RunFinished, RunStopped or RunFailed). It evaluates the graph once per
step (`mx.eval`) and reads numbers back (`.item()`) only when it reports, evaluates or
saves. The per-batch loss and the batch source are parameters, so a different
objective (`loss=`) or data stream (`batches=`) reuses the same loop.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from ..data.batching import Batch
from ..errors import MlxsftError, TrainingError
from ..events import (
    CheckpointSaved,
    Emitter,
    EvalFinished,
    RunFailed,
    RunFinished,
    RunStopped,
    RunWarning,
    StepReported,
)
from .checkpoint import TrainerState, save_checkpoint
from .distributed import Watchdog, World
from .early_stop import plateau_reached
from .prepare import Prepared
from .step import StepFunctions, StepLoss, build_steps


class StopFlag:
    """Set by SIGINT/SIGTERM (or a UI) to end the run after the current step, with a checkpoint."""

    def __init__(self):
        self.reason: str | None = None

    def set(self, reason: str = "stop requested") -> None:
        self.reason = reason

    def __bool__(self) -> bool:
        return self.reason is not None


class Batches(Protocol):
    """A deterministic batch stream: batch `index` of `epoch` (this rank's shard under `world`)."""

    def batch(self, epoch: int, index: int, world: World | None = None) -> Batch: ...

    def batches_per_epoch(self) -> int: ...


class CheckpointHook(Protocol):
    """Called on rank 0 after each checkpoint is written, with the state it holds."""

    def __call__(self, prepared: Prepared, state: TrainerState, emit: Emitter) -> None: ...


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step did. Losses are lazy arrays summed over ranks; counts are this rank's."""

    loss_sum: mx.array
    ntok: mx.array
    tokens: int  # real (unpadded) tokens of the step's micro-batches
    trained: int  # tokens with a training weight
    positions: int  # padded positions computed
    metrics: tuple = ()  # the loss's metric arrays, summed over micro-batches and ranks (DPO's rewards)


@dataclass(frozen=True)
class TrainOutcome:
    status: str  # finished | stopped
    state: TrainerState
    last_checkpoint: Path | None
    early_stop_reason: str | None = None


def _next_batch(batches: Batches, state: TrainerState, seed: int, world: World) -> Batch:
    if state.cursor >= batches.batches_per_epoch():
        state.epoch, state.cursor = state.epoch + 1, 0
    batch = batches.batch(state.epoch, state.cursor, world)
    # Dropout's randomness is a function of (seed, position in the data stream),
    # so a resumed run draws exactly what the uninterrupted run drew.
    mx.random.seed((seed * 1_000_003 + state.epoch * 65_537 + state.cursor + 7919 * world.rank) % 2**32)
    state.cursor += 1
    return batch


def take_step(
    prepared: Prepared, state: TrainerState, steps: StepFunctions | None = None, batches: Batches | None = None
) -> StepStats:
    """One optimizer step over `grad_accumulation` micro-batches; advances `state`'s data cursor."""
    steps = steps or prepared.steps
    batches = batches or prepared.train_src
    t, world = prepared.train, prepared.world
    micro = []  # each micro-batch is drawn right before its step: drawing reseeds dropout's RNG
    if t.grad_accumulation == 1:
        micro.append(_next_batch(batches, state, t.seed, world))
        loss_sum, ntok, *metrics = steps.train_step(*steps.plan.arrays(micro[0]))
    else:
        grads = loss_sum = ntok = None
        metrics = []
        for _ in range(t.grad_accumulation):
            micro.append(_next_batch(batches, state, t.seed, world))
            ls, nt, g, *m = steps.grad_step(*steps.plan.arrays(micro[-1]))
            grads = g if grads is None else tree_map(lambda x, y: x + y, grads, g)
            loss_sum = ls if loss_sum is None else loss_sum + ls
            ntok = nt if ntok is None else ntok + nt
            metrics = m if not metrics else [x + y for x, y in zip(metrics, m, strict=True)]
            mx.eval(grads, loss_sum, ntok, metrics)  # bound memory: one micro-batch graph at a time
        steps.apply_grads(grads, ntok)
    mx.eval(loss_sum, ntok, metrics, prepared.model.state, prepared.optimizer.state)
    return StepStats(
        loss_sum,
        ntok,
        tokens=sum(b.num_tokens for b in micro),
        trained=sum(b.num_trained for b in micro),
        positions=sum(b.inputs.size for b in micro),
        metrics=tuple(metrics),
    )


def evaluate(prepared: Prepared, step: int, steps: StepFunctions | None = None) -> EvalFinished | None:
    """Loss, perplexity and token accuracy on the validation split (None without one)."""
    src, steps, world, t = prepared.valid_src, steps or prepared.steps, prepared.world, prepared.train
    if src is None:
        return None
    if prepared.preference is not None:
        return _evaluate_preference(prepared, step)
    start = time.time()
    n = src.batches_per_epoch()
    if t.val_batches > 0:
        n = min(n, t.val_batches)
    loss = tokens = correct = 0.0
    prepared.model.eval()  # no dropout: evaluation must not draw from the training RNG
    try:
        for i in range(n):
            ls, nt, c = world.all_sum(steps.eval_step(*steps.plan.arrays(src.batch(0, i, world))))
            mx.eval(ls, nt, c)
            loss, tokens, correct = loss + ls.item(), tokens + nt.item(), correct + c.item()
    finally:
        prepared.model.train()
    mean = loss / max(tokens, 1)
    return EvalFinished(
        step=step,
        split="valid",
        loss=mean,
        perplexity=math.exp(min(mean, 50)),
        token_accuracy=correct / max(tokens, 1),
        num_tokens=int(tokens),
        elapsed_s=time.time() - start,
    )


def _evaluate_preference(p: Prepared, step: int) -> EvalFinished:
    """The DPO/ORPO validation pass; its metrics (and a likelihood-collapse warning) are emitted by `train`."""
    p.model.eval()  # no dropout, as for SFT
    try:
        evaluation, metrics = p.preference.evaluate(p.model, p.valid_src, p.world, step, p.train.val_batches)
    finally:
        p.model.train()
    p.preference.last_valid = metrics
    return evaluation


def save(prepared: Prepared, state: TrainerState, emit: Emitter, val_loss: float | None, is_best: bool) -> Path | None:
    """Checkpoint `state` (rank 0 writes; every rank holds the same weights); None on other ranks."""
    _check_finite_weights(prepared, state.step)
    if not prepared.world.is_main:
        return None
    run = prepared.run
    path = save_checkpoint(run, prepared.model, prepared.optimizer, state, prepared.adapter_config)
    run.update_meta(
        updated=time.time(), last_step=state.step, best_step=state.best_step, best_val_loss=state.best_val_loss
    )
    emit(CheckpointSaved(step=state.step, path=str(path), val_loss=val_loss, is_best=is_best))
    return path


def _check_finite_weights(prepared: Prepared, step: int) -> None:
    """Never write a checkpoint with inf/NaN weights over the last good one."""
    finite = [mx.isfinite(v).all() for _, v in tree_flatten(prepared.model.trainable_parameters())]
    if not mx.stack(finite).all().item():
        raise TrainingError(
            f"the weights became inf/NaN by step {step}. Lower train.learning_rate or set "
            "train.max_grad_norm; the last good checkpoint is kept."
        )


@dataclass
class _Window:
    """Sums since the last report: lazy loss over ranks, this rank's token counts."""

    loss: mx.array = dataclasses.field(default_factory=lambda: mx.array(0.0))
    ntok: mx.array = dataclasses.field(default_factory=lambda: mx.array(0.0))
    tokens: int = 0
    trained: int = 0
    start: float = dataclasses.field(default_factory=time.time)

    def add(self, stats: StepStats, preference) -> None:
        self.loss, self.ntok = self.loss + stats.loss_sum, self.ntok + stats.ntok
        if preference is not None:
            preference.add(stats.metrics)
        self.tokens, self.trained = self.tokens + stats.tokens, self.trained + stats.trained


@dataclass
class _Run:
    """The loop's mutable progress (the only state `train` keeps between steps)."""

    state: TrainerState
    last_checkpoint: Path | None
    evaluations: list[EvalFinished]  # this session's, for the early-stop rule
    session_start: float
    early_stop_reason: str | None = None


def train(
    prepared: Prepared,
    emit: Emitter,
    stop: StopFlag,
    *,
    loss: StepLoss | None = None,
    batches: Batches | None = None,
    on_checkpoint: CheckpointHook | None = None,
) -> TrainOutcome:
    """Step `prepared` to its total steps (or a stop, or early stop); emit what happens.

    `loss` replaces the per-batch loss (the steps are compiled for it), `batches` the
    training batch stream, `on_checkpoint` runs after each save (the CLI's samples). A failure
    emits RunFailed and raises.
    """
    p = prepared
    steps = (
        p.steps
        if loss is None
        else build_steps(p.model, p.optimizer, p.train.max_grad_norm, packed=p.train.pack, world=p.world, loss=loss)
    )
    batches = batches or p.train_src
    run = _Run(dataclasses.replace(p.start), p.last_checkpoint, [], time.time())
    watchdog = Watchdog(p.world).start()
    try:
        status = _steps(p, run, emit, stop, steps, batches, watchdog, on_checkpoint)
    except MlxsftError as exc:
        _emit_failure(emit, run, str(exc))
        raise
    finally:
        watchdog.stop()
    s = run.state
    if status == "stopped":
        emit(RunStopped(step=s.step, reason=stop.reason or "stopped", last_checkpoint=str(run.last_checkpoint)))
    else:
        emit(
            RunFinished(
                step=s.step,
                final_loss=s.last_loss,
                best_step=s.best_step,
                best_val_loss=s.best_val_loss,
                elapsed_s=s.elapsed_s,
                early_stop_reason=run.early_stop_reason,
            )
        )
    return TrainOutcome(status, s, run.last_checkpoint, run.early_stop_reason)


def _steps(
    p: Prepared,
    run: _Run,
    emit: Emitter,
    stop: StopFlag,
    steps: StepFunctions,
    batches: Batches,
    watchdog: Watchdog,
    on_checkpoint: CheckpointHook | None,
) -> str:
    t, s = p.train, run.state
    window = _Window()
    run_start = time.time() - s.elapsed_s
    while s.step < p.total_steps:
        window.add(take_step(p, s, steps, batches), p.preference)
        watchdog.beat()
        s.step += 1
        last = s.step == p.total_steps
        stopping = p.world.any(bool(stop))  # every rank agrees on the step it stops at
        must_save = last or s.step % t.steps_per_save == 0 or stopping
        if s.step % t.steps_per_report == 0 or must_save:
            s.last_loss = _finite_loss(window, s.step)
            s.elapsed_s = time.time() - run_start
            _report(p, run, emit, window, batches)
            report = p.preference.report(s.step, window.ntok.item(), s.last_loss) if p.preference else None
            if report is not None:
                emit(report)
            window = _Window()
        evaluation = (
            evaluate(p, s.step, steps) if (t.steps_per_eval and s.step % t.steps_per_eval == 0) or last else None
        )
        is_best = False
        if evaluation is not None:
            emit(evaluation)
            if p.preference is not None:
                _emit_preference_eval(p, emit, evaluation)
            run.evaluations.append(evaluation)
            if s.best_val_loss is None or evaluation.loss < s.best_val_loss:
                s.best_val_loss, s.best_step, is_best = evaluation.loss, s.step, True
            if not last and _plateau_reached(t, run):
                must_save, last = True, True
        if must_save or is_best:
            s.elapsed_s = time.time() - run_start
            saved = save(p, s, emit, evaluation.loss if evaluation else None, is_best)
            run.last_checkpoint = saved or run.last_checkpoint
            if saved is not None and on_checkpoint is not None:
                on_checkpoint(p, s, emit)
        if stopping and not last:
            if not stop:
                stop.set("another rank was asked to stop")
            return "stopped"
        if last:
            break
    return "finished"


def _emit_preference_eval(p: Prepared, emit: Emitter, evaluation: EvalFinished) -> None:
    metrics = p.preference.last_valid
    emit(metrics)
    warning = p.preference.collapse_warning(evaluation, metrics)
    if warning:
        emit(RunWarning(message=f"step {evaluation.step}: {warning}", path=str(p.run.path)))


def _plateau_reached(t, run: _Run) -> bool:
    """The early-stop rule over this session's evaluations (train.early_stop_patience)."""
    if t.early_stop_patience is None:
        return False
    if plateau_reached(run.evaluations, t.early_stop_patience, t.early_stop_tolerance):
        s = run.state
        run.early_stop_reason = (
            f"validation loss gained at most {t.early_stop_tolerance:.1%} over {t.early_stop_patience} evaluations "
            f"(best {s.best_val_loss:.4f} at step {s.best_step})"
        )
        return True
    return False


def _finite_loss(window: _Window, step: int) -> float:
    loss = (window.loss / mx.maximum(window.ntok, 1)).item()
    if not math.isfinite(loss):
        raise TrainingError(
            f"the training loss became {loss} by step {step}. Lower train.learning_rate, "
            "set train.max_grad_norm, or check the data; the last good checkpoint is kept."
        )
    return loss


def _report(p: Prepared, run: _Run, emit: Emitter, window: _Window, batches: Batches) -> None:
    """Add the window's tokens (all ranks) to the totals and emit StepReported."""
    s, tokens, trained = run.state, window.tokens, window.trained
    if p.world.distributed:
        summed = p.world.all_sum(mx.array([tokens, trained], dtype=mx.float32))
        tokens, trained = (int(v) for v in summed.tolist())
    s.tokens_seen += tokens
    s.trained_tokens_seen += trained
    rate = tokens / max(time.time() - window.start, 1e-9)
    per_step = (time.time() - run.session_start) / max(s.step - p.start.step, 1)
    emit(
        StepReported(
            step=s.step,
            total_steps=p.total_steps,
            epoch=s.epoch + s.cursor / max(batches.batches_per_epoch(), 1),
            loss=s.last_loss,
            learning_rate=float(p.optimizer.learning_rate.item()),
            tokens_per_second=rate,
            trained_tokens_per_second=rate * s.trained_tokens_seen / max(s.tokens_seen, 1),
            tokens_seen=s.tokens_seen,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
            elapsed_s=s.elapsed_s,
            eta_s=per_step * (p.total_steps - s.step),
        )
    )


def _emit_failure(emit: Emitter, run: _Run, reason: str) -> None:
    """Say the run failed where it can; on a full disk the error message itself is what counts."""
    last = str(run.last_checkpoint) if run.last_checkpoint else None
    try:
        emit(RunFailed(step=run.state.step, reason=reason, last_checkpoint=last))
    except (OSError, MlxsftError):
        pass
