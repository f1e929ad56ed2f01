"""Import a PEFT LoRA/DoRA adapter as an mlxsft run, to evaluate it or continue training it.

The PEFT folder is read by `peft.read_peft_adapter` (the PEFT format's reading side).
`import_peft_adapter` writes a run directory like a training run's: recipe.yaml,
run.json (status "imported"), the adapters at the root and a step-0 checkpoint with a
fresh optimizer state, so `mlxsft train --resume` can continue from it once the
recipe's data.train points at data. The run folder is made by the run-dir layer and
the checkpoint by the checkpoint module's own writer (`train/checkpoint.py`, the one
owner of that format); the training loop is not involved.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ..config import DataConfig, LoraConfig, Recipe, recipe_from_dict
from ..model import attach_adapters, load_base, resolve_model_path
from ..rundir import RunDir
from ..safeio import read_json
from ..train.checkpoint import TrainerState, save_checkpoint
from ..train.schedule import build_optimizer
from .errors import ExportError
from .peft import read_peft_adapter, read_peft_config
from .staging import check_target, staged_output

DATA_PLACEHOLDER = "<set data.train to continue training>"


def import_peft_adapter(
    peft_dir: str | Path,
    out: str | Path,
    *,
    base: str | None = None,
    data: str | None = None,
    force: bool = False,
) -> Path:
    """Write a run directory holding the PEFT adapter in `peft_dir` on `base` (default: its own)."""
    folder = Path(peft_dir)
    config = read_peft_config(folder)
    check_target(Path(out), force, _is_untouched_import)
    named = config.get("base_model_name_or_path")
    if base and named and Path(base).name != Path(named).name:
        print(f"Note: the adapter was trained on {named}; importing it onto {base}.")
    base = base or named
    if not base:
        raise ExportError("the adapter does not name its base model; give --base MODEL.", path=str(folder))
    base_path = resolve_model_path(base)
    num_layers = _num_layers(base_path)
    mlx_config, weights = read_peft_adapter(folder, num_layers)
    params = mlx_config["lora_parameters"]
    recipe = Recipe(
        model=str(base_path.resolve()) if Path(base).expanduser().exists() else base,
        data=DataConfig(train=data or DATA_PLACEHOLDER),
        method=mlx_config["fine_tune_type"],
        lora=LoraConfig(
            rank=params["rank"],
            alpha=params["scale"] * params["rank"],
            dropout=params["dropout"],
            layers="all" if mlx_config["num_layers"] >= num_layers else mlx_config["num_layers"],
            targets=params["keys"],
        ),
    )
    recipe = recipe_from_dict(recipe.to_dict())  # the same validation `train --resume` will apply
    print(f"Importing the {recipe.method} adapter in {folder} onto {base_path} as {out}")
    model, _tokenizer, model_path, _ = load_base(recipe)
    adapter_config = attach_adapters(model, recipe) | {"model": str(model_path)}
    _load_checked(model, weights)
    with staged_output(out, force, replaceable=_is_untouched_import) as tmp:
        _write_run(tmp, recipe, model, adapter_config, model_path, folder)
    print(
        f"Wrote run {out} (evaluate it, or set data.train in {Path(out) / 'recipe.yaml'} and "
        f"`mlxsft train --resume {out}` to continue training)"
    )
    return Path(out)


def _num_layers(base_path: Path) -> int:
    config = read_json(base_path / "config.json", ExportError, "the base model's config")
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int):
        raise ExportError(
            "config.json has no num_hidden_layers, so the adapter cannot be placed on this base.",
            path=str(base_path / "config.json"),
        )
    return layers


def _load_checked(model, weights: dict[str, mx.array]) -> None:
    expected = dict(tree_flatten(model.trainable_parameters()))
    for name, tensor in weights.items():
        if name not in expected:
            raise ExportError(
                f"the adapter does not match the base model: it has {name}, which the base model does not."
            )
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ExportError(
                f"the adapter does not match the base model: {name} has shape "
                f"{tuple(tensor.shape)}, the base model needs {tuple(expected[name].shape)} "
                "(was it trained on another model?)."
            )
    model.load_weights([(k, v.astype(expected[k].dtype)) for k, v in weights.items()], strict=False)
    mx.eval(model.parameters())


def _write_run(folder: Path, recipe, model, adapter_config: dict, model_path: Path, source: Path) -> None:
    run = RunDir(folder)
    run.create(recipe)
    run.update_meta(
        status="imported",
        model=recipe.model,
        model_path=str(model_path),
        method=recipe.method,
        imported_from=str(source.resolve()),
        created=time.time(),
        updated=time.time(),
    )
    # fresh optimizer state (zero moments, step 0): what `train --resume` expects to load
    optimizer = build_optimizer(recipe.train, total_steps=1)
    optimizer.init(model.trainable_parameters())
    save_checkpoint(run, model, optimizer, TrainerState(step=0), adapter_config)


def _is_untouched_import(path: Path) -> bool:
    """--force may replace an empty folder or an import nobody has trained on since."""
    if path.is_dir() and not any(path.iterdir()):
        return True
    meta = path / "run.json"
    try:
        return meta.is_file() and json.loads(meta.read_text(encoding="utf-8")).get("status") == "imported"
    except (OSError, ValueError, AttributeError):
        return False  # unreadable: not something --force may replace
