"""Facts about a model folder: architecture, size, dtype, quantization, chat template, LoRA targets.

Nothing here reads the weights: the model is built by mlx-lm with lazy arrays (so
parameter counts and layer names come from the real architecture), the dtype comes from
the safetensors headers, and the shape numbers from config.json.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULT_TARGETS
from ..errors import ModelError
from ..model import check_model_dir, count_parameters
from ..store import folder_size, human_bytes, quantization_bits, read_config, read_source
from .catalog import find_entry, load_catalog

_TEMPLATE_STYLES = (  # marker in the template -> name users recognise
    ("<|im_start|>", "ChatML"),
    ("<|start_header_id|>", "Llama 3"),
    ("<start_of_turn>", "Gemma"),
    ("<|assistant|>", "Phi-3"),
    ("[INST]", "Mistral [INST]"),
    ("<|user|>", "Zephyr-style"),
)


_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass(frozen=True)
class ArchShape:
    """The numbers of a decoder-only transformer that memory and speed depend on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int | None
    logit_softcapping: bool  # logits post-processed: the loss needs full logits everywhere

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_config(cls, config: dict, path: str = "config.json") -> ArchShape:
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
        merged = {**text, **{k: v for k, v in config.items() if k not in text}} if text else config

        def get(*keys, default=None):
            for key in keys:
                value = merged.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return int(value)
            if default is None:
                raise ModelError(f"config.json has none of {', '.join(keys)}; cannot size this model.", path=path)
            return default

        hidden = get("hidden_size", "n_embd", "d_model")
        heads = get("num_attention_heads", "n_head")
        head_dim = get("head_dim", default=hidden // max(heads, 1))
        intermediate = get("intermediate_size", "ffn_hidden_size", "n_inner", default=4 * hidden)
        return cls(
            hidden_size=hidden,
            num_layers=get("num_hidden_layers", "n_layer", "num_layers"),
            num_heads=heads,
            num_kv_heads=get("num_key_value_heads", "n_head_kv", default=heads),
            head_dim=head_dim,
            intermediate_size=intermediate,
            vocab_size=get("vocab_size"),
            tie_word_embeddings=bool(merged.get("tie_word_embeddings", False)),
            max_position_embeddings=merged.get("max_position_embeddings"),
            logit_softcapping=any(merged.get(k) for k in _LOGIT_POSTPROCESSING),
        )


@dataclass(frozen=True)
class ModelFacts:
    path: Path
    hub_id: str | None
    model_type: str
    architectures: tuple[str, ...]
    shape: ArchShape
    total_parameters: int
    embedding_parameters: int
    dtype: str  # the stored floating dtype (from the safetensors headers)
    bits: int | None
    group_size: int | None
    chat_template: str | None  # where it comes from
    template_style: str | None
    linear_layers: tuple[str, ...]  # linear modules inside one block, e.g. self_attn.q_proj
    recommended_targets: tuple[str, ...]
    size_bytes: int
    notes: tuple[str, ...] = field(default=())


def safetensors_dtypes(path: Path) -> Counter:
    """Elements per dtype over the folder's safetensors files, from their JSON headers only."""
    counts: Counter = Counter()
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * 2**20:
                raise ModelError("safetensors header is implausibly large; the file is damaged.", path=str(file))
            header = json.loads(f.read(length))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            size = 1
            for dim in meta.get("shape", []):
                size *= dim
            counts[meta.get("dtype", "?")] += size
    return counts


_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "F8_E4M3": "float8"}


def stored_dtype(path: Path, config: dict) -> str:
    floats = {k: v for k, v in safetensors_dtypes(path).items() if k in _DTYPE_NAMES}
    if floats:
        return _DTYPE_NAMES[max(floats, key=floats.get)]
    return str(config.get("torch_dtype") or config.get("dtype") or "unknown")


def find_chat_template(path: Path) -> tuple[str | None, str | None]:
    """(where the template is, its style) or (None, None) for a base model without one."""
    text, where = None, None
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        text, where = jinja.read_text(encoding="utf-8", errors="replace"), "chat_template.jinja"
    else:
        for name in ("chat_template.json", "tokenizer_config.json"):
            try:
                value = json.loads((path / name).read_text(encoding="utf-8")).get("chat_template")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(value, list):  # named templates: [{"name": "default", "template": ...}]
                value = next((t.get("template") for t in value if t.get("name") == "default"), None)
            if isinstance(value, str) and value.strip():
                text, where = value, name
                break
    if text is None:
        return None, None
    style = next((name for marker, name in _TEMPLATE_STYLES if marker in text), "custom")
    return where, style


