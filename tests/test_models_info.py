"""`mlxsft models info`, `quantize` and `list`: facts from a folder, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from mlxsft.cli import build_parser
from mlxsft.config import DEFAULT_TARGETS
from mlxsft.errors import ModelError
from mlxsft.models.info import describe_model, format_facts
from mlxsft.models.quantize import quantize_into_store
from mlxsft.store import list_local, resolve_local, store_root


def _run(argv: list[str]) -> int:
    """Run a `mlxsft` subcommand in-process (no re-exec for OpenBLAS)."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


def _weights_in_files(path: Path) -> int:
    return sum(v.size for f in path.glob("*.safetensors") for v in load_file(str(f)).values())


def test_info_reports_the_real_architecture(tiny_llama):
    facts = describe_model(tiny_llama)
    config = json.loads((tiny_llama / "config.json").read_text())
    assert facts.total_parameters == _weights_in_files(tiny_llama)
    assert facts.model_type == "llama" and facts.architectures == ("LlamaForCausalLM",)
    s = facts.shape
    assert (s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.vocab_size) == (
        config["num_hidden_layers"],
        config["hidden_size"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["vocab_size"],
    )
    assert facts.embedding_parameters == 2 * config["vocab_size"] * config["hidden_size"]
    assert facts.dtype == "float32" and facts.bits is None
    assert (facts.chat_template, facts.template_style) == ("chat_template.jinja", "ChatML")
    assert {n.rsplit(".", 1)[1] for n in facts.linear_layers} == set(DEFAULT_TARGETS)
    assert facts.recommended_targets == tuple(DEFAULT_TARGETS)
    assert facts.size_bytes >= (tiny_llama / "model.safetensors").stat().st_size
    text = format_facts(facts)
    assert "ChatML" in text and f"{facts.total_parameters:,}" in text


def test_info_reads_templates_from_tokenizer_config_and_spots_base_models(tiny_qwen_llama3, tmp_path):
    folder = shutil.copytree(tiny_qwen_llama3, tmp_path / "m")
    (folder / "chat_template.jinja").unlink()  # the template now lives only in tokenizer_config.json
    facts = describe_model(folder)
    assert (facts.chat_template, facts.template_style) == ("tokenizer_config.json", "Llama 3")
    assert facts.model_type == "qwen2"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    facts = describe_model(folder)
    assert facts.chat_template is None and any("no chat template" in n for n in facts.notes)


def test_quantized_copy_keeps_the_parameter_count_and_is_smaller(tiny_llama, tmp_path):
    store = tmp_path / "models"
    src = shutil.copytree(tiny_llama, store / "tiny")
    dest = quantize_into_store(src, store, "tiny-4bit", 4, 64)
    original, quantized = describe_model(src), describe_model(dest)
    assert (quantized.bits, quantized.group_size) == (4, 64)
    assert quantized.total_parameters == original.total_parameters  # packed weights counted unpacked
    assert quantized.size_bytes < original.size_bytes / 2
    listed = {m.name: m for m in list_local(store)}
    assert set(listed) == {"tiny", "tiny-4bit"} and listed["tiny-4bit"].bits == 4
    assert not any(p.name.startswith(".partial") for p in store.iterdir())
    # again: the copy is present, nothing is rewritten
    mtime = (dest / "config.json").stat().st_mtime_ns
    assert quantize_into_store(src, store, "tiny-4bit", 4, 64) == dest
    assert (dest / "config.json").stat().st_mtime_ns == mtime
    with pytest.raises(ModelError, match="must be one of 2, 3, 4, 5, 6, 8"):
        quantize_into_store(src, store, "tiny-7bit", 7, 64)


def test_folders_that_are_not_models_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        describe_model(empty)
    bins = tmp_path / "bins"
    bins.mkdir()
    (bins / "config.json").write_text('{"model_type": "llama"}')
    (bins / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match=r"\.bin weights"):
        describe_model(bins)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    (broken / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError, match="not valid JSON"):
        describe_model(broken)
    with pytest.raises(ModelError, match="model folder not found"):
        resolve_local("nowhere", tmp_path)
    with pytest.raises(ModelError, match="mlxsft models pull org/Missing"):
        resolve_local("org/Missing", tmp_path)


def test_store_root_honours_flag_then_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MLXSFT_MODELS", raising=False)
    assert store_root() == Path("models")
    monkeypatch.setenv("MLXSFT_MODELS", str(tmp_path))
    assert store_root() == tmp_path
    assert store_root(tmp_path / "x") == tmp_path / "x"


def test_cli_list_info_and_quantize_work_offline(tiny_llama, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = tmp_path / "models"
    shutil.copytree(tiny_llama, store / "tiny")
    (store / ".partial-Other").mkdir()
    (store / ".partial-Other" / ".mlxsft-source.json").write_text('{"hub_id": "org/Other"}')
    assert _run(["models", "quantize", "tiny", "--store", str(store), "--bits", "8"]) == 0
    assert _run(["models", "list", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen2.5-0.5B-Instruct" in out  # the catalog, from this checkout
    assert str(store / "tiny") in out and "8-bit" in out and (" KB" in out or " MB" in out)
    assert "mlxsft models pull org/Other" in out  # the unfinished download, and how to resume it
    assert _run(["models", "info", "tiny-8bit", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "8-bit (group size 64)" in out and "ChatML" in out
