"""Batch planning (length buckets, token budgets, packing) and collation into arrays.

This module owns how tokenized rows become the (B, T) arrays of one step:

- `plan_batches` sorts rows by their real token length so each batch holds rows of
  similar length (little padding), caps every batch by rows and/or padded tokens, and
  optionally packs several short rows into one sequence first. The plan is a pure
  function of its arguments, so the trainer resumes exactly by re-planning an epoch
  with `seed + epoch` and skipping to its cursor.
- `collate` turns one planned batch into a `Batch` of numpy arrays.

Shapes are in tokens of `inputs`: a row of T ids gives T - 1 (input, target) pairs.
Packed examples are shifted one by one (inputs = ids[:-1], targets = ids[1:] per
example, then concatenated), so a packed row of examples with lengths L1..Lk holds
sum(Li) - k positions and no target ever belongs to another example.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .masking import TokenizedExample


@dataclass(frozen=True)
class Batch:
    """One micro-batch. Padding positions have segment 0 and weight 0."""

    inputs: np.ndarray  # (B, T) int32
    targets: np.ndarray  # (B, T) int32, the next token of each input
    weights: np.ndarray  # (B, T) float32, 1.0 where the target is trained
    segments: np.ndarray  # (B, T) int32, 1..k = packed example, 0 = padding
    num_sequences: int  # examples in the batch (more than B when packed)
    num_tokens: int  # non-padding positions
    num_trained: int  # positions with weight 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.inputs.shape


# --- planning -----------------------------------------------------------------------


def plan_batches(
    lengths: Sequence[int],
    *,
    batch_size: int | None,
    batch_tokens: int | None,
    max_seq_length: int,
    pack: bool,
    shuffle: bool,
    seed: int,
    pad_to_multiple: int = 8,
) -> list[list[list[int]]]:
    """Batches -> rows -> example indices, deterministic given the arguments.

    `lengths[i]` is the number of token ids of example i (at most `max_seq_length`).
    `batch_size` caps rows per batch; `batch_tokens` caps rows x padded length, the
    padded length being the one `collate` gives with the same `pad_to_multiple` (a
    batch always takes at least one row, even one longer than the budget). With
    `shuffle`, ties in length are broken at random and the batch order is shuffled;
    the rows inside a batch stay of similar length.
    """
    if batch_size is None and batch_tokens is None:
        raise ValueError("give batch_size, batch_tokens or both")
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    rows = _pack_rows(lengths, max_seq_length, rng if shuffle else None) if pack else None
    if rows is None:
        rows = [[int(i)] for i in range(len(lengths))]
    row_lengths = np.array([_row_positions(lengths, row) for row in rows], dtype=np.int64)
    order = _sorted_order(row_lengths, rng if shuffle else None)
    batches = _fill_batches(order, row_lengths, batch_size, batch_tokens, pad_to_multiple)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return [[rows[r] for r in batch] for batch in batches]


def _row_positions(lengths: np.ndarray, row: list[int]) -> int:
    """Input positions of a (packed) row: each example of L ids gives L - 1."""
    return int(sum(max(int(lengths[i]) - 1, 0) for i in row))


def _sorted_order(lengths: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Indices by increasing length; ties in random order when `rng` is given."""
    tiebreak = rng.permutation(len(lengths)) if rng is not None else np.arange(len(lengths))
    return np.lexsort((tiebreak, lengths))


def _fill_batches(order, lengths, batch_size, batch_tokens, multiple) -> list[list[int]]:
    """Walk rows in increasing length; start a new batch when a cap would be exceeded."""
    batches: list[list[int]] = []
    current: list[int] = []
    for r in order:
        padded = _round_up(int(lengths[r]), multiple)  # longest so far: order is increasing
        fits_rows = batch_size is None or len(current) < batch_size
        fits_tokens = batch_tokens is None or (len(current) + 1) * padded <= batch_tokens
        if current and not (fits_rows and fits_tokens):
            batches.append(current)
            current = []
        current.append(int(r))
    if current:
        batches.append(current)
    return batches


def _pack_rows(lengths: np.ndarray, capacity: int, rng) -> list[list[int]]:
    """Best-fit decreasing: each example (longest first) goes to the fullest row it fits.

    A row's ids total at most `capacity` (= max_seq_length); O(n log n) with bisect.
    """
    order = _sorted_order(lengths, rng)[::-1]
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free capacity, row index)
    for i in order:
        need = int(lengths[i])
        k = bisect.bisect_left(free, (need, -1))
        if k == len(free):
            rows.append([int(i)])
            bisect.insort(free, (capacity - need, len(rows) - 1))
            continue
        room, r = free.pop(k)
        rows[r].append(int(i))
        bisect.insort(free, (room - need, r))
    return rows


def _round_up(n: int, multiple: int) -> int:
    multiple = max(int(multiple), 1)
    return -(-n // multiple) * multiple


# --- collation ----------------------------------------------------------------------


def collate(
    examples: Sequence[TokenizedExample],
    plan_rows: list[list[int]],
    pad_id: int,
    pad_to_multiple: int = 8,
) -> Batch:
    """Arrays of one planned batch: each row is one example or several packed ones.

    Rows are padded with `pad_id` (weight 0, segment 0) to the longest row rounded up
    to `pad_to_multiple` positions.
    """
    rows = [_collate_row(examples, row) for row in plan_rows]
    T = _round_up(max([len(r[0]) for r in rows] + [1]), pad_to_multiple)
    B = len(rows)
    inputs = np.full((B, T), pad_id, dtype=np.int32)
    targets = np.full((B, T), pad_id, dtype=np.int32)
    weights = np.zeros((B, T), dtype=np.float32)
    segments = np.zeros((B, T), dtype=np.int32)
    for b, (x, y, w, s) in enumerate(rows):
        n = len(x)
        inputs[b, :n], targets[b, :n], weights[b, :n], segments[b, :n] = x, y, w, s
    return Batch(
        inputs=inputs,
        targets=targets,
        weights=weights,
        segments=segments,
        num_sequences=sum(len(row) for row in plan_rows),
        num_tokens=int(np.count_nonzero(segments)),
        num_trained=int(np.count_nonzero(weights)),
    )


def _collate_row(examples, row: list[int]):
    """(inputs, targets, weights, segments) of one row, each (n,), shifted per example."""
    parts = []
    for k, i in enumerate(row, start=1):
        ex = examples[i]
        n = len(ex.ids) - 1
        parts.append((ex.ids[:-1], ex.ids[1:], ex.trained[1:].astype(np.float32), np.full(n, k, np.int32)))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


# --- statistics and attention -------------------------------------------------------


def padding_waste(batches: Sequence[Batch]) -> float:
    """Share of padding among all positions of these batches (0.0 = no padding)."""
    total = sum(b.inputs.size for b in batches)
    real = sum(b.num_tokens for b in batches)
    return 1.0 - real / total if total else 0.0


def plan_padding_waste(lengths: Sequence[int], batches: list[list[list[int]]], pad_to_multiple: int = 8) -> float:
    """`padding_waste` of a plan, computed from lengths alone (no arrays built)."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    total = real = 0
    for batch in batches:
        row_lengths = [_row_positions(lengths, row) for row in batch]
        total += len(batch) * _round_up(max(row_lengths, default=1), pad_to_multiple)
        real += sum(row_lengths)
    return 1.0 - real / total if total else 0.0


def count_batches(lengths: Sequence[int], **plan_kwargs) -> int:
    """Batches per epoch for these lengths and `plan_batches` keyword arguments."""
    return len(plan_batches(lengths, **plan_kwargs))
