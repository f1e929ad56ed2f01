"""One base model in memory, with each checkpoint's trained weights swapped in and out.

A run's checkpoints share one adapter layout (`adapter_config.json`), so the base is
loaded once, the LoRA/DoRA layers are attached once (mlx-lm's `linear_to_lora_layers`,
as its `load_adapters` does), and a checkpoint is `model.load_weights` of its small
`adapters.safetensors`. The base itself ("step 0") is the freshly attached layers:
LoRA's B and DoRA's update start at zero, so the model computes exactly the base.
For full fine-tunes the checkpoint holds every weight; the base's arrays are kept by
reference and loaded back the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import MlxsftError
from ..token_rows import TRAINABLE_TOKENS, attach_token_rows

ADAPTER_LEAVES = ("lora_a", "lora_b", "m", "rows")  # "rows": trained token rows (token_rows.py)


def read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MlxsftError("this checkpoint has no adapter_config.json.", path=str(folder)) from None
    except json.JSONDecodeError as exc:
        raise MlxsftError(f"adapter_config.json is not valid JSON ({exc.msg}).", path=str(path)) from None


def _layout(config: dict) -> tuple:
    """What must match between checkpoints for one attached model to serve them all."""
    return (
        config.get("fine_tune_type", "lora"),
        config.get("num_layers"),
        json.dumps(config.get("lora_parameters"), sort_keys=True),
        config.get(TRAINABLE_TOKENS),
    )


class CheckpointWeights:
    """Swap trained weights of one run's checkpoints into a single loaded base model."""

    def __init__(self, model: nn.Module, adapter_config: dict):
        from mlx_lm.tuner.utils import linear_to_lora_layers

        self.model = model
        self.config = adapter_config
        self.full = adapter_config.get("fine_tune_type", "lora") == "full"
        if not self.full:
            linear_to_lora_layers(
                model,
                adapter_config["num_layers"],
                adapter_config["lora_parameters"],
                use_dora=adapter_config.get("fine_tune_type") == "dora",
            )
            attach_token_rows(model, adapter_config.get(TRAINABLE_TOKENS) or [])
        params = tree_flatten(model.parameters())
        # References, not copies: load_weights rebinds the model's leaves, these stay the base's.
        self.base = {k: v for k, v in params if self.full or k.rsplit(".", 1)[-1] in ADAPTER_LEAVES}
        mx.eval(list(self.base.values()))
        self.current: str = "base"  # "base" or the folder of the checkpoint in place
        self.loaded: tuple[str, dict[str, mx.array]] | None = None  # the last checkpoint read

    def use_base(self) -> None:
        if self.current != "base":
            self.model.load_weights(list(self.base.items()), strict=False)
            self.current = "base"

    def use(self, folder: Path) -> None:
        """Put the checkpoint in `folder` in place (read from disk once, then kept)."""
        folder = Path(folder)
        if self.current == str(folder):
            return
        if self.loaded is None or self.loaded[0] != str(folder):
            self.loaded = (str(folder), self._read(folder))
        self.use_base()  # weights a checkpoint lacks must be the base's, not the last checkpoint's
        self.model.load_weights(list(self.loaded[1].items()), strict=False)
        mx.eval(self.model.parameters())
        self.current = str(folder)

    def _read(self, folder: Path) -> dict[str, mx.array]:
        if _layout(read_adapter_config(folder)) != _layout(self.config):
            raise MlxsftError(
                "this checkpoint's adapter_config.json differs from the run's first checkpoint's; "
                "a run folder must hold checkpoints of one run only.",
                path=str(folder),
            )
        try:
            weights = mx.load(str(folder / "adapters.safetensors"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise MlxsftError(f"cannot read adapters.safetensors ({exc}).", path=str(folder)) from None
        bad = [k for k, v in weights.items() if k not in self.base or v.shape != self.base[k].shape]
        if bad:
            raise MlxsftError(
                f"{len(bad)} weights in adapters.safetensors are missing from the model or differ"
                f" (e.g. {bad[0]}); was it trained on another base model?",
                path=str(folder),
            )
        return weights
