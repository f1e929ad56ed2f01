"""Run directories for export tests, built without the trainer.

`make_run` loads a tiny base as a recipe says, attaches adapters, sets them to random
non-zero values (a fresh LoRA has lora_b = 0, which would make every parity check
pass trivially) and saves checkpoints the way the trainer does. `mlx_logits` and
`torch_logits` give the logits the tests compare.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from mlxsft.config import recipe_from_dict
from mlxsft.model import attach_adapters, load_base
from mlxsft.rundir import RunDir
from mlxsft.train.checkpoint import TrainerState, save_checkpoint

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROBE_IDS = [[1, 5, 9, 33, 70, 101, 7, 250, 12, 3], [40, 41, 42, 43, 44, 45]]


def make_run(
    root: Path,
    base: Path,
    *,
    method: str = "lora",
    targets=None,
    layers="all",
    rank: int = 4,
    alpha: float = 8.0,
    bits: int | None = None,
    group_size: int = 64,
    steps=(1, 2),
    seed: int = 0,
    lora_b_std: float = 0.05,
    dtype: str = "auto",
) -> Path:
    """A run dir with a checkpoint per step in `steps` (different random adapters)."""
    recipe = recipe_from_dict(
        {
            "model": str(base),
            "data": "unused",
            "method": method,
            "lora": {
                "rank": rank,
                "alpha": alpha,
                "layers": layers,
                "targets": list(targets or ALL_TARGETS),
            },
            "quantize": {"bits": bits, "group_size": group_size},
            "train": {"dtype": dtype},
        }
    )
    mx.random.seed(seed)
    model, _tok, path, _cfg = load_base(recipe)
    adapter_config = attach_adapters(model, recipe) | {"model": str(path)}
    run = RunDir(root)
    run.create(recipe)
    run.update_meta(model=str(base), model_path=str(path), method=method, status="finished")
    optimizer = optim.AdamW(learning_rate=1e-4)
    optimizer.init(model.trainable_parameters())
    for step in steps:
        randomize_trainable(model, seed * 1000 + step, lora_b_std)
        save_checkpoint(run, model, optimizer, TrainerState(step=step), adapter_config)
    return Path(root)


def randomize_trainable(model, seed: int, lora_b_std: float = 0.05) -> None:
    """Non-zero adapters: random lora_b, DoRA magnitudes moved by ~20%, full weights nudged."""
    rng = np.random.default_rng(seed)
    updates = []
    for name, v in tree_flatten(model.trainable_parameters()):
        noise = mx.array(rng.standard_normal(v.shape).astype(np.float32))
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "lora_b":
            updates.append((name, noise * lora_b_std))
        elif leaf == "m":
            updates.append((name, v * (1 + 0.2 * noise)))
        elif leaf == "lora_a":
            updates.append((name, v))
        else:  # full fine-tune
            updates.append((name, v + 0.01 * noise))
    model.load_weights(updates, strict=False)
    mx.eval(model.parameters())


def mlx_logits(model, ids=PROBE_IDS) -> list[np.ndarray]:
    out = []
    for prompt in ids:
        logits = model(mx.array(prompt)[None])[0].astype(mx.float32)
        out.append(np.array(logits))
    return out


def mlx_reference(base: Path, adapter_dir: Path, ids=PROBE_IDS) -> list[np.ndarray]:
    """Base + adapter through mlx-lm's own loader (independent of mlxsft.export)."""
    from mlx_lm.utils import load

    model, _tok = load(str(base), adapter_path=str(adapter_dir))
    return mlx_logits(model, ids)


def torch_logits(model, ids=PROBE_IDS) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([prompt])).logits[0].float().numpy() for prompt in ids]


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
