"""Render, tokenize once, and derive which tokens are trained from character spans.

This module owns the link between an `Example` and the token ids the trainer sees:

- chat rows are rendered once with the tokenizer's chat template (with `tools` when
  given) and tokenized once with character offsets. Each assistant turn's character
  span runs from the end of `render(messages[:i], add_generation_prompt=True)` to the
  end of `render(messages[:i+1])`, checked against the full rendering (the prefix
  property). Where a template is not prefix-preserving (e.g. Qwen3 drops earlier
  `<think>` blocks) the turn is located in the full rendering instead: its assistant
  header, then its content, then its end-of-turn marker. Trailing whitespace is trimmed
  off every span, so ChatML trains "hello<|im_end|>" but not the "\\n" after it.
- prompt/completion rows are plain concatenation prompt + completion + EOS (never the
  chat template, even when the tokenizer has one); the completion and EOS are trained.
- text rows train every token (+ EOS).

A token is trained when its character span overlaps a trained character span; tokens
with empty offsets (a BOS added by the tokenizer) are not. `trained[i]` means: the
loss of predicting ids[i] from ids[:i] counts, so `trained[0]` is always False.
Rows left without any trained token (masked, or truncated away) are reported in
`TokenizedDataset.skipped`, never trained on silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from .formats import Example

MASKS = ("assistant", "last", "none")

# End-of-turn markers of common templates, used only when a template is not
# prefix-preserving and a turn has to be located by searching the rendering.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "</s>")


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one row and which of them are supervised targets."""

    ids: np.ndarray  # (T,) int32
    trained: np.ndarray  # (T,) bool; trained[i]: loss on predicting ids[i] from ids[:i]
    path: str
    line: int
    truncated: bool = False
    tags: tuple[str, ...] = ()

    @property
    def num_trained(self) -> int:
        return int(np.count_nonzero(self.trained))


@dataclass(frozen=True)
class SkippedRow:
    """A row that was left out of training, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class TokenizedDataset:
    """The trainable rows of one split, plus the rows that were skipped."""

    examples: list[TokenizedExample]
    skipped: list[SkippedRow] = field(default_factory=list)
    num_truncated: int = 0  # kept rows that lost tokens to max_seq_length
    max_seq_length: int | None = None

    def summary(self) -> str:
        """One paragraph for people: rows, tokens, trained share, truncation, skips."""
        tokens = sum(len(ex.ids) for ex in self.examples)
        trained = sum(ex.num_trained for ex in self.examples)
        share = trained / tokens if tokens else 0.0
        text = (
            f"{len(self.examples)} rows ({tokens} tokens, {trained} trained = {share:.0%}); "
            f"{self.num_truncated} truncated"
        )
        if self.max_seq_length is not None:
            text += f" to max_seq_length={self.max_seq_length}"
        text += f"; {len(self.skipped)} skipped"
        for row in self.skipped[:5]:
            text += f"\n  skipped {row}"
        if len(self.skipped) > 5:
            text += f"\n  ... and {len(self.skipped) - 5} more"
        return text


# --- datasets -----------------------------------------------------------------------


def tokenize_dataset(
    examples: Sequence[Example],
    tokenizer,
    *,
    mask: str = "assistant",
    max_seq_length: int | None = None,
) -> TokenizedDataset:
    """Tokenize every row; rows with no trained token left go to `skipped`."""
    kept, skipped, num_truncated = [], [], 0
    for example in examples:
        full = tokenize_example(example, tokenizer, mask=mask, max_seq_length=None)
        tokenized = _truncate(full, max_seq_length)
        reason = _skip_reason(full, tokenized, example, mask, max_seq_length)
        if reason is not None:
            skipped.append(SkippedRow(example.path, example.line, reason))
            continue
        kept.append(tokenized)
        num_truncated += tokenized.truncated
    return TokenizedDataset(kept, skipped, num_truncated, max_seq_length)


def _skip_reason(full, tokenized, example, mask, max_seq_length) -> str | None:
    if tokenized.num_trained > 0:
        return None
    if full.num_trained == 0:
        return f"no trained tokens (mask={mask!r}, {len(full.ids)} tokens)"
    what = {"chat": "assistant", "completion": "completion"}.get(example.kind, "trained")
    return (
        f"all {what} tokens were truncated away by max_seq_length={max_seq_length} "
        f"(the row has {len(full.ids)} tokens); raise max_seq_length or shorten the row"
    )


# --- one example --------------------------------------------------------------------


def tokenize_example(
    example: Example,
    tokenizer,
    *,
    mask: str = "assistant",
    max_seq_length: int | None = None,
) -> TokenizedExample:
    """Token ids and trained flags of one row, truncated (keeping the start) if asked."""
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    hf = _hf_tokenizer(tokenizer)
    if example.kind == "chat":
        ids, trained = _tokenize_chat(hf, example, mask)
    else:
        ids, trained = _tokenize_plain(hf, example)
    if mask == "none":
        trained = np.ones(len(ids), dtype=bool)
    if len(trained):
        trained[0] = False  # nothing predicts the first token
    result = TokenizedExample(ids, trained, example.path, example.line, False, example.tags)
    return _truncate(result, max_seq_length)


def _tokenize_chat(hf, example: Example, mask: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, trained) of the rendered chat; the template brings its own BOS/end tokens."""
    text = _render(hf, example, example.messages, generation_prompt=False)
    spans = [] if mask == "none" else _assistant_spans(hf, example, text)
    if mask == "last":
        spans = spans[-1:]
    ids, offsets = _encode(hf, text, example, add_special_tokens=False)
    return ids, _overlaps(offsets, spans)


