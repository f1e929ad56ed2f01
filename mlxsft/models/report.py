"""The answer `mlxsft models fit` gives: fits / tight / does not fit, with the numbers behind it.

The verdict compares the peak (measured when there is a measurement, else estimated) with
the memory a training process may use here: under 80% "fits", up to 100% "tight", above
"does not fit". Speed: tokens/s = UTILIZATION x timed matmul FLOP/s / FLOPs per token;
UTILIZATION is the share of the raw matmul rate that training steps reached in our
measurements (0.3-1.2, median near 0.6, on a 2-core CPU with OpenBLAS), so the figure is a
rough guide and `--measure` gives the real one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..store import human_bytes as hb
from .fit import FitEstimate, FitSettings, estimate_fit
from .info import human_count
from .measure import MachineMemory, Measured, machine_memory, matmul_flops, measure_fit

UTILIZATION = 0.5
FITS_BELOW = 0.8  # share of the budget; up to 1.0 the run is "tight"


@dataclass(frozen=True)
class FitReport:
    estimate: FitEstimate
    measured: Measured | None
    machine: MachineMemory
    matmul_flops_per_s: float | None

    @property
    def peak_bytes(self) -> int:
        return self.measured.peak_bytes if self.measured else self.estimate.memory.total

    @property
    def verdict(self) -> str:
        return verdict(self.peak_bytes, self.machine.budget_bytes)

    @property
    def estimated_tokens_per_second(self) -> float | None:
        if not self.matmul_flops_per_s:
            return None
        return UTILIZATION * self.matmul_flops_per_s / self.estimate.flops_per_token


def verdict(peak: int, budget: int | None) -> str:
    if not budget:
        return "unknown (this machine's memory could not be read)"
    share = peak / budget
    if share <= FITS_BELOW:
        return "fits"
    return "tight" if share <= 1.0 else "does not fit"


def build_report(path: Path, settings: FitSettings, measure: bool = False, steps: int = 4) -> FitReport:
    """Estimate, optionally measure, and read this machine's memory and matmul speed."""
    estimate = estimate_fit(path, settings)
    measured = measure_fit(path, settings, steps) if measure else None
    dtype = estimate.compute_dtype.split()[0]
    if dtype not in ("float32", "float16", "bfloat16"):
        dtype = "float32"
    flops = None if os.environ.get("MLXSFT_FIT_NO_MATMUL") else matmul_flops(dtype)
    return FitReport(estimate, measured, machine_memory(), flops)


def _flops(n: float) -> str:
    for div, unit in ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP")):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n:.0f} FLOP"


def _run_lines(est: FitEstimate) -> list[str]:
    s = est.settings
    method = (
        s.method
        if s.method == "full"
        else (f"{s.method} rank {s.rank} on {', '.join(est.targets)} ({s.layers} layers)")
    )
    quant = f", base quantized to {s.quantize_bits} bits" if s.quantize_bits else ""
    share = 100 * est.trainable_parameters / max(est.base_parameters, 1)
    tokens = f"{s.rows} x {s.seq} = {s.rows * s.seq:,} tokens per step"
    checkpoint = "; gradient checkpointing" if s.grad_checkpoint else ""
    return [
        f"Model        {est.path} ({est.shape.num_layers} layers, hidden "
        f"{est.shape.hidden_size}, {human_count(est.base_parameters)} parameters)",
        f"Run          {method}{quant}",
        f"             {human_count(est.trainable_parameters)} trainable ({share:.2f}% of the "
        f"base); {tokens}; compute dtype {est.compute_dtype}{checkpoint}",
    ]


def _memory_lines(est: FitEstimate) -> list[str]:
    m, tokens = est.memory, est.settings.rows * est.settings.seq
    lines = [
        f"Estimate     peak {hb(m.total)}",
        f"  weights      {hb(m.weights):>9}",
        f"  trainable    {hb(m.trainable):>9}  (weights, gradients, optimizer moments)",
        f"  activations  {hb(m.activations):>9}  (kept for the backward pass, {tokens:,} tokens)",
        f"  attention    {hb(m.attention):>9}  (softmax probabilities; grow with length squared)",
        f"  LM head      {hb(m.head):>9}  (fp32 logits at trained positions, and gradients)",
    ]
    if m.dora:
        lines.append(f"  DoRA         {hb(m.dora):>9}  (outputs before the magnitude scaling)")
    return lines


def _verdict_lines(report: FitReport) -> list[str]:
    machine, peak = report.machine, report.peak_bytes
    lines = []
    if machine.budget_bytes:
        total = f" of {hb(machine.total_bytes)}" if machine.total_bytes else ""
        lines.append(f"Machine      {hb(machine.budget_bytes)}{total} ({machine.description})")
        share = f": {hb(peak)} is {peak / machine.budget_bytes:.0%} of {hb(machine.budget_bytes)}"
    else:
        lines.append(f"Machine      {machine.description}")
        share = ""
    lines.append(f"Verdict      {report.verdict}{share}")
    if report.verdict in ("tight", "does not fit"):
        lines.append(
            "             to use less: --grad-checkpoint, --quantize 4, fewer "
            "--batch-tokens, a shorter --seq-length, or --layers N"
        )
    return lines


def format_report(report: FitReport) -> str:
    est, measured = report.estimate, report.measured
    lines = _run_lines(est) + _memory_lines(est)
    if measured is not None:
        error = (est.memory.total - measured.peak_bytes) / max(measured.peak_bytes, 1)
        lines.append(
            f"Measured     peak {hb(measured.peak_bytes)} over {measured.steps} compiled steps "
            f"(estimate {error:+.0%}); {measured.tokens_per_second:,.0f} tokens/s "
            f"({measured.step_seconds:.2f} s/step)"
        )
    lines += _verdict_lines(report)
    tps = report.estimated_tokens_per_second
    if tps is not None:
        lines.append(
            f"Speed        ~{tps:,.0f} tokens/s estimated = {UTILIZATION} x "
            f"{_flops(report.matmul_flops_per_s)}/s (timed matmul) / "
            f"{_flops(est.flops_per_token)} per token"
        )
        lines.append(f"             FLOPs per token = {est.flops_formula}")
    lines += [f"Note         {n}" for n in est.notes]
    return "\n".join(lines)
