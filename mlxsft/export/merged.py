"""Merged models: fuse the adapter into the base weights and write a full model.

Two outputs share the fusing:
- `export_hf`: a Hugging Face folder (config.json, model.safetensors or shards with
  an index, tokenizer files, chat template, generation_config) in float32, float16 or
  bfloat16, metadata {"format": "pt"}, that `transformers` loads with no custom code.
  A QLoRA run fuses into de-quantized weights.
- `fuse_run` (`mlxsft fuse`): an MLX model folder like `mlx_lm.fuse` writes, with
  the base's quantization re-applied unless `dequantize`.

Tensor names: mlx-lm keeps the Hugging Face names for the architectures we support;
`check_hf_names` refuses to write a checkpoint whose names or shapes differ from the
base checkpoint's, since transformers would then load it wrongly (or silently not).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .mlx_adapter import (
    PARITY_FILE,
    AdapterSource,
    ExportError,
    check_target,
    load_trained,
    resolve_source,
    staged_output,
    write_json,
)
from .side_files import copy_side_files

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
# ---------------------------------------------------------------- fusing


def fuse_adapters(model: nn.Module, dequantize: bool) -> None:
    """Replace every LoRA/DoRA layer by its fused linear (mlx-lm's own `fuse`), in place."""
    fused = [
        (name, m.fuse(dequantize=dequantize))
        for name, m in model.named_modules()
        if hasattr(m, "fuse")
    ]
    if fused:
        model.update_modules(tree_unflatten(fused))


def dequantize_all(model: nn.Module) -> None:
    from mlx_lm.utils import dequantize_model

    dequantize_model(model)


def cast_weights(weights: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    return {
        k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()
    }


def base_dtype_name(base_config: dict) -> str:
    """The base checkpoint's own dtype (config `dtype`/`torch_dtype`), float32 if unknown."""
    name = base_config.get("dtype") or base_config.get("torch_dtype")
    return name if name in DTYPES else "float32"


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    return dtype


# ---------------------------------------------------------------- safetensors headers and names


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes) without reading tensors."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(size))


def read_safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} over a model folder's model*.safetensors files."""
    shapes = {}
    for path in sorted(folder.glob("model*.safetensors")):
        for name, info in read_safetensors_header(path).items():
            if name != "__metadata__":
                shapes[name] = tuple(info["shape"])
    return shapes


def check_hf_names(weights: dict[str, mx.array], base_path: Path, base_config: dict) -> None:
    """Every tensor must exist in the base checkpoint under the same name and shape."""
    base = read_safetensors_shapes(base_path)
    quantized_base = "quantization" in base_config  # packed shapes differ; names still must match
    problems = []
    for name, w in weights.items():
        if name not in base:
            problems.append(f"{name} is not in the base checkpoint")
        elif not quantized_base and base[name] != tuple(w.shape):
            problems.append(f"{name} has shape {tuple(w.shape)}, the base checkpoint {base[name]}")
    if problems:
        arch = base_config.get("model_type", "?")
        raise ExportError(
            f"mlx-lm's weight names for this architecture ({arch}) differ from its Hugging Face "
            f"checkpoint ({'; '.join(problems[:3])}), so a merged HF export would load wrongly. "
            "Use `mlxsft fuse` (MLX format) or `--format peft` instead."
        )


# ---------------------------------------------------------------- writing


