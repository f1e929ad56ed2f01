"""Samples at each checkpoint: greedy answers to the same few validation prompts, as an event.

`checkpoint_samples()` makes the hook the CLI hands to `run_training(on_checkpoint=...)`:
after each save it renders the first rows of the validation set up to their last answer
(system prompt and earlier turns included, with the chat template), decodes greedily from
the model being trained, and emits `SamplesGenerated`. The prompts are chosen once, so
every checkpoint answers the same ones and a reader sees the answers change. Greedy
decoding draws nothing from the training RNG, so exact resume is unaffected.
"""

from __future__ import annotations

import time

from ..data.formats import load_jsonl
from ..events import SamplesGenerated
from ..generate import stream_text
from .sampling import prompts_from_examples

NUM_PROMPTS = 3
MAX_TOKENS = 48


def shown_prompt(example) -> str:
    """What a person recognises the row by: its last user turn before the answer, or its prompt."""
    if example.kind == "completion":
        return example.prompt
    users = [m.get("content") or "" for m in example.messages if m["role"] == "user"]
    return users[-1] if users else ""


def greedy(model, tokenizer, ids: tuple[int, ...], max_tokens: int) -> str:
    """The greedy answer to `ids` (the one generation path, `mlxsft.generate`)."""
    return "".join(delta.text for delta in stream_text(model, tokenizer, ids, max_tokens))


def checkpoint_samples(num_prompts: int = NUM_PROMPTS, max_tokens: int = MAX_TOKENS):
    """A `run_training(on_checkpoint=...)` hook; it does nothing for a run without validation data."""
    chosen: list = []

    def hook(prepared, state, emit) -> None:
        valid = prepared.files.get("valid")
        # preference runs' rows are pairs, not chats: their samples are not drawn here (yet)
        if valid is None or num_prompts < 1 or prepared.preference is not None:
            return
        if not chosen:
            examples = [e for e in load_jsonl(valid) if e.kind in ("chat", "completion")][: 4 * num_prompts]
            pairs = [(e, p) for e in examples if (p := prompts_from_examples([e], prepared.tokenizer))]
            chosen.extend((shown_prompt(e), p[0].ids) for e, p in pairs[:num_prompts])
        start = time.time()
        prepared.model.eval()
        try:
            completions = [greedy(prepared.model, prepared.tokenizer, ids, max_tokens) for _, ids in chosen]
        finally:
            prepared.model.train()
        emit(
            SamplesGenerated(
                step=state.step,
                prompts=tuple(s for s, _ in chosen),
                completions=tuple(completions),
                elapsed_s=time.time() - start,
            )
        )

    return hook
