"""Preference pairs (DPO, ORPO): reading, checking and tokenizing JSONL pairs.

This module owns the pair formats people already have, as TRL reads them:

- conversational: {"prompt": [messages], "chosen": [assistant messages], "rejected": [...]}
- conversational, implicit prompt: {"chosen": [whole chat], "rejected": [whole chat]};
  the prompt is every message before the final assistant turn, and must be the same
  on both sides.
- plain: {"prompt": "...", "chosen": "...", "rejected": "..."}.

Each side is tokenized by `masking.tokenize_row`, so the trained tokens of a side are
exactly those SFT would train for that reply: the last assistant turn as the chat
template generates it (conversational), or the completion + EOS (plain). Both sides
must then share the same prompt tokens. Bad rows (a missing side, identical chosen and
rejected, an empty response, a prompt that differs between the sides, a row the
template cannot render) are all listed in one pass with file:line, and
`on_bad_row` decides between stopping (`error`) and training without them (`skip`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import BAD_ROW_POLICIES
from ..errors import DataError
from .batching import Batch, collate
from .formats import ROLES, Example, _check_file, _decode_line, _parse_row
from .masking import SkippedRow, TokenizedExample, _truncate, bad_rows_error, tokenize_row

PAIR_SHAPES = (
    '{"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", "content": "..."}], '
    '"rejected": [{"role": "assistant", "content": "..."}]}',
    '{"prompt": "...", "chosen": "...", "rejected": "..."}',
)


@dataclass(frozen=True)
class PreferencePair:
    """One validated pair: the chosen and rejected rows it trains, as SFT examples."""

    chosen: Example
    rejected: Example
    path: str
    line: int


@dataclass(frozen=True)
class TokenizedPair:
    chosen: TokenizedExample
    rejected: TokenizedExample
    truncated: bool = False

    @property
    def path(self) -> str:
        return self.chosen.path

    @property
    def line(self) -> int:
        return self.chosen.line


@dataclass(frozen=True)
class PreferenceDataset:
    """The trainable pairs of one split, plus the rows left out (bad or emptied by truncation)."""

    pairs: list[TokenizedPair]
    skipped: list[SkippedRow] = field(default_factory=list)
    bad_rows: list[SkippedRow] = field(default_factory=list)
    num_truncated: int = 0
    max_seq_length: int | None = None

    @property
    def examples(self) -> list[TokenizedPair]:  # the name BatchSource users read
        return self.pairs

    @property
    def layouts(self) -> dict[str, int]:
        return {"pair (chosen + rejected)": len(self.pairs)} if self.pairs else {}

    split_extra_tokens = 0


# --- reading ---------------------------------------------------------------------------


def scan_pairs(path: str | Path) -> tuple[list[PreferencePair], list[SkippedRow]]:
    """Every valid pair of a JSONL file, and each bad row with its line and reason."""
    path = Path(path)
    where = str(path)
    _check_file(path, where)
    pairs, bad = [], []
    for line_no, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            text = _decode_line(raw, where, line_no)
            if not text.strip():
                continue
            pairs.append(read_pair(_parse_row(text, where, line_no), where, line_no))
        except DataError as exc:
            bad.append(SkippedRow(where, line_no, exc.detail))
    if not pairs and not bad:
        raise DataError(f"the file is empty (no rows); write one pair per line, e.g. {PAIR_SHAPES[1]}", path=where)
    return pairs, bad


def read_pair(row: dict, where: str, line: int) -> PreferencePair:
    """Check one row (see module doc) and turn its two sides into SFT examples."""

    def fail(message: str):
        raise DataError(message, path=where, line=line)

    for side in ("chosen", "rejected"):
        if side not in row or row[side] is None:
            fail(f"missing '{side}': a pair needs both a chosen and a rejected response, e.g. {PAIR_SHAPES[1]}")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, str):
            fail(
                f"'prompt' must be a string when 'chosen' and 'rejected' are strings (the plain form {PAIR_SHAPES[1]})."
            )
        _check_responses(chosen, rejected, fail)
        common = dict(kind="completion", prompt=prompt, path=where, line=line)
        return PreferencePair(Example(completion=chosen, **common), Example(completion=rejected, **common), where, line)
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        fail(
            "'chosen' and 'rejected' must both be strings (with a string 'prompt') or both be lists of "
            f"messages (with 'prompt' as messages), e.g. {PAIR_SHAPES[0]}"
        )
    chosen_msgs = _messages(chosen, "chosen", fail)
    rejected_msgs = _messages(rejected, "rejected", fail)
    if prompt is None:  # implicit prompt: the chats share everything before their last reply
        prompt_msgs, chosen_msgs = chosen_msgs[:-1], chosen_msgs[-1:]
        other_prompt, rejected_msgs = rejected_msgs[:-1], rejected_msgs[-1:]
        if prompt_msgs != other_prompt:
            fail(
                "the prompt differs between the sides: the messages before the last reply of 'chosen' and of "
                "'rejected' must be the same (only the final assistant reply differs in a pair)."
            )
    else:
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        prompt_msgs = _messages(prompt, "prompt", fail)
    for side, msgs in (("chosen", chosen_msgs), ("rejected", rejected_msgs)):
        if not msgs or msgs[-1]["role"] != "assistant":
            fail(f"'{side}' must end with an assistant message (the response being compared).")
    if not prompt_msgs:
        fail("the pair has no prompt: give 'prompt' messages, or whole chats in 'chosen' and 'rejected'.")
    _check_responses(_reply(chosen_msgs), _reply(rejected_msgs), fail)
    common = dict(kind="chat", path=where, line=line)
    return PreferencePair(
        Example(messages=tuple(prompt_msgs + chosen_msgs), **common),
        Example(messages=tuple(prompt_msgs + rejected_msgs), **common),
        where,
        line,
    )


def _reply(messages: list[dict]) -> str:
    return messages[-1].get("content") or ""


def _check_responses(chosen: str, rejected: str, fail) -> None:
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            fail(f"the {side} response is empty; both responses need text to compare.")
    if chosen.strip() == rejected.strip():
        fail("chosen and rejected are identical, so the pair prefers nothing; fix or drop it.")


def _messages(value, key: str, fail) -> list[dict]:
    if not isinstance(value, list) or not value:
        fail(f"'{key}' must be a non-empty list of messages with 'role' and 'content'.")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            fail(f"{key}[{i}] must be an object with a 'role' ({', '.join(ROLES)}) and a string 'content'.")
        out.append(dict(m))
    return out


# --- tokenizing ------------------------------------------------------------------------


def tokenize_pair(pair: PreferencePair, tokenizer) -> TokenizedPair:
    """Both sides with SFT's masking of the final reply; raises `DataError` for a bad row."""
    sides = [tokenize_row(ex, tokenizer, mask="last", multi_turn="single") for ex in (pair.chosen, pair.rejected)]
    chosen, rejected = (_one_sequence(row.sequences, pair) for row in sides)
    if not np.array_equal(_prompt_ids(chosen), _prompt_ids(rejected)):
        raise DataError(
            "the prompt tokenizes differently on the two sides (the response's first characters merge into "
            "the prompt's last token); start both responses so that they do not, e.g. with the same "
            "separator.",
            path=pair.path,
            line=pair.line,
        )
    return TokenizedPair(chosen, rejected)


