"""The mlx-lm <-> PEFT key map: names, shapes and values survive a round trip both ways."""

import numpy as np
import pytest

from mlxsft.export.keymap import mlx_to_peft, peft_to_mlx

MLX_TENSORS = {
    "model.layers.0.self_attn.q_proj.lora_a": (64, 4),  # (in, r)
    "model.layers.0.self_attn.q_proj.lora_b": (4, 64),  # (r, out)
    "model.layers.1.self_attn.k_proj.lora_a": (64, 4),
    "model.layers.1.self_attn.k_proj.lora_b": (4, 32),
    "model.layers.1.self_attn.k_proj.m": (32,),  # DoRA magnitude (out,)
    "model.layers.1.mlp.down_proj.lora_a": (128, 4),
    "model.layers.1.mlp.down_proj.lora_b": (4, 64),
}


def tensors(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def test_mlx_to_peft_names_and_shapes():
    name, t = mlx_to_peft("model.layers.1.self_attn.k_proj.lora_a", np.zeros((64, 4)))
    assert name == "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight" and t.shape == (
        4,
        64,
    )
    name, t = mlx_to_peft("model.layers.1.self_attn.k_proj.lora_b", np.zeros((4, 32)))
    assert name == "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight" and t.shape == (
        32,
        4,
    )
    name, t = mlx_to_peft("model.layers.1.self_attn.k_proj.m", np.zeros(32))
    assert name == "base_model.model.model.layers.1.self_attn.k_proj.lora_magnitude_vector" and t.shape == (32,)


def test_round_trip_mlx_peft_mlx():
    original = tensors(MLX_TENSORS)
    peft = dict(mlx_to_peft(k, v) for k, v in original.items())
    back = dict(peft_to_mlx(k, v) for k, v in peft.items())
    assert back.keys() == original.keys()
    for k, v in original.items():
        assert back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_round_trip_peft_mlx_peft():
    peft = dict(mlx_to_peft(k, v) for k, v in tensors(MLX_TENSORS, seed=1).items())
    again = dict(mlx_to_peft(*peft_to_mlx(k, v)) for k, v in peft.items())
    assert again.keys() == peft.keys()
    for k, v in peft.items():
        np.testing.assert_array_equal(again[k], v)


def test_lora_product_is_preserved():
    """The update matrix (out, in) is the same on both sides: scale * B @ A."""
    t = tensors(MLX_TENSORS, seed=2)
    a, b = t["model.layers.1.mlp.down_proj.lora_a"], t["model.layers.1.mlp.down_proj.lora_b"]
    _, peft_a = mlx_to_peft("x.lora_a", a)
    _, peft_b = mlx_to_peft("x.lora_b", b)
    np.testing.assert_allclose(peft_b @ peft_a, (a @ b).T, rtol=1e-6)


def test_peft_spellings_and_rejections():
    base = "base_model.model.model.layers.0.self_attn.q_proj"
    assert (
        peft_to_mlx(f"{base}.lora_A.default.weight", np.zeros((4, 64)))[0] == "model.layers.0.self_attn.q_proj.lora_a"
    )
    assert peft_to_mlx(f"{base}.lora_magnitude_vector.weight", np.zeros(64))[0] == "model.layers.0.self_attn.q_proj.m"
    for bad in (
        f"{base}.weight",
        "model.layers.0.self_attn.q_proj.lora_A.weight",
        f"{base}.lora_embedding_A",
    ):
        with pytest.raises(KeyError):
            peft_to_mlx(bad, np.zeros(1))
    with pytest.raises(KeyError):
        mlx_to_peft("model.layers.0.self_attn.q_proj.weight", np.zeros((64, 64)))
