"""GGUF quantization types: which ggml type each tensor gets, and the bytes for it.

`--quant` names a llama.cpp file type. Per tensor the type follows llama.cpp's
`llama_tensor_get_type` for that file type:
- f32 / f16: every 2-D weight in that float type;
- q8_0: every 2-D weight in Q8_0;
- q4_0: 2-D weights in Q4_0, the output head (or a tied embedding) in Q6_K;
- q4_k_m: 2-D weights in Q4_K, the output head in Q6_K, and attn_v / ffn_down in Q6_K
  on the layers llama.cpp's `use_more_bits` picks (first and last eighth, every third);
- a K-quant needs rows of a multiple of 256: otherwise llama.cpp falls back to Q5_0
  (for Q4_K) or Q8_0 (for Q6_K), and so do we.
1-D tensors (norms, biases, rope factors) stay float32, as llama.cpp expects.

The bytes come from the `gguf` package's own quantizers where it has them (Q8_0, Q4_0,
Q5_0); it only *de*quantizes Q4_K and Q6_K, so those two encoders live here, written
as the exact inverse of gguf's `dequantize_blocks` (tests round-trip through gguf's
dequantization). Q4_K searches its sub-block scales as llama.cpp's reference
`make_qkx2_quants` does; Q6_K uses the max-magnitude scale without llama.cpp's refinement
(`make_qx_quants`), a little more rounding error in the 6-bit tensors.
"""

from __future__ import annotations

import re

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .errors import ExportError
from .gguf_lib import gguf_module as _gguf
from .parity import ReferenceLogits, model_logits

QK_K = 256
QUANT_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k_m")
# Quantized exports are checked against the f16 export: max |Δlogit| relative to the f16
# logits' largest |logit|, and the share of next-token argmaxes that agree. Set from a
# 2-layer, 256-wide random model (q8_0: 1.3e-2 / 98%, q4_k_m: 0.18 / 79%, q4_0: 0.20 / 74%),
# whose near-tied logits make greedy agreement the hardest case, with headroom.
QUANT_TOLERANCES = {
    "q8_0": {"max_rel_diff": 3e-2, "min_greedy": 0.90},
    "q4_k_m": {"max_rel_diff": 3e-1, "min_greedy": 0.60},
    "q4_0": {"max_rel_diff": 4e-1, "min_greedy": 0.55},
}
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def file_type(quant: str):
    gguf = _gguf()
    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    }[quant]


def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers that get more bits in Q4_K_M."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(name: str, shape: tuple[int, ...], quant: str, n_layers: int, has_output: bool):
    """The ggml type of GGUF tensor `name` (numpy shape `shape`) in a `quant` file."""
    T = _gguf().GGMLQuantizationType
    if len(shape) < 2 or quant == "f32":
        return T.F32
    if quant == "f16":
        return T.F16
    is_output = name == "output.weight" or (not has_output and name == "token_embd.weight")
    if quant == "q8_0":
        wanted = T.Q8_0
    elif is_output:
        wanted = T.Q6_K
    elif quant == "q4_0":
        wanted = T.Q4_0
    else:  # q4_k_m
        block = _BLOCK.match(name)
        more = block and any(k in name for k in (".attn_v.", ".ffn_down."))
        wanted = T.Q6_K if more and _use_more_bits(int(block[1]), n_layers) else T.Q4_K
    if wanted in (T.Q4_K, T.Q6_K) and shape[-1] % QK_K:
        wanted = T.Q5_0 if wanted == T.Q4_K else T.Q8_0  # llama.cpp's fallback
    return wanted


def check_quantizable(shapes: dict[str, tuple[int, ...]], quant: str) -> None:
    """Refuse, before any heavy work, a model whose rows the quantization cannot block."""
    if quant in ("f32", "f16"):
        return
    bad = [f"{n} {s}" for n, s in shapes.items() if len(s) >= 2 and s[-1] % 32]
    if bad:
        raise ExportError(
            f"--quant {quant} needs rows of a multiple of 32 values, and these tensors have "
            f"others: {', '.join(bad[:3])}. Export with --quant f16 (or f32) instead."
        )


