"""Token ids and the per-token training mask of every row, one or more sequences per row.

This module owns the link between an `Example` and the token ids the trainer sees:

- chat rows follow the generation rule of `templates` (the tokens trained for an
  assistant turn are those the model generates there under its own template). Each
  row becomes one sequence, or several where the template is not prefix-preserving
  (`data.multi_turn`). Each sequence is tokenized once with character offsets; when a
  trained span's edge falls inside a token (a reply starting with whitespace after a
  header ending with whitespace), the sequence is tokenized piece by piece instead, so
  the trained tokens are exactly the generated ones.
- prompt/completion rows are plain concatenation prompt + completion + EOS (never the
  chat template, even when the tokenizer has one); the completion and EOS are trained.
- text rows train every token (+ EOS).

`trained[i]` means: the loss of predicting ids[i] from ids[:i] counts, so
`trained[0]` is always False. Rows the template cannot render (or whose turn order no
template produces) are collected in one pass, each with file:line and the reason:
`on_bad_row="error"` stops with the whole list, `"skip"` trains without them. Rows
left without any trained token are reported in `TokenizedDataset.skipped`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..config import BAD_ROW_POLICIES, MASK_MODES
from ..errors import DataError
from .formats import Example
from .templates import RowPlan, SequencePlan, check_turn_order, hf_tokenizer, plan_chat, render

_SHOWN = 20  # bad rows quoted in one error message


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one training sequence and which of them are supervised targets."""

    ids: np.ndarray  # (T,) int32
    trained: np.ndarray  # (T,) bool; trained[i]: loss on predicting ids[i] from ids[:i]
    path: str
    line: int
    truncated: bool = False
    tags: tuple[str, ...] = ()
    part: int = 0  # which sequence of its row (rows split per turn have several)

    @property
    def num_trained(self) -> int:
        return int(np.count_nonzero(self.trained))


@dataclass(frozen=True)
class TokenizedRow:
    """All training sequences of one row, and how the row was laid out."""

    sequences: tuple[TokenizedExample, ...]
    layout: str  # "one sequence", "split into N sequences", "prompt + completion", ...
    plan: RowPlan | None = None  # chat rows only
    one_sequence_tokens: int = 0  # length of the row as one plain rendering (split cost)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.ids) for s in self.sequences)


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
    """The trainable sequences of one split, plus the rows that were skipped."""

    examples: list[TokenizedExample]
    skipped: list[SkippedRow] = field(default_factory=list)
    num_truncated: int = 0  # kept sequences that lost tokens to max_seq_length
    max_seq_length: int | None = None
    bad_rows: list[SkippedRow] = field(default_factory=list)  # template could not train them
    layouts: dict[str, int] = field(default_factory=dict)  # layout -> rows
    split_extra_tokens: int = 0  # tokens added by splitting rows per turn

    def summary(self) -> str:
        """One paragraph for people: rows, tokens, trained share, splits, truncation, skips."""
        tokens = sum(len(ex.ids) for ex in self.examples)
        trained = sum(ex.num_trained for ex in self.examples)
        share = trained / tokens if tokens else 0.0
        text = (
            f"{len(self.examples)} sequences ({tokens} tokens, {trained} trained = {share:.0%}); "
            f"{self.num_truncated} truncated"
        )
        if self.max_seq_length is not None:
            text += f" to max_seq_length={self.max_seq_length}"
        text += f"; {len(self.skipped)} rows skipped"
        split = {k: v for k, v in self.layouts.items() if k.startswith("split")}
        if split:
            text += (
                f"; {sum(split.values())} rows split per turn (the template is not prefix-preserving), "
                f"+{self.split_extra_tokens} tokens"
            )
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
    multi_turn: str = "auto",
    on_bad_row: str = "error",
    train_reasoning: bool = True,
) -> TokenizedDataset:
    """Tokenize every row; bad rows are all listed (error) or skipped; empty rows go to `skipped`."""
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")
    kept, skipped, bad, num_truncated = [], [], [], 0
    layouts: Counter = Counter()
    extra = 0
    for example in examples:
        try:
            row = tokenize_row(example, tokenizer, mask=mask, multi_turn=multi_turn, train_reasoning=train_reasoning)
        except DataError as exc:
            bad.append(SkippedRow(example.path, example.line, exc.detail))
            continue
        layouts[row.layout] += 1
        if row.layout.startswith("split"):
            extra += row.num_tokens - row.one_sequence_tokens
        sequences = [_truncate(s, max_seq_length) for s in row.sequences]
        kept_here = [t for t in sequences if t.num_trained > 0]
        if not kept_here:
            skipped.append(SkippedRow(example.path, example.line, _skip_reason(row, example, mask, max_seq_length)))
            continue
        kept.extend(kept_here)
        num_truncated += sum(t.truncated for t in kept_here)
    if bad and on_bad_row == "error":
        raise bad_rows_error(bad)
    return TokenizedDataset(kept, bad + skipped, num_truncated, max_seq_length, bad, dict(layouts), extra)


