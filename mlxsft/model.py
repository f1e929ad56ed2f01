"""Base models: locate (local folder or hub id), load with mlx-lm, quantize, attach adapters.

mlx-lm owns the architectures, weight loading and quantization; this module adds
the checks users need before a long run (a clear error for a folder without
weights or tokenizer), the compute-dtype choice for the CPU backend, target
resolution for LoRA/DoRA by module-name suffix, and parameter counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .config import LoraConfig, QuantizeConfig, Recipe, check_layers_fit
from .errors import ModelError
from .hub import HubSettings, download, hub_error
from .safeio import read_json
from .store import find_local, store_root
from .token_rows import TRAINABLE_TOKENS, attach_token_rows

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    trainable: int

    @property
    def trainable_share(self) -> float:
        return self.trainable / max(self.total, 1)


def check_model_dir(path: Path) -> None:
    """Raise ModelError unless `path` holds a config, safetensors weights and a tokenizer."""
    if not (path / "config.json").is_file():
        raise ModelError("this folder has no config.json, so it is not a Hugging Face model folder.", path=str(path))
    read_json(path / "config.json", ModelError, "the model's config.json")
    if not any(path.glob("*.safetensors")):
        hint = " (found PyTorch .bin weights: convert them to safetensors first)" if any(path.glob("*.bin")) else ""
        raise ModelError(f"no *.safetensors weights in this model folder{hint}.", path=str(path))
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(
            "no tokenizer (tokenizer.json or tokenizer.model) in this model folder; "
            "copy the tokenizer files from the base model.",
            path=str(path),
        )


def resolve_model_path(model: str) -> Path:
    """A local model folder for `model`: the folder itself, or a hub download (cached)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError("expected a model folder, found a file.", path=str(path))
        check_model_dir(path)
        return path.resolve()
    looks_local = model.startswith((".", "/", "~")) or model.startswith("models/") or not _HUB_ID.match(model)
    if not looks_local:
        stored = _from_store(model)
        if stored is not None:
            return stored
    if looks_local:
        raise ModelError(
            "model folder not found; check the path, or give a hub id such as Qwen/Qwen2.5-0.5B-Instruct.", path=model
        )
    return _download(model)


def _from_store(repo_id: str) -> Path | None:
    """A copy of a hub id already pulled into the local model store (works offline)."""

    root = store_root()
    if not root.is_dir():
        return None
    local = find_local(root, repo_id)
    return local.path.resolve() if local is not None else None


def _download(repo_id: str) -> Path:
    """Fetch safetensors, config and tokenizer files (no pickle weights) from the hub into its cache."""
    hub = HubSettings.from_env()
    hub.apply()
    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
    try:
        path = download(repo_id, hub, patterns)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types; hub_error words each
        error = hub_error(exc, repo_id, hub)
        raise ModelError(f"{error.detail} Offline, point `model:` at a local folder.") from None
    check_model_dir(path)
    return path


def compute_dtype(requested: str) -> mx.Dtype | None:
    """The dtype to cast floating weights to; None keeps the checkpoint's own.

    On the CPU backend bf16/fp16 matmuls have no fast path, so `auto` means fp32 there.
    """
    if requested == "auto":
        return mx.float32 if mx.default_device() == mx.cpu or not _has_gpu() else None
    return getattr(mx, requested)


def _has_gpu() -> bool:
    try:
        return mx.metal.is_available() or mx.cuda.is_available()
    except AttributeError:
        return mx.metal.is_available()


def load_base(recipe: Recipe):
    """Load (model, tokenizer, model_path, config dict) for the recipe's base model."""
    from mlx_lm.utils import load_model, load_tokenizer

    path = resolve_model_path(recipe.model)
    try:
        model, config = load_model(path, lazy=True, trust_remote_code=recipe.trust_remote_code)
        tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except ValueError as exc:
        raise ModelError(f"mlx-lm cannot load this model: {exc}", path=str(path)) from None
    cast_floating(model, compute_dtype(recipe.train.dtype))
    if recipe.quantize.bits is not None:
        quantize_base(model, recipe.quantize)
    mx.eval(model.parameters())
    return model, tokenizer, path, config


