"""The files an export carries over from the base model, and the run's chat template.

Tokenizer, chat template and generation defaults are copied as they are; the chat
template the run trained with (kept in the run directory) then overwrites the copied
one, so every export renders chats exactly as training did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..safeio import atomic_write_text

SIDE_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def copy_side_files(base_path: Path, folder: Path, chat_template: str | None = None) -> None:
    """Copy the base's tokenizer files into `folder`, with the run's chat template."""
    for name in SIDE_FILES:
        if (base_path / name).is_file():
            shutil.copyfile(base_path / name, folder / name)
    for path in base_path.glob("*.tiktoken"):
        shutil.copyfile(path, folder / path.name)
    if chat_template:
        write_chat_template(folder, chat_template)


def write_chat_template(folder: Path, chat_template: str) -> None:
    """`chat_template.jinja` (transformers v5), and the same text in tokenizer_config.json if it holds one."""
    atomic_write_text(folder / "chat_template.jinja", chat_template)
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if isinstance(config.get("chat_template"), str):
            config["chat_template"] = chat_template
            atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False))
