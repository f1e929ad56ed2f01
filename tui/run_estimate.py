"""The New run estimate: memory and FLOPs from the core's `mlxsft.models.fit`, time from speeds.

Memory, parameter counts and FLOPs per token are `estimate_fit` (what `mlxsft models fit`
prints) for the form's recipe. The time is steps x tokens per step / tokens per second,
where tokens per second is, best first:

1. what an earlier run of the same model and training shape achieved over its whole
   run so far (tokens seen / elapsed, so evaluations, checkpoints and compilation are
   included). Runs are matched by the model folder's absolute path (run.json's
   `model_path`) and `speed_key`'s shape, never by the path as typed;
2. the core's rate from a timed matmul (`models.report.UTILIZATION` x matmul FLOP/s /
   FLOPs per token), plus the validation passes and a start-up allowance.

No Textual here; the screen runs `estimate_for` in a worker thread (building the lazy
model reads only safetensors headers).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from mlxsft.config import Recipe
from mlxsft.errors import MlxsftError

EVAL_COST = 1 / 3  # a validation token costs a forward pass, about a third of a training token
STARTUP_S = 20.0  # loading and compiling the step before the first report (CPU, cold kernel cache)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def resolve_model(model: str, project_dir: Path) -> Path:
    """The model folder a recipe's `model` names, as the trainer would find it (cwd = project)."""
    import os

    from mlxsft.store import STORE_ENV, resolve_local, store_root

    path = Path(model).expanduser()
    if not path.is_absolute() and (project_dir / path).is_dir():
        return (project_dir / path).resolve()
    root = store_root() if os.environ.get(STORE_ENV) else project_dir / "models"
    return resolve_local(model, root).resolve()


def speed_key(recipe: Recipe, model_dir: Path) -> tuple:
    """What decides tokens/s besides the data: the model folder and how it is trained."""
    lora = recipe.lora
    return (
        str(Path(model_dir).resolve()),
        recipe.method,
        lora.rank,
        tuple(lora.targets),
        str(lora.layers),
        recipe.quantize.bits,
        recipe.train.grad_checkpoint,
        recipe.train.dtype,
    )


def measured_speeds(runs_root: Path, project_dir: Path) -> dict[tuple, float]:
    """speed_key -> median tokens/s (tokens seen / elapsed) of the runs under `runs_root`."""
    from mlxsft.events import StepReported, read_events
    from mlxsft.rundir import RunDir

    seen: dict[tuple, list[float]] = {}
    for run in sorted(p for p in Path(runs_root).glob("*") if (p / "events.jsonl").is_file()):
        rundir = RunDir(run)
        try:
            meta, recipe = rundir.read_meta(), rundir.load_recipe()
            reports = [e for e in read_events(run / "events.jsonl") if isinstance(e, StepReported)]
        except (OSError, ValueError, MlxsftError):
            continue
        if not reports or reports[-1].elapsed_s <= 0 or not meta.get("model_path"):
            continue
        model_path = Path(meta["model_path"])
        model_path = model_path if model_path.is_absolute() else project_dir / model_path
        last = reports[-1]
        seen.setdefault(speed_key(recipe, model_path), []).append(last.tokens_seen / last.elapsed_s)
    return {key: statistics.median(values) for key, values in seen.items()}


def fit_settings(recipe: Recipe, seq_length: int, trained_fraction: float):
    """The core's FitSettings for a recipe whose rows are padded to `seq_length` tokens."""
    from mlxsft.models.fit import FitSettings

    t = recipe.train
    seq = max(1, min(seq_length, t.max_seq_length))
    rows = t.batch_size
    batch_tokens = t.batch_tokens if isinstance(t.batch_tokens, int) else rows * seq
    return FitSettings(
        method=recipe.method,
        rank=recipe.lora.rank,
        alpha=recipe.lora.alpha,
        targets=tuple(recipe.lora.targets) or None,
        layers=recipe.lora.layers,
        batch_tokens=max(batch_tokens, seq),
        seq_length=seq,
        quantize_bits=recipe.quantize.bits,
        group_size=recipe.quantize.group_size,
        grad_checkpoint=t.grad_checkpoint,
        dtype=t.dtype,
        trained_fraction=min(max(trained_fraction, 1e-3), 1.0),
        optimizer=t.optimizer,
    )


@dataclass(frozen=True)
class DataShape:
    """What the estimate needs of the data (from the New run preview, or guesses without one)."""

    train_rows: int
    valid_rows: int
    mean_tokens: float
    max_tokens: int
    trained_fraction: float = 1.0


@dataclass(frozen=True)
class RunEstimate:
    total_parameters: int
    trainable_parameters: int
    memory_gb: float
    steps: int
    tokens_per_step: int
    seconds: float
    basis: str  # where tokens/s came from, said plainly

    def describe(self) -> str:
        share = 100 * self.trainable_parameters / max(self.total_parameters, 1)
        return (
            f"~{self.total_parameters / 1e6:,.1f}M parameters, "
            f"{self.trainable_parameters / 1e6:,.2f}M trainable ({share:.2f}%)\n"
            f"memory ~{self.memory_gb:.2f} GB peak (models fit)\n"
            f"{self.steps} steps x ~{self.tokens_per_step:,} tokens: ~{format_duration(self.seconds)}\n"
            f"({self.basis})"
        )


def count_steps(recipe: Recipe, train_rows: int) -> int:
    t = recipe.train
    if t.iters is not None:
        return t.iters
    batches = max(1, -(-train_rows // t.batch_size))
    return max(1, int((t.epochs or 1.0) * batches / t.grad_accumulation + 0.999))


def estimate_for(
    recipe: Recipe, model_dir: Path, data: DataShape, speeds: dict[tuple, float], matmul_flops_per_s: float | None
) -> RunEstimate:
    """Memory from `estimate_fit`; time from a measured speed or the core's matmul rate."""
    from mlxsft.models.fit import estimate_fit
    from mlxsft.models.report import UTILIZATION

    fit = estimate_fit(model_dir, fit_settings(recipe, data.max_tokens, data.trained_fraction))
    t = recipe.train
    steps = count_steps(recipe, data.train_rows)
    seq = min(max(data.mean_tokens, 1.0), t.max_seq_length)
    tokens_per_step = int(t.batch_size * t.grad_accumulation * seq)
    train_tokens = steps * tokens_per_step
    measured = speeds.get(speed_key(recipe, model_dir))
    if measured:
        seconds = train_tokens / measured
        basis = f"at {measured:,.0f} tok/s overall, measured by an earlier run of this model and shape"
    elif matmul_flops_per_s:
        rate = UTILIZATION * matmul_flops_per_s / fit.flops_per_token
        evals = (steps // t.steps_per_eval if t.steps_per_eval else 0) + 1
        eval_tokens = evals * data.valid_rows * seq if t.val_batches < 0 else 0
        seconds = (train_tokens + EVAL_COST * eval_tokens) / rate + STARTUP_S
        basis = (
            f"~{rate:,.0f} tok/s from a timed matmul and {fit.flops_per_token / 1e6:,.1f} MFLOP "
            f"per token, plus validation and start-up; rough until a run of this model has measured it"
        )
    else:
        seconds, basis = 0.0, "no speed yet: the matmul timing is still running"
    return RunEstimate(
        fit.total_parameters, fit.trainable_parameters, fit.memory.total / 1e9, steps, tokens_per_step, seconds, basis
    )
