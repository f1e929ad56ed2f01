"""MLX adapter export, checkpoint choice, bad input, `mlxsft verify`, and the CLI handlers."""

import argparse
import json

import mlx.core as mx
import pytest

from mlxsft.config import recipe_from_dict
from mlxsft.export import ExportError, export_mlx_adapter, export_peft, verify_export
from mlxsft.export.commands import add_commands, parse_size
from mlxsft.rundir import RunDir

from .export_fixtures import make_run, max_abs_diff, mlx_logits, mlx_reference


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    """A LoRA run with checkpoints at steps 1 and 2 (different adapters)."""
    return make_run(tmp_path_factory.mktemp("mlx") / "run", tiny_llama, layers=1, steps=(1, 2))


def test_mlx_adapter_loads_with_mlx_lm_and_matches(tiny_llama, run, tmp_path):
    from mlx_lm.utils import load

    out = export_mlx_adapter(run, tmp_path / "adapter")
    assert {p.name for p in out.iterdir()} == {
        "adapter_config.json",
        "adapters.safetensors",
        "parity.json",
    }
    model, _tok = load(str(tiny_llama), adapter_path=str(out))
    assert max_abs_diff(mlx_reference(tiny_llama, run), mlx_logits(model)) < 1e-6
    assert json.loads((out / "adapter_config.json").read_text())["model"] == str(tiny_llama)


def test_checkpoint_option_picks_that_step(tiny_llama, run, tmp_path):
    out = export_mlx_adapter(run, tmp_path / "step1", checkpoint="1")
    step1 = mlx_reference(tiny_llama, RunDir(run).checkpoint_dir(1))
    latest = mlx_reference(tiny_llama, run)
    assert max_abs_diff(step1, latest) > 1e-2  # the two checkpoints differ
    assert max_abs_diff(step1, mlx_reference(tiny_llama, out)) < 1e-6
    assert json.loads((out / "parity.json").read_text())["source"]["checkpoint"] == 1


def test_bad_inputs_are_clear_errors(tiny_llama, run, tmp_path):
    empty = RunDir(tmp_path / "empty")
    empty.create(recipe_from_dict({"model": str(tiny_llama), "data": "unused"}))
    with pytest.raises(ExportError, match="no checkpoint yet"):
        export_mlx_adapter(empty.path, tmp_path / "a")
    with pytest.raises(ExportError, match="no checkpoint at step 7; .* steps: 1, 2"):
        export_mlx_adapter(run, tmp_path / "a", checkpoint=7)
    with pytest.raises(ExportError, match="step number"):
        export_mlx_adapter(run, tmp_path / "a", checkpoint="seven")
    with pytest.raises(ExportError, match="no best checkpoint"):
        export_mlx_adapter(run, tmp_path / "a", checkpoint="best")
    with pytest.raises(ExportError, match="not found"):
        export_mlx_adapter(tmp_path / "nope", tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_existing_output_needs_force_and_user_files_survive(run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="--force"):
        export_peft(run, mine)
    with pytest.raises(ExportError, match="does not look like an earlier mlxsft export"):
        export_peft(run, mine, force=True)
    assert (mine / "notes.txt").read_text() == "keep me"

    out = export_peft(run, tmp_path / "peft")
    with pytest.raises(ExportError, match="already exists"):
        export_peft(run, out)
    export_peft(run, out, force=True, checkpoint=1)  # an earlier export is replaced
    assert json.loads((out / "parity.json").read_text())["source"]["checkpoint"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "peft"]  # no temp folders left


def test_failed_parity_writes_nothing(run, tmp_path, monkeypatch):
    from mlxsft.export import parity

    monkeypatch.setitem(parity.TOLERANCES, "float32", -1.0)  # nothing can pass
    with pytest.raises(ExportError, match="does not reproduce"):
        export_mlx_adapter(run, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_verify_detects_a_tampered_export(tiny_llama, run, tmp_path):
    out = export_peft(run, tmp_path / "peft")
    report = verify_export(out, run)
    assert report.passed and report.format == "peft" and report.max_abs_diff < 1e-5
    weights = mx.load(str(out / "adapter_model.safetensors"))
    key = next(k for k in weights if k.endswith("lora_B.weight"))
    weights[key] = weights[key] * 3
    mx.save_safetensors(str(out / "adapter_model.safetensors"), weights, metadata={"format": "pt"})
    with pytest.raises(ExportError, match="does not reproduce"):
        verify_export(out, run)
    assert json.loads((out / "parity.json").read_text())["passed"] is False
    # verifying against another checkpoint than the one exported also fails
    fresh = export_peft(run, tmp_path / "peft2")
    with pytest.raises(ExportError):
        verify_export(fresh, run, checkpoint=1)


def parse(argv):
    parser = argparse.ArgumentParser(prog="mlxsft")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_handlers(tiny_llama, run, tmp_path, capsys):
    for fmt, out in [("peft", "p"), ("mlx", "m"), ("hf", "h"), ("gguf", "g.gguf")]:
        args = parse(["export", str(run), "--format", fmt, "--out", str(tmp_path / out), "--checkpoint", "2"])
        assert args.handler(args) == 0
    args = parse(["fuse", str(run), "--out", str(tmp_path / "f"), "--dtype", "float16"])
    assert args.handler(args) == 0
    assert json.loads((tmp_path / "f" / "config.json").read_text())["dtype"] == "float16"
    for export in ("p", "m", "h", "g.gguf", "f"):
        args = parse(["verify", str(tmp_path / export), "--against", str(run)])
        assert args.handler(args) == 0
    args = parse(
        [
            "import-adapter",
            str(tmp_path / "p"),
            "--base",
            str(tiny_llama),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert args.handler(args) == 0
    assert RunDir(tmp_path / "r").checkpoint_steps() == [0]
    printed = capsys.readouterr().out
    assert "parity [gguf, float16]" in printed and "-> OK" in printed
    args = parse(["export", str(run), "--format", "peft", "--out", str(tmp_path / "x"), "--dtype", "float16"])
    with pytest.raises(ExportError, match="--dtype applies"):
        args.handler(args)
    args = parse(["export", str(run), "--format", "mlx", "--out", str(tmp_path / "nv"), "--no-verify"])
    assert args.handler(args) == 0
    assert json.loads((tmp_path / "nv" / "parity.json").read_text())["skipped"] is True
    assert parse_size("5GB") == 5 * 1024**3 and parse_size("500MB") == 500 * 1024**2


def test_imported_run_can_resume_training(tiny_llama, run, tmp_path):
    """An import is a run: `train --resume` continues from its step-0 checkpoint."""
    from mlxsft.train.run import run_training

    from .conftest import QUICKSTART_DATA

    peft_dir = export_peft(run, tmp_path / "peft")
    from mlxsft.export import import_peft_adapter

    imported = import_peft_adapter(peft_dir, tmp_path / "imp", base=str(tiny_llama), data=str(QUICKSTART_DATA))
    recipe = RunDir(imported).load_recipe()
    recipe.train.iters, recipe.train.batch_size, recipe.train.max_seq_length = 2, 4, 96
    result = run_training(recipe, imported, resume=True)
    assert result.status == "finished" and result.state.step == 2