def cast_floating(model: nn.Module, dtype: mx.Dtype | None) -> None:
    """Cast floating-point parameters (not quantized scales' integer weights) to `dtype`."""
    if dtype is None:
        return
    params = [(k, v.astype(dtype)) for k, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)]
    model.load_weights(params, strict=False)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


def quantize_base(model: nn.Module, q: QuantizeConfig) -> None:
    """Quantize linear and embedding layers in place (QLoRA's frozen base)."""
    if is_quantized(model):
        return  # already a quantized checkpoint: keep its own scheme

    def quantizable(_path, module):
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % q.group_size == 0

    nn.quantize(model, group_size=q.group_size, bits=q.bits, class_predicate=quantizable)


def resolve_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Module paths inside a block (e.g. 'self_attn.q_proj') whose names end with a target."""
    block = model.layers[0]
    linear_types = (nn.Linear, nn.QuantizedLinear)
    names = [name for name, m in block.named_modules() if isinstance(m, linear_types)]
    keys, missing = [], []
    for target in targets:
        found = [n for n in names if n == target or n.endswith("." + target)]
        if not found:
            missing.append(target)
        keys.extend(found)
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ModelError(
            f"lora.targets {missing} match no linear layer of this model. Its layers are: {', '.join(leaves)}."
        )
    return sorted(set(keys))


def lora_parameters(lora: LoraConfig, keys: list[str]) -> dict:
    """mlx-lm's `lora_parameters` dict (scale = alpha / rank)."""
    return {"rank": lora.rank, "scale": lora.alpha / lora.rank, "dropout": lora.dropout, "keys": keys}


def num_adapted_layers(model: nn.Module, lora: LoraConfig) -> int:
    n = len(model.layers)
    check_layers_fit(lora, n)
    return n if lora.layers == "all" else int(lora.layers)


def attach_adapters(model: nn.Module, recipe: Recipe, token_ids: list[int] | None = None) -> dict:
    """Freeze the base and attach LoRA/DoRA (or unfreeze all for full); return the adapter config.

    `token_ids`: tokens whose embedding and LM-head rows train too (token_rows.py).
    """
    from mlx_lm.tuner.utils import linear_to_lora_layers

    if recipe.method == "full":
        model.unfreeze()
        return {"fine_tune_type": "full", "num_layers": len(model.layers)}
    model.freeze()
    keys = resolve_targets(model, recipe.lora.targets)
    params = lora_parameters(recipe.lora, keys)
    num_layers = num_adapted_layers(model, recipe.lora)
    linear_to_lora_layers(model, num_layers, params, use_dora=recipe.method == "dora")
    config = {"fine_tune_type": recipe.method, "num_layers": num_layers, "lora_parameters": params}
    if token_ids:
        config[TRAINABLE_TOKENS] = attach_token_rows(model, token_ids)
    return config


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Parameters as the user thinks of them (packed quantized weights counted unpacked)."""
    bits = {name: getattr(m, "bits", None) for name, m in model.named_modules()}
    total = 0
    for name, v in tree_flatten(model.parameters()):
        module_path, leaf = name.rsplit(".", 1)
        module_bits = bits.get(module_path)
        if module_bits and leaf in ("scales", "biases"):
            continue  # quantization metadata, not model parameters
        total += v.size * 32 // module_bits if module_bits and v.dtype == mx.uint32 else v.size
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    return ParameterCounts(total=total, trainable=trainable)


def vocab_size(model: nn.Module) -> int:
    """Rows of the model's output layer (its embedding table)."""
    args = getattr(model, "args", None)
    if hasattr(args, "vocab_size"):
        return int(args.vocab_size)
    return int(model.model.embed_tokens.weight.shape[0])
