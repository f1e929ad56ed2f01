"""The data layer: load JSONL rows, render and mask them, plan and collate batches.

- `formats`: read and validate chat / prompt-completion / text JSONL into `Example`s.
- `masking`: chat template rendering, tokenization and the per-token training mask.
- `batching`: length-sorted batch plans, token budgets, packing, and `Batch` arrays.
"""

from .batching import (
    Batch,
    collate,
    count_batches,
    padding_waste,
    plan_batches,
    plan_padding_waste,
    segment_attention_mask,
)
from .formats import Example, load_jsonl
from .masking import (
    SkippedRow,
    TokenizedDataset,
    TokenizedExample,
    tokenize_dataset,
    tokenize_example,
)

__all__ = [
    "Batch",
    "Example",
    "SkippedRow",
    "TokenizedDataset",
    "TokenizedExample",
    "collate",
    "count_batches",
    "load_jsonl",
    "padding_waste",
    "plan_batches",
    "plan_padding_waste",
    "segment_attention_mask",
    "tokenize_dataset",
    "tokenize_example",
]
