"""Quantized GGUF (--quant), SentencePiece vocabularies and LoRA adapter GGUFs, read back with gguf."""

import json
import shutil

import numpy as np
import pytest

from mlxsft.devmodel import TinyModelSpec, build_tiny_model
from mlxsft.export import ExportError, export_gguf, export_hf, verify_export
from mlxsft.export.gguf import permute_qk, quant_for
from mlxsft.export.gguf_lora import export_gguf_lora
from mlxsft.export.gguf_quant import QUANT_TOLERANCES, check_quantizable, quantize, row_lengths, tensor_type

from .conftest import quickstart_corpus
from .export_fixtures import make_run

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A 256-wide model (K-quant rows), a run on it, and its merged f32 weights."""
    from safetensors.numpy import load_file

    root = tmp_path_factory.mktemp("quant")
    spec = TinyModelSpec(hidden_size=256, intermediate_size=512)
    base = build_tiny_model(root / "base", spec, corpus=quickstart_corpus())
    run = make_run(root / "run", base, layers=1, steps=(1,))
    merged = load_file(str(export_hf(run, root / "hf", dtype="float32") / "model.safetensors"))
    return root, base, run, merged


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K, T.Q8_0, T.Q4_0])
def test_quantizers_round_trip_through_gguf_dequantization(qtype):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 512)) * 0.05).astype(np.float32)
    w[3] = 0.0  # an all-zero row must not divide by zero
    back = gguf.quants.dequantize(quantize(w, qtype), qtype)
    assert back.shape == w.shape and np.all(back[3] == 0)
    rms = np.sqrt(((back - w) ** 2).mean()) / w.std()
    limit = {T.Q8_0: 0.01, T.Q6_K: 0.03, T.Q4_K: 0.12, T.Q4_0: 0.12}[qtype]
    assert rms < limit, rms


@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m", "q4_0"])
def test_quantized_gguf_read_back(wide_run, quant):
    root, base, run, merged = wide_run
    out = export_gguf(run, root / f"{quant}.gguf", quant=quant)
    parity = json.loads((root / f"{quant}.gguf.parity.json").read_text())
    tol = QUANT_TOLERANCES[quant]
    print(f"{quant}: max rel {parity['max_rel_diff']:.3g}, greedy {parity['greedy_agreement']:.1%}")
    assert parity["passed"] and parity["dtype"] == quant and parity["reference_dtype"] == "f16 export"
    assert parity["max_rel_diff"] <= tol["max_rel_diff"] and parity["greedy_agreement"] >= tol["min_greedy"]
    reader = gguf.GGUFReader(str(out))
    config = json.loads((base / "config.json").read_text())
    tensors = {t.name: t for t in reader.tensors}
    expected_types = {
        "q8_0": {"blk.0.attn_q.weight": T.Q8_0, "output.weight": T.Q8_0, "blk.1.ffn_down.weight": T.Q8_0},
        "q4_0": {"blk.0.attn_q.weight": T.Q4_0, "output.weight": T.Q6_K, "token_embd.weight": T.Q4_0},
        # use_more_bits(1, 2): the last layer's attn_v/ffn_down get Q6_K
        "q4_k_m": {
            "blk.0.attn_v.weight": T.Q4_K,
            "blk.1.attn_v.weight": T.Q6_K,
            "blk.1.ffn_down.weight": T.Q6_K,
            "output.weight": T.Q6_K,
            "blk.0.ffn_up.weight": T.Q4_K,
        },
    }[quant]
    for name, qtype in expected_types.items():
        assert tensors[name].tensor_type == qtype, name
    assert tensors["output_norm.weight"].tensor_type == T.F32
    # a quantized tensor, through gguf's own dequantization, is close to the merged weight
    attn_q = tensors["blk.1.attn_q.weight"]
    q = gguf.quants.dequantize(np.array(attn_q.data), attn_q.tensor_type)
    hf_q = permute_qk(merged["model.layers.1.self_attn.q_proj.weight"], config["num_attention_heads"])
    assert q.shape == hf_q.shape
    rel = np.sqrt(((q - hf_q) ** 2).mean()) / hf_q.std()
    assert rel < (0.01 if quant == "q8_0" else 0.15), rel
    assert field(reader, "general.file_type") == int(
        gguf.LlamaFileType[{"q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0", "q4_k_m": "MOSTLY_Q4_K_M"}[quant]]
    )
    if quant == "q4_k_m":  # `mlxsft verify` re-checks against the f16 reference, same figures
        again = verify_export(out, run)
        assert again.passed and again.dtype == quant
        assert again.max_abs_diff == pytest.approx(parity["max_abs_diff"], rel=1e-4)


def field(reader, key):
    return reader.fields[key].contents()


def test_quant_refusals(tiny_llama, tmp_path):
    with pytest.raises(ExportError, match="disagree"):
        quant_for("float32", "q8_0")
    with pytest.raises(ExportError, match="--quant must be one of"):
        quant_for(None, "q3_k_s")
    with pytest.raises(ExportError, match="multiple of 32.*--quant f16"):
        check_quantizable({"model.layers.0.mlp.up_proj.weight": (96, 40)}, "q4_0")
    odd = {"hidden_size": 48, "intermediate_size": 128, "num_attention_heads": 4}
    with pytest.raises(ExportError, match="hidden_size"):
        check_quantizable(row_lengths(odd), "q8_0")
    check_quantizable(row_lengths(odd), "f16")  # float files take any width
    # K-quants fall back as llama.cpp does when rows are not a multiple of 256
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "q4_k_m", 2, True) == T.Q5_0
    assert tensor_type("output.weight", (512, 64), "q4_k_m", 2, True) == T.Q8_0
    assert tensor_type("token_embd.weight", (512, 256), "q4_0", 2, False) == T.Q6_K  # tied: the head
    run = make_run(tmp_path / "run", tiny_llama, steps=(1,))
    with pytest.raises(ExportError, match="disagree"):
        export_gguf(run, tmp_path / "x.gguf", dtype="float32", quant="q4_0")
    assert not list(tmp_path.glob("*x.gguf*"))


# ---------------------------------------------------------------- SentencePiece


@pytest.fixture(scope="module")
def spm_base(tiny_llama, tmp_path_factory):
    """tiny_llama with a SentencePiece tokenizer.model (byte fallback) instead of tokenizer.json."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("spm")
    base = root / "base"
    shutil.copytree(tiny_llama, base)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(quickstart_corpus()))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(root / "sp"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    shutil.copyfile(root / "sp.model", base / "tokenizer.model")
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (base / name).unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("added_tokens_decoder", "tokenizer_class")}
    config |= {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "legacy": False,
    }
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    return base


