"""Train just some tokens' rows of the input embedding and the LM head, beside LoRA.

A base fine-tuned with a chat template it never saw has untrained rows for the
template's tokens (`untrained_tokens.py`); LoRA cannot change them. PEFT's
`trainable_token_indices` (and Unsloth's and axolotl's handling of added tokens)
train those rows alone. Here each of the two layers is wrapped: the base layer stays
frozen (quantized under QLoRA) and `rows` (K, D) holds the K tokens' rows in full
precision, initialised from the base and trained.

`rows` are the rows' values, not a difference, exactly as PEFT's
`token_adapter.trainable_tokens_delta` holds them, so the PEFT export is a rename.
`fuse` writes the rows into a plain layer (merged exports, `mlxsft fuse`).
The wrappers' parameters are `embed_tokens.rows` and `lm_head.rows` beside the
base's under `.base`: checkpoints save and resume them like LoRA's.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

TRAINABLE_TOKENS = "trainable_tokens"  # adapter_config.json key: the token ids, in `rows` order


def _dense(layer: nn.Module) -> mx.array:
    """The layer's (V, D) weight, dequantized when quantized."""
    if hasattr(layer, "scales"):
        return mx.dequantize(layer.weight, layer.scales, getattr(layer, "biases", None), layer.group_size, layer.bits)
    return layer.weight


def _requantize_like(layer: nn.Module, plain: nn.Module) -> nn.Module:
    return plain.to_quantized(group_size=layer.group_size, bits=layer.bits) if hasattr(layer, "scales") else plain


class _Rows(nn.Module):
    """Shared state: the frozen base layer, the token ids, and a token -> slot lookup."""

    def __init__(self, base: nn.Module, ids: list[int]):
        super().__init__()
        self.base = base
        self.base.freeze()
        self._ids = [int(i) for i in ids]
        weight = _dense(base)
        vocab = weight.shape[0]
        slot = [len(ids)] * vocab  # len(ids): "not a trained token"
        for k, i in enumerate(self._ids):
            slot[i] = k
        self._slot = mx.array(slot, dtype=mx.int32)  # (V,)
        self._index = mx.array(self._ids, dtype=mx.int32)  # (K,)
        self.rows = weight[self._index].astype(mx.float32)  # (K, D), trained, full precision

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)

    def merged_weight(self) -> mx.array:
        """The base's (V, D) weight with the trained rows written in."""
        weight = _dense(self.base)  # (V, D); never written in place: the base holds it
        table = mx.concatenate([self.rows.astype(weight.dtype), mx.zeros((1, weight.shape[1]), weight.dtype)])
        return mx.where((self._slot < len(self._ids))[:, None], table[self._slot], weight)


class EmbeddingRows(_Rows):
    """Embedding whose rows for `ids` are trainable: ids (...) -> (..., D)."""

    def __call__(self, x: mx.array) -> mx.array:
        out = self.base(x)  # (..., D)
        table = mx.concatenate([self.rows.astype(out.dtype), mx.zeros((1, out.shape[-1]), out.dtype)])  # (K+1, D)
        slot = self._slot[x]  # (...)
        return mx.where((slot < len(self._ids))[..., None], table[slot], out)

    def as_linear(self, h: mx.array) -> mx.array:
        """Tied heads: logits with the trained rows (..., D) -> (..., V)."""
        return LinearRows._replace(self.base.as_linear(h), h, self.rows, self._index)

    def fuse(self, dequantize: bool = False) -> nn.Module:
        weight = self.merged_weight()
        plain = nn.Embedding(*weight.shape)
        plain.weight = weight
        return plain if dequantize else _requantize_like(self.base, plain)


class LinearRows(_Rows):
    """LM head whose output rows for `ids` are trainable: (..., D) -> (..., V)."""

    def __call__(self, h: mx.array) -> mx.array:
        return self._replace(self.base(h), h, self.rows, self._index)

    @staticmethod
    def _replace(logits: mx.array, h: mx.array, rows: mx.array, index: mx.array) -> mx.array:
        # the K trained columns, computed from the trained rows and written over the base's
        new = h @ rows.astype(h.dtype).T  # (..., K)
        onehot = (mx.arange(logits.shape[-1])[None, :] == index[:, None]).astype(logits.dtype)  # (K, V)
        keep = 1 - onehot.sum(axis=0)  # (V,)
        return logits * keep + new.astype(logits.dtype) @ onehot

    def fuse(self, dequantize: bool = False) -> nn.Module:
        weight = self.merged_weight()
        plain = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        plain.weight = weight
        return plain if dequantize else _requantize_like(self.base, plain)


def attach_token_rows(model: nn.Module, ids: list[int]) -> list[int]:
    """Wrap the model's embedding (and untied LM head) so the rows of `ids` train; return the ids."""
    ids = sorted({int(i) for i in ids})
    if not ids:
        return []
    inner = model.model
    if not isinstance(inner.embed_tokens, EmbeddingRows):
        inner.embed_tokens = EmbeddingRows(inner.embed_tokens, ids)
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Module) and not isinstance(head, LinearRows):
        model.lm_head = LinearRows(head, ids)
    return ids
