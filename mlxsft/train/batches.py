"""Per-epoch batch plans of a tokenized split, and this rank's share of each batch.

The plan for epoch e is a pure function of (lengths, batching knobs, seed + e), so a
resumed run rebuilds the exact batch order from its saved (epoch, cursor).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..config import TrainConfig
from ..data.batching import Batch, collate, padding_waste, plan_batches
from ..data.masking import TokenizedDataset
from .distributed import empty_batch, shard_rows


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
            rows = shard_rows(rows, world)
            if not rows:
                return empty_batch(self.pad_id)
        return collate(self.dataset.examples, rows, self.pad_id)

    def padding_waste(self) -> float:
        return padding_waste([self.batch(0, i) for i in range(self.batches_per_epoch())])

    def trained_tokens(self) -> int:
        return int(sum(np.count_nonzero(ex.trained) for ex in self.dataset.examples))
