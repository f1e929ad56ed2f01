"""GGUF export: written with the gguf package, read back with gguf.GGUFReader, checked."""

import json
import shutil

import numpy as np
import pytest

from mlxsft.export import ExportError, export_gguf, export_hf
from mlxsft.export.gguf import check_supported, permute_qk, tokenizer_pre, unpermute_qk

from .export_fixtures import make_run

gguf = pytest.importorskip("gguf")


def field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize(
    "fixture,arch,dtype",
    [("tiny_llama", "llama", "float16"), ("tiny_qwen_llama3", "qwen2", "float32")],
)
def test_gguf_written_and_read_back(request, tmp_path, fixture, arch, dtype):
    from safetensors.numpy import load_file

    base = request.getfixturevalue(fixture)
    run = make_run(tmp_path / "run", base, method="dora", layers=1)
    out = export_gguf(run, tmp_path / "model.gguf", dtype=dtype)
    parity = json.loads((tmp_path / "model.gguf.parity.json").read_text())
    assert parity["passed"] and parity["dtype"] == dtype and parity["adapter_effect_max_abs"] > 0.1

    reader = gguf.GGUFReader(str(out))
    config = json.loads((base / "config.json").read_text())
    tok = json.loads((base / "tokenizer.json").read_text())
    assert field(reader, "general.architecture") == arch
    assert field(reader, f"{arch}.block_count") == config["num_hidden_layers"]
    assert field(reader, f"{arch}.attention.head_count_kv") == config["num_key_value_heads"]
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"]
    vocab = tok["model"]["vocab"]
    assert all(tokens[i] == t for t, i in vocab.items())
    types = field(reader, "tokenizer.ggml.token_type")
    for added in tok["added_tokens"]:
        assert types[added["id"]] == gguf.TokenType.CONTROL
    assert len(field(reader, "tokenizer.ggml.merges")) == len(tok["model"]["merges"])
    assert field(reader, "tokenizer.ggml.eos_token_id") == config["eos_token_id"]
    assert field(reader, "tokenizer.chat_template") == (base / "chat_template.jinja").read_text()

    # tensors: every weight of the merged model, 1-D in f32, the rest in the asked dtype,
    # and (llama only) q/k rows permuted for llama.cpp's rope
    merged = load_file(str(export_hf(run, tmp_path / "hf", dtype="float32") / "model.safetensors"))
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(merged)
    embd = tensors["token_embd.weight"]
    assert embd.data.shape == merged["model.embed_tokens.weight"].shape
    assert embd.data.dtype == (np.float16 if dtype == "float16" else np.float32)
    assert tensors["output_norm.weight"].data.dtype == np.float32
    q = np.array(tensors["blk.1.attn_q.weight"].data, dtype=np.float32)
    hf_q = merged["model.layers.1.self_attn.q_proj.weight"]
    expected_q = permute_qk(hf_q, config["num_attention_heads"]) if arch == "llama" else hf_q
    np.testing.assert_allclose(q, expected_q, atol=2e-3 if dtype == "float16" else 0)
    if arch == "qwen2":
        assert "blk.0.attn_q.bias" in tensors


def test_permutation_round_trips():
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # 2 heads of dim 4
    assert not np.array_equal(permute_qk(w, 2), w)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 2), 2), w)


def test_gguf_refusals(tiny_llama, tmp_path):
    config = json.loads((tiny_llama / "config.json").read_text())
    with pytest.raises(ExportError, match="float32 or float16"):
        check_supported(config, tiny_llama, "bfloat16")
    with pytest.raises(ExportError, match="not gemma"):
        check_supported(config | {"model_type": "gemma"}, tiny_llama, "float16")
    with pytest.raises(ExportError, match="rope scaling 'yarn'"):
        check_supported(config | {"rope_scaling": {"rope_type": "yarn", "factor": 4}}, tiny_llama, "float16")
    odd = tmp_path / "odd"
    shutil.copytree(tiny_llama, odd)
    tok = json.loads((odd / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (odd / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ExportError, match="pre-tokenizer"):
        tokenizer_pre(odd)
    run = make_run(tmp_path / "run", tiny_llama, steps=(1,))
    with pytest.raises(ExportError, match="float32 or float16"):
        export_gguf(run, tmp_path / "x.gguf", dtype="bfloat16")
    assert not list(tmp_path.glob("*x.gguf*"))


def test_llama3_rope_scaling_and_pre_tokenizer(tiny_llama, tmp_path):
    """Llama-3 rope scaling becomes a rope_freqs tensor; a Llama-3 split regex is 'llama-bpe'.

    (Both checked by hand against llama.cpp 0.3.36: logits within 1.5e-3 over 200 tokens.)
    """
    from mlxsft.export.gguf import _LLAMA3_SPLIT

    base = tmp_path / "l3"
    shutil.copytree(tiny_llama, base)
    config = json.loads((base / "config.json").read_text())
    config["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    (base / "config.json").write_text(json.dumps(config))
    tok = json.loads((base / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": _LLAMA3_SPLIT},
                "behavior": "Isolated",
                "invert": False,
            },
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
        ],
    }
    (base / "tokenizer.json").write_text(json.dumps(tok))
    run = make_run(tmp_path / "run", base, steps=(1,))
    reader = gguf.GGUFReader(str(export_gguf(run, tmp_path / "l3.gguf", dtype="float32")))
    assert field(reader, "tokenizer.ggml.pre") == "llama-bpe"
    freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert freqs.shape == (head_dim // 2,)
    assert freqs[0] == 1.0 and freqs[-1] == 8.0 and np.all(np.diff(freqs) >= 0)
