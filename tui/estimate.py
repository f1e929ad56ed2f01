"""A rough memory and time estimate for a run, before it starts (`estimate_run`).

Deliberately simple, from the model's config.json and the recipe alone (no MLX):

- parameters: embeddings + per block (attention q/k/v/o, gated MLP, norms) + head;
- trainable: LoRA adds rank x (in + out) per targeted projection per adapted block;
  full fine-tuning trains everything;
- memory: base weights at their stored width (fp32 on the CPU backend, the
  checkpoint's dtype elsewhere, bits/8 + scales when quantized), plus 16 bytes per
  trainable parameter (fp32 weight, gradient and two Adam moments), plus activations
  kept for the backward pass, about B x T x (16 h + 3 I) x 4 bytes per block (one
  block's worth with gradient checkpointing), plus the chunked cross-entropy logits;
- time: training FLOPs (6 N per token for full fine-tuning, 4 N for adapters, whose
  weight gradients are skipped) over an assumed device rate, or, better, the tokens/s a
  finished run of the same model measured on this machine.

It is a planning aid, shown as such; `mlxsft models fit` is the measured version.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

from mlxsft.config import Recipe

ASSUMED_FLOPS = {"cpu": 5e10, "gpu": 8e12}  # sustained training FLOP/s, rough
_TARGET_SHAPES = {  # (in, out) per projection, in units of (hidden, kv width, intermediate)
    "q_proj": ("h", "q"),
    "k_proj": ("h", "kv"),
    "v_proj": ("h", "kv"),
    "o_proj": ("q", "h"),
    "gate_proj": ("h", "i"),
    "up_proj": ("h", "i"),
    "down_proj": ("i", "h"),
}


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    dtype_bytes: int

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        cfg = config.get("text_config", config)
        hidden = int(cfg["hidden_size"])
        heads = int(cfg.get("num_attention_heads", 1))
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
        return cls(
            hidden=hidden,
            layers=int(cfg["num_hidden_layers"]),
            intermediate=int(cfg.get("intermediate_size", 4 * hidden)),
            vocab=int(cfg["vocab_size"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            tied=bool(cfg.get("tie_word_embeddings", False)),
            dtype_bytes=4 if "32" in dtype else 2,
        )

    def width(self, kind: str) -> int:
        return {
            "h": self.hidden,
            "q": self.heads * self.head_dim,
            "kv": self.kv_heads * self.head_dim,
            "i": self.intermediate,
        }[kind]

    def block_parameters(self) -> int:
        return (
            sum(self.width(a) * self.width(b) for a, b in _TARGET_SHAPES.values()) + 2 * self.hidden
        )

    def parameters(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.block_parameters() + self.hidden


@dataclass(frozen=True)
class RunEstimate:
    parameters: int
    trainable: int
    memory_gb: float
    steps: int
    tokens_per_step: int
    seconds: float
    basis: str  # how the time was estimated, said plainly

    def describe(self) -> str:
        # adapters add their parameters to the model (as the trainer counts them)
        total = (
            self.parameters
            if self.trainable >= self.parameters
            else self.parameters + self.trainable
        )
        share = 100 * self.trainable / max(total, 1)
        return (
            f"~{total / 1e6:,.1f}M parameters, {self.trainable / 1e6:,.2f}M trainable "
            f"({share:.2f}%)\n"
            f"memory ~{self.memory_gb:.2f} GB peak\n"
            f"{self.steps} steps x ~{self.tokens_per_step:,} tokens: "
            f"~{format_duration(self.seconds)}\n"
            f"({self.basis}; rough)"
        )


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def read_shape(model_dir: Path) -> ModelShape | None:
    try:
        return ModelShape.from_config(json.loads((Path(model_dir) / "config.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trainable_parameters(shape: ModelShape, recipe: Recipe) -> int:
    if recipe.method == "full":
        return shape.parameters()
    layers = (
        shape.layers if recipe.lora.layers == "all" else min(int(recipe.lora.layers), shape.layers)
    )
    per_block = 0
    for target in recipe.lora.targets:
        dims = _TARGET_SHAPES.get(target.rsplit(".", 1)[-1])
        if dims:
            a, b = (shape.width(d) for d in dims)
            per_block += recipe.lora.rank * (a + b) + (b if recipe.method == "dora" else 0)
    return layers * per_block


def _weight_bytes(shape: ModelShape, recipe: Recipe) -> float:
    n = shape.parameters()
    if recipe.quantize.bits:
        # packed weights plus an fp16 scale and bias per group
        return n * (recipe.quantize.bits / 8 + 4 / recipe.quantize.group_size)
    on_cpu = platform.system() != "Darwin"
    width = (
        4
        if recipe.train.dtype == "float32" or (recipe.train.dtype == "auto" and on_cpu)
        else shape.dtype_bytes
    )
    return n * width


def estimate_run(
    shape: ModelShape,
    recipe: Recipe,
    num_rows: int,
    mean_tokens: float,
    measured_tokens_per_second: float | None = None,
) -> RunEstimate:
    """Rough peak memory and wall time of `recipe` on a model of `shape` over `num_rows` rows."""
    t = recipe.train
    seq = min(max(mean_tokens, 1.0), t.max_seq_length)
    rows_per_step = t.batch_size * t.grad_accumulation
    tokens_per_step = int(rows_per_step * seq)
    if t.iters is not None:
        steps = t.iters
    else:
        batches = max(1, -(-num_rows // t.batch_size))
        steps = max(1, int((t.epochs or 1.0) * batches / t.grad_accumulation + 0.999))
    params = shape.parameters()
    trainable = trainable_parameters(shape, recipe)
    block_acts = t.batch_size * t.max_seq_length * (16 * shape.hidden + 3 * shape.intermediate) * 4
    act_blocks = 1 + (shape.layers**0.5 if t.grad_checkpoint else shape.layers)
    logits = t.batch_size * min(t.max_seq_length, 1024) * shape.vocab * 4 * 2
    memory = _weight_bytes(shape, recipe) + 16 * trainable + block_acts * act_blocks + logits
    if measured_tokens_per_second:
        seconds = steps * tokens_per_step / measured_tokens_per_second
        basis = (
            f"at {measured_tokens_per_second:,.0f} tok/s measured by an earlier run of this model"
        )
    else:
        device = "gpu" if platform.system() == "Darwin" else "cpu"
        flops_per_token = (6 if recipe.method == "full" else 4) * params
        seconds = steps * tokens_per_step * flops_per_token / ASSUMED_FLOPS[device]
        basis = f"assuming {ASSUMED_FLOPS[device] / 1e9:,.0f} GFLOP/s on the {device}"
    return RunEstimate(params, trainable, memory / 1e9, steps, tokens_per_step, seconds, basis)
