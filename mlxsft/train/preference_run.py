"""What the trainer needs to run DPO or ORPO instead of SFT: one hook object.

`PreferenceHook` gives the loop, for `objective: dpo|orpo`, the data split loader,
the batch source (each pair kept together: a batch of N pairs is 2N rows), the
loss for the compiled step (`build_steps(loss=...)`), the reference log-probs
(cached in the run dir or computed per batch, see `reference`), the per-report
metrics and the validation pass. Everything else (schedule, optimizer, checkpoints,
exact resume, events, early stop) is the SFT loop's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config import Recipe, TrainConfig
from ..data.batching import Batch, padding_waste, plan_batches
from ..data.preference import PreferenceDataset, collate_pairs, load_pairs
from ..events import EvalFinished, PreferenceReported
from ..model import vocab_size
from .collapse import PrefPoint, collapse_warning
from .cpu_ops import fast_cross_entropy
from .distributed import empty_batch, shard_rows
from .preference import PreferenceLoss, pair_loss, sequence_logps, summarize, token_kl, token_logps
from .reference import Reference, compute_cache, load_cache, save_cache
from .step import (
    HeadSplit,
    chunk_tokens_for,
    gather_trained,
    head_cross_entropy,
    split_head,
    stock_cross_entropy,
    trained_hidden,
)


@dataclass(frozen=True)
class PairBatch:
    """N pairs as 2N rows (chosen first), with their reference log-probs (2N,)."""

    batch: Batch
    indices: tuple[int, ...]
    ref: np.ndarray

    @property
    def inputs(self) -> np.ndarray:
        return self.batch.inputs

    @property
    def num_tokens(self) -> int:
        return self.batch.num_tokens

    @property
    def num_trained(self) -> int:
        return self.batch.num_trained


def logps_of(model, inputs, targets, weights) -> mx.array:
    return sequence_logps(model, inputs, targets, weights)[0]


def batch_arrays(batch: Batch) -> list[mx.array]:
    return [mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.weights)]


def gathered_sequence_logps(split: HeadSplit, inputs, positions, targets, weights, rows, chunk_tokens: int, ce):
    """`sequence_logps` with the LM head run only on trained positions.

    inputs (B, T); positions/targets/weights/rows (K,) from `gather_trained` (flat index,
    target, weight and row of each trained position; padding entries have weight 0).
    Returns (summed log-prob (B,), trained tokens (B,)). Full logits would be (B, T, V):
    on chat pairs most positions are the shared prompt, and V is 32k-150k on real models.
    """
    h = trained_hidden(split, inputs, positions)  # (K, D)
    logp = -head_cross_entropy(split, h, targets, chunk_tokens, ce) * weights  # (K,)
    B = inputs.shape[0]
    return mx.zeros((B,), mx.float32).at[rows].add(logp), mx.zeros((B,), mx.float32).at[rows].add(weights)


@dataclass(frozen=True)
class LogpsPass:
    """Summed log-prob of each row's trained tokens: on full logits, or (with the model's verified
    body/head `split`) with the head on trained positions only. Used for the policy and the reference."""

    split: HeadSplit | None = None
    chunk_tokens: int = 4096
    cross_entropy: Callable = stock_cross_entropy

    @classmethod
    def for_model(cls, model: nn.Module, fast_ce: bool = False) -> LogpsPass:
        ce = fast_cross_entropy if fast_ce else stock_cross_entropy
        return cls(split_head(model), chunk_tokens_for(vocab_size(model)), ce)

    def arrays(self, batch: Batch) -> list[mx.array]:
        if self.split is None:
            return batch_arrays(batch)
        positions, targets, weights = gather_trained(batch.weights, batch.targets)
        rows = (positions // batch.inputs.shape[1]).astype(np.int32)
        return [mx.array(a) for a in (batch.inputs, positions, targets, weights, rows)]

    def __call__(self, model: nn.Module, *arrays) -> tuple[mx.array, mx.array]:
        """(summed log-prob (B,), trained tokens (B,)) for `arrays(batch)`."""
        if self.split is None:
            return sequence_logps(model, *arrays)
        return gathered_sequence_logps(self.split, *arrays, self.chunk_tokens, self.cross_entropy)

    def logps(self, model: nn.Module, *arrays) -> mx.array:
        return self(model, *arrays)[0]


@dataclass(frozen=True)
class PreferencePlan:
    """The step's loss for pairs (the `LossPlan` interface `build_steps` compiles)."""

    cfg: PreferenceLoss
    packed: bool = False
    logps: LogpsPass = LogpsPass()  # full logits unless given the model's split

    def arrays(self, pb: PairBatch) -> list[mx.array]:
        return [*self.logps.arrays(pb.batch), mx.array(pb.ref)]

    def loss(self, model, *arrays):
        """(loss summed over pairs, pairs, metrics vector summed over pairs)."""
        *step_arrays, ref = arrays
        logps, counts = self.logps(model, *step_arrays)
        return pair_loss(self.cfg, logps, counts, ref)

    metrics = loss


