"""Rewind: with no --checkpoint, export uses the step `mlxsft select` chose, not the last one."""

import shutil

from mlxsft.export import export_mlx_adapter
from mlxsft.rundir import RunDir

from .export_fixtures import make_run, max_abs_diff, mlx_logits, mlx_reference


def test_export_defaults_to_the_chosen_checkpoint(tiny_llama, tmp_path):
    from mlx_lm.utils import load

    run = make_run(tmp_path / "run", tiny_llama, layers=1, steps=(1, 2))
    RunDir(run).update_meta(chosen_step=1)
    chosen = export_mlx_adapter(run, tmp_path / "chosen")
    model, _ = load(str(tiny_llama), adapter_path=str(chosen))
    step1 = mlx_reference(tiny_llama, RunDir(run).checkpoint_dir(1))
    latest = mlx_reference(tiny_llama, run)
    assert max_abs_diff(mlx_logits(model), step1) < 1e-6
    assert max_abs_diff(step1, latest) > 1e-3  # the two checkpoints really differ
    shutil.rmtree(chosen)
    last = export_mlx_adapter(run, tmp_path / "latest", checkpoint="latest")
    model, _ = load(str(tiny_llama), adapter_path=str(last))
    assert max_abs_diff(mlx_logits(model), latest) < 1e-6
