"""One row as the trainer sees it: its sequences, which text is trained, tokens per turn.

Behind `mlxsft data show` and the TUI's New run preview. It reuses `tokenize_row`
(the trainer's own path), so what it marks as trained is exactly what is trained.
Text is recovered by decoding token prefixes, so each segment is the text those tokens
stand for in context (no stray spaces from decoding a run on its own).
"""

from __future__ import annotations

from dataclasses import dataclass

from .formats import Example
from .masking import TokenizedExample, TokenizedRow, tokenize_row
from .templates import hf_tokenizer


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool
    turn: int | None  # message index of the assistant turn a trained segment belongs to


@dataclass(frozen=True)
class SequenceView:
    segments: tuple[Segment, ...]
    num_tokens: int
    trained_by_turn: tuple[tuple[int | None, int], ...]  # (message index, trained tokens)


@dataclass(frozen=True)
class RowView:
    where: str  # "path:line"
    layout: str
    sequences: tuple[SequenceView, ...]
    untrained_turns: tuple[int, ...] = ()  # assistant turns `multi_turn: single` leaves out
    trailing_text: str = ""


def view_row(example: Example, tokenizer, **options) -> RowView:
    """The row's sequences with trained spans; `options` are `tokenize_row`'s (mask, multi_turn, ...)."""
    row: TokenizedRow = tokenize_row(example, tokenizer, **options)
    hf = hf_tokenizer(tokenizer)
    turns = _span_turns(row)
    sequences = tuple(_view_sequence(hf, seq, turns[i]) for i, seq in enumerate(row.sequences))
    plan = row.plan
    return RowView(
        f"{example.path}:{example.line}",
        row.layout,
        sequences,
        plan.dropped_turns if plan else (),
        plan.trailing_text if plan else "",
    )


def _span_turns(row: TokenizedRow) -> list[list[int | None]]:
    """Per sequence, the message index of each trained span, in order."""
    if row.plan is None:
        return [[None] for _ in row.sequences]
    return [[turn if turn >= 0 else None for _, _, turn in seq.spans] for seq in row.plan.sequences]


def _view_sequence(hf, seq: TokenizedExample, turns: list[int | None]) -> SequenceView:
    ids, trained = seq.ids.tolist(), seq.trained.tolist()
    segments, counts, start, run = [], {}, 0, 0
    for t in range(1, len(ids) + 1):
        if t < len(ids) and trained[t] == trained[start]:
            continue
        text = _decode_in_context(hf, ids, start, t)
        turn = None
        if trained[start]:
            turn = turns[run] if run < len(turns) else None
            counts[turn] = counts.get(turn, 0) + (t - start)
            run += 1
        segments.append(Segment(text, bool(trained[start]), turn))
        start = t
    return SequenceView(tuple(segments), len(ids), tuple(counts.items()))


def _decode_in_context(hf, ids: list[int], start: int, end: int) -> str:
    before = hf.decode(ids[:start]) if start else ""
    return hf.decode(ids[:end])[len(before) :]
