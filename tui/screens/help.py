"""`?` / F1: what the focused field and the current screen are for, and every key they answer to."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Markdown

GLOBAL_KEYS = [
    ("F1 / ?", "show or close this help (F1 works inside text fields too)"),
    ("ctrl+q", "quit (a training run keeps going in the background)"),
    ("ctrl+p", "command palette: new run, open a run, checkpoints, export, chat, evaluate, themes"),
    ("tab / shift+tab", "move between fields"),
    ("escape", "back to the previous screen"),
]


def _key_name(binding) -> str:
    return binding.key_display or binding.key.replace("question_mark", "?")


def focused_help(screen: Screen) -> str | None:
    """What the focused widget is, in words: the screen's `field_help` for it, else its tooltip."""
    widget = screen.focused
    if widget is None:
        return None
    describe = getattr(screen, "field_help", None)
    text = describe(widget) if describe is not None else None
    return text or (str(widget.tooltip) if widget.tooltip else None)


def help_markdown(screen: Screen) -> str:
    title = getattr(screen, "TITLE", None) or type(screen).__name__
    lines = [f"# {title}", ""]
    field = focused_help(screen)
    if field:
        lines += ["## The focused field", "", field, ""]
    lines += [getattr(screen, "HELP", "") or "", "", "| key | does |", "|---|---|"]
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
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("q", "dismiss", "Close", show=False),
        Binding("f1", "dismiss", "Close", show=False),
    ]

    def __init__(self, about: Screen):
        super().__init__()
        self.about = about

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(help_markdown(self.about))

    def action_dismiss(self) -> None:
        self.dismiss()