def row_lengths(config: dict) -> dict[str, tuple[int, int]]:
    """The input widths of a transformer's 2-D weights, from config.json, as (rows=1, width)
    pseudo-shapes for `check_quantizable`: checked before anything heavy is loaded."""
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    return {
        "hidden_size (embeddings, q/k/v, gate/up, head)": (1, config["hidden_size"]),
        "intermediate_size (down_proj)": (1, config["intermediate_size"]),
        "heads x head_dim (o_proj)": (1, n_head * head_dim),
    }


def quantize(w: np.ndarray, qtype) -> np.ndarray:
    """`w` (rows, cols) float32 -> the bytes GGUFWriter.add_tensor takes with raw_dtype=qtype."""
    gguf = _gguf()
    T = gguf.GGMLQuantizationType
    if qtype == T.F32:
        return w.astype(np.float32)
    if qtype == T.F16:
        return w.astype(np.float16)
    rows = w.astype(np.float32).reshape(-1, QK_K if qtype in (T.Q4_K, T.Q6_K) else 32)
    if qtype == T.Q4_K:
        blocks = quantize_q4_k(rows)
    elif qtype == T.Q6_K:
        blocks = quantize_q6_k(rows)
    else:
        return gguf.quants.quantize(w.astype(np.float32), qtype)
    return blocks.reshape(gguf.quants.quant_shape_to_byte_shape(w.shape, qtype))


def dequantize(data: np.ndarray, qtype) -> np.ndarray:
    """gguf's own dequantization (float32, the tensor's numpy shape)."""
    return _gguf().quants.dequantize(data, qtype)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


# Every third of make_qkx2_quants' 21 trial scales: 2.5x faster (3.3 s per 16M weights here,
# against 8.2 s), rounding error within 0.3% of the full search's on Gaussian weights (RMS
# 0.0721 vs 0.0719 of the weights' std; one trial scale, plain min/max: 0.0812).
_Q4_K_TRIAL_STRIDE = 3


