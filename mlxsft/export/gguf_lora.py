"""A run's LoRA adapter as a GGUF adapter file, for llama.cpp's `--lora` on the base GGUF.

The format follows llama.cpp's convert_lora_to_gguf.py and its loader (llama-adapter.cpp):
- `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha`, and the
  base's `general.architecture`; llama.cpp scales each delta by alpha / rank;
- per adapted weight `W` (GGUF name `blk.N.attn_q.weight`, numpy shape (out, in)) two
  tensors `<name>.lora_a`, numpy (rank, in), and `<name>.lora_b`, numpy (out, rank), so
  that `W + alpha / rank * lora_b @ lora_a` is the merged weight;
- for Llama/Mistral q/k, lora_b's rows are permuted like the base's q/k rows.

mlx-lm keeps lora_a as (in, rank), lora_b as (rank, out) and a `scale`, so the file holds
their transposes and alpha = scale * rank. DoRA and full fine-tunes have no llama.cpp
adapter form and are refused. The check reads the file back, adds its deltas to the base
as training saw it (a QLoRA base de-quantized) and compares logits with the trained adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .errors import ExportError
from .gguf import ARCHITECTURES, _heads_for, gguf_names, permute_qk, unpermute_qk
from .gguf_lib import gguf_module as _gguf
from .merged import dequantize_all
from .parity import Candidate, ReferenceLogits, trained_reference
from .pipeline import ExportOptions, Job, export_run
from .source import AdapterSource, load_base_as_trained


def check_lora_supported(source, config: dict) -> str:
    """The GGUF arch name, or ExportError for an adapter llama.cpp cannot apply."""
    kind = source.fine_tune_type
    if kind != "lora":
        raise ExportError(
            f"llama.cpp's adapter format holds LoRA only, and this run trained {kind}. "
            "Export the merged model with --format gguf instead."
        )
    if config.get("model_type") not in ARCHITECTURES:
        raise ExportError(f"GGUF export supports {', '.join(ARCHITECTURES)} models, not {config.get('model_type')}.")
    return ARCHITECTURES[config["model_type"]][0]


def lora_tensors(source, config: dict, arch: str) -> tuple[dict[str, np.ndarray], float]:
    """({gguf name.lora_a|.lora_b: float32 array}, alpha) from the run's mlx-lm adapter."""
    params = source.adapter_config["lora_parameters"]
    rank, scale = int(params["rank"]), float(params["scale"])
    weights = mx.load(str(source.folder / "adapters.safetensors"))
    modules = sorted({k.rsplit(".", 1)[0] for k in weights if k.endswith((".lora_a", ".lora_b"))})
    names = gguf_names([f"{m}.weight" for m in modules], arch, config["num_hidden_layers"])
    permute = ARCHITECTURES[config["model_type"]][1]
    tensors = {}
    for module in modules:
        a = np.array(weights[f"{module}.lora_a"].astype(mx.float32)).T  # (rank, in)
        b = np.array(weights[f"{module}.lora_b"].astype(mx.float32)).T  # (out, rank)
        heads = _heads_for(f"{module}.weight", config) if permute else None
        if heads is not None:
            b = permute_qk(b, heads)
        name = names[f"{module}.weight"]
        tensors[f"{name}.lora_a"] = np.ascontiguousarray(a)
        tensors[f"{name}.lora_b"] = np.ascontiguousarray(b)
    return tensors, scale * rank


def write_lora_gguf(path: Path, tensors: dict[str, np.ndarray], alpha: float, arch: str, name: str) -> None:
    gguf = _gguf()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for key, w in tensors.items():
        writer.add_tensor(key, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_lora_gguf(path: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
    """({base GGUF tensor name: (lora_a (rank, in), lora_b (out, rank))}, alpha)."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    if fields["general.type"].contents() != "adapter" or fields["adapter.type"].contents() != "lora":
        raise ExportError("not a GGUF LoRA adapter.", path=str(path))
    alpha = float(fields["adapter.lora.alpha"].contents())
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        base, _, kind = t.name.rpartition(".")
        parts.setdefault(base, {})[kind] = np.array(t.data, dtype=np.float32)
    return {k: (v["lora_a"], v["lora_b"]) for k, v in parts.items()}, alpha


def merged_deltas(path: Path, config: dict, names) -> dict[str, np.ndarray]:
    """{HF weight name: alpha / rank * lora_b @ lora_a} in HF layout (q/k un-permuted)."""
    arch, permute = ARCHITECTURES[config["model_type"]]
    pairs, alpha = read_lora_gguf(path)
    inverse = {v: k for k, v in gguf_names(names, arch, config["num_hidden_layers"]).items()}
    deltas = {}
    for name, (a, b) in pairs.items():
        if name not in inverse:
            raise ExportError(f"the adapter names {name}, which the base model lacks.", path=str(path))
        key = inverse[name]
        delta = (alpha / a.shape[0]) * (b @ a)  # (out, rank) @ (rank, in) -> (out, in)
        heads = _heads_for(key, config) if permute else None
        deltas[key] = unpermute_qk(delta, heads) if heads is not None else delta
    return deltas


def load_lora_gguf_model(path: Path, source):
    """The base as training saw it (de-quantized) with the adapter file's deltas added."""
    loaded = load_base_as_trained(source)
    dequantize_all(loaded.model)
    params = dict(tree_flatten(loaded.model.parameters()))
    deltas = merged_deltas(path, loaded.config, [k for k in params if k.endswith(".weight")])
    loaded.model.load_weights(
        [(k, params[k] + mx.array(d).astype(params[k].dtype)) for k, d in deltas.items()], strict=False
    )
    mx.eval(loaded.model.parameters())
    return loaded.model


class GgufLoraFormat:
    name = "gguf-lora"
    single_file = True
    parity_names = ()

    def plan(self, job: Job) -> str:
        config = json.loads((job.source.base_path / "config.json").read_text(encoding="utf-8"))
        arch = check_lora_supported(job.source, config)
        job.state.update(config=config, arch=arch)
        return f"Writing {job.source.run.path}'s LoRA adapter as a GGUF adapter ({arch}) at {job.out}"

    def reference(self, job: Job) -> ReferenceLogits:
        return trained_reference(job.source)

    def write(self, job: Job, path: Path) -> str:
        arch = job.state["arch"]
        tensors, alpha = lora_tensors(job.source, job.state["config"], arch)
        write_lora_gguf(path, tensors, alpha, arch, name=job.source.run.path.name)
        return (
            f"Wrote {job.out} ({len(tensors) // 2} adapted weights, alpha {alpha:g}); use it with "
            "llama.cpp's --lora on a GGUF of the unmodified base"
        )

    def load(self, path: Path, source: AdapterSource) -> Candidate:
        return Candidate(load_lora_gguf_model(path, source), "float32")


GGUF_LORA = GgufLoraFormat()


def export_gguf_lora(
    run_dir: str | Path, out: str | Path, *, checkpoint=None, force: bool = False, verify: bool = True
) -> Path:
    """A llama.cpp LoRA adapter GGUF of the run's adapter, read back and checked."""
    return export_run(
        GGUF_LORA, run_dir, out, checkpoint=checkpoint, force=force, verify=verify, options=ExportOptions()
    )
