"""Chat-template tokens whose base embeddings look untrained.

A base model fine-tuned with a template it never saw (ChatML on a plain base, say)
has embedding rows for the template's special tokens that pretraining never updated.
LoRA cannot change those rows, so the model cannot learn to read the markers or, worse,
to emit the end marker: validation loss floors and samples run on. This module finds
such tokens so data check and the start of training can say so, and so training can
train just those rows.

A row looks untrained when, compared with the ordinary (non-special) rows:
- its norm is at most `ratio` times their median norm (rows left at a small
  initialisation scale, or zeroed, as in Llama-3 and Qwen bases), or
- it is identical to another special token's row (rows filled with one value,
  e.g. the mean embedding, when a vocabulary was resized).

Works on a NumPy (V, D) matrix, so it needs no model load: `read_embedding` reads the
one tensor from the model folder's safetensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBED_KEYS = ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight", "transformer.wte.weight")
_SAMPLE_CHAT = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
]


@dataclass(frozen=True)
class UntrainedToken:
    token: str
    id: int
    norm: float
    reason: str  # "norm at initialisation scale" | "identical to <token>"


def _hf(tokenizer):
    inner = getattr(tokenizer, "_tokenizer", None)
    return inner if hasattr(inner, "apply_chat_template") else tokenizer


def template_tokens(tokenizer) -> dict[str, int]:
    """The added/special tokens a chat rendering uses, plus EOS: token text -> id."""
    hf = _hf(tokenizer)
    rendered = ""
    if getattr(hf, "chat_template", None):
        try:
            rendered = hf.apply_chat_template(_SAMPLE_CHAT, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 -- a template that rejects a system turn, say
            rendered = hf.apply_chat_template(_SAMPLE_CHAT[1:], tokenize=False, add_generation_prompt=True)
    added = {t.content: i for i, t in getattr(hf, "added_tokens_decoder", {}).items()}
    found = {text: i for text, i in added.items() if text and text in rendered}
    eos = getattr(hf, "eos_token", None)
    if isinstance(eos, str) and eos in added:
        found[eos] = added[eos]
    return dict(sorted(found.items(), key=lambda kv: kv[1]))


def special_ids(tokenizer) -> set[int]:
    """Every added/special token id (excluded from the reference of ordinary rows)."""
    return set(getattr(_hf(tokenizer), "added_tokens_decoder", {}))


def find_untrained(
    embedding: np.ndarray, candidates: dict[str, int], exclude: set[int] = frozenset(), ratio: float = 0.25
) -> list[UntrainedToken]:
    """Candidates whose rows of `embedding` (V, D) look untrained (see the module docstring)."""
    emb = np.asarray(embedding, dtype=np.float32)
    V = emb.shape[0]
    norms = np.linalg.norm(emb, axis=-1)  # (V,)
    ordinary = np.ones(V, dtype=bool)
    ordinary[[i for i in set(candidates.values()) | set(exclude) if i < V]] = False
    if not ordinary.any():
        return []
    median = float(np.median(norms[ordinary]))
    out = []
    ids = {t: i for t, i in candidates.items() if i < V}
    for token, i in ids.items():
        if norms[i] <= ratio * median:
            out.append(UntrainedToken(token, i, float(norms[i]), "norm at initialisation scale"))
            continue
        atol = 1e-6 * max(median, 1e-6)
        twin = next((t for t, j in ids.items() if j != i and np.allclose(emb[i], emb[j], rtol=0, atol=atol)), None)
        if twin is not None:
            out.append(UntrainedToken(token, i, float(norms[i]), f"identical to {twin}"))
    return out


def read_embedding(model_dir: str | Path) -> np.ndarray | None:
    """The input embedding (V, D) as float32 from a HF/MLX model folder, dequantized; None if absent."""
    import mlx.core as mx

    folder = Path(model_dir)
    for file in sorted(folder.glob("*.safetensors")):
        weights = mx.load(str(file))  # lazy: only the tensors used below are read
        key = next((k for k in EMBED_KEYS if k in weights), None)
        if key is None:
            continue
        w = weights[key]
        scales = weights.get(key.replace(".weight", ".scales"))
        if scales is not None:
            q = _quantization(folder)
            w = mx.dequantize(w, scales, weights.get(key.replace(".weight", ".biases")), q["group_size"], q["bits"])
        return np.asarray(w.astype(mx.float32))
    return None


def _quantization(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    q = config.get("quantization") or config.get("quantization_config") or {}
    return {"group_size": int(q.get("group_size", 64)), "bits": int(q.get("bits", 4))}


def embedding_of(model) -> np.ndarray:
    """The input embedding (V, D) of a loaded mlx-lm model, dequantized, as float32."""
    import mlx.core as mx

    inner = getattr(model, "model", model)
    emb = getattr(inner, "embed_tokens", None) or inner.language_model.embed_tokens
    w = emb.weight
    if hasattr(emb, "scales"):
        w = mx.dequantize(w, emb.scales, getattr(emb, "biases", None), emb.group_size, emb.bits)
    return np.asarray(w.astype(mx.float32))


def check_tokens(embedding: np.ndarray | None, tokenizer) -> list[UntrainedToken]:
    """The template tokens of `tokenizer` that look untrained in `embedding`."""
    if embedding is None:
        return []
    return find_untrained(embedding, template_tokens(tokenizer), special_ids(tokenizer))


def describe(tokens: list[UntrainedToken]) -> str:
    """One sentence for people, with what to do."""
    listed = ", ".join(f"{t.token} (id {t.id}, {t.reason}, norm {t.norm:.3g})" for t in tokens)
    return (
        f"the chat template uses tokens whose base embeddings look untrained: {listed}. LoRA cannot "
        "change these rows, so the model may not learn to stop; train them with lora.train_new_tokens "
        "(auto, the default, or true), or use the base's own template."
    )
