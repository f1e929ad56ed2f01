"""The run directory: one folder that describes a run, so resume, eval and export need nothing else.

Layout:
    RUN/recipe.yaml              the resolved recipe (every key explicit)
    RUN/run.json                 status, resolved model path, adapter config, best step
    RUN/adapter_config.json      mlx-lm adapter config (so `mlx_lm.generate --adapter-path RUN` works)
    RUN/adapters.safetensors     the latest checkpoint's trainable weights
    RUN/events.jsonl             the event stream
    RUN/checkpoints/step-NNNNNNN/{adapters.safetensors, optimizer.safetensors, trainer_state.json}

Every write is atomic: a temp file (or folder) beside the target, fsync, then rename.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .config import Recipe, dump_recipe, load_recipe
from .errors import MlxsftError
from .safeio import atomic_write_text, fsync_dir, read_json, require_creatable, swap_into_place, write_guard

CHECKPOINT_PREFIX = "step-"


class RunDir:
    """Paths and small metadata files of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    recipe_file = property(lambda self: self.path / "recipe.yaml")
    meta_file = property(lambda self: self.path / "run.json")
    events_file = property(lambda self: self.path / "events.jsonl")
    adapter_config_file = property(lambda self: self.path / "adapter_config.json")
    adapters_file = property(lambda self: self.path / "adapters.safetensors")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    chat_template_file = property(lambda self: self.path / "chat_template.jinja")

    def exists(self) -> bool:
        return self.recipe_file.is_file()

    def require_new(self) -> None:
        if self.exists():
            raise MlxsftError(
                "this run directory already holds a run. Resume it with `mlxsft train --resume "
                f"{self.path}`, or choose another output (--set output=...).",
                path=str(self.path),
            )

    def require_existing(self) -> None:
        if not self.exists():
            raise MlxsftError("not a run directory (no recipe.yaml); give the folder a run wrote.", path=str(self.path))

    def require_creatable(self) -> None:
        """Refuse a new run here before any work: a file in the way, or a run already here."""
        if self.path.exists() and not self.path.is_dir():
            raise MlxsftError(
                "the output is a file, not a folder; choose another output (--set output=...).", path=str(self.path)
            )
        require_creatable(self.path, MlxsftError, "the run folder")
        self.require_new()

    def create(self, recipe: Recipe) -> None:
        self.require_creatable()
        with write_guard(self.path, "the run folder", error=MlxsftError):
            self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.recipe_file, dump_recipe(recipe))

    def save_chat_template(self, template) -> None:
        """Keep the chat template the run trains with, so every export carries it unchanged."""
        if isinstance(template, str) and template:
            atomic_write_text(self.chat_template_file, template)

    def chat_template(self) -> str | None:
        """The chat template the run trained with (None for runs without one)."""
        path = self.chat_template_file
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def load_recipe(self) -> Recipe:
        self.require_existing()
        return load_recipe(self.recipe_file)

    def read_meta(self) -> dict:
        if not self.meta_file.is_file():
            return {}
        return read_json(self.meta_file, MlxsftError, "the run's run.json")

    def update_meta(self, **fields) -> dict:
        meta = self.read_meta() | fields
        atomic_write_text(self.meta_file, json.dumps(meta, indent=2))
        return meta

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:07d}"

    def checkpoint_steps(self) -> list[int]:
        """Steps of complete checkpoints (temp folders of an interrupted save are ignored)."""
        if not self.checkpoints_dir.is_dir():
            return []
        steps = []
        for child in self.checkpoints_dir.iterdir():
            name = child.name
            if name.startswith(CHECKPOINT_PREFIX) and (child / "trainer_state.json").is_file():
                steps.append(int(name[len(CHECKPOINT_PREFIX) :]))
        return sorted(steps)

    def latest_checkpoint(self) -> Path | None:
        steps = self.checkpoint_steps()
        return self.checkpoint_dir(steps[-1]) if steps else None

    def new_checkpoint_staging(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.checkpoints_dir, prefix=".staging-"))

    def commit_checkpoint(self, staging: Path, step: int) -> Path:
        """Rename a fully written staging folder into place as step N's checkpoint."""
        for f in staging.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        target = self.checkpoint_dir(step)
        # a resumed run re-saving a step swaps the new folder in atomically
        swap_into_place(staging, target)
        fsync_dir(self.checkpoints_dir)
        return target

    def clean_staging(self) -> list[Path]:
        """Remove the staging folders of checkpoint saves that were killed; return them."""
        patterns = (".staging-*", ".old-*", f".{CHECKPOINT_PREFIX}*.old-*")  # the last two: a swap's leftovers
        found = sorted(p for pattern in patterns for p in self.checkpoints_dir.glob(pattern))
        for child in found:
            shutil.rmtree(child, ignore_errors=True)
        return found
