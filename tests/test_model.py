"""Model loading: clear errors for bad folders, targets, quantization, parameter counts."""

import shutil

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxsft.config import recipe_from_dict
from mlxsft.errors import ModelError
from mlxsft.model import attach_adapters, count_parameters, load_base, resolve_model_path


def recipe(model, **extra):
    return recipe_from_dict({"model": str(model), "data": "unused", **extra})


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="model folder not found"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="model folder not found"):
        resolve_model_path("models/does-not-exist")


def test_folder_without_weights_or_tokenizer(tmp_path, tiny_llama):
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_llama, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no \\*.safetensors weights"):
        resolve_model_path(str(no_weights))
    no_tok = tmp_path / "no-tok"
    shutil.copytree(tiny_llama, no_tok)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / name).unlink()
    with pytest.raises(ModelError, match="no tokenizer"):
        resolve_model_path(str(no_tok))


def test_lora_targets_and_counts(tiny_llama):
    r = recipe(tiny_llama, lora={"rank": 4, "targets": ["q_proj", "v_proj"], "layers": 1})
    model, _tok, _path, _cfg = load_base(r)
    config = attach_adapters(model, r)
    assert config["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert config["num_layers"] == 1
    counts = count_parameters(model)
    # last block only: q (64->64) and v (64->32), each r=4: 4*(64+64) + 4*(64+32)
    assert counts.trainable == 4 * (64 + 64) + 4 * (64 + 32)
    assert 0 < counts.trainable_share < 0.05


def test_unknown_target_lists_the_real_layers(tiny_llama):
    r = recipe(tiny_llama, lora={"targets": ["query_key_value"]})
    model, *_ = load_base(r)
    with pytest.raises(ModelError, match="gate_proj"):
        attach_adapters(model, r)


def test_cpu_compute_is_float32_and_qlora_quantizes(tiny_llama):
    r = recipe(tiny_llama, quantize={"bits": 4, "group_size": 32})
    model, *_ = load_base(r)
    assert isinstance(model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert model.model.norm.weight.dtype == mx.float32
    before = count_parameters(model).total
    plain, *_ = load_base(recipe(tiny_llama))
    assert before == count_parameters(plain).total  # counted unpacked, same as unquantized


def test_hub_id_resolves_to_a_pulled_copy_in_the_store(tmp_path, tiny_llama, monkeypatch):
    import json

    store = tmp_path / "store"
    shutil.copytree(tiny_llama, store / "Tiny-Chat")
    (store / "Tiny-Chat" / ".mlxsft-source.json").write_text(json.dumps({"hub_id": "acme/Tiny-Chat"}))
    monkeypatch.setenv("MLXSFT_MODELS", str(store))
    # (no HF_HUB_OFFLINE here: huggingface_hub reads it once at import, for the whole session)
    assert resolve_model_path("acme/Tiny-Chat") == (store / "Tiny-Chat").resolve()