def _q4_k_scales(sub: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per sub-block (scale, offset >= 0) with x ≈ scale·q - offset, q in 0..15: llama.cpp's
    `make_qkx2_quants` search (trial scales, each refitted by weighted least squares,
    weights |x| + rms, the one of least weighted error kept). `sub` is (n, 8, 32)."""
    scales = np.empty(sub.shape[:2], np.float32)
    offsets = np.empty(sub.shape[:2], np.float32)
    for start in range(0, sub.shape[0], chunk):
        x = sub[start : start + chunk]  # (c, 8, 32)
        w = np.abs(x) + np.sqrt((x**2).mean(-1, keepdims=True))
        lo = np.minimum(x.min(-1), 0.0)[..., None]  # (c, 8, 1)
        span = x.max(-1)[..., None] - lo
        best_err = np.full(x.shape[:2], np.inf, np.float32)
        best_s, best_m = np.zeros(x.shape[:2], np.float32), lo[..., 0].copy()
        sw, sx = w.sum(-1), (w * x).sum(-1)
        for step in range(0, 21, _Q4_K_TRIAL_STRIDE):
            with np.errstate(divide="ignore", invalid="ignore"):
                iscale = np.where(span > 0, (-1.0 + 0.1 * step + 15) / span, 0.0)
            q = np.clip(np.rint(iscale * (x - lo)), 0, 15)
            sl, sl2, sxl = (w * q).sum(-1), (w * q * q).sum(-1), (w * x * q).sum(-1)
            det = sw * sl2 - sl * sl
            with np.errstate(divide="ignore", invalid="ignore"):
                s_fit = np.where(det > 0, (sw * sxl - sx * sl) / det, 0.0)
                m_fit = np.where(det > 0, (sl2 * sx - sl * sxl) / det, lo[..., 0])
                positive = m_fit > 0  # the offset must not go below zero: refit the scale alone
                s_fit = np.where(positive, np.where(sl2 > 0, sxl / sl2, 0.0), s_fit)
                m_fit = np.where(positive, 0.0, m_fit)
            err = (w * (s_fit[..., None] * q + m_fit[..., None] - x) ** 2).sum(-1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_s, best_m = np.where(better, s_fit, best_s), np.where(better, m_fit, best_m)
        scales[start : start + chunk], offsets[start : start + chunk] = best_s, -best_m
    return np.maximum(scales, 0.0), np.maximum(offsets, 0.0)


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 144) uint8 Q4_K: 8 sub-blocks of 32, x ≈ d·sc·q - dmin·m.

    Layout (gguf.quants.Q4_K.dequantize_blocks): d f16, dmin f16, 12 bytes of 6-bit
    scales/mins, 128 bytes of nibbles (byte j of chunk c: sub-block 2c low, 2c+1 high).
    """
    n = blocks.shape[0]
    sub = blocks.reshape(n, 8, 32)
    scales, mins = _q4_k_scales(sub)  # (n, 8) each
    d = _f16(scales.max(-1) / 63.0)  # (n,)
    dmin = _f16(mins.max(-1) / 63.0)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scales / d32), 0).clip(0, 63).astype(np.uint8)
        mn = np.where(dmin32 > 0, np.rint(mins / dmin32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc)[..., None]  # (n, 8, 1)
        offset = (dmin32 * mn)[..., None]
        q = np.where(step > 0, np.rint((sub + offset) / step), 0).clip(0, 15).astype(np.uint8)
    packed = np.empty((n, 12), dtype=np.uint8)
    packed[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    q = q.reshape(n, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)
    return np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8), packed, qs], axis=1)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 210) uint8 Q6_K: 16 sub-blocks of 16, x ≈ d·scale·(q - 32).

    Layout (gguf.quants.Q6_K.dequantize_blocks): 128 bytes of low nibbles, 64 bytes of
    high 2-bit pairs, 16 int8 scales, d f16. As in llama.cpp, each sub-block's value of
    largest magnitude maps to -32.
    """
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    pick = np.take_along_axis(sub, np.abs(sub).argmax(-1)[..., None], -1)[..., 0]  # (n, 16)
    scales = pick / -32.0
    d = _f16(np.abs(scales).max(-1) / 127.0)
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scales / d32), 0).clip(-128, 127).astype(np.int8)
        step = (d32 * sc)[..., None]
        q = np.where(step != 0, np.rint(sub / step), 0).clip(-32, 31).astype(np.int16) + 32
    q = q.astype(np.uint8).reshape(n, 256)
    low = (q & 0x0F).reshape(n, 2, 2, 64)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    high = (q >> 4).reshape(n, 2, 4, 32)
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    return np.concatenate([ql, qh.reshape(n, 64), sc.view(np.uint8), d.reshape(n, 1).view(np.uint8)], axis=1)


def quant_name(reader) -> str:
    """The --quant type a GGUF file was written as, from its general.file_type."""
    value = int(reader.fields["general.file_type"].contents())
    names = {int(file_type(q)): q for q in QUANT_TYPES}
    return names.get(value, f"file_type {value}")


# ---------------------------------------------------------------- parity against the f16 export


def f16_reference(model, reference: ReferenceLogits) -> ReferenceLogits:
    """Round `model`'s 2-D weights through float16 in place (what an f16 export stores, and
    what llama-quantize starts from) and return its probe logits as the parity reference."""
    rounded = [
        (k, v.astype(mx.float16).astype(v.dtype) if v.ndim > 1 else v) for k, v in tree_flatten(model.parameters())
    ]
    model.load_weights(rounded)
    mx.eval(model.parameters())
    return ReferenceLogits("float16", reference.prompts, model_logits(model, reference.prompts), None)