def test_sentencepiece_gguf(spm_base, tmp_path):
    import sentencepiece as spm

    run = make_run(tmp_path / "run", spm_base, layers=1, steps=(1,))
    out = export_gguf(run, tmp_path / "spm.gguf", quant="f32")
    assert json.loads((tmp_path / "spm.gguf.parity.json").read_text())["passed"]
    reader = gguf.GGUFReader(str(out))
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.pre") == "default"
    sp = spm.SentencePieceProcessor(model_file=str(spm_base / "tokenizer.model"))
    tokens, scores = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.scores")
    types = field(reader, "tokenizer.ggml.token_type")
    vocab = json.loads((spm_base / "config.json").read_text())["vocab_size"]
    assert len(tokens) == len(scores) == len(types) == vocab
    for i in range(sp.vocab_size()):
        assert tokens[i] == sp.IdToPiece(i) and scores[i] == pytest.approx(sp.GetScore(i))
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == gguf.TokenType.CONTROL
    assert types[sp.PieceToId("<0x41>")] == gguf.TokenType.BYTE
    # user-defined pieces must be USER_DEFINED, or llama.cpp splits <|im_start|> into characters
    assert types[sp.PieceToId("<|im_start|>")] == gguf.TokenType.USER_DEFINED
    assert sum(t == gguf.TokenType.NORMAL for t in types) > 100  # the merged pieces
    assert field(reader, "tokenizer.ggml.add_space_prefix") is True
    assert all(t == gguf.TokenType.UNUSED for t in types[sp.vocab_size() :])
    assert field(reader, "tokenizer.ggml.bos_token_id") == 1
    assert field(reader, "tokenizer.chat_template") == (spm_base / "chat_template.jinja").read_text()


