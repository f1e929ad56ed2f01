"""Chat: a multi-turn conversation with the fine-tuned model, side by side with the base (or another step).

Each side keeps its own conversation (its own earlier answers), under the system prompt
of the run's data, which the form shows and lets you change. Generation runs in a child
process that owns MLX (tui/generate.py) and streams tokens into the panes; decoding is
greedy with the run's own chat template, dtype and quantization.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Select

from mlxsft.rundir import RunDir

from .. import generate
from ..data_prompts import system_prompt
from ..runs import read_meta
from ..widgets.generation_panes import GenerationPanes

MAX_TOKENS = (64, 128, 256, 512)
NOBODY = "none"  # the "beside" choice for a single pane


def transcript(history: list[dict]) -> str:
    """A conversation as the pane shows it (the system prompt is shown in the form, not here)."""
    who = {"user": "You", "assistant": "Model"}
    return "".join(f"{who[m['role']]}: {m['content']}\n\n" for m in history if m["role"] in who)


class ChatScreen(Screen):
    TITLE = "Chat"
    HELP = (
        "Type a message and press **enter**: the fine-tuned checkpoint answers on the right and the "
        "model chosen under *beside* (the base by default, or another checkpoint) on the left, each "
        "continuing its own conversation. The system prompt starts as the one in the run's data; "
        "edit it before the first message. **ctrl+n** starts a new conversation. Tokens stream in as "
        "they are generated (greedy decoding, the model's chat template). The checkpoint defaults to "
        "the chosen one, else the run's latest adapters."
    )
    BINDINGS = [
        Binding("ctrl+g", "generate", "Send", priority=True),
        Binding("ctrl+n", "new_conversation", "New chat", priority=True),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.histories: dict[str, list[dict]] = {}  # pane label -> its conversation (no system)
        self.pending: tuple[str, dict[str, str]] | None = None  # the message on its way, prefixes
        self.chat_file: Path | None = None

    def compose(self) -> ComposeResult:
        chosen = read_meta(self.run_dir).get("chosen_step")
        steps = RunDir(self.run_dir).checkpoint_steps()
        options = [("latest adapters", "latest")]
        options += [(f"step {s}" + (" (chosen)" if s == chosen else ""), str(s)) for s in steps]
        beside = [("base model", "base"), ("nothing", NOBODY)] + [(f"step {s}", str(s)) for s in steps]
        yield Header()
        with Horizontal(id="chat-options"):
            yield Label("tuned", classes="field-label")
            yield Select(
                options,
                value=str(chosen) if chosen in steps else "latest",
                allow_blank=False,
                id="chat-checkpoint",
                compact=True,
            )
            yield Label("beside", classes="field-label")
            yield Select(beside, value="base", allow_blank=False, id="chat-beside", compact=True)
            yield Label("max tokens", classes="field-label")
            yield Select(
                [(str(n), n) for n in MAX_TOKENS], value=128, allow_blank=False, id="chat-max-tokens", compact=True
            )
        yield Input(system_prompt(self.run_dir) or "", placeholder="System prompt (none in the data)", id="chat-system")
        yield Input(placeholder="Message both models, then press enter", id="chat-prompt")
        yield GenerationPanes("The base model answers on the left, the fine-tuned one on the right.", id="chat-panes")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.app.display_path(self.run_dir)
        self.query_one("#chat-prompt", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "chat-prompt":
            self.action_generate()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id in ("chat-checkpoint", "chat-beside") and self.histories:
            self.action_new_conversation()  # other models: their earlier answers do not apply

    def variants(self) -> list[tuple[str, str]]:
        """(pane label, which) pairs: the model beside first, then the tuned one."""
        which = str(self.query_one("#chat-checkpoint", Select).value)
        beside = str(self.query_one("#chat-beside", Select).value)
        tuned = "fine-tuned" + ("" if which == "latest" else f" (step {which})")
        pairs = [(tuned, which)]
        if beside != NOBODY and beside != which:
            pairs.insert(0, ("base" if beside == "base" else f"step {beside}", beside))
        return pairs

    def action_new_conversation(self) -> None:
        self.histories, self.pending = {}, None
        panes = self.query_one(GenerationPanes)
        panes.cancel()
        panes.reset([(label, label) for label, _ in self.variants()])
        self.query_one("#chat-system", Input).disabled = False
        self.notify("New conversation.")

    def action_generate(self) -> None:
        panes = self.query_one(GenerationPanes)
        if panes.running:
            self.notify("The models are still answering.", severity="warning")
            return
        prompt = self.query_one("#chat-prompt", Input).value.strip()
        if not prompt:
            self.notify("Type a message first.", severity="warning")
            return
        variants = self.variants()
        if any(w == "latest" for _, w in variants) and not RunDir(self.run_dir).adapters_file.is_file():
            self.notify("This run has no adapters yet (no checkpoint was saved).", severity="warning")
            return
        system = self.query_one("#chat-system", Input).value.strip()
        head = [{"role": "system", "content": system}] if system else []
        user = {"role": "user", "content": prompt}
        chats = {label: head + self.histories.get(label, []) + [user] for label, _ in variants}
        prefixes = {label: transcript(self.histories.get(label, []) + [user]) + "Model: " for label, _ in variants}
        self.chat_file = self._write_chat(chats)
        self.pending = (prompt, prefixes)
        if note := self.app.training_note():
            self.notify(note, severity="warning")
        max_tokens = int(self.query_one("#chat-max-tokens", Select).value)
        panes.generate(
            generate.command(self.run_dir, variants, [], max_tokens=max_tokens, chat_file=self.chat_file),
            [(label, label) for label, _ in variants],
            key_of=lambda r: r["label"],
            cwd=self.app.project_dir,
            prefixes=prefixes,
        )
        self.query_one("#chat-prompt", Input).value = ""
        self.query_one("#chat-system", Input).disabled = True  # fixed for the rest of the conversation

    def _write_chat(self, chats: dict[str, list[dict]]) -> Path:
        if self.chat_file is not None:
            self.chat_file.unlink(missing_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", suffix=".json", prefix="mlxsft-chat-", delete=False, encoding="utf-8"
        ) as f:
            json.dump(chats, f)
        return Path(f.name)

    def on_generation_panes_finished(self, event: GenerationPanes.Finished) -> None:
        if event.error:
            self.notify(f"Generation failed: {event.error}", severity="error")
        if self.pending is None:
            return
        prompt, prefixes = self.pending
        self.pending = None
        if event.error:
            return  # the turn is not kept: send it again
        texts = event.panes.texts()
        for label, prefix in prefixes.items():
            answer = texts.get(label, "")[len(prefix) :].strip()
            self.histories.setdefault(label, []).extend(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            )

    def on_unmount(self) -> None:
        if self.chat_file is not None:
            self.chat_file.unlink(missing_ok=True)
