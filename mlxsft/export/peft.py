"""PEFT adapters, both ways: a run's LoRA/DoRA adapter written as a PEFT folder, and a PEFT folder read.

Writing: `adapter_config.json` + `adapter_model.safetensors`, which loads with
`PeftModel.from_pretrained(base, folder)` in transformers + peft: tensor names and shapes
come from `keymap.mlx_to_peft`, `lora_alpha = scale * r` so PEFT's `lora_alpha / r`
equals the trained scale, `layers_to_transform` lists the blocks that carry adapters
when not all do, and `use_dora` marks a DoRA adapter (PEFT's `lora_magnitude_vector` is
mlx-lm's `m`, see keymap.py). PEFT only warns about adapter keys it does not find, so
every module path is checked against the base checkpoint's tensor names and shapes
before anything is written, and the written folder is read back through the reading
side below and compared in MLX.

Reading (`read_peft_adapter`, also what `mlxsft import-adapter` uses): a PEFT folder as
mlx-lm's adapter config and tensors (`keymap.peft_to_mlx`; scale = lora_alpha / r, or
/ sqrt(r) with rsLoRA; the blocks from the first adapted one to the last get adapters,
as mlx-lm's `num_layers` counts from the end). Modules inside that range that PEFT did
not adapt get a zero update (LoRA `lora_b = 0`; DoRA `m = ||W||`), which computes the
base unchanged. PEFT features an mlx-lm adapter cannot represent are refused.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..safeio import read_json
from ..token_rows import TRAINABLE_TOKENS
from .errors import ExportError
from .keymap import mlx_to_peft, peft_to_mlx
from .parity import Candidate, ReferenceLogits, trained_reference
from .pipeline import ExportOptions, Job, export_run
from .safetensors_info import read_safetensors_shapes, stored_dtype
from .side_files import copy_side_files
from .source import AdapterSource, apply_adapter, load_base_as_trained
from .staging import PARITY_FILE, write_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_BLOCK_PARAM = re.compile(r"^(?P<prefix>.+?)\.layers\.(?P<index>\d+)\.(?P<key>.+)\.(?P<leaf>lora_a|lora_b|m)$")


# ---------------------------------------------------------------- writing


def peft_adapter_config(source: AdapterSource, num_model_layers: int) -> dict:
    """PEFT's LoraConfig fields for the source adapter (mlx-lm `lora_parameters` -> PEFT)."""
    params = source.adapter_config["lora_parameters"]
    rank, scale = int(params["rank"]), float(params["scale"])
    alpha = scale * rank
    # mlx-lm adapts the last `num_layers` blocks (-1: all of them)
    num_layers = int(source.adapter_config.get("num_layers", num_model_layers))
    first = 0 if num_layers < 0 else max(num_model_layers - num_layers, 0)
    layers = list(range(first, num_model_layers)) if first > 0 else None
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": _base_name(source),
        "r": rank,
        "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
        "lora_dropout": float(params.get("dropout", 0.0)),
        "target_modules": sorted(params["keys"]),
        "layers_to_transform": layers,
        "layers_pattern": None,
        "use_dora": source.fine_tune_type == "dora",
        "use_rslora": False,
        "bias": "none",
        "lora_bias": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "exclude_modules": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layer_replication": None,
        "revision": None,
    }


def token_indices(adapter_config: dict, weights: dict) -> dict | None:
    """PEFT's trainable_token_indices for trained token rows: {module name: ids}, or None."""
    ids = adapter_config.get(TRAINABLE_TOKENS)
    if not ids:
        return None
    modules = [name.rsplit(".", 2)[-2] for name in weights if name.endswith(".rows")]  # embed_tokens, lm_head
    return {module: list(ids) for module in sorted(modules)}


def _base_name(source: AdapterSource) -> str:
    """The recipe's hub id as is; a local folder as an absolute path."""
    model = source.recipe.model
    return str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model


