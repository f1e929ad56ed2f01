"""Import a PEFT LoRA/DoRA adapter as an mlxsft run, to evaluate it or continue training it.

`read_peft_adapter` turns a PEFT folder into mlx-lm's adapter config and tensors
(`keymap.peft_to_mlx`; scale = lora_alpha / r, or / sqrt(r) with rsLoRA; the blocks
from the first adapted one to the last get adapters, as mlx-lm's `num_layers` counts
from the end). Modules inside that range that PEFT did not adapt get a zero update
(LoRA `lora_b = 0`; DoRA `m = ||W||`), which computes the base unchanged.

`import_peft_adapter` writes a run directory like a training run's: recipe.yaml,
run.json (status "imported"), the adapters at the root and a step-0 checkpoint with a
fresh optimizer state, so `mlxsft train --resume` can continue from it once the
recipe's data.train points at data.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import mlx.core as mx

from ..safeio import read_json
from ..token_rows import TRAINABLE_TOKENS
from .keymap import peft_to_mlx
from .mlx_adapter import ExportError, check_target, staged_output

DATA_PLACEHOLDER = "<set data.train to continue training>"
_BLOCK_PARAM = re.compile(
    r"^(?P<prefix>.+?)\.layers\.(?P<index>\d+)\.(?P<key>.+)\.(?P<leaf>lora_a|lora_b|m)$"
)


def read_peft_config(folder: Path) -> dict:
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise ExportError("not a PEFT adapter folder (no adapter_config.json).", path=str(folder))
    config = read_json(folder / "adapter_config.json", ExportError, "the PEFT adapter config")
    _check_supported(config, folder)
    return config


def _check_supported(config: dict, folder: Path) -> None:
    """Refuse the PEFT features an mlx-lm LoRA/DoRA adapter cannot represent."""

    def refuse(why: str):
        raise ExportError(f"cannot import this adapter: {why}.", path=str(folder))

    if config.get("peft_type", "LORA") != "LORA":
        refuse(f"it is a {config.get('peft_type')} adapter; only LoRA and DoRA are supported")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        refuse(f"its task_type is {config.get('task_type')}, not CAUSAL_LM")
    if config.get("fan_in_fan_out"):
        refuse("fan_in_fan_out (GPT-2 style Conv1D layers) is not supported")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        refuse("it trains biases (bias/lora_bias), which mlx-lm adapters do not have")
    if config.get("modules_to_save"):
        refuse(
            f"it also saves full modules ({config['modules_to_save']}), which mlx-lm adapters lack"
        )
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        refuse(
            "it uses per-module ranks or alphas (rank_pattern/alpha_pattern); mlx-lm has one each"
        )
    if config.get("layer_replication"):
        refuse("it uses layer_replication")


def read_peft_adapter(
    folder: str | Path, num_model_layers: int
) -> tuple[dict, dict[str, mx.array]]:
    """(mlx-lm adapter_config, mlx-lm adapter tensors) for a PEFT adapter folder."""
    folder = Path(folder)
    config = read_peft_config(folder)
    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file():
        hint = (
            " (only adapter_model.bin: load and re-save it with safetensors)"
            if (folder / "adapter_model.bin").is_file()
            else ""
        )
        raise ExportError(
            f"no adapter_model.safetensors in this PEFT folder{hint}.", path=str(folder)
        )
    weights, unknown = {}, []
    for name, tensor in mx.load(str(weights_file)).items():
        try:
            mlx_name, mlx_tensor = peft_to_mlx(name, tensor)
        except KeyError:
            unknown.append(name)
            continue
        weights[mlx_name] = mx.contiguous(mlx_tensor)
    if unknown:
        raise ExportError(
            f"cannot import this adapter: tensors that are not LoRA/DoRA matrices of linear "
            f"layers, e.g. {unknown[0]}.",
            path=str(weights_file),
        )
    if not weights:
        raise ExportError("the PEFT adapter holds no tensors.", path=str(weights_file))
    return _mlx_config(config, weights, num_model_layers, folder), weights


def _mlx_config(
    config: dict, weights: dict[str, mx.array], num_model_layers: int, folder: Path
) -> dict:
    indices, keys, ranks, modules, magnitudes = set(), set(), set(), set(), set()
    for name, tensor in weights.items():
        if name.endswith(".rows"):
            continue  # trained token rows: trainable_token_indices, below
        match = _BLOCK_PARAM.match(name)
        if match is None:
            raise ExportError(
                f"cannot import this adapter: {name} is outside the transformer blocks; "
                "mlx-lm adapters cover block layers only.",
                path=str(folder),
            )
        indices.add(int(match["index"]))
        keys.add(match["key"])
        module = name.rpartition(".")[0]
        modules.add(module)
        if match["leaf"] == "lora_a":
            ranks.add(tensor.shape[1])  # (in, r)
        elif match["leaf"] == "m":
            magnitudes.add(module)
    if max(indices) >= num_model_layers:
        raise ExportError(
            f"the adapter has layers up to {max(indices)}, but the base model has only "
            f"{num_model_layers} blocks: it was trained on a different base model.",
            path=str(folder),
        )
    if len(ranks) != 1:
        raise ExportError(
            f"the adapter's modules have different ranks {sorted(ranks)}.", path=str(folder)
        )
    rank = ranks.pop()
    if int(config.get("r", rank)) != rank:
        raise ExportError(
            f"adapter_config.json says r={config['r']} but the tensors have rank {rank}.",
            path=str(folder),
        )
    use_dora = bool(config.get("use_dora", False))
    if magnitudes != (modules if use_dora else set()):
        raise ExportError(
            "the adapter's DoRA magnitude vectors do not match use_dora="
            f"{use_dora} in adapter_config.json.",
            path=str(folder),
        )
    alpha = float(config.get("lora_alpha", rank))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tokens = _token_indices(config, weights, folder)
    return ({TRAINABLE_TOKENS: tokens} if tokens else {}) | {
        "fine_tune_type": "dora" if use_dora else "lora",
        "num_layers": num_model_layers - min(indices),  # mlx-lm adapts the last N blocks
        "lora_parameters": {
            "rank": rank,
            "scale": scale,
            "dropout": float(config.get("lora_dropout", 0.0)),
            "keys": sorted(keys),
        },
    }


def _token_indices(config: dict, weights: dict, folder: Path) -> list[int]:
    """trainable_token_indices as one sorted id list (embedding and LM head train the same rows)."""
    raw = config.get("trainable_token_indices")
    if not raw:
        return []
    lists = list(raw.values()) if isinstance(raw, dict) else [raw]
    ids = sorted(int(i) for i in lists[0])
    if any(sorted(int(i) for i in other) != ids for other in lists) or list(lists[0]) != ids:
        raise ExportError(
            "cannot import this adapter: its trainable_token_indices differ between layers or are not "
            "sorted; mlxsft trains one sorted set of token rows.",
            path=str(folder),
        )
    if not any(name.endswith(".rows") for name in weights):
        raise ExportError("trainable_token_indices is set but the adapter holds no token rows.", path=str(folder))
    return ids


def import_peft_adapter(
    peft_dir: str | Path,
    out: str | Path,
    *,
    base: str | None = None,
    data: str | None = None,
    force: bool = False,
) -> Path:
    """Write a run directory holding the PEFT adapter in `peft_dir` on `base` (default: its own)."""
    from ..config import DataConfig, LoraConfig, Recipe, recipe_from_dict
    from ..model import attach_adapters, load_base, resolve_model_path

    folder = Path(peft_dir)
    config = read_peft_config(folder)
    check_target(Path(out), force, _is_untouched_import)
    named = config.get("base_model_name_or_path")
    if base and named and Path(base).name != Path(named).name:
        print(f"Note: the adapter was trained on {named}; importing it onto {base}.")
    base = base or named
    if not base:
        raise ExportError(
            "the adapter does not name its base model; give --base MODEL.", path=str(folder)
        )
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
        raise ExportError("config.json has no num_hidden_layers, so the adapter cannot be placed on this base.",
                          path=str(base_path / "config.json"))
    return layers


def _load_checked(model, weights: dict[str, mx.array]) -> None:
    from mlx.utils import tree_flatten

    expected = dict(tree_flatten(model.trainable_parameters()))
    for name, tensor in weights.items():
        if name not in expected:
            raise ExportError(
                f"the adapter does not match the base model: it has {name}, which the base "
                "model does not."
            )
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ExportError(
                f"the adapter does not match the base model: {name} has shape "
                f"{tuple(tensor.shape)}, the base model needs {tuple(expected[name].shape)} "
                "(was it trained on another model?)."
            )
    model.load_weights([(k, v.astype(expected[k].dtype)) for k, v in weights.items()], strict=False)
    mx.eval(model.parameters())


def _write_run(
    folder: Path, recipe, model, adapter_config: dict, model_path: Path, source: Path
) -> None:
    from ..rundir import RunDir
    from ..train.checkpoint import TrainerState, save_checkpoint
    from ..train.schedule import build_optimizer

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
