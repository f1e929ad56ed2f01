"""The fixed prompt set and k sampled completions per prompt, with per-token entropy.

Prompts are built the way training renders rows: a chat row's messages before its
last assistant turn, rendered with the chat template's generation prompt; a
prompt/completion row's prompt. The last assistant message (or the completion) is
the reference answer. Sampling uses mlx-lm's sampler and prompt cache; the k samples
of one prompt run as one batch, and the RNG is seeded per prompt, so every
checkpoint is judged on the same random stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..data.formats import Example
from ..errors import DataError


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    text: str  # the rendered prompt the model continues
    reference: str | None  # the row's answer, when it has one
    row: dict  # the raw JSON row, for user verifiers
    tags: tuple[str, ...] = ()
    where: str = ""  # "path:line"


@dataclass(frozen=True)
class Sample:
    ids: tuple[int, ...]  # generated tokens, without the end-of-sequence token
    text: str
    entropies: tuple[float, ...]  # nats, one per sampling step (including the one that chose EOS)


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


def _hf(tokenizer):
    inner = getattr(tokenizer, "_tokenizer", None)
    return inner if hasattr(inner, "apply_chat_template") else tokenizer


def prompt_from_example(example: Example, tokenizer) -> Prompt | None:
    """The prompt and reference of a chat or completion row; None for text rows."""
    hf = _hf(tokenizer)
    where = f"{example.path}:{example.line}"
    if example.kind == "completion":
        ids = hf.encode(example.prompt, add_special_tokens=True)
        return Prompt(
            tuple(ids), example.prompt, example.completion, raw_row(example), example.tags, where
        )
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
        raise DataError(
            f"the chat template failed on this row: {exc}", path=example.path, line=example.line
        ) from None
    ids = hf.encode(text, add_special_tokens=False)
    reference = example.messages[last].get("content") or ""
    return Prompt(tuple(ids), text, reference, raw_row(example), example.tags, where)


def prompts_from_examples(
    examples: list[Example], tokenizer, limit: int | None = None
) -> list[Prompt]:
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
    hf = _hf(tokenizer)
    prompts = []
    for i, message in enumerate(messages):
        if getattr(hf, "chat_template", None):
            text = hf.apply_chat_template(
                [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
            )
            ids = hf.encode(text, add_special_tokens=False)
        else:
            text, ids = message, hf.encode(message, add_special_tokens=True)
        prompts.append(
            Prompt(tuple(ids), text, None, {"prompt": message}, (), f"suite prompt {i + 1}")
        )
    return prompts


def eos_ids(tokenizer) -> set[int]:
    ids = getattr(tokenizer, "eos_token_ids", None)
    if ids:
        return {int(i) for i in ids}
    eos = getattr(_hf(tokenizer), "eos_token_id", None)
    return {eos} if isinstance(eos, int) else set()


def sample_completions(
    model: nn.Module,
    tokenizer,
    prompt: Prompt,
    *,
    k: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[Sample]:
    """k completions of one prompt, sampled as one batch from a seeded RNG."""
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0)
    stop = eos_ids(tokenizer)
    mx.random.seed(seed)
    cache = make_prompt_cache(model)
    tokens = mx.array([list(prompt.ids)] * k, dtype=mx.int32)  # (k, L)
    generated: list[list[int]] = [[] for _ in range(k)]
    entropies: list[list[float]] = [[] for _ in range(k)]
    done = np.zeros(k, dtype=bool)
    for _ in range(max_tokens):
        logits = model(tokens, cache=cache)[:, -1, :].astype(mx.float32)  # (k, V)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        chosen = sampler(logprobs)  # (k,)
        entropy = -(mx.exp(logprobs) * logprobs).sum(axis=-1)  # (k,)
        mx.eval(chosen, entropy)
        for i, (token, h) in enumerate(zip(chosen.tolist(), entropy.tolist(), strict=True)):
            if done[i]:
                continue
            entropies[i].append(h)
            if token in stop:
                done[i] = True
            else:
                generated[i].append(token)
        if done.all():
            break
        tokens = chosen[:, None].astype(mx.int32)
    hf = _hf(tokenizer)
    return [
        Sample(tuple(g), hf.decode(g, skip_special_tokens=True), tuple(e))
        for g, e in zip(generated, entropies, strict=True)
    ]
