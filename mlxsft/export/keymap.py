"""The one key map between mlx-lm adapter tensors and PEFT adapter tensors.

mlx-lm computes `y = base(x) + scale * (x @ lora_a) @ lora_b` with `lora_a` (in, r)
and `lora_b` (r, out); PEFT computes `y = base(x) + scaling * lora_B(lora_A(x))`
with `lora_A.weight` (r, in) and `lora_B.weight` (out, r). So `lora_A = lora_a.T`,
`lora_B = lora_b.T` and `lora_alpha / r = scale` (the scale lives in the config,
not in the tensors).

DoRA: mlx-lm's `m` (out,) and PEFT's `lora_magnitude_vector` (out,) are the same
vector: both layers compute `m / ||W + scale * B A||_row * (W x + scale * B A x) + bias`,
the norm taken per output row over the input axis (checked numerically in
tests/test_export_peft.py). So the magnitude is copied as is.

Module paths are the same on both sides for the architectures we export (Llama,
Qwen2, Mistral: mlx-lm keeps the Hugging Face module names); callers check every
path against the base checkpoint's tensor names before writing anything.
"""

from __future__ import annotations

PEFT_PREFIX = "base_model.model."

# mlx-lm leaf name -> (PEFT suffix, transpose?)
_MLX_TO_PEFT = {
    "lora_a": ("lora_A.weight", True),  # (in, r) -> (r, in)
    "lora_b": ("lora_B.weight", True),  # (r, out) -> (out, r)
    "m": ("lora_magnitude_vector", False),  # (out,) both sides
    # trained token rows (token_rows.py): PEFT's trainable_token_indices, values not deltas
    "rows": ("token_adapter.trainable_tokens_delta", False),  # (K, D) both sides
}
_PEFT_TO_MLX = {suffix: (leaf, transpose) for leaf, (suffix, transpose) in _MLX_TO_PEFT.items()}
# Older PEFT releases (and in-memory state dicts) spell the magnitude with a `.weight` tail.
_PEFT_TO_MLX["lora_magnitude_vector.weight"] = ("m", False)


def mlx_to_peft(name: str, tensor):
    """(mlx-lm adapter name, tensor) -> (PEFT name, tensor). Raises KeyError for a non-adapter name.

    `model.layers.1.self_attn.q_proj.lora_a` (in, r)
      -> `base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight` (r, in)
    """
    module, _, leaf = name.rpartition(".")
    if leaf not in _MLX_TO_PEFT or not module:
        raise KeyError(f"{name} is not a LoRA/DoRA adapter tensor (expected ...lora_a, ...lora_b or ...m)")
    suffix, transpose = _MLX_TO_PEFT[leaf]
    return f"{PEFT_PREFIX}{module}.{suffix}", tensor.T if transpose else tensor


def peft_to_mlx(name: str, tensor):
    """(PEFT name, tensor) -> (mlx-lm adapter name, tensor); the inverse of `mlx_to_peft`.

    Accepts names with or without PEFT's adapter-name segment (`lora_A.default.weight`).
    Raises KeyError for anything that is not a LoRA A/B matrix or a DoRA magnitude.
    """
    if not name.startswith(PEFT_PREFIX):
        raise KeyError(f"{name} does not start with '{PEFT_PREFIX}'")
    body = name[len(PEFT_PREFIX) :].replace(".default.", ".").removesuffix(".default")
    for suffix, (leaf, transpose) in _PEFT_TO_MLX.items():
        if body.endswith("." + suffix):
            module = body[: -len(suffix) - 1]
            return f"{module}.{leaf}", tensor.T if transpose else tensor
    raise KeyError(f"{name} is not a LoRA/DoRA tensor (lora_A.weight, lora_B.weight or lora_magnitude_vector)")
