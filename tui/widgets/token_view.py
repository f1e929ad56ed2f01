"""One rendered example with the trained tokens highlighted (what the loss sees)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

TRAINED_STYLE = "bold black on green3"


class TokenView(Static):
    def show(self, spans: tuple[tuple[str, bool], ...], where: str, layout: str = "one sequence") -> None:
        text = Text()
        text.append(f"first example ({where}, {layout}); ", style="dim")
        text.append("trained tokens", style=TRAINED_STYLE)
        text.append(" highlighted\n", style="dim")
        for chunk, trained in spans:
            text.append(chunk, style=TRAINED_STYLE if trained else "")
        self.update(text)
