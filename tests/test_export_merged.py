"""Merged exports: HF loads in transformers and matches; MLX fuse loads in mlx-lm; QLoRA."""

import json

import numpy as np
import pytest

from mlxsft.export import ExportError, export_hf, fuse_run, load_trained, resolve_source
from mlxsft.export.parity import model_logits
from mlxsft.export.safetensors_info import read_safetensors_header

from .export_fixtures import (
    PROBE_IDS,
    make_run,
    max_abs_diff,
    mlx_logits,
    mlx_reference,
    torch_logits,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CASES = {
    "llama-lora": ("tiny_llama", "lora", 1),
    "llama-dora": ("tiny_llama", "dora", "all"),
    "qwen2-lora": ("tiny_qwen_llama3", "lora", "all"),
    "qwen2-dora": ("tiny_qwen_llama3", "dora", 1),
}


@pytest.fixture(scope="module", params=list(CASES))
def run_case(request, tmp_path_factory):
    fixture, method, layers = CASES[request.param]
    base = request.getfixturevalue(fixture)
    root = tmp_path_factory.mktemp(request.param)
    run = make_run(root / "run", base, method=method, layers=layers)
    return base, run, mlx_reference(base, run)


def load_hf(path, dtype=None):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32).eval()


def test_hf_export_loads_in_transformers_and_matches(run_case, tmp_path, request):
    base, run, reference = run_case
    out = export_hf(run, tmp_path / "hf", dtype="float32")
    diff = max_abs_diff(reference, torch_logits(load_hf(out)))
    print(f"{request.node.callspec.id}: merged HF in torch vs MLX max abs diff {diff:.2e}")
    assert diff < 1e-3
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "parity.json",
    ):
        assert (out / name).is_file(), name
    header = read_safetensors_header(out / "model.safetensors")
    assert header["__metadata__"] == {"format": "pt"}
    base_header = read_safetensors_header(base / "model.safetensors")
    assert {k: v["shape"] for k, v in header.items() if k != "__metadata__"} == {
        k: v["shape"] for k, v in base_header.items() if k != "__metadata__"
    }
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template == (base / "chat_template.jinja").read_text()


def test_mlx_fuse_loads_in_mlx_lm_and_matches(run_case, tmp_path):
    from mlx_lm.utils import load

    _base, run, reference = run_case
    out = fuse_run(run, tmp_path / "fused")
    model, _tok = load(str(out))
    assert max_abs_diff(reference, mlx_logits(model)) < 1e-4


def test_bfloat16_export_and_forced_shards(tiny_qwen_llama3, tmp_path):
    run = make_run(tmp_path / "run", tiny_qwen_llama3, method="dora")
    reference = mlx_reference(tiny_qwen_llama3, run)
    out = export_hf(run, tmp_path / "hf", dtype="bfloat16", max_shard_bytes=60_000)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    header = read_safetensors_header(shards[0])
    assert header["__metadata__"] == {"format": "pt"}
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    model = load_hf(out, dtype=torch.bfloat16)
    diff = max_abs_diff(reference, torch_logits(model))
    scale = max(float(np.abs(r).max()) for r in reference)
    print(f"bf16 merged HF vs MLX fp32: max abs diff {diff:.2e} (logit scale {scale:.2f})")
    assert diff < 0.05 * scale
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["dtype"] == "bfloat16"


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_qlora_fuses_dequantized_with_parity(tiny_llama, tmp_path, method):
    from mlx_lm.utils import load

    run = make_run(tmp_path / "run", tiny_llama, method=method, bits=4, group_size=32)
    # the reference is the adapter on the 4-bit base, as trained
    trained = load_trained(resolve_source(run))
    assert any("scales" in k for k in dict(_flat(trained.model)))
    reference = model_logits(trained.model, PROBE_IDS)

    fused = fuse_run(run, tmp_path / "fused", dequantize=True)
    config = json.loads((fused / "config.json").read_text())
    assert "quantization" not in config
    model, _ = load(str(fused))
    assert not any("scales" in k for k in dict(_flat(model)))
    assert max_abs_diff(reference, mlx_logits(model)) < 1e-4

    hf = export_hf(run, tmp_path / "hf", dtype="float32")
    diff = max_abs_diff(reference, torch_logits(load_hf(hf)))
    print(f"QLoRA {method} merged HF (de-quantized) vs MLX max abs diff: {diff:.2e}")
    assert diff < 1e-3


