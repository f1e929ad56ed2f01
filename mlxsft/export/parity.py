"""Parity: does an artifact, read back into MLX, compute what the trained adapter computes?

The reference is the run's base model with its adapter applied in MLX, as trained.
Each format reads its artifact back into an MLX model (its `load`: PEFT tensors mapped
back, merged safetensors, GGUF tensors un-permuted), and this module compares the
logits on a few fixed probe prompts: max |diff|, max |diff| relative to the
reference's largest logit, and teacher-forced greedy-token agreement. The report is
printed and written as `parity.json`; a mismatch beyond tolerance is an ExportError.

A re-quantized fuse cannot match closely (re-rounding to the same bits), so there the
check is that the fused model kept at least half of the adapter's effect,
`1 - mean|fused - adapter| / mean|base - adapter| >= 0.5` (mlx-lm issue 1172:
re-quantizing can round a small update away). A quantized GGUF is judged against the
f16 export it is quantized from, at its type's tolerances (`gguf_quant.QUANT_TOLERANCES`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..safeio import atomic_write_text
from .source import AdapterSource, load_trained

# Max |logit diff| allowed, relative to the reference's largest |logit|, per stored dtype.
TOLERANCES = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 5e-2}
# A re-quantized fuse must keep at least this share of the adapter's effect on the logits.
MIN_UPDATE_RETAINED = 0.5
MAX_PROBE_TOKENS = 48

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Answer in one short sentence.",
    'Convert to JSON: name Alice, age 31, city Berlin -> {"name": "Alice",',
)
PROBE_CHAT = [{"role": "user", "content": "Say hello and thank the user for their order."}]


@dataclass
class ReferenceLogits:
    """The trained adapter's logits (float32, one (T, V) array per prompt), and the base's."""

    dtype: str  # the reference model's compute dtype: a bfloat16 reference cannot judge 1e-4
    prompts: list[list[int]]
    logits: list[np.ndarray]
    base_logits: list[np.ndarray] | None  # None for a full fine-tune (no base inside the model)


@dataclass
class Candidate:
    """An artifact read back into MLX, and how it stores its weights."""

    model: nn.Module
    dtype: str  # float32, float16, bfloat16, or a GGUF --quant type
    requantized: bool = False  # a fused model re-quantized to the base's bits
    quantized: dict | None = None  # a quantized GGUF's tolerances against the f16 export


@dataclass
class ParityReport:
    format: str
    dtype: str  # how the artifact stores its weights
    passed: bool
    reference_dtype: str = "float32"  # what the trained adapter computes in
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mean_abs_diff: float | None = None
    greedy_agreement: float | None = None
    tolerance: float | None = None
    adapter_effect_max_abs: float | None = None  # how far the adapter moves the base's logits
    update_retained: float | None = None  # re-quantized fuse: share of the adapter's effect kept
    requantized: bool = False
    num_prompts: int = 0
    num_tokens: int = 0
    source: dict = field(default_factory=dict)
    note: str = ""
    skipped: bool = False
    time: float = field(default_factory=time.time)

    def summary(self) -> str:
        if self.skipped:
            return f"parity [{self.format}]: not checked (--no-verify)"
        verdict = "OK" if self.passed else "MISMATCH"
        # The tolerance applies to the relative difference (|Δlogit| / the largest |logit|): say so.
        limit = "" if self.requantized else f" vs relative tolerance {self.tolerance:.0e}"
        against = "" if self.reference_dtype == "float32" else f" vs {self.reference_dtype} reference"
        text = (
            f"parity [{self.format}, {self.dtype}{against}]: max |Δlogit| {self.max_abs_diff:.2e} "
            f"(relative {self.max_rel_diff:.2e}{limit}), "
            f"greedy agreement {self.greedy_agreement:.1%} over {self.num_tokens} tokens "
            f"in {self.num_prompts} prompts"
        )
        if self.adapter_effect_max_abs is not None:
            text += f"; adapter effect {self.adapter_effect_max_abs:.2e}"
        if self.update_retained is not None:
            text += f"; update kept {self.update_retained:.0%} (needs {self.tolerance:.0%})"
        return f"{text} -> {verdict}" + (f" ({self.note})" if self.note else "")

    def failure(self) -> str:
        """What a failed check tells the user, and what to do."""
        if self.reference_dtype == "f16 export":
            return (
                f"the {self.dtype} GGUF strays too far from the f16 export: "
                f"{self.summary()}. Use a wider type (q8_0 or f16)."
            )
        return f"the {self.format} export does not reproduce the trained adapter: {self.summary()}."

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")


def skipped_report(fmt: str, source: AdapterSource) -> ParityReport:
    return ParityReport(format=fmt, dtype="", passed=True, skipped=True, source=source.describe())


# ---------------------------------------------------------------- probes and logits


def probe_prompts(tokenizer) -> list[list[int]]:
    """A few fixed prompts as token ids: plain texts plus one chat-template rendering."""
    prompts = [list(tokenizer.encode(text))[:MAX_PROBE_TOKENS] for text in PROBE_TEXTS]
    try:
        chat = tokenizer.apply_chat_template(PROBE_CHAT, add_generation_prompt=True, tokenize=False)
        prompts.append(list(tokenizer.encode(chat, add_special_tokens=False))[:MAX_PROBE_TOKENS])
    except Exception:  # no chat template (a base model): plain texts are enough
        pass
    return [p for p in prompts if p]


def model_logits(model: nn.Module, prompts: list[list[int]]) -> list[np.ndarray]:
    """(T, V) float32 logits for each prompt, one forward pass each."""
    out = []
    for ids in prompts:
        logits = model(mx.array(ids)[None])[0].astype(mx.float32)  # (T, V)
        mx.eval(logits)
        out.append(np.array(logits))
    return out


def _adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # mlx_lm.tuner imports rich (its trainer's progress bar): imported here, not at the top,
    # so importing the export wing keeps the core free of UI libraries (tests/test_headless.py)
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (LoRALinear, DoRALinear))]


def base_view_logits(model: nn.Module, prompts: list[list[int]]) -> list[np.ndarray] | None:
    """Logits of the base alone: swap each LoRA/DoRA layer for its wrapped linear, then back."""
    adapters = _adapter_modules(model)
    if not adapters:
        return None
    model.update_modules(tree_unflatten([(n, m.linear) for n, m in adapters]))
    try:
        return model_logits(model, prompts)
    finally:
        model.update_modules(tree_unflatten(adapters))


def trained_reference(source) -> ReferenceLogits:
    """Probe logits of the trained adapter the export starts from (the parity reference)."""
    trained = load_trained(source)
    return reference_logits(trained.model, trained.tokenizer)


def reference_logits(model: nn.Module, tokenizer) -> ReferenceLogits:
    prompts = probe_prompts(tokenizer)
    logits = model_logits(model, prompts)
    return ReferenceLogits(compute_dtype(model), prompts, logits, base_view_logits(model, prompts))


def compute_dtype(model: nn.Module) -> str:
    """The floating dtype holding most of a model's parameters (quantized scales included)."""
    sizes: dict[str, int] = {}
    for _, v in tree_flatten(model.parameters()):
        if mx.issubdtype(v.dtype, mx.floating):
            name = str(v.dtype).removeprefix("mlx.core.")
            sizes[name] = sizes.get(name, 0) + v.size
    return max(sizes, key=sizes.get) if sizes else "float32"


