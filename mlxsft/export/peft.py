"""PEFT adapters: a run's LoRA/DoRA adapter as adapter_config.json + adapter_model.safetensors.

The folder loads with `PeftModel.from_pretrained(base, folder)` in transformers +
peft: tensor names and shapes come from `keymap.mlx_to_peft`, `lora_alpha = scale * r`
so PEFT's `lora_alpha / r` equals the trained scale, `layers_to_transform` lists the
blocks that carry adapters when not all do, and `use_dora` marks a DoRA adapter
(PEFT's `lora_magnitude_vector` is mlx-lm's `m`, see keymap.py).

PEFT only warns about adapter keys it does not find, so every module path is checked
against the base checkpoint's tensor names and shapes before anything is written,
and the written tensors are read back through the import path and compared in MLX.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..token_rows import TRAINABLE_TOKENS
from .keymap import mlx_to_peft
from .mlx_adapter import (
    PARITY_FILE,
    AdapterSource,
    ExportError,
    apply_adapter,
    check_target,
    load_base_as_trained,
    resolve_source,
    staged_output,
    stored_dtype,
    write_json,
)
from .side_files import copy_side_files

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


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
    from .merged import read_safetensors_shapes

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
            raise ExportError(
                f"{name} has input size {tensor.shape[0]}, the base's {module} is {shape}."
            )
        if leaf in ("lora_b", "m") and tensor.shape[-1] != shape[0]:
            raise ExportError(
                f"{name} has output size {tensor.shape[-1]}, the base's {module} is {shape}."
            )


def export_peft(
    run_dir: str | Path,
    out: str | Path,
    *,
    checkpoint=None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """Write the run's adapter as a PEFT folder; check it maps back to the same logits."""
    from .verify import check_artifact, skipped_report, trained_reference

    source = resolve_source(run_dir, checkpoint)
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
    check_target(Path(out), force)
    print(f"Exporting the {source.fine_tune_type} adapter of {source.run.path} as PEFT to {out}")
    if source.recipe.quantize.bits is not None:
        print(
            f"Note: this adapter was trained on a {source.recipe.quantize.bits}-bit base; "
            "PEFT applies it to the base you load (full precision unless you quantize it)."
        )
    reference = trained_reference(source) if verify else None
    with staged_output(out, force) as tmp:
        write_json(tmp / ADAPTER_CONFIG, config)
        copy_side_files(source.base_path, tmp, source.run.chat_template())  # tokenizer + trained template
        mx.save_safetensors(
            str(tmp / ADAPTER_WEIGHTS), peft_tensors(weights), metadata={"format": "pt"}
        )
        if reference is None:
            skipped_report("peft", source).write(tmp / PARITY_FILE)
        else:
            check_artifact(
                reference,
                load_peft_model(source, tmp),
                fmt="peft",
                dtype=stored_dtype(tmp / ADAPTER_WEIGHTS),
                source=source,
                parity_path=tmp / PARITY_FILE,
            )
    print(f"Wrote {out} (load it with PeftModel.from_pretrained(base_model, '{out}'))")
    return Path(out)


def load_peft_model(source: AdapterSource, folder: Path) -> nn.Module:
    """The run's base in MLX with a PEFT adapter folder applied (through the import key map)."""
    from .import_adapter import read_peft_adapter

    loaded = load_base_as_trained(source)
    config, weights = read_peft_adapter(folder, len(loaded.model.layers))
    apply_adapter(loaded.model, config, weights)
    mx.eval(loaded.model.parameters())
    return loaded.model