# ---------------------------------------------------------------- LoRA adapter GGUF


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen_llama3"])
def test_lora_adapter_gguf_recomputes_merged_weights(request, tmp_path, fixture):
    from safetensors.numpy import load_file

    base = request.getfixturevalue(fixture)
    run = make_run(tmp_path / "run", base, layers=1, steps=(1,))
    out = export_gguf_lora(run, tmp_path / "adapter.gguf")
    assert json.loads((tmp_path / "adapter.gguf.parity.json").read_text())["passed"]
    assert verify_export(out, run).format == "gguf-lora"
    reader = gguf.GGUFReader(str(out))
    config = json.loads((base / "config.json").read_text())
    assert field(reader, "general.type") == "adapter" and field(reader, "adapter.type") == "lora"
    alpha = field(reader, "adapter.lora.alpha")
    assert alpha == pytest.approx(8.0)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    base_w = load_file(str(base / "model.safetensors"))
    merged = load_file(str(export_hf(run, tmp_path / "hf", dtype="float32") / "model.safetensors"))
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    a, b = tensors["blk.1.attn_q.weight.lora_a"], tensors["blk.1.attn_q.weight.lora_b"]
    assert a.shape == (4, hidden) and b.shape == (hidden, 4)  # llama.cpp: a (rank, in), b (out, rank)
    llama = config["model_type"] == "llama"
    w = base_w["model.layers.1.self_attn.q_proj.weight"].astype(np.float32)
    w = permute_qk(w, heads) if llama else w
    expected = merged["model.layers.1.self_attn.q_proj.weight"]
    expected = permute_qk(expected, heads) if llama else expected
    np.testing.assert_allclose(w + alpha / a.shape[0] * (b @ a), expected, atol=1e-5)
    assert not any(k.startswith("blk.0.") for k in tensors)  # layers=1: only the last block


def test_lora_adapter_refuses_dora(tiny_llama, tmp_path):
    run = make_run(tmp_path / "run", tiny_llama, method="dora", layers=1, steps=(1,))
    with pytest.raises(ExportError, match="LoRA only.*--format gguf"):
        export_gguf_lora(run, tmp_path / "a.gguf")
    assert not list(tmp_path.glob("*a.gguf*"))


# ---------------------------------------------------------------- Qwen3 (q/k norms)


@pytest.fixture(scope="module")
def tiny_qwen3(tiny_qwen_llama3, tmp_path_factory):
    """tiny_qwen_llama3 turned into a Qwen3: no attention biases, per-head q/k RMS norms."""
    from safetensors.numpy import load_file, save_file

    base = tmp_path_factory.mktemp("qwen3") / "base"
    shutil.copytree(tiny_qwen_llama3, base)
    config = json.loads((base / "config.json").read_text())
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    config |= {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "head_dim": head_dim,
        "attention_bias": False,
    }
    (base / "config.json").write_text(json.dumps(config))
    weights = {k: v for k, v in load_file(str(base / "model.safetensors")).items() if not k.endswith(".bias")}
    rng = np.random.default_rng(3)
    for i in range(config["num_hidden_layers"]):
        for norm in ("q_norm", "k_norm"):
            weights[f"model.layers.{i}.self_attn.{norm}.weight"] = (1 + 0.1 * rng.standard_normal(head_dim)).astype(
                np.float32
            )
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    return base