def _tokenize_plain(hf, example: Example) -> tuple[np.ndarray, np.ndarray]:
    """(ids, trained) of prompt + completion or of a text, with EOS appended and trained.

    The tokenizer adds its own specials (e.g. BOS); EOS is appended as an id (unless the
    tokenizer already ended with it) so the model learns to stop.
    """
    if example.kind == "completion":
        text = example.prompt + example.completion
        spans = [(len(example.prompt), len(text))]
    else:
        text = example.text
        spans = [(0, len(text))]
    ids, offsets = _encode(hf, text, example, add_special_tokens=True)
    trained = _overlaps(offsets, spans)
    eos_id = getattr(hf, "eos_token_id", None)
    if isinstance(eos_id, int) and (len(ids) == 0 or ids[-1] != eos_id):
        ids = np.append(ids, np.int32(eos_id))
        trained = np.append(trained, True)
    return ids, trained


def _hf_tokenizer(tokenizer):
    """The transformers tokenizer inside mlx-lm's `TokenizerWrapper`, or `tokenizer` itself.

    (A transformers fast tokenizer also has a `_tokenizer`: the Rust one, which has no
    chat template; hence the check.)
    """
    inner = getattr(tokenizer, "_tokenizer", None)
    return inner if hasattr(inner, "apply_chat_template") else tokenizer


def _truncate(ex: TokenizedExample, max_seq_length: int | None) -> TokenizedExample:
    if max_seq_length is None or len(ex.ids) <= max_seq_length:
        return ex
    n = max_seq_length
    return TokenizedExample(ex.ids[:n], ex.trained[:n], ex.path, ex.line, True, ex.tags)