def peft_tensors(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """mlx-lm adapter tensors -> PEFT tensors (contiguous copies of the transposes)."""
    out = {}
    for name, tensor in weights.items():
        try:
            peft_name, peft_tensor = mlx_to_peft(name, tensor)
        except KeyError as exc:
            raise ExportError(f"cannot write this adapter as PEFT: {exc.args[0]}.") from None
        out[peft_name] = mx.contiguous(peft_tensor)
    return out


def check_modules(weights: dict[str, mx.array], base_path: Path, base_config: dict) -> None:
    """Each adapted module must be a linear of the base checkpoint with matching (out, in)."""
    base = read_safetensors_shapes(base_path)
    packed = "quantization" in base_config  # an MLX-quantized checkpoint stores packed inputs
    for name, tensor in weights.items():
        module, _, leaf = name.rpartition(".")
        shape = base.get(f"{module}.weight")
        if leaf == "rows" and shape is not None and tensor.shape[-1] == shape[-1]:
            continue  # trained token rows (K, D) of a (V, D) embedding or head
        if shape is None:
            raise ExportError(
                f"the adapted module {module} has no weight in the base checkpoint under that "
                "name (mlx-lm names this architecture differently), so PEFT would ignore it."
            )
        if leaf == "lora_a" and not packed and tensor.shape[0] != shape[-1]:
            raise ExportError(f"{name} has input size {tensor.shape[0]}, the base's {module} is {shape}.")
        if leaf in ("lora_b", "m") and tensor.shape[-1] != shape[0]:
            raise ExportError(f"{name} has output size {tensor.shape[-1]}, the base's {module} is {shape}.")


class PeftFormat:
    name = "peft"
    single_file = False
    parity_names = (PARITY_FILE,)

    def plan(self, job: Job) -> str:
        source = job.source
        if source.fine_tune_type == "full":
            raise ExportError(
                "a full fine-tune has no adapter to export as PEFT; use --format hf "
                "(a merged Hugging Face model) instead.",
                path=str(source.run.path),
            )
        weights = mx.load(str(source.folder / "adapters.safetensors"))
        base_config = json.loads((source.base_path / "config.json").read_text(encoding="utf-8"))
        check_modules(weights, source.base_path, base_config)
        config = peft_adapter_config(source, int(base_config["num_hidden_layers"]))
        config["trainable_token_indices"] = token_indices(source.adapter_config, weights)
        job.state.update(config=config, weights=weights)
        text = f"Exporting the {source.fine_tune_type} adapter of {source.run.path} as PEFT to {job.out}"
        if source.recipe.quantize.bits is not None:
            text += (
                f"\nNote: this adapter was trained on a {source.recipe.quantize.bits}-bit base; "
                "PEFT applies it to the base you load (full precision unless you quantize it)."
            )
        return text

    def reference(self, job: Job) -> ReferenceLogits:
        return trained_reference(job.source)

    def write(self, job: Job, path: Path) -> str:
        source = job.source
        write_json(path / ADAPTER_CONFIG, job.state["config"])
        copy_side_files(source.base_path, path, source.run.chat_template())  # tokenizer + trained template
        mx.save_safetensors(str(path / ADAPTER_WEIGHTS), peft_tensors(job.state["weights"]), metadata={"format": "pt"})
        return f"Wrote {job.out} (load it with PeftModel.from_pretrained(base_model, '{job.out}'))"

    def load(self, path: Path, source: AdapterSource) -> Candidate:
        return Candidate(load_peft_model(source, path), stored_dtype(path / ADAPTER_WEIGHTS))


PEFT = PeftFormat()


def export_peft(
    run_dir: str | Path, out: str | Path, *, checkpoint=None, force: bool = False, verify: bool = True
) -> Path:
    """Write the run's adapter as a PEFT folder; check it maps back to the same logits."""
    return export_run(PEFT, run_dir, out, checkpoint=checkpoint, force=force, verify=verify, options=ExportOptions())


def load_peft_model(source: AdapterSource, folder: Path) -> nn.Module:
    """The run's base in MLX with a PEFT adapter folder applied (through the reading side)."""
    loaded = load_base_as_trained(source)
    config, weights = read_peft_adapter(folder, len(loaded.model.layers))
    apply_adapter(loaded.model, config, weights)
    mx.eval(loaded.model.parameters())
    return loaded.model


# ---------------------------------------------------------------- reading


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
        refuse(f"it also saves full modules ({config['modules_to_save']}), which mlx-lm adapters lack")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        refuse("it uses per-module ranks or alphas (rank_pattern/alpha_pattern); mlx-lm has one each")
    if config.get("layer_replication"):
        refuse("it uses layer_replication")


def read_peft_adapter(folder: str | Path, num_model_layers: int) -> tuple[dict, dict[str, mx.array]]:
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
        raise ExportError(f"no adapter_model.safetensors in this PEFT folder{hint}.", path=str(folder))
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
            f"cannot import this adapter: tensors that are not LoRA/DoRA matrices of linear layers, e.g. {unknown[0]}.",
            path=str(weights_file),
        )
    if not weights:
        raise ExportError("the PEFT adapter holds no tensors.", path=str(weights_file))
    return _mlx_config(config, weights, num_model_layers, folder), weights


def _mlx_config(config: dict, weights: dict[str, mx.array], num_model_layers: int, folder: Path) -> dict:
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
        raise ExportError(f"the adapter's modules have different ranks {sorted(ranks)}.", path=str(folder))
    rank = ranks.pop()
    if int(config.get("r", rank)) != rank:
        raise ExportError(
            f"adapter_config.json says r={config['r']} but the tensors have rank {rank}.",
            path=str(folder),
        )
    use_dora = bool(config.get("use_dora", False))
    if magnitudes != (modules if use_dora else set()):
        raise ExportError(
            f"the adapter's DoRA magnitude vectors do not match use_dora={use_dora} in adapter_config.json.",
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