def test_requantized_fuse_keeps_quantization_or_refuses(tiny_llama, tmp_path):
    from mlx_lm.utils import load

    big = make_run(
        tmp_path / "big",
        tiny_llama,
        bits=4,
        group_size=32,
        lora_b_std=0.3,
        targets=["v_proj", "o_proj"],
    )
    out = fuse_run(big, tmp_path / "fused")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    model, _ = load(str(out))
    assert any(k.endswith("scales") for k in dict(_flat(model)))
    parity = json.loads((out / "parity.json").read_text())
    assert parity["update_retained"] >= 0.5

    # a small update is rounded away by re-quantizing (mlx-lm issue 1172): refused, nothing written
    small = make_run(tmp_path / "small", tiny_llama, bits=4, group_size=32, lora_b_std=0.002)
    with pytest.raises(ExportError, match="--dequantize"):
        fuse_run(small, tmp_path / "fused-small")
    assert not (tmp_path / "fused-small").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fused-small")]


def test_full_fine_tune_merges(tiny_llama, tmp_path):
    run = make_run(tmp_path / "run", tiny_llama, method="full", steps=(1,))
    reference = mlx_reference(tiny_llama, run)
    out = export_hf(run, tmp_path / "hf")
    assert max_abs_diff(reference, torch_logits(load_hf(out))) < 1e-3


def _flat(model):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())


def test_hf_dtype_is_validated(run_case, tmp_path):
    _base, run, _ = run_case
    with pytest.raises(ExportError, match="--dtype"):
        export_hf(run, tmp_path / "hf", dtype="int8")


def test_bfloat16_trained_run_exports_within_bf16_tolerance(tiny_qwen_llama3, tmp_path):
    """A run computed in bfloat16 (a GPU's default) is judged at bfloat16 precision."""
    run = make_run(tmp_path / "run", tiny_qwen_llama3, method="dora", dtype="bfloat16")
    out = export_hf(run, tmp_path / "hf", dtype="float32")
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["reference_dtype"] == "bfloat16"
    assert 0 < parity["max_rel_diff"] < parity["tolerance"]


def test_tied_embeddings_merge(tmp_path):
    from mlxsft.devmodel import TinyModelSpec, build_tiny_model

    base = build_tiny_model(tmp_path / "tied", TinyModelSpec(tie_word_embeddings=True))
    run = make_run(tmp_path / "run", base, method="lora")
    out = export_hf(run, tmp_path / "hf")
    header = read_safetensors_header(out / "model.safetensors")
    assert "lm_head.weight" not in header
    assert max_abs_diff(mlx_reference(base, run), torch_logits(load_hf(out))) < 1e-3


def test_architecture_whose_names_differ_is_refused(tiny_llama):
    """mlx-lm names that are not the HF checkpoint's would load wrongly in transformers."""
    import mlx.core as mx

    from mlxsft.export.merged import check_hf_names

    config = json.loads((tiny_llama / "config.json").read_text())
    good = {"model.norm.weight": mx.zeros((64,))}
    check_hf_names(good, tiny_llama, config)
    with pytest.raises(ExportError, match="differ from its Hugging Face checkpoint"):
        check_hf_names({"language_model.model.norm.weight": mx.zeros((64,))}, tiny_llama, config)
    with pytest.raises(ExportError, match="has shape"):
        check_hf_names({"model.norm.weight": mx.zeros((32,))}, tiny_llama, config)