def bad_rows_error(bad: list[SkippedRow]) -> DataError:
    """One error listing every row the template cannot train, and what to do."""
    lines = "\n".join(f"  {row}" for row in bad[:_SHOWN])
    more = f"\n  ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    return DataError(
        f"{len(bad)} rows cannot be trained as written:\n{lines}{more}\n"
        "Fix them, or set data.on_bad_row: skip to train without them (they are listed in the "
        "run's events)."
    )


def _skip_reason(row: TokenizedRow, example, mask, max_seq_length) -> str:
    full_trained = sum(s.num_trained for s in row.sequences)
    if full_trained == 0:
        return f"no trained tokens (mask={mask!r}, {row.num_tokens} tokens)"
    what = {"chat": "assistant", "completion": "completion"}.get(example.kind, "trained")
    longest = max(len(s.ids) for s in row.sequences)
    return (
        f"all {what} tokens were truncated away by max_seq_length={max_seq_length} "
        f"(the row has {longest} tokens); raise max_seq_length or shorten the row"
    )


# --- one row --------------------------------------------------------------------------


def tokenize_row(
    example: Example,
    tokenizer,
    *,
    mask: str = "assistant",
    multi_turn: str = "auto",
    train_reasoning: bool = True,
) -> TokenizedRow:
    """The training sequences of one row (untruncated); raises `DataError` for a bad row."""
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")
    hf = hf_tokenizer(tokenizer)
    if example.kind != "chat":
        ids, trained = _tokenize_plain(hf, example)
        if mask == "none":
            trained = np.ones(len(ids), dtype=bool)
        layout = "prompt + completion" if example.kind == "completion" else "text"
        return TokenizedRow((_example(ids, trained, example, 0),), layout, None, len(ids))
    problem = check_turn_order(example.messages)
    if problem:
        raise DataError(problem, path=example.path, line=example.line)
    plan = plan_chat(hf, example, mask=mask, multi_turn=multi_turn, train_reasoning=train_reasoning)
    sequences = tuple(
        _example(*_tokenize_sequence(hf, seq, example), example, part) for part, seq in enumerate(plan.sequences)
    )
    one = len(sequences[0].ids)
    if len(sequences) > 1:
        full = render(hf, example, example.messages, generation_prompt=False)
        one = len(_encode(hf, full, example, add_special_tokens=False)[0])
    return TokenizedRow(sequences, plan.layout, plan, one)


def _example(ids, trained, example: Example, part: int) -> TokenizedExample:
    trained = np.array(trained, dtype=bool)
    if len(trained):
        trained[0] = False  # nothing predicts the first token
    ids = np.asarray(ids, dtype=np.int32)
    return TokenizedExample(ids, trained, example.path, example.line, False, example.tags, part)


def _tokenize_sequence(hf, seq: SequencePlan, example: Example) -> tuple[np.ndarray, np.ndarray]:
    """(ids, trained) of one sequence: its trained spans are exactly the generated tokens."""
    spans = [(s, e) for s, e, _ in seq.spans]
    ids, offsets = _encode(hf, seq.text, example, add_special_tokens=False)
    if _aligned(hf, seq.text, spans, ids, offsets, example):
        return ids, _overlaps(offsets, spans)
    return _tokenize_pieces(hf, seq.text, spans, example)


def _aligned(hf, text: str, spans, ids, offsets, example) -> bool:
    """No token straddles a span edge, and the tokens before each span are the prompt's own."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    for s, e in spans:
        for edge in (s, e):
            if np.any((starts < edge) & (ends > edge)):
                return False
        prefix, _ = _encode(hf, text[:s], example, add_special_tokens=False)
        if not np.array_equal(ids[: len(prefix)], prefix):
            return False
    return True


def _tokenize_pieces(hf, text: str, spans, example) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize the context and trained pieces separately (edges inside tokens)."""
    edges = sorted({0, len(text), *(x for span in spans for x in span)})
    ids, trained = [], []
    for a, b in zip(edges, edges[1:], strict=False):
        piece_ids, _ = _encode(hf, text[a:b], example, add_special_tokens=False)
        inside = any(s <= a and b <= e for s, e in spans)
        ids.extend(piece_ids.tolist())
        trained.extend([inside] * len(piece_ids))
    return np.asarray(ids, dtype=np.int32), np.asarray(trained, dtype=bool)


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


def _truncate(ex: TokenizedExample, max_seq_length: int | None) -> TokenizedExample:
    if max_seq_length is None or len(ex.ids) <= max_seq_length:
        return ex
    n = max_seq_length
    return TokenizedExample(ex.ids[:n], ex.trained[:n], ex.path, ex.line, True, ex.tags, ex.part)


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