@dataclass
class PairSource:
    """Pair batches of one split in a deterministic per-epoch order (as `BatchSource`)."""

    dataset: PreferenceDataset
    train: TrainConfig
    pad_id: int
    shuffle: bool
    ref_logps: Callable[[tuple[int, ...], Batch], np.ndarray] = field(
        default=lambda idx, b: np.zeros(b.inputs.shape[0], np.float32)
    )

    def __post_init__(self):
        self.lengths = [max(len(p.chosen.ids), len(p.rejected.ids)) for p in self.dataset.pairs]
        self.plan = lru_cache(maxsize=2)(self._make_plan)

    def _make_plan(self, epoch: int):
        budget = self.train.batch_tokens
        return plan_batches(
            self.lengths,
            batch_size=self.train.batch_size,
            batch_tokens=budget // 2 if isinstance(budget, int) else None,  # two rows per pair
            max_seq_length=self.train.max_seq_length,
            pack=False,
            shuffle=self.shuffle,
            seed=self.train.seed + epoch,
        )

    def batches_per_epoch(self) -> int:
        return len(self.plan(0))

    def pair_indices(self, epoch: int, index: int, world=None) -> tuple[int, ...]:
        rows = self.plan(epoch)[index]
        if world is not None and world.distributed:
            rows = shard_rows(rows, world)
        return tuple(i for row in rows for i in row)

    def batch(self, epoch: int, index: int, world=None) -> PairBatch:
        indices = self.pair_indices(epoch, index, world)
        if not indices:  # an empty shard: one padding pair, no trained token
            pad = empty_batch(self.pad_id)
            batch = Batch(
                *(np.concatenate([a, a]) for a in (pad.inputs, pad.targets, pad.weights, pad.segments)),
                num_sequences=0,
                num_tokens=0,
                num_trained=0,
            )
            return PairBatch(batch, (), np.zeros(2, np.float32))
        batch = collate_pairs(self.dataset.pairs, indices, self.pad_id)
        return PairBatch(batch, indices, np.asarray(self.ref_logps(indices, batch), np.float32))

    def padding_waste(self) -> float:
        return padding_waste([self.batch(0, i).batch for i in range(self.batches_per_epoch())])

    def trained_tokens(self) -> int:
        return int(sum(p.chosen.num_trained + p.rejected.num_trained for p in self.dataset.pairs))


