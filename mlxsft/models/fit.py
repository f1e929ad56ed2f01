"""Will this training run fit? Peak memory and FLOPs per token, estimated from the architecture.

`estimate_fit` builds the model with lazy weights (nothing is read from disk), applies the
run's dtype, quantization and adapters exactly as training would, and adds up what a
compiled training step of `mlxsft.train.step` holds at its peak:

    peak = frozen weights
         + trainable weights x (1 + 1 gradient + optimizer moments)  # 2 moments: Adam(W)
         + activations = N x b x (L + 1) x (5 d + 5 f + 1.5 (q + 2 kv) + sum of ranks)
         + attention   = N x b x (L + 1) x H x T                     # softmax probabilities
         + LM head     = 4 x 4 B x K x V                             # fp32 logits and grads
         (+ DoRA      = N x b x (L + 1) x sum of the adapted layers' output widths: the output
                        before the magnitude scaling is kept)

N = tokens per micro-batch (rows x T), T = sequence length, b = bytes per activation
value (4 for float32, 2 for bfloat16), L = blocks the backward pass goes through (all for
full fine-tuning, the adapted top blocks for LoRA), d hidden size, f MLP width, q / kv the
query / key-value widths, H query heads, V vocabulary, K = positions whose loss is trained
(the head runs only there, in chunks of at most 256 MB of logits). "L + 1": the block being
differentiated holds about one more block's worth of temporaries. With gradient
checkpointing each block keeps about 5 d values per token and two blocks are live in full.

The coefficients count the arrays MLX keeps for the backward pass of mlx-lm's blocks
(Metal and CPU both run training attention unfused, so the H x T probabilities are kept)
and were checked against `mx.get_peak_memory()` of measured steps (`measure.measure_fit`)
on tiny Llamas (hidden 128-512, 2-12 layers, vocab 1k-8k, T 128-512, CPU, float32): LoRA
within 6%, DoRA and QLoRA 4%, full +1% to +7%, gradient checkpointing -14% to +5%.

Speed, FLOPs per token (printed with the estimate):
    LoRA/DoRA: 4 N_body + 4 V d k + 6 N_trainable + 12 L T q   (frozen base: forward and
               input gradients only; adapters: forward, input and weight gradients)
    full:      6 N_body + 6 V d k                 + 12 L T q
N_body = parameters outside the embedding and LM head, k = trained share of positions,
12 L T q = unfused attention scores and values, forward and backward. Gradient
checkpointing adds one forward: 2 N_body + 4 L T q.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULT_TARGETS, recipe_from_dict
from ..errors import ModelError
from ..model import (
    attach_adapters,
    cast_floating,
    compute_dtype,
    count_parameters,
    is_quantized,
    num_adapted_layers,
    quantize_base,
)
from ..store import read_config, read_source
from ..train.step import gather_trained
from .info import ArchShape, block_linear_layers, build_lazy, recommended_targets

# Values kept per token and block for the backward pass (see the module docstring).
COEF_HIDDEN = 5.0  # block and mid-block residuals, norm outputs (q/k/v and gate/up inputs), o input
COEF_MLP = 5.0  # gate, up, sigmoid(gate), silu(gate), silu(gate) * up
COEF_QKV = 1.5  # q, k, v as attention reads them
COEF_PROBS = 1.0  # softmax probabilities: H x T per token
EXTRA_BLOCKS = 1.0  # temporaries of the block being differentiated
CHECKPOINT_HIDDEN = 5.0  # per token and block with gradient checkpointing, in units of d
HEAD_COPIES = 4  # fp32 logits, log-softmax, probabilities, gradient
COEF_DORA = 1.0  # per adapted layer: its output before DoRA's magnitude scaling
HEAD_CHUNK_BYTES = 256 * 2**20  # the logits budget of mlxsft.train.step.chunk_tokens_for


@dataclass(frozen=True)
class FitSettings:
    """The recipe knobs that decide memory and speed (defaults as in `mlxsft.config`)."""

    method: str = "lora"
    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] | None = None  # None: the model's recommended targets
    layers: int | str = "all"
    batch_tokens: int = 4096
    seq_length: int | None = None  # None: min(batch_tokens, 2048)
    quantize_bits: int | None = None
    group_size: int = 64
    grad_checkpoint: bool = False
    dtype: str = "auto"
    trained_fraction: float = 1.0  # positions whose loss is trained; prompt masking lowers it
    optimizer: str = "adamw"

    @property
    def seq(self) -> int:
        return self.seq_length or min(self.batch_tokens, 2048)

    @property
    def rows(self) -> int:
        return max(1, self.batch_tokens // self.seq)

    def check(self) -> None:
        if self.batch_tokens < 1 or self.seq < 1:
            raise ModelError("--batch-tokens and --seq-length must be at least 1.")
        if self.seq > self.batch_tokens:
            raise ModelError(f"--seq-length ({self.seq}) cannot exceed --batch-tokens ({self.batch_tokens}).")
        if not 0 < self.trained_fraction <= 1:
            raise ModelError(f"--trained-fraction must be in (0, 1], got {self.trained_fraction}.")

    def recipe(self, model_path: Path, targets: tuple[str, ...]):
        """A Recipe carrying these settings (its data section is never read)."""
        lora = {"rank": self.rank, "alpha": self.alpha, "layers": self.layers, "targets": list(targets)}
        train = {
            "batch_size": self.rows,
            "max_seq_length": self.seq,
            "iters": 5,
            "grad_checkpoint": self.grad_checkpoint,
            "dtype": self.dtype,
            "optimizer": self.optimizer,
        }
        return recipe_from_dict(
            {
                "model": str(model_path),
                "data": {"train": "<fit: synthetic batches>"},
                "method": self.method,
                "lora": lora,
                "train": train,
                "quantize": {"bits": self.quantize_bits, "group_size": self.group_size},
            },
            source="mlxsft models fit",
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes at the peak of a training step, by part."""

    weights: int
    trainable: int
    activations: int
    attention: int
    head: int
    dora: int = 0

    @property
    def total(self) -> int:
        parts = (self.weights, self.trainable, self.activations, self.attention, self.head)
        return sum(parts) + self.dora


