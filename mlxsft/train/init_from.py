"""`init: runs/<run>`: continue a finished run's adapter (e.g. DPO after SFT).

The new run attaches the adapter its own recipe describes, then loads the earlier
run's latest adapter weights into it; shapes must agree, so the two recipes must
give the same model and LoRA settings. The error says which differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import TrainingError
from ..rundir import RunDir


def load_init_adapter(model: nn.Module, init: str | Path, adapter_config: dict, model_path: Path) -> None:
    """Load `init`'s adapters into the attached adapter of `model` (raises `TrainingError`)."""
    run = RunDir(init)
    if not run.adapters_file.is_file():
        raise TrainingError(
            "init: this run folder has no adapters.safetensors (it never saved a checkpoint, or it is not a run "
            "folder); point init at a run that finished, e.g. runs/sft-x.",
            path=str(run.path),
        )
    their_model = run.read_meta().get("model_path")
    if their_model and Path(their_model).resolve() != Path(model_path).resolve():
        raise TrainingError(
            f"init: that run trained {their_model}, but this recipe's model is {model_path}; use the same base model.",
            path=str(run.path),
        )
    _check_same_adapter(run, adapter_config)
    weights = mx.load(str(run.adapters_file))
    ours = dict(tree_flatten(model.trainable_parameters()))
    if set(weights) != set(ours) or any(weights[k].shape != ours[k].shape for k in weights):
        raise TrainingError(
            "init: that run's adapter does not fit the adapter this recipe builds; give this recipe the same "
            f"method and lora: section as {run.recipe_file}.",
            path=str(run.path),
        )
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())


def _check_same_adapter(run: RunDir, adapter_config: dict) -> None:
    try:
        theirs = json.loads(run.adapter_config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the weight shapes are checked next
    differ = [key for key in ("fine_tune_type", "num_layers") if theirs.get(key) != adapter_config.get(key)]
    a, b = theirs.get("lora_parameters") or {}, adapter_config.get("lora_parameters") or {}
    differ += [f"lora {key}" for key in ("rank", "scale", "keys") if a.get(key) != b.get(key)]
    if differ:
        raise TrainingError(
            f"init: that run's adapter differs from this recipe's in {', '.join(differ)}; give this recipe the "
            f"same method and lora: section as {run.recipe_file}.",
            path=str(run.path),
        )
