"""Ollama Modelfiles from real chat templates, and the Ollama / LM Studio export folders."""

import json

import pytest

from mlxsft.export import ExportError, verify_export
from mlxsft.export.lmstudio import export_lmstudio
from mlxsft.export.ollama import _SAMPLE, _SYSTEM, export_ollama, jinja_render, match_chat_format, modelfile

from .export_fixtures import make_run
from .real_templates import load_family

gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize(
    "family,layout,default_system,prefixed,system",
    [
        ("qwen2.5", "chatml", "You are Qwen, created by Alibaba Cloud.", False, True),
        ("qwen3", "chatml", None, False, True),
        ("llama3.1", "llama3", "Cutting Knowledge Date: December 2023", True, True),
        ("phi3.5", "phi3", None, False, True),
        ("gemma2", "gemma", None, False, False),
    ],
)
def test_modelfile_reproduces_real_templates(family, layout, default_system, prefixed, system):
    tok = load_family(family)
    fmt = match_chat_format(tok, tok.chat_template)
    assert fmt.layout.name == layout and fmt.system_supported == system
    assert (fmt.default_system or "").startswith(default_system or "") and (default_system is None) == (
        fmt.default_system is None
    )
    assert bool(fmt.system_prefix) == prefixed
    # the Python twin of the Go template renders what the Jinja template renders
    chats = [_SAMPLE, [_SYSTEM, *_SAMPLE]] if system else [_SAMPLE]
    for chat in chats + [[{"role": "user", "content": "Only one turn"}]]:
        assert fmt.render(chat) == jinja_render(tok, tok.chat_template, chat)
    text = modelfile(fmt, {"temperature": 0.6, "top_p": 0.9})
    assert text.startswith('FROM ./model.gguf\nTEMPLATE """')
    for stop in fmt.layout.stops:
        assert f"PARAMETER stop {json.dumps(stop)}" in text
    assert "PARAMETER temperature 0.6" in text and "PARAMETER top_p 0.9" in text
    assert "{{- range .Messages }}" in text and "{{ .Content }}" in text
    if default_system:
        assert '(ne (index .Messages 0).Role "system")' in text and default_system in text
    assert ('SYSTEM """' in text) == (default_system is not None and not prefixed)


@pytest.mark.parametrize("family", ["mistral-nemo", "gpt-oss", "granite3.3"])
def test_modelfile_refuses_what_it_cannot_express(family):
    tok = load_family(family)
    with pytest.raises(ExportError, match="Go template|Modelfile"):
        match_chat_format(tok, tok.chat_template)


def test_ollama_and_lmstudio_folders(tiny_llama, tmp_path):
    run = make_run(tmp_path / "my run", tiny_llama, layers=1, steps=(1,))
    out = export_ollama(run, tmp_path / "ollama", quant="q8_0")
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf", "model.gguf.parity.json", "parity.json"]
    text = (out / "Modelfile").read_text()
    assert "<|im_start|>" in text and 'PARAMETER stop "<|im_end|>"' in text
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert json.loads((out / "parity.json").read_text())["dtype"] == "q8_0"
    with pytest.raises(ExportError, match="already exists"):
        export_ollama(run, tmp_path / "ollama")

    gguf_path = export_lmstudio(run, tmp_path / "lms", quant="q4_0")
    assert gguf_path == tmp_path / "lms" / "mlxsft" / "my-run" / "my-run-Q4_0.gguf"
    assert gguf_path.is_file() and (tmp_path / "lms" / "parity.json").is_file()
    assert [p.name for p in gguf_path.parent.iterdir()] == ["my-run-Q4_0.gguf"]
    assert gguf.GGUFReader(str(gguf_path)).fields["tokenizer.chat_template"].contents()
    # `mlxsft verify` recognises both folders and re-checks their GGUF against the f16 export
    for folder, quant in ((out, "q8_0"), (tmp_path / "lms", "q4_0")):
        report = verify_export(folder, run)
        assert report.passed and report.dtype == quant and report.reference_dtype == "f16 export"

    # both folders push as they are, nested paths included, with a card for their use
    from mlxsft.export.push import push

    from .upload_hub import UploadHub

    with UploadHub() as hub:
        push(out, "me/ollama", token="hf_test", endpoint=hub.endpoint)
    assert hub.files["Modelfile"] == (out / "Modelfile").read_bytes()
    assert "ollama create my-model -f model/Modelfile" in hub.files["README.md"].decode()
    with UploadHub() as hub:
        push(tmp_path / "lms", "me/lms", token="hf_test", endpoint=hub.endpoint)
    assert hub.files["mlxsft/my-run/my-run-Q4_0.gguf"] == gguf_path.read_bytes()


def test_ollama_refuses_before_writing(tmp_path, tiny_llama):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    (base / "chat_template.jinja").write_text("{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}")
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    run = make_run(tmp_path / "run", base, layers=1, steps=(1,))
    (run / "chat_template.jinja").write_text((base / "chat_template.jinja").read_text())
    with pytest.raises(ExportError, match="matches none of the layouts"):
        export_ollama(run, tmp_path / "ollama")
    assert not (tmp_path / "ollama").exists()
