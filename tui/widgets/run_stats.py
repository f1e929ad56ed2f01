"""The Live run screen's numbers: step, losses, learning rate, throughput, memory, checkpoint."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from textual.widgets import Static

from ..run_estimate import format_duration
from ..run_state import RunState


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class RunStats(Static):
    """A two-column grid of the latest metrics of a run."""

    def show(self, state: RunState) -> None:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True, min_width=10)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        r = state.last_report
        step = f"{state.step}/{state.total_steps or '?'}"
        if r is not None:
            step += f"  (epoch {r.epoch:.2f})"
        grid.add_row("step", step)
        grid.add_row("train loss", _loss(r.loss if r else None))
        best = ""
        if state.best_step is not None and state.best_val_loss is not None:
            best = f"  best {state.best_val_loss:.4f} @{state.best_step}"
        grid.add_row("valid loss", _loss(state.last_eval.loss if state.last_eval else None) + best)
        if state.preference:  # DPO/ORPO: is the preferred reply winning, and by how much
            splits = [(name, state.preference[name]) for name in ("train", "valid") if name in state.preference]
            grid.add_row("pref acc", "  ".join(f"{name} {100 * p.accuracy:.1f}%" for name, p in splits))
            grid.add_row("margin", "  ".join(f"{name} {p.margin:.3f}" for name, p in splits))
            grid.add_row("chosen logp", "  ".join(f"{name} {p.logps_chosen:.2f}" for name, p in splits))
        grid.add_row("lr", f"{r.learning_rate:.2e}" if r else "-")
        grid.add_row(
            "tokens/s",
            f"{r.tokens_per_second:,.0f} ({r.trained_tokens_per_second:,.0f} trained)" if r else "-",
        )
        grid.add_row("tokens", f"{r.tokens_seen:,}" if r else "-")
        grid.add_row("peak mem", f"{r.peak_memory_gb:.2f} GB" if r else "-")
        grid.add_row("elapsed", format_duration(r.elapsed_s) if r else "-")
        ckpt = state.latest_checkpoint
        grid.add_row("checkpoint", f"step {ckpt.step} ({Path(ckpt.path).name})" if ckpt else "none yet")
        if state.total_parameters:
            share = 100 * state.trainable_parameters / state.total_parameters
            grid.add_row("trainable", f"{state.trainable_parameters:,} ({share:.2f}%)")
        self.update(grid)
