"""The judge's fixed prompt set: the prompt and reference answer of each row or suite message.

Prompts are built the way training renders rows: a chat row's messages before its
last assistant turn, rendered with the chat template's generation prompt; a
prompt/completion row's prompt. The last assistant message (or the completion) is
the reference answer. Sampling is `mlxsft.generate.sample_completions` (the k samples
of one prompt as one batch, the RNG seeded per prompt, so every checkpoint is judged on
the same random stream).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..data.formats import Example
from ..errors import DataError
from ..generate import hf_tokenizer, user_prompt


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    text: str  # the rendered prompt the model continues
    reference: str | None  # the row's answer, when it has one
    row: dict  # the raw JSON row, for user verifiers
    tags: tuple[str, ...] = ()
    where: str = ""  # "path:line"


@lru_cache(maxsize=16)
def _raw_rows(path: str) -> dict[int, dict]:
    rows = {}
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8-sig").split("\n"), start=1):
        if line.strip():
            rows[line_no] = json.loads(line)
    return rows


def raw_row(example: Example) -> dict:
    """The row as written in its file (extra keys included), for verifiers."""
    try:
        return _raw_rows(example.path)[example.line]
    except (OSError, KeyError, json.JSONDecodeError):
        return {}


def prompt_from_example(example: Example, tokenizer) -> Prompt | None:
    """The prompt and reference of a chat or completion row; None for text rows."""
    hf = hf_tokenizer(tokenizer)
    where = f"{example.path}:{example.line}"
    if example.kind == "completion":
        ids = hf.encode(example.prompt, add_special_tokens=True)
        return Prompt(tuple(ids), example.prompt, example.completion, raw_row(example), example.tags, where)
    if example.kind != "chat":
        return None
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    if last == 0:
        return None
    kwargs = {"tools": example.tools} if example.tools is not None else {}
    try:
        text = hf.apply_chat_template(
            list(example.messages[:last]), tokenize=False, add_generation_prompt=True, **kwargs
        )
    except Exception as exc:  # jinja raises anything
        raise DataError(f"the chat template failed on this row: {exc}", path=example.path, line=example.line) from None
    ids = hf.encode(text, add_special_tokens=False)
    reference = example.messages[last].get("content") or ""
    return Prompt(tuple(ids), text, reference, raw_row(example), example.tags, where)


def prompts_from_examples(examples: list[Example], tokenizer, limit: int | None = None) -> list[Prompt]:
    prompts = []
    for example in examples:
        if limit is not None and len(prompts) >= limit:
            break
        prompt = prompt_from_example(example, tokenizer)
        if prompt is not None:
            prompts.append(prompt)
    return prompts


def prompts_from_strings(messages: list[str], tokenizer) -> list[Prompt]:
    """User messages, rendered with the chat template when the tokenizer has one."""
    prompts = []
    for i, message in enumerate(messages):
        text, ids = user_prompt(tokenizer, message)
        prompts.append(Prompt(tuple(ids), text, None, {"prompt": message}, (), f"suite prompt {i + 1}"))
    return prompts