def write_safetensors_shards(
    weights: dict[str, mx.array], folder: Path, max_shard_bytes: int, metadata: dict
) -> list[str]:
    """model.safetensors, or model-0000i-of-0000n.safetensors + an index past `max_shard_bytes`."""
    shards: list[dict[str, mx.array]] = [{}]
    size = 0
    for name in sorted(weights):
        w = weights[name]
        if shards[-1] and size + w.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = w
        size += w.nbytes
    if len(shards) == 1:
        mx.save_safetensors(str(folder / "model.safetensors"), shards[0], metadata=metadata)
        return ["model.safetensors"]
    names, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(folder / name), shard, metadata=metadata)
        names.append(name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(w.nbytes for w in weights.values())
    write_json(
        folder / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
    return names


def write_config(
    base_path: Path, folder: Path, dtype: str, quantization: dict | None = None
) -> None:
    """The base's config.json with the new dtype (and MLX quantization, if kept)."""
    config = json.loads((base_path / "config.json").read_text(encoding="utf-8"))
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    config["dtype"] = dtype  # transformers v5 reads `dtype`; older versions `torch_dtype`
    config["torch_dtype"] = dtype
    if quantization is not None:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    write_json(folder / "config.json", config)


# ---------------------------------------------------------------- exports


def fused_model(source: AdapterSource, dequantize: bool):
    """(the trained model, fused in place; its reference logits, taken before fusing)."""
    from .verify import reference_logits

    trained = load_trained(source)
    reference = reference_logits(trained.model, trained.tokenizer)
    fuse_adapters(trained.model, dequantize=dequantize)
    return trained, reference


def export_hf(
    run_dir: str | Path,
    out: str | Path,
    *,
    checkpoint=None,
    dtype: str | None = None,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    verify: bool = True,
) -> Path:
    """A merged Hugging Face model folder of the run's adapter, checked against the adapter."""
    from .verify import check_artifact, skipped_report

    source = resolve_source(run_dir, checkpoint)
    base_config = json.loads((source.base_path / "config.json").read_text(encoding="utf-8"))
    dtype = check_dtype(dtype or base_dtype_name(base_config))
    check_target(Path(out), force)
    print(f"Merging {source.run.path} into a Hugging Face model ({dtype}) at {out}")
    trained, reference = fused_model(source, dequantize=True)
    dequantize_all(trained.model)  # QLoRA: the frozen base too (embeddings, untouched layers)
    weights = cast_weights(dict(tree_flatten(trained.model.parameters())), DTYPES[dtype])
    check_hf_names(weights, source.base_path, base_config)
    with staged_output(out, force) as tmp:
        files = write_safetensors_shards(weights, tmp, max_shard_bytes, metadata={"format": "pt"})
        write_config(source.base_path, tmp, dtype)
        copy_side_files(source.base_path, tmp, source.run.chat_template())
        del trained, weights
        if verify:
            candidate, stored, _ = load_merged_model(tmp)
            check_artifact(
                reference,
                candidate,
                fmt="hf",
                dtype=stored,
                source=source,
                parity_path=tmp / PARITY_FILE,
            )
        else:
            skipped_report("hf", source).write(tmp / PARITY_FILE)
    print(f"Wrote {out} ({len(files)} safetensors file{'s' if len(files) > 1 else ''})")
    return Path(out)


def fuse_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    checkpoint=None,
    dequantize: bool = False,
    dtype: str | None = None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """A merged MLX model folder (mlx_lm.load loads it), re-quantized unless `dequantize`."""
    from mlx_lm.utils import save_model

    from ..model import cast_floating, is_quantized
    from .verify import check_artifact, skipped_report

    source = resolve_source(run_dir, checkpoint)
    base_config = json.loads((source.base_path / "config.json").read_text(encoding="utf-8"))
    dtype = check_dtype(dtype or base_dtype_name(base_config))
    check_target(Path(out), force)
    trained, reference = fused_model(source, dequantize=dequantize)
    if dequantize:
        dequantize_all(trained.model)
    quantization = _quantization(source, base_config) if is_quantized(trained.model) else None
    kind = f"{quantization['bits']}-bit" if quantization else dtype
    print(f"Fusing {source.run.path} into an MLX model ({kind}) at {out}")
    cast_floating(trained.model, DTYPES[dtype])
    with staged_output(out, force) as tmp:
        save_model(tmp, trained.model)
        write_config(source.base_path, tmp, dtype, quantization)
        copy_side_files(source.base_path, tmp, source.run.chat_template())
        del trained
        if verify:
            candidate, stored, requantized = load_merged_model(tmp)
            check_artifact(
                reference,
                candidate,
                fmt="fused",
                dtype=stored,
                source=source,
                parity_path=tmp / PARITY_FILE,
                requantized=requantized,
            )
        else:
            skipped_report("fused", source).write(tmp / PARITY_FILE)
    print(f"Wrote {out} (load it with mlx_lm.load('{out}'))")
    return Path(out)


def _quantization(source: AdapterSource, base_config: dict) -> dict:
    """The quantization the fused model keeps: the base's own, else the recipe's (QLoRA)."""
    if "quantization" in base_config:
        return base_config["quantization"]
    q = source.recipe.quantize
    return {"group_size": q.group_size, "bits": q.bits, "mode": "affine"}


def load_merged_model(folder: Path) -> tuple[nn.Module, str, bool]:
    """(MLX model of a merged folder, its stored dtype, quantized?)."""
    from mlx_lm.utils import load_model

    from ..model import is_quantized

    model, config = load_model(Path(folder))
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    return model, stored, is_quantized(model)
