"""Chat: multi-turn with the data's system prompt, the tuned model beside the base (or another step).

A stand-in generation child (same JSON-lines protocol as mlxsft.tui.generate) answers with
what it was sent, so the test sees each side's own conversation without loading MLX.
"""

from __future__ import annotations

import json
from argparse import Namespace

import pytest
from mlxsft.tui import generate
from mlxsft.tui.app import MlxsftApp
from mlxsft.tui.data_prompts import sample_prompts, system_prompt
from mlxsft.tui.screens.chat import ChatScreen
from mlxsft.tui.widgets.generation_panes import GenerationPanes
from textual.widgets import Input, Select

from mlxsft.errors import MlxsftError

from .fixtures.tui_helpers import FIXED_NOW, make_project, run_async, use_fake_generation, wait_for

SYSTEM = "You extract people as JSON with keys name, age and city."


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project")
    use_fake_generation(root, monkeypatch)
    monkeypatch.chdir(root)
    return root


def test_prompts_and_the_system_prompt_come_from_the_runs_data(project):
    run = project / "runs" / "quickstart-lora"
    assert system_prompt(run) == SYSTEM
    assert sample_prompts(run, 2)[0] == "Omar, 62, from Seoul."


def test_the_generation_child_takes_conversations_or_prompts_with_the_system_prompt(tmp_path):
    args = Namespace(chat=None, system=SYSTEM, prompt=["hi", "bye"])
    chats = generate.conversations(args, ["base", "tuned"])
    assert chats["tuned"][1] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "bye"}]
    file = tmp_path / "chat.json"
    file.write_text(json.dumps({"base": [{"role": "user", "content": "a"}]}))
    with pytest.raises(MlxsftError, match="no conversation for tuned"):
        generate.conversations(Namespace(chat=str(file), system=None, prompt=None), ["base", "tuned"])


async def send(pilot, screen, text: str) -> None:
    screen.query_one("#chat-prompt", Input).value = text
    await pilot.press("enter")
    panes = screen.query_one(GenerationPanes)
    await wait_for(pilot, lambda: not panes.running and screen.pending is None, timeout=30, what="the answers")


@run_async
async def test_chat_is_multi_turn_side_by_side_with_the_datas_system_prompt(project):
    app = MlxsftApp(project / "runs" / "quickstart-lora", project_dir=project, clock=lambda: FIXED_NOW)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("t")
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        assert screen.query_one("#chat-system", Input).value == SYSTEM
        await send(pilot, screen, "Ana, 30, Rome.")
        await send(pilot, screen, "And Bo, 41, Oslo?")
        texts = screen.query_one(GenerationPanes).texts()
        assert list(texts) == ["base", "fine-tuned"]
        for label, text in texts.items():
            assert text.startswith("You: Ana, 30, Rome.\n\nModel: ")
            assert f"[{label}] turn 2, my last answer: [{label}" in text  # its own earlier answer
            assert "system: You extract" in text
        assert [m["role"] for m in screen.histories["base"]] == ["user", "assistant"] * 2
        assert screen.query_one("#chat-system", Input).disabled  # fixed once the conversation started
        screen.query_one("#chat-beside", Select).value = "40"  # compare two checkpoints instead
        await pilot.pause()
        assert screen.histories == {} and not screen.query_one("#chat-system", Input).disabled
        await send(pilot, screen, "Cy, 22, Lima.")
        assert list(screen.query_one(GenerationPanes).texts()) == ["step 40", "fine-tuned"]
