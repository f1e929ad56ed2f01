"""The source of every export: which trained adapter a run provides, and that adapter loaded in MLX.

Owns:
- `AdapterSource` and `resolve_source`: the run root's latest adapters, the checkpoint
  `mlxsft select` chose, or `--checkpoint STEP|best|latest`, with clear errors;
- `load_trained`: the base model exactly as the recipe built it for training (same
  compute dtype: float32 on CPU; quantized for QLoRA) with the trained adapter
  applied — the reference every parity check compares against;
- `apply_adapter`: attach an mlx-lm adapter (config + tensors) to a base, checking names
  and shapes, which is how the adapter formats (mlx, PEFT) are read back for parity.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..config import Recipe
from ..model import load_base, resolve_model_path
from ..rundir import RunDir
from ..safeio import read_json
from ..token_rows import TRAINABLE_TOKENS, attach_token_rows
from .errors import ExportError

ADAPTER_FILES = ("adapter_config.json", "adapters.safetensors")


@dataclass(frozen=True)
class AdapterSource:
    """One trained adapter of a run: a folder with mlx-lm's adapter files."""

    run: RunDir
    folder: Path
    step: int | None  # None: the run root's latest adapters
    recipe: Recipe
    base_path: Path
    adapter_config: dict

    @property
    def fine_tune_type(self) -> str:
        return self.adapter_config.get("fine_tune_type", "lora")

    def describe(self) -> dict:
        return {
            "run": str(self.run.path),
            "checkpoint": self.step if self.step is not None else "latest",
            "method": self.fine_tune_type,
            "base_model": str(self.base_path),
        }


# ---------------------------------------------------------------- the source adapter


def parse_checkpoint(value: str | int | None) -> int | str | None:
    """CLI value of --checkpoint: a step number, 'best', 'latest', or None (the chosen one)."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text in ("latest", "best"):
        return text
    if text.startswith("step-"):
        text = text[5:]
    if not text.isdigit():
        raise ExportError(f"--checkpoint must be a step number, 'best' or 'latest', got {value!r}.")
    return int(text)


def resolve_source(run_dir: str | Path, checkpoint: int | str | None = None) -> AdapterSource:
    """The adapter folder of `run_dir` at `checkpoint` (None: latest), with clear errors."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise ExportError("run directory not found; give the folder a training run wrote.", path=str(run.path))
    recipe = run.load_recipe()
    folder, step = _checkpoint_folder(run, parse_checkpoint(checkpoint))
    if not all((folder / name).is_file() for name in ADAPTER_FILES):
        raise ExportError("this checkpoint lacks adapter_config.json or adapters.safetensors.", path=str(folder))
    adapter_config = read_json(folder / "adapter_config.json", ExportError, "the adapter config")
    return AdapterSource(run, folder, step, recipe, _base_path(run, recipe), adapter_config)


def _checkpoint_folder(run: RunDir, checkpoint: int | str | None) -> tuple[Path, int | None]:
    """(folder holding the adapter files, its step): the run root for the latest.

    With no checkpoint asked for, the one `mlxsft select` chose (run.json's chosen_step)
    is used when there is one ("rewind"): the last checkpoint often overshoots.
    """
    steps = run.checkpoint_steps()
    if checkpoint is None:
        chosen = run.read_meta().get("chosen_step")
        if chosen in steps and chosen != (steps[-1] if steps else None):
            print(
                f"Using the chosen checkpoint, step {chosen} (`mlxsft select`); "
                "pass --checkpoint latest for the last one."
            )
            return run.checkpoint_dir(chosen), chosen
    if checkpoint == "latest":
        checkpoint = None
    if checkpoint == "best":
        checkpoint = run.read_meta().get("best_step")
        if checkpoint is None:
            raise ExportError(
                "this run recorded no best checkpoint (it had no validation data); give --checkpoint STEP instead.",
                path=str(run.path),
            )
    if checkpoint is None and not run.adapters_file.is_file() and steps:
        # the root copy is only a convenience: the latest checkpoint holds the same weights
        print(f"{run.adapters_file} is missing; using the latest checkpoint, step {steps[-1]}.")
        checkpoint = steps[-1]
    if checkpoint is None:
        if not run.adapters_file.is_file():
            raise ExportError(
                "this run has no checkpoint yet: let it reach its first save "
                "(train.steps_per_save), or stop it with Ctrl-C to save one.",
                path=str(run.path),
            )
        return run.path, (steps[-1] if steps else None)
    if checkpoint not in steps:
        have = ", ".join(str(s) for s in steps) or "none"
        raise ExportError(
            f"no checkpoint at step {checkpoint}; this run has checkpoints at steps: {have}.",
            path=str(run.path),
        )
    return run.checkpoint_dir(checkpoint), checkpoint


def _base_path(run: RunDir, recipe: Recipe) -> Path:
    """The local base model folder: run.json's resolved path, else the recipe's (may download)."""
    meta_path = run.read_meta().get("model_path")
    if meta_path and Path(meta_path).is_dir():
        return Path(meta_path)
    return resolve_model_path(recipe.model)


# ---------------------------------------------------------------- loading in MLX


def read_adapter(folder: Path) -> tuple[dict, dict[str, mx.array]]:
    """(adapter_config, weights) of an mlx-lm adapter folder."""
    config = read_json(folder / "adapter_config.json", ExportError, "the adapter config")
    return config, mx.load(str(folder / "adapters.safetensors"))


def apply_adapter(model: nn.Module, config: dict, weights: dict[str, mx.array]) -> None:
    """Attach LoRA/DoRA layers as `config` says and load `weights`, checking names and shapes."""
    from mlx_lm.tuner.utils import linear_to_lora_layers  # imports rich: kept out of the wing's import

    kind = config.get("fine_tune_type", "lora")
    if kind != "full":
        linear_to_lora_layers(model, config["num_layers"], config["lora_parameters"], use_dora=kind == "dora")
        attach_token_rows(model, config.get(TRAINABLE_TOKENS) or [])
    expected = dict(tree_flatten(model.parameters()))
    problems = []
    for name, w in weights.items():
        if name not in expected:
            problems.append(f"{name}: no such parameter in the base model")
        elif tuple(w.shape) != tuple(expected[name].shape):
            problems.append(f"{name}: shape {tuple(w.shape)}, the model needs {tuple(expected[name].shape)}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ExportError(
            "the adapter does not fit this base model (a different model?): " + "; ".join(problems[:5]) + more
        )
    model.load_weights(list(weights.items()), strict=False)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    config: dict  # the base model's config.json


def load_base_as_trained(source: AdapterSource) -> LoadedModel:
    """The base model as the run's recipe built it for training.

    Same compute dtype (`train.dtype`; auto is float32 on CPU and the checkpoint's own
    on a GPU, so a large model is never doubled in memory) and, for QLoRA, the same
    quantization grid the adapter was trained against.
    """
    model, tokenizer, _path, config = load_base(replace(source.recipe, model=str(source.base_path)))
    return LoadedModel(model, tokenizer, config)


def load_trained(source: AdapterSource, adapter_folder: Path | None = None) -> LoadedModel:
    """Base + the adapter in `adapter_folder` (default: the source's own), as trained."""
    loaded = load_base_as_trained(source)
    config, weights = read_adapter(adapter_folder or source.folder)
    apply_adapter(loaded.model, config, weights)
    mx.eval(loaded.model.parameters())
    return loaded


def label(source: AdapterSource) -> str:
    return f"checkpoint step {source.step}" if source.folder != source.run.path else "latest adapters"
