"""Time mlx-lm's own trainer (`mlx_lm.tuner.trainer.train`) on the same work.

Its public API is used as `mlx_lm.lora` uses it: ChatDataset with the prompt masked,
CacheDataset, `linear_to_lora_layers` with the same keys, rank and scale, and its
`train` loop; a callback reads its per-step reports, and a wrapper around its batch
iterator counts the positions it processes (padding included).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim

from ..data.splits import resolve_data_files
from ..model import lora_parameters, resolve_targets
from .ours import spec_to_recipe
from .sideinfo import mlx_side_info
from .spec import BenchResult, BenchSpec


class _Reports:
    """mlx-lm TrainingCallback: per-step timing after the warmup steps."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.seconds = 0.0
        self.trained = 0
        self.peak = 0.0
        self.warmup_steps: list[float] = []

    def on_train_loss_report(self, info: dict) -> None:
        if info["iteration"] <= self.warmup:
            self.warmup_steps.append(1.0 / info["iterations_per_second"])
        if info["iteration"] == self.warmup:
            mx.reset_peak_memory()
        elif info["iteration"] > self.warmup:
            step_seconds = 1.0 / info["iterations_per_second"]
            self.seconds += step_seconds
            self.trained += round(info["tokens_per_second"] * step_seconds)
            self.peak = max(self.peak, info["peak_memory"])

    def on_val_loss_report(self, info: dict) -> None:
        pass


def run_mlx_lm(spec: BenchSpec) -> BenchResult:
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import TrainingArgs, iterate_batches, train
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    start = time.perf_counter()
    mx.random.seed(spec.seed)
    model, tokenizer = load(spec.model)
    recipe = spec_to_recipe(spec)
    model.freeze()
    num_layers = len(model.layers) if spec.layers == "all" else int(spec.layers)
    params = lora_parameters(recipe.lora, resolve_targets(model, list(spec.targets)))
    linear_to_lora_layers(model, num_layers, params, use_dora=spec.method == "dora")
    rows = [
        json.loads(line)
        for line in Path(resolve_data_files(recipe.data)["train"]).read_text().splitlines()
        if line.strip()
    ]
    dataset = CacheDataset(ChatDataset(rows, tokenizer, mask_prompt=True))
    positions = []

    def counting_batches(**kwargs):
        for batch, lengths in iterate_batches(**kwargs):
            positions.append((batch.shape[0] * (batch.shape[1] - 1), int(lengths[:, 1].sum().item()) - batch.shape[0]))
            yield batch, lengths

    reports = _Reports(spec.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArgs(
            batch_size=spec.batch_size,
            iters=spec.warmup + spec.steps,
            steps_per_report=1,
            steps_per_eval=10**9,
            steps_per_save=10**9,
            max_seq_length=spec.max_seq_length,
            adapter_file=str(Path(tmp) / "adapters.safetensors"),
            grad_checkpoint=spec.grad_checkpoint,
        )
        optimizer = optim.AdamW(learning_rate=spec.learning_rate, weight_decay=0.0)
        prepare_s = time.perf_counter() - start
        train(model, optimizer, dataset, None, args=args, iterate_batches=counting_batches, training_callback=reports)
    timed = positions[spec.warmup : spec.warmup + spec.steps]
    return BenchResult(
        "mlx-lm",
        spec.steps,
        reports.seconds,
        tokens=sum(t for _, t in timed),
        trained_tokens=reports.trained,
        padded_positions=sum(p for p, _ in timed),
        peak_memory_gb=reports.peak,
        prepare_s=prepare_s,
        first_step_s=reports.warmup_steps[0] if reports.warmup_steps else 0.0,
        warmup_s=sum(reports.warmup_steps),
        info=mlx_side_info(),
        notes=["mlx-lm ChatDataset(mask_prompt=True): trains the last assistant turn only"],
    )