def build_lazy(path: Path):
    """The mlx-lm model for a folder with lazy (unread) weights, and its config."""
    from mlx_lm.utils import load_model

    try:
        return load_model(path, lazy=True)
    except ValueError as exc:
        raise ModelError(f"mlx-lm cannot build this model: {exc}", path=str(path)) from None


def block_linear_layers(model) -> tuple[str, ...]:
    import mlx.nn as nn

    layers = getattr(model, "layers", None)
    if not layers:
        return ()
    kinds = (nn.Linear, nn.QuantizedLinear)
    return tuple(sorted(name for name, m in layers[0].named_modules() if isinstance(m, kinds)))


def recommended_targets(linear: tuple[str, ...], hub_id: str | None) -> tuple[str, ...]:
    """The catalog's targets for this hub id, else every default target this model has."""
    leaves = {n.rsplit(".", 1)[-1] for n in linear}
    if hub_id:
        try:
            entry = find_entry(hub_id, load_catalog())
        except ModelError:
            entry = None  # no catalog here: fall back to the defaults
        if entry is not None and set(entry.lora_targets) <= leaves:
            return entry.lora_targets
    defaults = tuple(t for t in DEFAULT_TARGETS if t in leaves)
    return defaults or tuple(sorted(leaves))


def describe_model(path: Path) -> ModelFacts:
    """Every fact `mlxsft models info` shows, for the model folder `path`."""
    check_model_dir(path)
    config = read_config(path)
    shape = ArchShape.from_config(config, str(path / "config.json"))
    model, _ = build_lazy(path)
    counts = count_parameters(model)
    linear = block_linear_layers(model)
    hub_id = read_source(path).get("hub_id")
    q = config.get("quantization") if isinstance(config.get("quantization"), dict) else {}
    where, style = find_chat_template(path)
    embed = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
    notes = []
    if where is None:
        notes.append(
            "no chat template: a base model; train on completions or text (data.mask: none), or add a template"
        )
    if shape.logit_softcapping:
        notes.append("logits are soft-capped: the loss needs full-vocabulary logits everywhere")
    return ModelFacts(
        path=path,
        hub_id=hub_id,
        model_type=str(config.get("model_type")),
        architectures=tuple(config.get("architectures") or ()),
        shape=shape,
        total_parameters=counts.total,
        embedding_parameters=min(embed, counts.total),
        dtype=stored_dtype(path, config),
        bits=quantization_bits(config),
        group_size=q.get("group_size"),
        chat_template=where,
        template_style=style,
        linear_layers=linear,
        recommended_targets=recommended_targets(linear, hub_id),
        size_bytes=folder_size(path),
        notes=tuple(notes),
    )


def human_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}" if n < 10 * div else f"{n / div:.1f}{unit}"
    return str(n)


def format_facts(f: ModelFacts) -> str:
    s = f.shape
    archs = f" ({', '.join(f.architectures)})" if f.architectures else ""
    context = f"{s.max_position_embeddings:,} tokens" if s.max_position_embeddings else "unknown"
    leaves = sorted({n.rsplit(".", 1)[-1] for n in f.linear_layers})
    rows = [
        ("Model", str(f.path) + (f"  (from {f.hub_id})" if f.hub_id else "")),
        ("Architecture", f"{f.model_type}{archs}"),
        (
            "Parameters",
            f"{human_count(f.total_parameters)} ({f.total_parameters:,}; "
            f"embeddings {human_count(f.embedding_parameters)})",
        ),
        (
            "Shape",
            f"{s.num_layers} layers, hidden {s.hidden_size}, {s.num_heads} heads "
            f"({s.num_kv_heads} KV) x {s.head_dim}, MLP {s.intermediate_size}, "
            f"vocab {s.vocab_size:,}",
        ),
        ("Context", context),
        ("Dtype", f.dtype),
        ("Quantization", f"{f.bits}-bit (group size {f.group_size})" if f.bits else "none"),
        ("Chat template", f"{f.template_style} (from {f.chat_template})" if f.chat_template else "none"),
        ("Linear layers", ", ".join(leaves) or "none found"),
        ("LoRA targets", ", ".join(f.recommended_targets) + "  (recommended lora.targets)"),
        ("Size on disk", human_bytes(f.size_bytes)),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"{'Note':<{width}}  {n}" for n in f.notes]
    return "\n".join(lines)