def _one_sequence(sequences, pair: PreferencePair) -> TokenizedExample:
    if len(sequences) != 1 or sequences[0].num_trained == 0:
        raise DataError("the chat template leaves no trained token for this response.", path=pair.path, line=pair.line)
    return sequences[0]


def _prompt_ids(ex: TokenizedExample) -> np.ndarray:
    """Token ids before the first trained one (the shared prompt)."""
    first = int(np.argmax(ex.trained)) if ex.trained.any() else len(ex.ids)
    return ex.ids[:first]


def tokenize_pairs(
    pairs: Sequence[PreferencePair],
    tokenizer,
    *,
    max_seq_length: int | None = None,
    on_bad_row: str = "error",
    bad: list[SkippedRow] | None = None,
) -> PreferenceDataset:
    """Tokenize every pair; bad rows (with `bad`, those found while reading) are listed or skipped."""
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")
    bad = list(bad or [])
    kept, skipped, truncated = [], [], 0
    for pair in pairs:
        try:
            tokenized = tokenize_pair(pair, tokenizer)
        except DataError as exc:
            bad.append(SkippedRow(pair.path, pair.line, exc.detail))
            continue
        c, r = (_truncate(ex, max_seq_length) for ex in (tokenized.chosen, tokenized.rejected))
        if c.num_trained == 0 or r.num_trained == 0:
            longest = max(len(tokenized.chosen.ids), len(tokenized.rejected.ids))
            skipped.append(
                SkippedRow(
                    pair.path,
                    pair.line,
                    f"a response was truncated away by max_seq_length="
                    f"{max_seq_length} (the longer side has {longest} tokens); raise "
                    "max_seq_length or shorten the row",
                )
            )
            continue
        cut = c.truncated or r.truncated
        kept.append(TokenizedPair(c, r, cut))
        truncated += cut
    bad.sort(key=lambda row: row.line)
    if bad and on_bad_row == "error":
        raise bad_rows_error(bad)
    return PreferenceDataset(kept, bad + skipped, bad, truncated, max_seq_length)


def load_pairs(
    path: str | Path, tokenizer, *, max_seq_length: int | None = None, on_bad_row: str = "error"
) -> PreferenceDataset:
    """Read, check and tokenize a preference JSONL file (one pass lists every bad row)."""
    pairs, bad = scan_pairs(path)
    return tokenize_pairs(pairs, tokenizer, max_seq_length=max_seq_length, on_bad_row=on_bad_row, bad=bad)


# --- batching ----------------------------------------------------------------------------


def collate_pairs(pairs: Sequence[TokenizedPair], indices: Sequence[int], pad_id: int) -> Batch:
    """One batch of N pairs as 2N rows: the chosen sides first, then the rejected ones in the same
    order (TRL's concatenated layout), so row i and row N + i are one pair. Never packed."""
    examples = [pairs[i].chosen for i in indices] + [pairs[i].rejected for i in indices]
    return collate(examples, [[k] for k in range(len(examples))], pad_id)
