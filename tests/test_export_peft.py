"""PEFT export and import: transformers + peft on PyTorch CPU compute the MLX adapter's logits."""

import json
import shutil

import numpy as np
import pytest

from mlxsft.devmodel import TinyModelSpec, build_tiny_model
from mlxsft.export import (
    ExportError,
    export_peft,
    import_peft_adapter,
    load_trained,
    resolve_source,
)
from mlxsft.export.parity import model_logits
from mlxsft.rundir import RunDir

from .export_fixtures import PROBE_IDS, make_run, max_abs_diff, mlx_reference, torch_logits

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

# (base fixture, method, lora.layers, targets): covers layers_to_transform, attention biases
# (qwen2) and both adapter kinds.
CASES = {
    "llama-lora": ("tiny_llama", "lora", 1, None),
    "llama-dora": ("tiny_llama", "dora", "all", ["q_proj", "v_proj", "down_proj"]),
    "qwen2-lora": ("tiny_qwen_llama3", "lora", "all", None),
    "qwen2-dora": ("tiny_qwen_llama3", "dora", 1, ["q_proj", "k_proj", "v_proj", "o_proj"]),
}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    """(base path, run dir, PEFT export dir, MLX reference logits) for one case."""
    fixture, method, layers, targets = CASES[request.param]
    base = request.getfixturevalue(fixture)
    root = tmp_path_factory.mktemp(request.param)
    run = make_run(root / "run", base, method=method, layers=layers, targets=targets)
    out = export_peft(run, root / "peft")
    return base, run, out, mlx_reference(base, run)


def load_peft(base, adapter_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return peft.PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def test_peft_export_matches_mlx_in_transformers(exported, request):
    base, _run, out, reference = exported
    base_logits = torch_logits(transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32))
    peft_logits = torch_logits(load_peft(base, out))
    assert max_abs_diff(reference, base_logits) > 0.1  # the adapter really changes the model
    diff = max_abs_diff(reference, peft_logits)
    print(f"{request.node.callspec.id}: PEFT in torch vs MLX max abs diff {diff:.2e}")
    assert diff < 1e-3


def test_peft_files_and_config(exported):
    _base, run, out, _ = exported
    source = resolve_source(run)
    config = json.loads((out / "adapter_config.json").read_text())
    params = source.adapter_config["lora_parameters"]
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == params["rank"]
    assert config["lora_alpha"] / config["r"] == pytest.approx(params["scale"])
    assert config["use_dora"] == (source.fine_tune_type == "dora")
    assert config["use_rslora"] is False and config["bias"] == "none" and config["fan_in_fan_out"] is False
    assert config["target_modules"] == sorted(params["keys"])
    expected_layers = None if source.recipe.lora.layers == "all" else [1]
    assert config["layers_to_transform"] == expected_layers
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
    assert json.loads((out / "parity.json").read_text())["passed"] is True


def test_peft_keys_equal_peft_own_state_dict(exported):
    """PEFT only warns about missing keys: the file must hold exactly the keys PEFT itself saves."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors import safe_open

    base, _run, out, _ = exported
    config = json.loads((out / "adapter_config.json").read_text())
    fields = {k: config[k] for k in ("r", "lora_alpha", "target_modules", "layers_to_transform", "use_dora")}
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    own = get_peft_model_state_dict(get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **fields)))
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        ours = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
    assert ours == {k: tuple(v.shape) for k, v in own.items()}


def test_import_round_trips_to_same_mlx_logits(exported, tmp_path):
    base, _run, out, reference = exported
    imported = import_peft_adapter(out, tmp_path / "imported", base=str(base))
    run = RunDir(imported)
    assert run.read_meta()["status"] == "imported"
    assert run.checkpoint_steps() == [0]
    use_dora = json.loads((out / "adapter_config.json").read_text())["use_dora"]
    assert run.load_recipe().method == ("dora" if use_dora else "lora")
    # mlx-lm's own loader reads the imported run like any run dir
    assert max_abs_diff(reference, mlx_reference(base, imported)) < 1e-5
    # and so does the export side (the imported run can be exported again)
    loaded = load_trained(resolve_source(imported))
    assert max_abs_diff(reference, model_logits(loaded.model, PROBE_IDS)) < 1e-5


@pytest.mark.parametrize("use_dora", [False, True])
def test_import_adapter_made_by_peft(tiny_qwen_llama3, tmp_path, use_dora):
    """An adapter PEFT wrote itself (random A and B, rsLoRA, only block 0) imports exactly."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_qwen_llama3), dtype=torch.float32)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=6,
        use_rslora=not use_dora,
        use_dora=use_dora,
        target_modules=["q_proj", "v_proj", "up_proj"],
        layers_to_transform=[0],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config).eval()
    if use_dora:  # move the magnitudes away from ||W|| so they matter
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_magnitude_vector" in name:
                    p.mul_(1.2)
    expected = torch_logits(peft_model)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    run = import_peft_adapter(tmp_path / "peft", tmp_path / "run", base=str(tiny_qwen_llama3))
    loaded = load_trained(resolve_source(run))
    diff = max_abs_diff(expected, model_logits(loaded.model, PROBE_IDS))
    print(f"imported PEFT ({'dora' if use_dora else 'rslora'}) vs torch max abs diff: {diff:.2e}")
    assert diff < 1e-3


