"""The data layer: load JSONL rows, render and mask them, plan and collate batches.

- `formats`: read and validate chat / prompt-completion / text JSONL into `Example`s.
- `templates`: what a chat template says the model generates per assistant turn.
- `masking`: tokenization into training sequences and the per-token training mask.
- `splits`: a recipe's data files (`resolve_data_files`) and their tokenized splits.
- `batching`: length-sorted batch plans, token budgets, packing, and `Batch` arrays.
"""

from .batching import (
    Batch,
    collate,
    count_batches,
    padding_waste,
    plan_batches,
    plan_padding_waste,
)
from .formats import Example, load_jsonl
from .masking import (
    SkippedRow,
    TokenizedDataset,
    TokenizedExample,
    TokenizedRow,
    tokenize_dataset,
    tokenize_row,
)

__all__ = [
    "Batch",
    "Example",
    "SkippedRow",
    "TokenizedDataset",
    "TokenizedExample",
    "TokenizedRow",
    "collate",
    "count_batches",
    "load_jsonl",
    "padding_waste",
    "plan_batches",
    "plan_padding_waste",
    "tokenize_dataset",
    "tokenize_row",
]
