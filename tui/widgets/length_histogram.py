"""Token-length histogram of a dataset, with the bins past `max_seq_length` marked as truncated."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..dataset import length_histogram

BAR_WIDTH = 18


class LengthHistogram(Static):
    def show(self, lengths: tuple[int, ...], max_seq_length: int) -> None:
        bins = length_histogram(lengths, max_seq_length)
        if not bins:
            self.update("")
            return
        peak = max(count for _, _, count in bins) or 1
        text = Text()
        text.append(f"tokens per row (max_seq_length {max_seq_length})\n", style="bold")
        for low, high, count in bins:
            over = low >= max_seq_length
            bar = "█" * round(BAR_WIDTH * count / peak) or ("▏" if count else "")
            text.append(f"{low:>6}-{high:<6}", style="dim")
            text.append(f"{bar:<{BAR_WIDTH}}", style="red" if over else "green")
            text.append(
                f" {count}" + (" truncated" if over and count else "") + "\n",
                style="red" if over and count else "",
            )
        self.update(text)
