"""Side-by-side text panes that fill as a generation child streams tokens into them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from ..processes import StreamingChild


class GenerationPane(VerticalScroll):
    def __init__(self, key: str, title: str, text: str = "", **kwargs):
        super().__init__(classes="generation-pane", **kwargs)
        self.key = key
        self.border_title = title
        self.text = text  # what the pane starts with (a chat's transcript so far)

    def compose(self) -> ComposeResult:
        yield Static(self.text, classes="generation-body", markup=False)

    def append(self, delta: str) -> None:
        self.text += delta
        self.query_one(".generation-body", Static).update(self.text)
        self.scroll_end(animate=False)


class GenerationPanes(Horizontal):
    """Panes keyed by a string (a checkpoint label, or a prompt), fed by a generation child."""

    class Finished(Message):
        def __init__(self, panes: GenerationPanes, exit_code: int, error: str | None):
            super().__init__()
            self.panes, self.exit_code, self.error = panes, exit_code, error

    def __init__(self, placeholder: str = "", **kwargs):
        super().__init__(**kwargs)
        self.placeholder = placeholder
        self.child: StreamingChild | None = None
        self.running = False
        self.generation = 0  # bumped per request, so a cancelled child's late lines are dropped

    def generate(
        self,
        command: list[str],
        panes: list[tuple[str, str]],
        key_of: Callable[[dict], str],
        cwd: Path | None = None,
        prefixes: dict[str, str] | None = None,
    ) -> None:
        """Start the child `command` (tui/generate.py protocol) and stream its text into `panes`.

        `prefixes`: text each pane starts with (by key), which the streamed text follows.
        """
        self.cancel()
        self.reset(panes, prefixes)
        for key, _ in panes:
            self.set_status(key, "waiting")
        self.running = True
        self.generation += 1
        generation = self.generation
        self.run_worker(
            lambda: self._stream(generation, command, key_of, cwd),
            thread=True,
            exclusive=True,
            group="generate",
        )

    def _stream(self, generation: int, command: list[str], key_of: Callable[[dict], str], cwd: Path | None) -> None:
        child = self.child = StreamingChild(command, cwd)
        stray: list[str] = []
        error = None
        for line in child.lines():
            try:
                record = json.loads(line)
            except ValueError:
                if line.strip():
                    stray.append(line.strip())
                continue
            if record.get("type") == "error":
                error = record.get("message")
            self.app.call_from_thread(self._on_record, generation, record, key_of)
        code = child.wait()
        if code != 0 and error is None:
            error = stray[-1] if stray else f"the generation process exited with code {code}"
        self.app.call_from_thread(self._finished, generation, code, error)

    def _on_record(self, generation: int, record: dict, key_of: Callable[[dict], str]) -> None:
        if generation != self.generation:
            return
        kind = record.get("type")
        if kind == "loading":
            for key in self._keys_for(record, key_of):
                self.set_status(key, "loading model")
        elif kind == "text":
            key = key_of(record)
            self.set_status(key, "generating")
            self.append(key, record.get("delta", ""))
        elif kind == "done":
            self.set_status(
                key_of(record),
                f"{record.get('tokens', 0)} tokens, {record.get('tokens_per_second', 0):.0f} tok/s",
            )

    def _keys_for(self, record: dict, key_of: Callable[[dict], str]) -> list[str]:
        """Pane keys a 'loading' record (no prompt index) applies to."""
        keys = {pane.key for pane in self.query(GenerationPane)}
        label = record.get("label")
        matching = [k for k in keys if k == label or k.startswith(f"{label}#")]
        return matching or [key_of({**record, "prompt": 0})]

    def _finished(self, generation: int, code: int, error: str | None) -> None:
        if generation != self.generation:
            return
        self.running = False
        self.child = None
        if error:
            for pane in self.query(GenerationPane):
                if pane.border_subtitle != "done" and not pane.border_subtitle.endswith("tok/s"):
                    pane.border_subtitle = "failed"
        self.post_message(self.Finished(self, code, error))

    def cancel(self) -> None:
        if self.child is not None:
            self.child.cancel()
            self.child = None

    def on_unmount(self) -> None:
        self.cancel()

    def compose(self) -> ComposeResult:
        yield Static(self.placeholder, classes="generation-placeholder")

    def reset(self, panes: list[tuple[str, str]], prefixes: dict[str, str] | None = None) -> None:
        self.remove_children()
        self.mount_all([GenerationPane(key, title, (prefixes or {}).get(key, "")) for key, title in panes])

    def pane(self, key: str) -> GenerationPane | None:
        for pane in self.query(GenerationPane):
            if pane.key == key:
                return pane
        return None

    def append(self, key: str, delta: str) -> None:
        pane = self.pane(key)
        if pane is not None:
            pane.append(delta)

    def set_status(self, key: str, status: str) -> None:
        pane = self.pane(key)
        if pane is not None:
            pane.border_subtitle = status

    def texts(self) -> dict[str, str]:
        return {pane.key: pane.text for pane in self.query(GenerationPane)}
