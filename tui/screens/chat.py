"""Chat: the base model and the fine-tuned one answer the same prompt, side by side.

Generation runs in a child process that owns MLX (tui/generate.py), with greedy
decoding, the run's own chat template, dtype and quantization.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Select

from mlxsft.rundir import RunDir

from .. import generate
from ..runs import read_meta
from ..widgets.generation_panes import GenerationPanes

MAX_TOKENS = (64, 128, 256, 512)


class ChatScreen(Screen):
    TITLE = "Chat"
    HELP = (
        "Type a prompt and press **enter**: the base model and the fine-tuned checkpoint answer "
        "it side "
        "by side (greedy decoding, the chat template of the model). The checkpoint defaults to the "
        "chosen one, else the run's latest adapters."
    )
    BINDINGS = [
        Binding("ctrl+g", "generate", "Generate", priority=True),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)

    def compose(self) -> ComposeResult:
        chosen = read_meta(self.run_dir).get("chosen_step")
        steps = RunDir(self.run_dir).checkpoint_steps()
        options = [("latest adapters", "latest")]
        options += [(f"step {s}" + (" (chosen)" if s == chosen else ""), str(s)) for s in steps]
        yield Header()
        with Horizontal(id="chat-options"):
            yield Label("checkpoint", classes="field-label")
            yield Select(
                options,
                value=str(chosen) if chosen in steps else "latest",
                allow_blank=False,
                id="chat-checkpoint",
                compact=True,
            )
            yield Label("max tokens", classes="field-label")
            yield Select(
                [(str(n), n) for n in MAX_TOKENS],
                value=128,
                allow_blank=False,
                id="chat-max-tokens",
                compact=True,
            )
        yield Input(placeholder="Ask both models something, then press enter", id="chat-prompt")
        yield GenerationPanes(
            "The base model answers on the left, the fine-tuned one on the right.", id="chat-panes"
        )
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.app.display_path(self.run_dir)
        self.query_one("#chat-prompt", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "chat-prompt":
            self.action_generate()

    def action_generate(self) -> None:
        prompt = self.query_one("#chat-prompt", Input).value.strip()
        if not prompt:
            self.notify("Type a prompt first.", severity="warning")
            return
        which = str(self.query_one("#chat-checkpoint", Select).value)
        if which == "latest" and not RunDir(self.run_dir).adapters_file.is_file():
            self.notify(
                "This run has no adapters yet (no checkpoint was saved).", severity="warning"
            )
            return
        tuned = "fine-tuned" + ("" if which == "latest" else f" (step {which})")
        variants = [("base", "base"), (tuned, which)]
        max_tokens = int(self.query_one("#chat-max-tokens", Select).value)
        if note := self.app.training_note():
            self.notify(note, severity="warning")
        self.query_one(GenerationPanes).generate(
            generate.command(self.run_dir, variants, [prompt], max_tokens=max_tokens),
            [(label, label) for label, _ in variants],
            key_of=lambda r: r["label"],
            cwd=self.app.project_dir,
        )

    def on_generation_panes_finished(self, event: GenerationPanes.Finished) -> None:
        if event.error:
            self.notify(f"Generation failed: {event.error}", severity="error")
