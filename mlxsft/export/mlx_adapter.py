"""The mlx-lm adapter format: `adapter_config.json` + `adapters.safetensors`, as mlx-lm loads them.

`mlx_lm.generate --model BASE --adapter-path OUT` loads the folder. The run's own adapter
files are copied (the config gains the base model's path), and the parity check loads
the copy back onto the base.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .parity import Candidate, ReferenceLogits, trained_reference
from .pipeline import ExportOptions, Job, export_run
from .safetensors_info import stored_dtype
from .source import AdapterSource, label, load_trained
from .staging import PARITY_FILE, write_json


class MlxAdapterFormat:
    name = "mlx"
    single_file = False
    parity_names = (PARITY_FILE,)

    def plan(self, job: Job) -> str:
        return f"Exporting the mlx-lm adapter of {job.source.run.path} ({label(job.source)}) to {job.out}"

    def reference(self, job: Job) -> ReferenceLogits:
        return trained_reference(job.source)

    def write(self, job: Job, path: Path) -> str:
        source = job.source
        write_json(path / "adapter_config.json", dict(source.adapter_config) | {"model": str(source.base_path)})
        shutil.copyfile(source.folder / "adapters.safetensors", path / "adapters.safetensors")
        return f"Wrote {job.out} (mlx_lm.generate --model {source.base_path} --adapter-path {job.out})"

    def load(self, path: Path, source: AdapterSource) -> Candidate:
        model = load_trained(source, adapter_folder=path).model
        return Candidate(model, stored_dtype(path / "adapters.safetensors"))


MLX = MlxAdapterFormat()


def export_mlx_adapter(
    run_dir: str | Path, out: str | Path, *, checkpoint=None, force: bool = False, verify: bool = True
) -> Path:
    """Copy the chosen adapter as an mlx-lm adapter folder; check it reloads to the same logits."""
    return export_run(MLX, run_dir, out, checkpoint=checkpoint, force=force, verify=verify, options=ExportOptions())
