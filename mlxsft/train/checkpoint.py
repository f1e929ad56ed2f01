"""Checkpoints: what exact resume needs, written atomically into the run directory.

A checkpoint holds the trainable weights (mlx-lm's `adapters.safetensors` names),
the optimizer state (its `step` drives the LR schedule, plus Adam moments), and
`trainer_state.json` with the data cursor (epoch and micro-batch index into that
epoch's deterministic plan) and running totals. Dropout needs no saved RNG: the loop
reseeds MLX's RNG from (seed, micro-batch) before every micro-batch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from ..errors import TrainingError
from ..rundir import RunDir
from ..safeio import atomic_copy_file, atomic_write_text, write_guard


@dataclass
class TrainerState:
    """Everything besides arrays that a resumed run needs to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch of the data plan
    cursor: int = 0  # micro-batches of this epoch already consumed
    tokens_seen: int = 0
    trained_tokens_seen: int = 0
    elapsed_s: float = 0.0
    last_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def _save_arrays(arrays: dict[str, mx.array], path: Path) -> None:
    mx.save_safetensors(str(path), arrays)


def save_checkpoint(
    run: RunDir, model: nn.Module, optimizer: optim.Optimizer, state: TrainerState, adapter_config: dict
) -> Path:
    """Write step `state.step`'s checkpoint (staged, then renamed) and refresh the run's latest adapters.

    A failed write (a full disk) removes the staging folder and raises a `TrainingError`
    saying so; earlier checkpoints and the run's adapters are untouched.
    """
    weights = dict(tree_flatten(model.trainable_parameters()))
    opt_arrays = dict(tree_flatten(optimizer.state))
    previous = run.latest_checkpoint()
    kept = (
        f"The previous checkpoint ({previous.name}) is untouched; resume from it with "
        f"`mlxsft train --resume {run.path}`."
        if previous
        else "No checkpoint was written."
    )
    staging = None
    try:
        with write_guard(run.checkpoints_dir, f"checkpoint step {state.step}", kept=kept, error=TrainingError):
            staging = run.new_checkpoint_staging()
            _save_arrays(weights, staging / "adapters.safetensors")
            _save_arrays(opt_arrays, staging / "optimizer.safetensors")
            (staging / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
            (staging / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2))
            target = run.commit_checkpoint(staging, state.step)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    with write_guard(
        run.path, "the run's latest adapters", error=TrainingError, kept=f"The checkpoint itself was saved in {target}."
    ):
        _publish_latest(run, target, adapter_config)
    return target


def _publish_latest(run: RunDir, checkpoint: Path, adapter_config: dict) -> None:
    """Copy a checkpoint's adapters to the run root (temp + rename), for mlx-lm and export."""
    atomic_copy_file(checkpoint / "adapters.safetensors", run.adapters_file)
    atomic_write_text(run.adapter_config_file, json.dumps(adapter_config, indent=2))


def load_checkpoint(checkpoint: Path, model: nn.Module, optimizer: optim.Optimizer) -> TrainerState:
    """Restore weights and optimizer state from `checkpoint`; return its trainer state.

    Call before compiling the step: the compiled step captures the optimizer's state dict.
    """
    try:
        weights = mx.load(str(checkpoint / "adapters.safetensors"))
        opt_arrays = mx.load(str(checkpoint / "optimizer.safetensors"))
        state = TrainerState.from_file(checkpoint / "trainer_state.json")
    except (OSError, ValueError, RuntimeError) as exc:
        raise TrainingError(
            f"cannot read this checkpoint ({exc}); remove it to resume from an earlier one.", path=str(checkpoint)
        ) from None
    expected = dict(tree_flatten(model.trainable_parameters()))
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in weights):
        raise TrainingError(
            "the checkpoint's weights do not match the model the recipe builds (different model or adapter shape?).",
            path=str(checkpoint),
        )
    model.load_weights(list(weights.items()), strict=False)
    optimizer.init(model.trainable_parameters())
    expected_opt = dict(tree_flatten(optimizer.state))
    if set(opt_arrays) != set(expected_opt):
        raise TrainingError(
            "the checkpoint's optimizer state does not match the recipe's optimizer.", path=str(checkpoint)
        )
    for key, value in opt_arrays.items():
        assign_tree(optimizer.state, key, value)
    mx.eval(model.parameters(), optimizer.state)
    return state


def assign_tree(tree, dotted: str, value) -> None:
    """Set a leaf of a nested dict/list tree in place (the compiled step holds this tree)."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
