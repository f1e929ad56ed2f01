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
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.utils import dequantize_model, load_model, save_model

from ..model import cast_floating, is_quantized
from .errors import ExportError
from .parity import Candidate, ReferenceLogits, reference_logits
from .pipeline import DEFAULT_MAX_SHARD_BYTES, ExportOptions, Job, export_run
from .safetensors_info import read_safetensors_shapes
from .side_files import copy_side_files
from .source import AdapterSource, LoadedModel, load_trained
from .staging import PARITY_FILE, write_json

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}

# ---------------------------------------------------------------- fusing


def fuse_adapters(model: nn.Module, dequantize: bool) -> None:
    """Replace every LoRA/DoRA layer by its fused linear (mlx-lm's own `fuse`), in place."""
    fused = [(name, m.fuse(dequantize=dequantize)) for name, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))


def dequantize_all(model: nn.Module) -> None:
    dequantize_model(model)


def cast_weights(weights: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    return {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}


def base_dtype_name(base_config: dict) -> str:
    """The base checkpoint's own dtype (config `dtype`/`torch_dtype`), float32 if unknown."""
    name = base_config.get("dtype") or base_config.get("torch_dtype")
    return name if name in DTYPES else "float32"


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    return dtype


# ---------------------------------------------------------------- tensor names


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


def write_config(base_path: Path, folder: Path, dtype: str, quantization: dict | None = None) -> None:
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


# ---------------------------------------------------------------- the trained model, fused


def fused_model(source: AdapterSource, dequantize: bool) -> tuple[LoadedModel, ReferenceLogits]:
    """(the trained model, fused in place; its reference logits, taken before fusing)."""
    trained = load_trained(source)
    reference = reference_logits(trained.model, trained.tokenizer)
    fuse_adapters(trained.model, dequantize=dequantize)
    return trained, reference


def fused_once(job: Job, dequantize: bool) -> tuple[LoadedModel, ReferenceLogits]:
    """`fused_model` for this job, loaded once: its reference and its write share the model."""
    if "fused" not in job.state:
        job.state["fused"] = fused_model(job.source, dequantize)
        if dequantize:  # QLoRA: the frozen base too (embeddings, untouched layers)
            dequantize_all(job.state["fused"][0].model)
    return job.state["fused"]


def take_fused(job: Job, dequantize: bool) -> nn.Module:
    """The fused model, handed over to the write: the job keeps no reference (memory)."""
    model = fused_once(job, dequantize)[0].model
    del job.state["fused"]
    return model


def load_merged_model(folder: Path) -> Candidate:
    """A merged folder (HF or MLX, quantized or not) read back into MLX."""
    model, config = load_model(Path(folder))
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    return Candidate(model, stored, requantized=is_quantized(model))


def _base_config(source: AdapterSource) -> dict:
    return json.loads((source.base_path / "config.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the two formats


class HfFormat:
    """A merged Hugging Face model folder, de-quantized, in the asked (or the base's) dtype."""

    name = "hf"
    single_file = False
    parity_names = (PARITY_FILE,)

    def plan(self, job: Job) -> str:
        base_config = _base_config(job.source)
        dtype = check_dtype(job.options.dtype or base_dtype_name(base_config))
        job.state.update(dtype=dtype, base_config=base_config)
        return f"Merging {job.source.run.path} into a Hugging Face model ({dtype}) at {job.out}"

    def reference(self, job: Job) -> ReferenceLogits:
        return fused_once(job, dequantize=True)[1]

    def write(self, job: Job, path: Path) -> str:
        source = job.source
        model = take_fused(job, dequantize=True)
        weights = cast_weights(dict(tree_flatten(model.parameters())), DTYPES[job.state["dtype"]])
        del model
        check_hf_names(weights, source.base_path, job.state["base_config"])
        files = write_safetensors_shards(weights, path, job.options.max_shard_bytes, metadata={"format": "pt"})
        write_config(source.base_path, path, job.state["dtype"])
        copy_side_files(source.base_path, path, source.run.chat_template())
        return f"Wrote {job.out} ({len(files)} safetensors file{'s' if len(files) > 1 else ''})"

    def load(self, path: Path, source: AdapterSource) -> Candidate:
        return load_merged_model(path)


class FusedFormat:
    """A merged MLX model folder (`mlxsft fuse`), re-quantized like the base unless `dequantize`."""

    name = "fused"
    single_file = False
    parity_names = (PARITY_FILE,)

    def plan(self, job: Job) -> str:
        base_config = _base_config(job.source)
        job.state.update(dtype=check_dtype(job.options.dtype or base_dtype_name(base_config)), base_config=base_config)
        return ""  # announced by write, once it knows whether the fused model is quantized

    def reference(self, job: Job) -> ReferenceLogits:
        return fused_once(job, job.options.dequantize)[1]

    def write(self, job: Job, path: Path) -> str:
        source, dtype = job.source, job.state["dtype"]
        model = take_fused(job, job.options.dequantize)
        quantization = _quantization(source, job.state["base_config"]) if is_quantized(model) else None
        kind = f"{quantization['bits']}-bit" if quantization else dtype
        print(f"Fusing {source.run.path} into an MLX model ({kind}) at {job.out}")
        cast_floating(model, DTYPES[dtype])
        save_model(path, model)
        del model
        write_config(source.base_path, path, dtype, quantization)
        copy_side_files(source.base_path, path, source.run.chat_template())
        return f"Wrote {job.out} (load it with mlx_lm.load('{job.out}'))"

    def load(self, path: Path, source: AdapterSource) -> Candidate:
        return load_merged_model(path)


HF = HfFormat()
FUSED = FusedFormat()


def _quantization(source: AdapterSource, base_config: dict) -> dict:
    """The quantization the fused model keeps: the base's own, else the recipe's (QLoRA)."""
    if "quantization" in base_config:
        return base_config["quantization"]
    q = source.recipe.quantize
    return {"group_size": q.group_size, "bits": q.bits, "mode": "affine"}


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
    options = ExportOptions(dtype=dtype, max_shard_bytes=max_shard_bytes)
    return export_run(HF, run_dir, out, checkpoint=checkpoint, force=force, verify=verify, options=options)


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
    options = ExportOptions(dtype=dtype, dequantize=dequantize)
    return export_run(FUSED, run_dir, out, checkpoint=checkpoint, force=force, verify=verify, options=options)