def _encode(hf, text: str, example: Example, *, add_special_tokens: bool):
    """Token ids (T,) int32 and character offsets (T, 2) int64 of `text`."""
    try:
        enc = hf(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    except NotImplementedError:
        raise DataError(
            "this tokenizer cannot report character offsets (it is not a fast tokenizer), "
            "so the training mask cannot be computed.",
            path=example.path,
            line=example.line,
        ) from None
    ids = np.asarray(enc["input_ids"], dtype=np.int32).reshape(-1)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return ids, offsets


def _overlaps(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """(T,) bool: token t's characters [a, b) overlap some span [s, e).

    A token with empty offsets (a == b, e.g. an added BOS) counts only when it sits
    strictly inside a span.
    """
    starts, ends = offsets[:, 0], offsets[:, 1]
    trained = np.zeros(len(offsets), dtype=bool)
    empty = starts == ends
    for s, e in spans:
        trained |= ~empty & (starts < e) & (ends > s)
        trained |= empty & (starts > s) & (starts < e)
    return trained


# --- chat spans ---------------------------------------------------------------------


def _render(hf, example: Example, messages, *, generation_prompt: bool) -> str:
    """The chat template applied to `messages` (with the row's tools), as text."""
    if not getattr(hf, "chat_template", None):
        raise DataError(
            "this is a chat row but the tokenizer has no chat template; use a model with "
            'one, or write the data as {"prompt", "completion"} or {"text"} rows.',
            path=example.path,
            line=example.line,
        )
    kwargs = {"tools": example.tools} if example.tools is not None else {}
    try:
        return hf.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt, **kwargs
        )
    except Exception as e:  # jinja raises anything, e.g. "roles must alternate"
        raise DataError(
            f"the model's chat template failed on this row: {e}",
            path=example.path,
            line=example.line,
        ) from None


def _assistant_spans(hf, example: Example, full: str) -> list[tuple[int, int]]:
    """Character spans [start, end) in `full` of every assistant turn, in order."""
    spans, cursor = [], 0
    for i, message in enumerate(example.messages):
        if message["role"] != "assistant":
            continue
        span = _span_by_prefix(hf, example, full, i, cursor)
        if span is None:
            span = _span_by_search(hf, example, full, i, cursor)
        start, end = span
        end = start + len(full[start:end].rstrip())  # never train whitespace after the turn
        spans.append((start, end))
        cursor = end
    return spans


def _span_by_prefix(hf, example, full, i, cursor) -> tuple[int, int] | None:
    """Span of turn i from partial renderings, or None if the template is not prefix-preserving."""
    try:
        before = _render(hf, example, example.messages[:i], generation_prompt=True)
        through = _render(hf, example, example.messages[: i + 1], generation_prompt=False)
    except DataError:
        return None  # e.g. a template that refuses a conversation ending with a user turn
    if not (through.startswith(before) and full.startswith(through)):
        return None
    if len(before) < cursor or len(through) <= len(before):
        return None
    return len(before), len(through)


def _span_by_search(hf, example, full, i, cursor) -> tuple[int, int]:
    """Locate turn i in `full` after `cursor`: its header, its content, its end marker."""
    header = _assistant_header(hf, example, i)
    at = full.find(header, cursor) if header else -1
    start = at + len(header) if at >= 0 else cursor
    content = (example.messages[i].get("content") or "").strip()
    markers = _end_markers(hf)
    if content and (pos := full.find(content, start)) >= 0:
        start = start if at >= 0 else pos
        return start, _extend_over_marker(full, pos + len(content), markers, within_turn=False)
    if not content and at >= 0:  # a tool-call-only turn: train up to its end marker
        return start, _extend_over_marker(full, start, markers, within_turn=True)
    raise DataError(
        f"could not find assistant message {i} in the chat template's rendering (the "
        "template rewrites it); check the template or simplify the message.",
        path=example.path,
        line=example.line,
    )


def _assistant_header(hf, example, i) -> str:
    """The text the template adds for add_generation_prompt after messages[:i]."""
    try:
        plain = _render(hf, example, example.messages[:i], generation_prompt=False)
        prompted = _render(hf, example, example.messages[:i], generation_prompt=True)
    except DataError:
        return ""
    return prompted[len(plain) :] if prompted.startswith(plain) else ""


def _end_markers(hf) -> list[str]:
    markers = list(END_OF_TURN)
    eos = getattr(hf, "eos_token", None)
    if isinstance(eos, str) and eos:
        markers.insert(0, eos)
    return markers


def _extend_over_marker(full: str, end: int, markers: list[str], *, within_turn: bool) -> int:
    """Move `end` past the end-of-turn marker that follows the content.

    Right after the content only whitespace may come before the marker; for a turn
    without content (tool calls), the first marker after `end` closes it.
    """
    found = [(full.find(m, end), m) for m in markers]
    found = [(pos, m) for pos, m in found if pos >= 0]
    if not found:
        return end
    pos, marker = min(found)
    if within_turn or not full[end:pos].strip():
        return pos + len(marker)
    return end