# ---------------------------------------------------------------- comparison


def compare(
    reference: ReferenceLogits,
    candidate: list[np.ndarray],
    *,
    fmt: str,
    dtype: str,
    source: AdapterSource | None = None,
    requantized: bool = False,
    quantized: dict | None = None,
) -> ParityReport:
    """Compare candidate logits with the reference; decide pass/fail.

    `quantized` ({max_rel_diff, min_greedy}): a quantized artifact, judged against the
    f16 export it was quantized from at those tolerances.
    """
    ref = np.concatenate(reference.logits)  # (sum T, V)
    cand = np.concatenate(candidate)
    diff = np.abs(cand - ref)
    scale = max(float(np.abs(ref).max()), 1e-6)
    report = ParityReport(
        format=fmt,
        dtype=dtype,
        passed=False,
        reference_dtype=reference.dtype,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        max_rel_diff=float(diff.max()) / scale,
        greedy_agreement=float((cand.argmax(-1) == ref.argmax(-1)).mean()),
        num_prompts=len(reference.prompts),
        num_tokens=int(ref.shape[0]),
        source=source.describe() if source else {},
    )
    effect = None
    if reference.base_logits is not None:
        effect = np.abs(np.concatenate(reference.base_logits) - ref)
        report.adapter_effect_max_abs = float(effect.max())
    if quantized is not None:
        return _judge_quantized(report, quantized)
    if requantized:
        report.requantized, report.tolerance = True, MIN_UPDATE_RETAINED
        if effect is None or effect.mean() == 0:
            report.passed, report.note = True, "the adapter does not change the logits"
        else:
            report.update_retained = 1.0 - float(diff.mean() / effect.mean())
            report.passed = report.update_retained >= MIN_UPDATE_RETAINED
            if not report.passed:
                report.note = (
                    "re-quantizing the fused weights erased most of the fine-tune; "
                    "fuse with --dequantize (or export --format hf) instead"
                )
        return report
    # the coarser of the artifact's storage and the reference's compute precision
    report.tolerance = max(TOLERANCES.get(d, TOLERANCES["bfloat16"]) for d in (dtype, reference.dtype))
    report.passed = report.max_rel_diff <= report.tolerance
    if report.adapter_effect_max_abs == 0:
        report.note = "the adapter does not change the logits (an untrained adapter?)"
    return report


def _judge_quantized(report: ParityReport, tol: dict) -> ParityReport:
    report.reference_dtype = "f16 export"
    report.tolerance = tol["max_rel_diff"]
    report.passed = report.max_rel_diff <= tol["max_rel_diff"] and report.greedy_agreement >= tol["min_greedy"]
    report.note = f"greedy agreement needs >= {tol['min_greedy']:.0%}"
    return report


def check_artifact(
    reference: ReferenceLogits,
    candidate: Candidate,
    *,
    fmt: str,
    source: AdapterSource,
    parity_path: Path,
) -> ParityReport:
    """Compare, print and write the parity report (the caller decides what a failure means)."""
    logits = model_logits(candidate.model, reference.prompts)
    report = compare(
        reference,
        logits,
        fmt=fmt,
        dtype=candidate.dtype,
        source=source,
        requantized=candidate.requantized,
        quantized=candidate.quantized,
    )
    print(report.summary())
    report.write(parity_path)
    return report
