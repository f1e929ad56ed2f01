"""`mlxsft push` against a local stand-in hub (tests/upload_hub.py): card, refusal, dropped commit."""

import json

import pytest

from mlxsft.export import ExportError
from mlxsft.export.gguf_lora import export_gguf_lora
from mlxsft.export.push import push

from .export_fixtures import make_run
from .upload_hub import UploadHub


@pytest.fixture(scope="module")
def adapter_gguf(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("push")
    run = make_run(root / "run", tiny_llama, layers=1, steps=(1,))
    return export_gguf_lora(run, root / "adapter.gguf")


def test_push_export_with_model_card(adapter_gguf):
    with UploadHub() as hub:
        url = push(adapter_gguf, "me/tiny-adapter", private=True, token="hf_test", endpoint=hub.endpoint)
    assert url.endswith("/me/tiny-adapter/commit/" + "a" * 40)
    assert hub.created == [{"name": "tiny-adapter", "organization": "me", "visibility": "private"}]
    assert all(auth == "Bearer hf_test" for _, _, auth in hub.requests)
    assert set(hub.files) == {"README.md", "adapter.gguf", "adapter.gguf.parity.json"}
    assert hub.files["adapter.gguf"] == adapter_gguf.read_bytes()
    card = hub.files["README.md"].decode()
    parity = json.loads(adapter_gguf.with_name("adapter.gguf.parity.json").read_text())
    assert "library_name: gguf" in card and "with mlxsft (lora)" in card
    assert "- `lora.rank`: 4" in card and "- `lora.alpha`: 8.0" in card
    assert f"- greedy_agreement: {parity['greedy_agreement']}" in card and "- format: gguf-lora" in card
    assert "llama-cli -hf me/tiny-adapter" in card


def test_push_a_run_uploads_its_peft_adapter(tiny_llama, tmp_path):
    from mlxsft.rundir import RunDir

    run = make_run(tmp_path / "run", tiny_llama, layers=1, steps=(1, 2))
    # what `mlxsft eval` and `mlxsft select` leave in a run
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(
        json.dumps(
            {
                "checkpoints": [
                    {"step": 0, "label": "base", "metrics": {"valid_loss": 2.5, "probe_loss": 1.25}},
                    {"step": 1, "label": "step 1", "metrics": {"valid_loss": 1.75, "probe_loss": 1.5}},
                ]
            }
        )
    )
    RunDir(run).update_meta(chosen_step=1, chosen_rule="lowest valid_loss")
    with open(run / "events.jsonl", "a") as f:
        f.write(
            json.dumps(
                {
                    "event": "SelectionMade",
                    "chosen_step": 1,
                    "verdicts": ["1: improved"],
                    "rule": "lowest valid_loss",
                    "reason": "valid loss fell 30%",
                }
            )
            + "\n"
        )
    with UploadHub() as hub:
        push(run, "me/run-adapter", token="hf_test", endpoint=hub.endpoint, checkpoint=1)
    assert {"adapter_config.json", "adapter_model.safetensors", "parity.json", "README.md"} <= set(hub.files)
    assert json.loads(hub.files["parity.json"])["source"]["checkpoint"] == 1
    card = hub.files["README.md"].decode()
    assert "PeftModel.from_pretrained(base, 'me/run-adapter')" in card
    assert "Chosen checkpoint: step 1 (lowest valid_loss)." in card
    assert "Verdicts: 1: improved." in card and "valid loss fell 30%" in card
    assert "| checkpoint | probe_loss | valid_loss |" in card and "| step 1 | 1.5 | 1.75 |" in card


def test_push_without_token_is_clear(adapter_gguf, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved login
    with UploadHub() as hub, pytest.raises(ExportError, match="needs a Hugging Face token"):
        push(adapter_gguf, "me/x", endpoint=hub.endpoint)
    assert hub.requests == []


def test_push_refused_and_dropped(adapter_gguf, monkeypatch):
    import huggingface_hub.utils._http as hub_http

    monkeypatch.setattr(hub_http.time, "sleep", lambda s: None)  # the client retries a dropped commit
    before = adapter_gguf.read_bytes()
    with UploadHub(refuse=True) as hub, pytest.raises(ExportError, match="refused the upload.*HTTP 403"):
        push(adapter_gguf, "someone-else/x", token="hf_test", endpoint=hub.endpoint)
    assert hub.files == {}
    with UploadHub(drop_commit=True) as hub, pytest.raises(ExportError, match="did not finish.*run the same push"):
        push(adapter_gguf, "me/x", token="hf_test", endpoint=hub.endpoint)
    assert hub.files == {} and adapter_gguf.read_bytes() == before
    with pytest.raises(ExportError, match="user/name"):
        push(adapter_gguf, "no-slash", token="hf_test")


def test_cli_push_and_quant_errors(adapter_gguf, tiny_llama, tmp_path, monkeypatch, capsys):
    from mlxsft.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["push", str(adapter_gguf), "--repo", "me/x"]) != 0
    err = capsys.readouterr().err
    assert "needs a Hugging Face token" in err and "Traceback" not in err
    run = make_run(tmp_path / "run", tiny_llama, layers=1, steps=(1,))
    assert main(["export", str(run), "--format", "peft", "--quant", "q8_0", "--out", str(tmp_path / "p")]) != 0
    assert "--quant applies to GGUF-based formats" in capsys.readouterr().err
    lora = ["export", str(run), "--format", "gguf-lora", "--quant", "q8_0", "--out", str(tmp_path / "a.gguf")]
    assert main(lora) != 0
    assert "adapter file is float32" in capsys.readouterr().err
    out = tmp_path / "m.gguf"
    assert main(["export", str(run), "--format", "gguf", "--quant", "q8_0", "--out", str(out)]) == 0
    assert json.loads(out.with_name("m.gguf.parity.json").read_text())["dtype"] == "q8_0"
    assert not list(tmp_path.glob("p*")) and not (tmp_path / "a.gguf").exists()


def test_push_reads_offline_mode_when_it_runs_not_at_import(adapter_gguf, monkeypatch):
    """HF_HUB_OFFLINE set now refuses; unset now pushes, even after an offline pull set huggingface_hub's
    import-time constant in this process."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="HF_HUB_OFFLINE is set"):
        push(adapter_gguf, "me/x", token="hf_test", endpoint="http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as a pull with HF_HUB_OFFLINE=1 leaves it
    with UploadHub() as hub:
        assert "me/x" in push(adapter_gguf, "me/x", token="hf_test", endpoint=hub.endpoint)
