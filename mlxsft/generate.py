"""Generation from a loaded model: the prompt of a user message, k sampled completions, a greedy text stream.

One module for every place that generates: the judge's samples (`judge/sampling.py`,
k completions per prompt as one seeded batch, with per-token entropy) and the UI's chat
and checkpoint samples (`tui/generate.py`, greedy text streamed as it decodes). Prompts
of a plain user message are rendered with the chat template's generation prompt when the
tokenizer has one, as the fine-tune saw its inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np


@dataclass(frozen=True)
class Sample:
    ids: tuple[int, ...]  # generated tokens, without the end-of-sequence token
    text: str
    entropies: tuple[float, ...]  # nats, one per sampling step (including the one that chose EOS)


@dataclass(frozen=True)
class TextDelta:
    """A piece of streamed text and the running counts."""

    text: str
    tokens: int
    tokens_per_second: float


def hf_tokenizer(tokenizer):
    """The Hugging Face tokenizer inside mlx-lm's TokenizerWrapper (or the tokenizer itself)."""
    inner = getattr(tokenizer, "_tokenizer", None)
    return inner if hasattr(inner, "apply_chat_template") else tokenizer


def conversation_prompt(tokenizer, messages: list[dict]) -> tuple[str, list[int]]:
    """(rendered text, token ids) of a conversation up to the next reply: the chat template when
    there is one (with its generation prompt), else the contents joined by newlines."""
    hf = hf_tokenizer(tokenizer)
    if getattr(hf, "chat_template", None):
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, list(hf.encode(text, add_special_tokens=False))
    text = "\n".join(m["content"] for m in messages)
    return text, list(hf.encode(text, add_special_tokens=True))


def user_prompt(tokenizer, message: str) -> tuple[str, list[int]]:
    """(rendered text, token ids) of one user message."""
    return conversation_prompt(tokenizer, [{"role": "user", "content": message}])


def eos_ids(tokenizer) -> set[int]:
    ids = getattr(tokenizer, "eos_token_ids", None)
    if ids:
        return {int(i) for i in ids}
    eos = getattr(hf_tokenizer(tokenizer), "eos_token_id", None)
    return {eos} if isinstance(eos, int) else set()


def sample_completions(
    model: nn.Module,
    tokenizer,
    prompt_ids: Sequence[int],
    *,
    k: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[Sample]:
    """k completions of one prompt, sampled as one batch from a seeded RNG (mlx-lm's sampler and cache)."""
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0)
    stop = eos_ids(tokenizer)
    mx.random.seed(seed)
    cache = make_prompt_cache(model)
    tokens = mx.array([list(prompt_ids)] * k, dtype=mx.int32)  # (k, L)
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
    hf = hf_tokenizer(tokenizer)
    return [
        Sample(tuple(g), hf.decode(g, skip_special_tokens=True), tuple(e))
        for g, e in zip(generated, entropies, strict=True)
    ]


def stream_text(model: nn.Module, tokenizer, prompt_ids: Sequence[int], max_tokens: int) -> Iterator[TextDelta]:
    """Greedy decoding of `prompt_ids`, as text pieces while they decode (mlx-lm's stream_generate)."""
    from mlx_lm import stream_generate

    model.eval()  # no dropout while generating
    for response in stream_generate(model, tokenizer, list(prompt_ids), max_tokens=max_tokens):
        yield TextDelta(response.text, response.generation_tokens, response.generation_tps)