class PreferenceHook:
    """The DPO/ORPO parts of one run (see module doc)."""

    def __init__(self, recipe: Recipe):
        p = recipe.preference
        self.cfg = PreferenceLoss(recipe.objective, p.beta, p.label_smoothing, p.loss_type)
        self.cache_reference = p.cache_reference and self.cfg.needs_reference
        self.caches: dict[str, np.ndarray] = {}
        self.window = None  # summed metrics since the last report
        self.valid_history: list = []  # PrefPoint per validation pass, for the collapse flag
        self.last_valid: PreferenceReported | None = None  # the last validation pass's metrics
        self.warned = False
        self.logps_pass = LogpsPass()  # full logits until `start` sees the model

    def load_split(self, path: Path, tokenizer, data, train: TrainConfig) -> PreferenceDataset:
        return load_pairs(path, tokenizer, max_seq_length=train.max_seq_length, on_bad_row=data.on_bad_row)

    def source(self, dataset, train: TrainConfig, pad_id: int, shuffle: bool) -> PairSource:
        return PairSource(dataset, train, pad_id, shuffle)

    def plan(self) -> PreferencePlan:
        """The step's loss, with the log-prob pass `start` chose for the model."""
        return PreferencePlan(self.cfg, logps=self.logps_pass)

    # ------------------------------------------------------------ the reference
    def start(
        self,
        model: nn.Module,
        sources: dict[str, PairSource | None],
        run_path: Path,
        resume: bool,
        fast_ce: bool = False,
    ) -> None:
        """Take the reference (call before a checkpoint is loaded) and give each source its log-probs.

        The policy's and the reference's log-probs run the LM head on trained positions only
        when the model splits into body and head (`LogpsPass.for_model`).
        """
        self.reference = Reference(model)
        self.logps_pass = passes = LogpsPass.for_model(model, fast_ce)
        if not self.cfg.needs_reference:
            return
        if not self.cache_reference:
            for src in sources.values():
                if src is not None:
                    src.ref_logps = lambda idx, b: np.array(self.reference.logps(passes.logps, *passes.arrays(b)))
            return
        cached = load_cache(run_path) if resume else None
        for split, src in sources.items():
            if src is None:
                continue
            cache = (cached or {}).get(split)
            if cache is None or len(cache) != len(src.dataset.pairs):
                batches = (
                    (src.pair_indices(0, i), passes.arrays(src.batch(0, i).batch))
                    for i in range(src.batches_per_epoch())
                )
                cache = compute_cache(self.reference, passes.logps, batches)
            self.caches[split] = cache
            src.ref_logps = lambda idx, b, c=cache: np.concatenate([c[list(idx), 0], c[list(idx), 1]])

    def write_cache(self, run_path: Path) -> None:
        if self.caches:
            save_cache(run_path, self.caches)

    # ------------------------------------------------------------ metrics
    def add(self, aux) -> None:
        """Add one step's summed metrics (lazy) to the report window."""
        if aux:
            self.window = aux[0] if self.window is None else self.window + aux[0]

    def report(self, step: int, pairs: float, loss: float) -> PreferenceReported | None:
        if self.window is None:
            return None
        values = summarize(np.array(self.window), pairs)
        self.window = None
        return PreferenceReported(step=step, split="train", loss=loss, **values)

    def collapse_warning(self, evaluation: EvalFinished, metrics: PreferenceReported) -> str | None:
        """The judge's likelihood-collapse flag after this pass (said once per run session)."""
        self.valid_history.append(
            PrefPoint(metrics.step, metrics.accuracy, metrics.margin, metrics.logps_chosen, evaluation.perplexity)
        )
        warning = collapse_warning(self.valid_history)
        if warning is None or self.warned:
            return None
        self.warned = True
        return warning

    def evaluate(self, model: nn.Module, src: PairSource, world, step: int, val_batches: int):
        """(EvalFinished, PreferenceReported) of one pass over the validation pairs (model in eval mode).

        EvalFinished carries the preference loss (best checkpoint and early stop use it),
        the perplexity and token accuracy of the chosen replies.
        """
        start = time.time()
        n = src.batches_per_epoch() if val_batches <= 0 else min(val_batches, src.batches_per_epoch())
        totals = None
        for i in range(n):
            pb = src.batch(0, i, world)
            sums = world.all_sum(self._eval_sums(model, pb))
            mx.eval(sums)
            totals = sums if totals is None else totals + sums
        t = np.array(totals)  # [loss, pairs, metrics..., kl, kl positions, chosen nll, chosen tokens, correct]
        loss, pairs, metrics = t[0] / max(t[1], 1), t[1], t[2:7]
        kl = t[7] / max(t[8], 1)
        chosen_nll, chosen_tokens = t[9], max(t[10], 1)
        evaluation = EvalFinished(
            step=step,
            split="valid",
            loss=float(loss),
            perplexity=float(np.exp(min(chosen_nll / chosen_tokens, 50))),
            token_accuracy=float(t[11] / chosen_tokens),
            num_tokens=int(t[10]),
            elapsed_s=time.time() - start,
        )
        return evaluation, PreferenceReported(
            step=step, split="valid", loss=float(loss), kl=float(kl), **summarize(metrics, pairs)
        )

    def _eval_sums(self, model, pb: PairBatch) -> mx.array:
        inputs, targets, weights = batch_arrays(pb.batch)
        logits = model(inputs).astype(mx.float32)  # (2N, T, V)
        with self.reference.weights() as ref_model:
            ref_logits = mx.stop_gradient(ref_model(inputs).astype(mx.float32))
            mx.eval(ref_logits)
        logp = token_logps(logits, targets) * weights  # (2N, T)
        logps, counts = logp.sum(axis=1), weights.sum(axis=1)
        ref = (token_logps(ref_logits, targets) * weights).sum(axis=1) if self.cfg.needs_reference else mx.array(pb.ref)
        loss, pairs, metrics = pair_loss(self.cfg, logps, counts, ref)
        kl, positions = token_kl(logits, ref_logits, weights)
        n = logps.shape[0] // 2
        correct = ((logits[:n].argmax(axis=-1) == targets[:n]) * weights[:n]).sum()
        return mx.concatenate(
            [mx.stack([loss, pairs]), metrics, mx.stack([kl, positions, -logps[:n].sum(), counts[:n].sum(), correct])]
        )