def test_import_refuses_mismatched_base(exported, tmp_path):
    base, _run, out, _ = exported
    other = build_tiny_model(tmp_path / "wide", TinyModelSpec(hidden_size=96, num_heads=4, num_kv_heads=2))
    with pytest.raises(ExportError, match="does not match the base model"):
        import_peft_adapter(out, tmp_path / "run", base=str(other))
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]  # no temp left


def test_import_refuses_unsupported_peft_features(exported, tmp_path):
    base, _run, out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    for field, value, message in [
        ("modules_to_save", ["lm_head"], "full modules"),
        ("bias", "all", "biases"),
        ("peft_type", "IA3", "only LoRA and DoRA"),
    ]:
        (bad / "adapter_config.json").write_text(json.dumps(config | {field: value}))
        with pytest.raises(ExportError, match=message):
            import_peft_adapter(bad, tmp_path / "run", base=str(base))
    with pytest.raises(ExportError, match="no adapter_config.json"):
        import_peft_adapter(tmp_path, tmp_path / "run", base=str(base))
    assert not (tmp_path / "run").exists()


def test_full_fine_tune_has_no_peft_export(tiny_llama, tmp_path):
    run = make_run(tmp_path / "run", tiny_llama, method="full", steps=(1,))
    with pytest.raises(ExportError, match="full fine-tune"):
        export_peft(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_peft_export_of_trained_run(tiny_llama, tmp_path):
    """A run the real trainer wrote exports to PEFT and matches in transformers + peft."""
    from mlxsft.config import recipe_from_dict
    from mlxsft.train.run import run_training

    from .conftest import QUICKSTART_DATA

    recipe = recipe_from_dict(
        {
            "model": str(tiny_llama),
            "data": str(QUICKSTART_DATA),
            "output": str(tmp_path / "run"),
            "method": "dora",
            "lora": {"rank": 4, "alpha": 8},
            "train": {
                "iters": 6,
                "batch_size": 4,
                "learning_rate": 5e-3,
                "max_seq_length": 96,
                "steps_per_eval": 0,
                "steps_per_save": 3,
            },
        }
    )
    run_training(recipe)
    out = export_peft(tmp_path / "run", tmp_path / "peft", checkpoint=3)
    reference = mlx_reference(tiny_llama, tmp_path / "run" / "checkpoints" / "step-0000003")
    diff = max_abs_diff(reference, torch_logits(load_peft(tiny_llama, out)))
    print(f"trained DoRA run, PEFT vs MLX max abs diff: {diff:.2e}")
    assert diff < 1e-3
    assert json.loads((out / "parity.json").read_text())["source"]["checkpoint"] == 3
    np.testing.assert_array_less(0, json.loads((out / "parity.json").read_text())["adapter_effect_max_abs"])


def test_module_missing_from_base_checkpoint_is_refused(tiny_llama):
    import mlx.core as mx

    from mlxsft.export.peft import check_modules

    config = json.loads((tiny_llama / "config.json").read_text())
    ok = {"model.layers.0.self_attn.q_proj.lora_a": mx.zeros((64, 4))}
    check_modules(ok, tiny_llama, config)
    with pytest.raises(ExportError, match="PEFT would ignore it"):
        check_modules({"model.layers.0.attn.qkv.lora_a": mx.zeros((64, 4))}, tiny_llama, config)
    with pytest.raises(ExportError, match="output size"):
        check_modules({"model.layers.0.self_attn.k_proj.lora_b": mx.zeros((4, 64))}, tiny_llama, config)
