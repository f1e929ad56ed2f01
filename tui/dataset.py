"""Dataset preview for the New run screen: rows, format, token lengths, the first example.

Uses the core's own loader, masker and row view (`load_jsonl`, `tokenize_row`,
`view_row`) with the model's tokenizer, so what the preview highlights as trained is
exactly what the trainer will train, sequence by sequence where the chat template
makes a row split per turn. Runs in a worker thread (tokenizer loading takes a second or
two); nothing here touches MLX.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlxsft.config import DataConfig
from mlxsft.data.formats import load_jsonl
from mlxsft.data.masking import tokenize_row
from mlxsft.data.preview import view_row
from mlxsft.data.splits import resolve_data_files
from mlxsft.errors import DataError

MAX_ROWS_TOKENIZED = 2000  # enough for a length histogram; big files are sampled evenly


@dataclass(frozen=True)
class DatasetPreview:
    train_file: Path
    valid_file: Path | None
    num_rows: int
    num_valid_rows: int | None
    kind: str  # chat | completion | text
    lengths: tuple[int, ...]  # full token length of each tokenized row (before truncation)
    trained_tokens: tuple[int, ...]  # trained tokens per tokenized row
    first_spans: tuple[tuple[str, bool], ...]  # the first row, as (text, trained) runs
    first_where: str  # "path:line" of the first row
    first_layout: str = "one sequence"  # how the first row is trained
    split_rows: int = 0  # sampled rows trained as one sequence per turn
    bad_rows: tuple[str, ...] = ()  # "path:line: reason" of sampled rows the template cannot train

    @property
    def mean_length(self) -> float:
        return sum(self.lengths) / max(len(self.lengths), 1)

    def num_over(self, max_seq_length: int) -> int:
        return sum(1 for n in self.lengths if n > max_seq_length)

    def summary(self, max_seq_length: int) -> str:
        over = self.num_over(max_seq_length)
        sampled = f" (lengths from {len(self.lengths)} sampled rows)" if len(self.lengths) < self.num_rows else ""
        valid = f", {self.num_valid_rows} valid rows" if self.num_valid_rows is not None else ", no validation file"
        share = sum(self.trained_tokens) / max(sum(self.lengths), 1)
        text = (
            f"{self.num_rows} {self.kind} rows{valid}{sampled}\n"
            f"tokens per row: mean {self.mean_length:.0f}, max {max(self.lengths, default=0)}; "
            f"{share:.0%} of tokens trained"
        )
        if over:
            text += f"\n{over} rows longer than max_seq_length={max_seq_length} will be truncated"
        if self.split_rows:
            text += (
                f"\n{self.split_rows} rows split into one sequence per turn (the chat template renders "
                "earlier turns differently from how they were generated)"
            )
        if self.bad_rows:
            text += f"\n{len(self.bad_rows)} rows the template cannot train, e.g. {self.bad_rows[0]}"
        return text


def load_preview_tokenizer(model_dir: str | Path):
    """The model's Hugging Face tokenizer (what the trainer's mlx-lm wrapper holds)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def preview_dataset(
    data_path: str | Path, tokenizer, mask: str = "assistant", multi_turn: str = "auto"
) -> DatasetPreview:
    """Load, validate and tokenize (a sample of) a dataset; raises `MlxsftError` on bad data."""
    files = resolve_data_files(DataConfig(train=str(data_path)))
    examples = load_jsonl(files["train"])
    valid_rows = len(load_jsonl(files["valid"])) if files["valid"] is not None else None
    stride = max(1, len(examples) // MAX_ROWS_TOKENIZED)
    sequences, bad, split_rows = [], [], 0
    for ex in examples[::stride]:
        try:
            row = tokenize_row(ex, tokenizer, mask=mask, multi_turn=multi_turn)
        except DataError as exc:
            bad.append(str(exc))
            continue
        sequences += row.sequences
        split_rows += row.layout.startswith("split")
    first = _first_view(examples, tokenizer, mask, multi_turn)
    return DatasetPreview(
        train_file=files["train"],
        valid_file=files["valid"],
        num_rows=len(examples),
        num_valid_rows=valid_rows,
        kind=examples[0].kind,
        lengths=tuple(len(t.ids) for t in sequences),
        trained_tokens=tuple(t.num_trained for t in sequences),
        first_spans=first[0],
        first_where=first[1],
        first_layout=first[2],
        split_rows=split_rows,
        bad_rows=tuple(bad),
    )


def _first_view(examples, tokenizer, mask: str, multi_turn: str) -> tuple[tuple[tuple[str, bool], ...], str, str]:
    """(spans, where, layout) of the first row the template can train; sequences shown one after another."""
    for ex in examples:
        try:
            view = view_row(ex, tokenizer, mask=mask, multi_turn=multi_turn)
        except DataError:
            continue
        spans: list[tuple[str, bool]] = []
        for n, seq in enumerate(view.sequences, start=1):
            if len(view.sequences) > 1:
                gap = "" if n == 1 else "\n"
                spans.append((f"{gap}── sequence {n} of {len(view.sequences)} ──\n", False))
            spans += [(s.text, s.trained) for s in seq.segments]
        return tuple(spans), view.where, view.layout
    raise DataError("the chat template cannot train any row of this file; run `mlxsft data check` for why.")


def length_histogram(lengths: tuple[int, ...], max_seq_length: int, bins: int = 8) -> list[tuple[int, int, int]]:
    """(low, high, count) bins over 0..max(longest row, max_seq_length); an edge at the limit."""
    if not lengths:
        return []
    top = max(max(lengths), max_seq_length)
    inside = max(1, round(bins * max_seq_length / top))  # bins up to the limit, the rest above it
    edges = [round(max_seq_length * i / inside) for i in range(inside + 1)]
    outside = bins - inside
    if top > max_seq_length and outside > 0:
        edges += [round(max_seq_length + (top - max_seq_length) * i / outside) for i in range(1, outside + 1)]
    edges = sorted(set(edges))
    counts = []
    for low, high in zip(edges, edges[1:], strict=False):
        last = high == edges[-1]
        counts.append(
            (
                low,
                high,
                sum(1 for n in lengths if low < n <= high or (low == 0 and n == 0) or (last and n > high)),
            )
        )
    return counts
