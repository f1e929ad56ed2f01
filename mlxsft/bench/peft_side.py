"""Time PyTorch + PEFT on the same work: what a Linux CPU user would otherwise pick.

It runs as a PyTorch user would run it: the runner starts it without this project's
OpenBLAS preload (which would replace the BLAS PyTorch calls and slow it about 4x),
and it uses `torch.set_num_threads(cores)` with PyTorch's own BLAS.

Same model folder (loaded by transformers), same LoRA shape (PEFT LoraConfig with
the same rank, alpha, targets and layers), the same batches as this project plans
(so the comparison is about the compute, not the batching), AdamW, eager PyTorch
with HF's own loss (`labels` with -100 on untrained positions).
"""

from __future__ import annotations

import tempfile
import time

from ..errors import MlxsftError
from ..rundir import RunDir
from ..train.prepare import prepare
from .ours import spec_to_recipe
from .sideinfo import cores, torch_side_info
from .spec import BenchResult, BenchSpec


def _batches(spec: BenchSpec):
    """This project's batches for the spec, as numpy (no MLX work beyond loading)."""
    recipe = spec_to_recipe(spec)
    with tempfile.TemporaryDirectory() as tmp:
        src = prepare(recipe, RunDir(tmp)).train_src
        count = spec.warmup + spec.steps
        plan = [
            (epoch, i)
            for epoch in range(count // max(src.batches_per_epoch(), 1) + 1)
            for i in range(src.batches_per_epoch())
        ][:count]
        return [src.batch(epoch, i) for epoch, i in plan]


def run_peft(spec: BenchSpec) -> BenchResult:
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise MlxsftError(f"--against peft needs torch, transformers and peft installed ({exc}).") from None
    import resource

    start = time.perf_counter()
    torch.set_num_threads(cores())
    batches = _batches(spec)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(spec.model, dtype=torch.float32)
    num_layers = model.config.num_hidden_layers
    layers = None if spec.layers == "all" else list(range(num_layers - int(spec.layers), num_layers))
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.targets),
        lora_dropout=0.0,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate, weight_decay=0.0
    )

    def step(batch):
        inputs = torch.from_numpy(batch.inputs).long()
        labels = torch.from_numpy(batch.targets).long().masked_fill(torch.from_numpy(batch.weights == 0), -100)
        attention = torch.from_numpy(batch.segments > 0).long()
        logits = model(input_ids=inputs, attention_mask=attention).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    prepare_s = time.perf_counter() - start
    warmup = []
    for batch in batches[: spec.warmup]:
        start = time.perf_counter()
        step(batch)
        warmup.append(time.perf_counter() - start)
    start = time.perf_counter()
    for batch in batches[spec.warmup :]:
        step(batch)
    seconds = time.perf_counter() - start
    timed = batches[spec.warmup :]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB
    return BenchResult(
        "peft",
        len(timed),
        seconds,
        tokens=sum(b.num_tokens for b in timed),
        trained_tokens=sum(b.num_trained for b in timed),
        padded_positions=sum(b.inputs.size for b in timed),
        peak_memory_gb=peak_gb,
        prepare_s=prepare_s,
        first_step_s=warmup[0] if warmup else 0.0,
        warmup_s=sum(warmup),
        info=torch_side_info(),
        notes=[
            "PyTorch eager + PEFT on this project's batches; peak is the process's max RSS, "
            "not comparable with MLX's allocator peak"
        ],
    )
