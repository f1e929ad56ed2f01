"""Turn a recipe's data section into tokenized splits and per-epoch batch plans.

The plan for epoch e is a pure function of (lengths, batching knobs, seed + e), so a
resumed run rebuilds the exact batch order from its saved (epoch, cursor).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..config import DataConfig, TrainConfig
from ..data.batching import Batch, collate, padding_waste, plan_batches
from ..data.formats import load_jsonl
from ..data.masking import TokenizedDataset, tokenize_dataset
from ..errors import DataError


def resolve_data_files(data: DataConfig) -> dict[str, Path | None]:
    """Paths of the train/valid/test files; `train` may be a folder holding train.jsonl etc."""
    train = Path(data.train)
    if train.is_dir():
        folder = train
        files = {name: folder / f"{name}.jsonl" for name in ("train", "valid", "test")}
        if not files["train"].is_file():
            raise DataError(f"{_not_a_file(files['train'])}; a data folder needs a train.jsonl file.",
                            path=str(files["train"]))
        for name in ("valid", "test"):  # absent is fine; present but unusable is not
            path = files[name]
            if path.exists() or path.is_symlink():
                if not path.is_file():
                    raise DataError(f"{_not_a_file(path)}; make it a JSONL file or remove it.", path=str(path))
            else:
                files[name] = None
    else:
        files = {"train": train, "valid": None, "test": None}
    for name in ("valid", "test"):
        given = getattr(data, name)
        if given:
            files[name] = Path(given)
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise DataError(f"{_not_a_file(path)}; check data.{name} in the recipe.", path=str(path))
    return files


def _not_a_file(path: Path) -> str:
    """Why `path` cannot be read as a data file, in words."""
    if path.is_dir():
        return "this is a folder, not a JSONL file"
    if path.is_symlink():
        try:
            path.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"this is a symlink loop (it points to {os.readlink(path)}, which leads back to itself)"
            return f"this symlink points to {os.readlink(path)}, which does not exist"
    if path.exists():
        return "this is not a regular file"
    return "data file not found"


def load_split(path: Path, tokenizer, data: DataConfig, train: TrainConfig) -> TokenizedDataset:
    examples = load_jsonl(path)
    return tokenize_dataset(
        examples,
        tokenizer,
        mask=data.mask,
        max_seq_length=train.max_seq_length,
        multi_turn=data.multi_turn,
        on_bad_row=data.on_bad_row,
        train_reasoning=data.train_reasoning,
    )


@dataclass
class BatchSource:
    """Batches of one split in a deterministic per-epoch order."""

    dataset: TokenizedDataset
    train: TrainConfig
    pad_id: int
    shuffle: bool

    def __post_init__(self):
        self.lengths = [len(ex.ids) for ex in self.dataset.examples]
        self._plan = lru_cache(maxsize=2)(self._make_plan)

    def _make_plan(self, epoch: int):
        return plan_batches(
            self.lengths,
            batch_size=self.train.batch_size,
            batch_tokens=self.train.batch_tokens,
            max_seq_length=self.train.max_seq_length,
            pack=self.train.pack,
            shuffle=self.shuffle,
            seed=self.train.seed + epoch,
        )

    def plan(self, epoch: int = 0):
        return self._plan(epoch)

    def batches_per_epoch(self) -> int:
        return len(self.plan(0))

    def batch(self, epoch: int, index: int, world=None) -> Batch:
        """Global batch `index` of `epoch`, or this rank's shard of it under data parallelism."""
        rows = self.plan(epoch)[index]
        if world is not None and world.distributed:
            from .distributed import empty_batch, shard_rows

            rows = shard_rows(rows, world)
            if not rows:
                return empty_batch(self.pad_id)
        return collate(self.dataset.examples, rows, self.pad_id)

    def padding_waste(self) -> float:
        return padding_waste([self.batch(0, i) for i in range(self.batches_per_epoch())])

    def trained_tokens(self) -> int:
        return int(sum(np.count_nonzero(ex.trained) for ex in self.dataset.examples))


def pad_token_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0
