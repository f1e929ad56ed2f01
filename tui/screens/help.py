"""`?`: what the current screen is for and every key it answers to."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Markdown

GLOBAL_KEYS = [
    ("?", "show or close this help"),
    ("ctrl+q", "quit (a training run keeps going in the background)"),
    ("ctrl+p", "command palette (themes, screenshots)"),
    ("tab / shift+tab", "move between fields"),
    ("escape", "back to the previous screen"),
]


def _key_name(binding) -> str:
    return binding.key_display or binding.key.replace("question_mark", "?")


def help_markdown(screen: Screen) -> str:
    title = getattr(screen, "TITLE", None) or type(screen).__name__
    lines = [f"# {title}", "", getattr(screen, "HELP", "") or "", "", "| key | does |", "|---|---|"]
    seen = set()
    for binding in getattr(screen, "BINDINGS", []):
        if isinstance(binding, tuple):
            binding = Binding(*binding)
        if binding.description and binding.key not in seen:
            seen.add(binding.key)
            lines.append(f"| `{_key_name(binding)}` | {binding.description} |")
    for key, description in GLOBAL_KEYS:
        lines.append(f"| `{key}` | {description} |")
    return "\n".join(lines)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("q", "dismiss", "Close", show=False)]

    def __init__(self, about: Screen):
        super().__init__()
        self.about = about

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(help_markdown(self.about))

    def action_dismiss(self) -> None:
        self.dismiss()