def test_qwen3_gguf_and_adapter(tiny_qwen3, tmp_path):
    run = make_run(tmp_path / "run", tiny_qwen3, layers=1, steps=(1,))
    out = export_gguf(run, tmp_path / "q3.gguf", quant="q8_0")
    assert json.loads((tmp_path / "q3.gguf.parity.json").read_text())["passed"]
    reader = gguf.GGUFReader(str(out))
    tensors = {t.name: t for t in reader.tensors}
    assert field(reader, "general.architecture") == "qwen3"
    assert tensors["blk.0.attn_q_norm.weight"].tensor_type == T.F32
    assert "blk.0.attn_q.bias" not in tensors
    assert (
        field(reader, "qwen3.attention.key_length") == json.loads((tiny_qwen3 / "config.json").read_text())["head_dim"]
    )
    adapter = export_gguf_lora(run, tmp_path / "q3-lora.gguf")
    assert {t.name for t in gguf.GGUFReader(str(adapter)).tensors} >= {"blk.1.attn_k.weight.lora_a"}


# ---------------------------------------------------------------- Phi-3 (fused projections)

PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_phi3(tiny_llama, tmp_path_factory):
    """tiny_llama turned into a Phi-3: q/k/v fused into qkv_proj, gate/up into gate_up_proj."""
    from safetensors.numpy import load_file, save_file

    base = tmp_path_factory.mktemp("phi3") / "base"
    shutil.copytree(tiny_llama, base)
    config = json.loads((base / "config.json").read_text())
    config |= {
        "model_type": "phi3",
        "architectures": ["Phi3ForCausalLM"],
        "sliding_window": 1024,
        "partial_rotary_factor": 1.0,
    }
    (base / "config.json").write_text(json.dumps(config))
    w = load_file(str(base / "model.safetensors"))
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.qkv_proj.weight"] = np.concatenate([w.pop(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        w[p + "mlp.gate_up_proj.weight"] = np.concatenate(
            [w.pop(p + "mlp.gate_proj.weight"), w.pop(p + "mlp.up_proj.weight")]
        )
    save_file(w, str(base / "model.safetensors"), metadata={"format": "pt"})
    return base


def test_phi3_gguf_and_adapter(tiny_phi3, tmp_path):
    run = make_run(tmp_path / "run", tiny_phi3, layers=1, steps=(1,), targets=PHI3_TARGETS)
    out = export_gguf(run, tmp_path / "phi3.gguf", quant="f16")
    assert json.loads((tmp_path / "phi3.gguf.parity.json").read_text())["passed"]
    reader = gguf.GGUFReader(str(out))
    config = json.loads((tiny_phi3 / "config.json").read_text())
    tensors = {t.name: t for t in reader.tensors}
    assert field(reader, "general.architecture") == "phi3"
    assert field(reader, "phi3.attention.sliding_window") == 1024
    hidden, ff = config["hidden_size"], config["intermediate_size"]
    assert tuple(tensors["blk.0.attn_qkv.weight"].data.shape) == (hidden + 2 * hidden // 2, hidden)
    assert tuple(tensors["blk.0.ffn_up.weight"].data.shape) == (2 * ff, hidden)
    adapter = export_gguf_lora(run, tmp_path / "phi3-lora.gguf")
    names = {t.name for t in gguf.GGUFReader(str(adapter)).tensors}
    assert {"blk.1.attn_qkv.weight.lora_a", "blk.1.ffn_up.weight.lora_b"} <= names
    longrope = config | {"rope_scaling": {"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}}
    with pytest.raises(ExportError, match="rope scaling 'longrope'"):
        from mlxsft.export.gguf import check_supported

        check_supported(longrope, tiny_phi3, "f16")