@dataclass(frozen=True)
class FitEstimate:
    path: Path
    settings: FitSettings
    shape: ArchShape
    targets: tuple[str, ...]
    total_parameters: int  # base and adapters
    trainable_parameters: int
    compute_dtype: str
    memory: MemoryEstimate
    flops_per_token: float
    flops_formula: str
    notes: tuple[str, ...] = field(default=())

    @property
    def base_parameters(self) -> int:
        adapters = 0 if self.settings.method == "full" else self.trainable_parameters
        return self.total_parameters - adapters


def _nbytes(tree) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(tree))


def _prepare_lazy(path: Path, settings: FitSettings, targets: tuple[str, ...]):
    """The model as training holds it (dtype, quantization, adapters), with lazy arrays."""
    recipe = settings.recipe(path, targets)
    model, _ = build_lazy(path)
    cast_floating(model, compute_dtype(recipe.train.dtype))
    if recipe.quantize.bits is not None:
        quantize_base(model, recipe.quantize)
    attach_adapters(model, recipe)
    return model, recipe


def activation_dtype(model):
    """The dtype activations take: that of the blocks' first floating (non-adapter) weight."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    for name, v in tree_flatten(model.layers[0].parameters()):
        adapter = name.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m")  # always fp32
        if mx.issubdtype(v.dtype, mx.floating) and not adapter:
            return v.dtype
    return mx.float32


def backward_depth(model, recipe) -> int:
    """Blocks the backward pass goes through: all for full, the adapted top blocks for LoRA."""
    return len(model.layers) if recipe.method == "full" else num_adapted_layers(model, recipe.lora)


def _adapter_widths(model) -> tuple[int, int]:
    """(sum of adapter ranks, sum of adapted layers' output widths) in one adapted block."""
    rank_sum = out_sum = 0
    for _, module in model.layers[-1].named_modules():  # adapters sit on the last blocks
        if hasattr(module, "lora_b"):
            rank, out_dims = module.lora_b.shape  # (r, out)
            rank_sum, out_sum = rank_sum + rank, out_sum + out_dims
    return rank_sum, out_sum


def trained_positions(rows: int, seq: int, fraction: float) -> int:
    """K: head positions, rounded up as `mlxsft.train.step.gather_trained` rounds them."""
    import numpy as np

    weights = np.zeros((rows, seq), np.float32)
    weights.reshape(-1)[: max(1, round(fraction * rows * seq))] = 1.0
    positions, _, _ = gather_trained(weights, np.zeros_like(weights, dtype=np.int32))
    return len(positions)


def estimate_memory(model, recipe, shape: ArchShape, settings: FitSettings) -> MemoryEstimate:
    b = activation_dtype(model).size
    # blocks below the lowest adapter need no gradient, so nothing of theirs is kept
    L, T, N = backward_depth(model, recipe), settings.seq, settings.rows * settings.seq
    trainable_bytes = _nbytes(model.trainable_parameters())
    weights = _nbytes(model.parameters()) - trainable_bytes
    moments = 1 if recipe.train.optimizer == "sgd" else 2
    rank_sum, out_sum = _adapter_widths(model)
    per_block = (
        COEF_HIDDEN * shape.hidden_size
        + COEF_MLP * shape.intermediate_size
        + COEF_QKV * (shape.q_dim + 2 * shape.kv_dim)
        + rank_sum
    )
    if recipe.train.grad_checkpoint:
        blocks_full, kept = 2.0, L * CHECKPOINT_HIDDEN * shape.hidden_size
    else:
        blocks_full, kept = L + EXTRA_BLOCKS, 0.0
    V = shape.vocab_size
    if shape.logit_softcapping:  # no verified head split: full logits at every position
        k_live = N
    else:
        trained = trained_positions(settings.rows, T, settings.trained_fraction)
        k_live = min(trained, max(64, HEAD_CHUNK_BYTES // (4 * V)))
    dora = N * b * blocks_full * COEF_DORA * out_sum if recipe.method == "dora" else 0
    return MemoryEstimate(
        weights=int(weights),
        trainable=int(trainable_bytes * (2 + moments)),
        activations=int(N * b * (blocks_full * per_block + kept)),
        attention=int(N * b * blocks_full * COEF_PROBS * shape.num_heads * T),
        head=int(HEAD_COPIES * 4 * k_live * V),
        dora=int(dora),
    )


def estimate_flops(shape: ArchShape, total: int, trainable: int, settings: FitSettings) -> tuple[float, str]:
    """FLOPs per token of one training step, and the formula used (for the output)."""
    V, d, L, T = shape.vocab_size, shape.hidden_size, shape.num_layers, settings.seq
    head = V * d
    body = max(total - trainable - head * (1 if shape.tie_word_embeddings else 2), 0)
    k = 1.0 if shape.logit_softcapping else settings.trained_fraction
    attn = 12 * L * T * shape.q_dim
    if settings.method == "full":
        body = max(total - head * (1 if shape.tie_word_embeddings else 2), 0)
        flops = 6 * body + 6 * head * k + attn
        formula = "6·N_body + 6·V·d·k + 12·L·T·q"
    else:
        flops = 4 * body + 4 * head * k + 6 * trainable + attn
        formula = "4·N_body + 4·V·d·k + 6·N_trainable + 12·L·T·q"
    if settings.grad_checkpoint:
        flops += 2 * body + attn / 3
        formula += " + 2·N_body + 4·L·T·q (recompute)"
    return float(flops), formula


def _dtype_name(dtype) -> str:
    return str(dtype).replace("mlx.core.", "")


def _default_targets(path: Path) -> tuple[str, ...]:
    model, _ = build_lazy(path)
    found = recommended_targets(block_linear_layers(model), read_source(path).get("hub_id"))
    return found or tuple(DEFAULT_TARGETS)


def resolve_targets(path: Path, settings: FitSettings) -> tuple[str, ...]:
    return settings.targets or _default_targets(path)


def _quantized_on_cpu(model) -> bool:
    import mlx.core as mx

    return mx.default_device() == mx.cpu and is_quantized(model)


def estimate_fit(path: Path, settings: FitSettings) -> FitEstimate:
    """Estimated peak memory and FLOPs per token for training `path` with `settings`."""
    settings.check()
    shape = ArchShape.from_config(read_config(path), str(path / "config.json"))
    targets = resolve_targets(path, settings)
    model, recipe = _prepare_lazy(path, settings, targets)
    counts = count_parameters(model)
    flops, formula = estimate_flops(shape, counts.total, counts.trainable, settings)
    dtype = compute_dtype(settings.dtype)
    dtype_name = _dtype_name(dtype) if dtype is not None else (f"{_dtype_name(activation_dtype(model))} (the model's)")
    notes = []
    if shape.logit_softcapping:
        notes.append("soft-capped logits: the loss needs full-vocabulary logits at every position")
    if _quantized_on_cpu(model):
        notes.append(
            "quantized matmuls on the CPU backend run several times below the timed "
            "float matmul rate; --measure gives the real speed"
        )
    if settings.trained_fraction == 1.0:
        notes.append(
            "assumes every position is trained; with prompt masking pass "
            "--trained-fraction (e.g. 0.4) for a closer figure"
        )
    return FitEstimate(
        path=path,
        settings=settings,
        shape=shape,
        targets=tuple(targets),
        total_parameters=counts.total,
        trainable_parameters=counts.trainable,
        compute_dtype=dtype_name,
        memory=estimate_memory(model, recipe, shape, settings),
        flops_per_token=flops,
        flops_formula=formula,
        notes=tuple(notes),
    )
