"""Everything a run needs before its first step, as one frozen value: `prepare(recipe, run, world)`.

`prepare` loads the base, tokenizes the data, attaches adapters, picks the token budget,
builds the optimizer and the compiled steps, and (on resume) restores the last
checkpoint. It writes nothing into the run directory, so a typo in a recipe fails here
and leaves no half-made run behind. `loop.train(prepared, ...)` then runs the steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from ..config import Recipe, TrainConfig
from ..data.splits import load_split, pad_token_id, resolve_data_files
from ..errors import DataError
from ..model import attach_adapters, load_base, vocab_size
from ..rundir import RunDir
from ..token_rows import TRAINABLE_TOKENS
from ..untrained_tokens import UntrainedToken, check_tokens, describe, embedding_of, template_tokens
from .autobatch import MAX_ROWS, BudgetProbe, choose_batch_tokens, memory_limit_bytes
from .batches import BatchSource
from .checkpoint import TrainerState, load_checkpoint
from .cpu_ops import enable_fast_cpu_ops, fast_ops_apply
from .distributed import World, sync_from_main
from .init_from import load_init_adapter
from .preference_run import PairSource, PreferenceHook
from .schedule import build_optimizer
from .step import StepFunctions, build_steps, enable_grad_checkpoint


@dataclass(frozen=True)
class BudgetChoice:
    """How `train.batch_tokens: auto` was resolved on this machine (None fields on resume)."""

    batch_tokens: int
    memory_limit_gb: float
    probes: tuple[BudgetProbe, ...]


@dataclass(frozen=True)
class Prepared:
    """A run ready to step: model, data, optimizer, compiled steps and where it starts."""

    recipe: Recipe
    train: TrainConfig  # recipe.train with `batch_tokens: auto` resolved
    run: RunDir
    world: World
    model: nn.Module
    tokenizer: object
    model_path: Path
    files: dict[str, Path | None]  # train/valid/test data files
    train_src: BatchSource | PairSource
    valid_src: BatchSource | PairSource | None  # None: no validation data
    adapter_config: dict
    untrained_tokens: tuple[UntrainedToken, ...]
    optimizer: optim.Optimizer
    steps: StepFunctions
    total_steps: int
    start: TrainerState  # where the run starts (restored on resume); `train` works on a copy
    last_checkpoint: Path | None  # the checkpoint it resumed from
    budget: BudgetChoice | None  # set when this session measured `batch_tokens: auto`
    restore_ops: Callable[[], None]  # undoes enable_fast_cpu_ops; call when done with the model
    preference: PreferenceHook | None = None  # objective dpo/orpo: pair data, loss, reference, metrics

    def token_warnings(self) -> tuple[str, ...]:
        """What RunStarted says about untrained template tokens and trained embedding rows."""
        if self.recipe.method == "full":
            return ()  # every row trains
        trained = self.adapter_config.get(TRAINABLE_TOKENS) or []
        out = (describe(list(self.untrained_tokens)),) if self.untrained_tokens and not trained else ()
        if trained:
            out += (
                f"training the embedding and LM-head rows of token ids {trained} beside the adapter "
                f"(lora.train_new_tokens: {self.recipe.lora.train_new_tokens}).",
            )
        return out


def total_steps(recipe: Recipe, batches_per_epoch: int) -> int:
    t = recipe.train
    if t.iters is not None:
        return t.iters
    epochs = t.epochs if t.epochs is not None else 1.0
    return max(1, math.ceil(epochs * batches_per_epoch / t.grad_accumulation))


def prepare(recipe: Recipe, run: RunDir, world: World | None = None, *, resume: bool = False) -> Prepared:
    """Load and build everything for `recipe`; with `resume`, continue from `run`'s last checkpoint."""
    world = world or World(None)
    t = recipe.train
    mx.random.seed(t.seed)
    model, tokenizer, model_path, _ = load_base(recipe)
    untrained = tuple(check_tokens(embedding_of(model), tokenizer))
    files = resolve_data_files(recipe.data)
    pad_id = pad_token_id(tokenizer)
    hook = PreferenceHook(recipe) if recipe.objective != "sft" else None
    load = hook.load_split if hook else load_split
    train_ds = load(files["train"], tokenizer, recipe.data, t)
    valid_ds = load(files["valid"], tokenizer, recipe.data, t) if files["valid"] else None
    token_ids = _new_token_ids(recipe, tokenizer, untrained)
    adapter_config = attach_adapters(model, recipe, token_ids) | {"model": str(model_path)}
    if recipe.init:
        load_init_adapter(model, recipe.init, adapter_config, model_path)
    if t.grad_checkpoint:
        enable_grad_checkpoint(model)
    restore_ops = enable_fast_cpu_ops(model) if t.fast_cpu_ops else (lambda: None)
    fast_ce = t.fast_cpu_ops and fast_ops_apply()
    try:
        budget = None
        if t.batch_tokens == "auto":
            t, budget = _resolve_auto_budget(model, t, run, world, resume, fast_ce)
        source = hook.source if hook else BatchSource
        train_src = source(train_ds, t, pad_id, shuffle=True)
        has_valid = valid_ds is not None and bool(valid_ds.examples)
        valid_src = source(valid_ds, t, pad_id, shuffle=False) if has_valid else None
        _check_data(train_src, t, files["train"])
        if hook:  # the reference is the model as it starts: before any checkpoint is loaded
            hook.start(model, {"train": train_src, "valid": valid_src}, run.path, resume, fast_ce)
        steps_total = total_steps(recipe, train_src.batches_per_epoch())
        optimizer = build_optimizer(t, steps_total)
        state, last = _restore(run, world, model, optimizer, resume)
        # compiled after the restore: the compiled step captures the optimizer's state dict
        steps = build_steps(
            model,
            optimizer,
            t.max_grad_norm,
            packed=t.pack,
            world=world,
            loss=hook.plan() if hook else None,
            fast_ce=fast_ce,
        )
    except BaseException:
        restore_ops()
        raise
    return Prepared(
        recipe=recipe,
        train=t,
        run=run,
        world=world,
        model=model,
        tokenizer=tokenizer,
        model_path=model_path,
        files=files,
        train_src=train_src,
        valid_src=valid_src,
        adapter_config=adapter_config,
        untrained_tokens=untrained,
        optimizer=optimizer,
        steps=steps,
        total_steps=steps_total,
        start=state,
        last_checkpoint=last,
        budget=budget,
        restore_ops=restore_ops,
        preference=hook,
    )


def _restore(run: RunDir, world: World, model, optimizer, resume: bool) -> tuple[TrainerState, Path | None]:
    """The state to start from: fresh, or rank 0's last checkpoint (sent to every rank)."""
    state, last = TrainerState(), None
    if resume and world.is_main:
        last = run.latest_checkpoint()
        if last is not None:
            state = load_checkpoint(last, model, optimizer)
    if resume and world.distributed:
        state = sync_from_main(world, model, optimizer, state)
    return state, last


def _resolve_auto_budget(
    model, t: TrainConfig, run: RunDir, world: World, resume: bool, fast_ce: bool
) -> tuple[TrainConfig, BudgetChoice | None]:
    """Measure (or, on resume, reuse) the token budget; the batch plan depends on it."""
    chosen = run.read_meta().get("batch_tokens_chosen") if resume else None
    budget = None
    if chosen is None:
        probe_steps = build_steps(model, build_optimizer(t, 1), t.max_grad_norm, packed=t.pack, fast_ce=fast_ce)
        limit = memory_limit_bytes(t.memory_limit_gb)
        chosen, probes = choose_batch_tokens(model, probe_steps, t.max_seq_length, vocab_size(model), limit)
        # every rank takes 1/N of each global batch: the global budget is N times the
        # smallest budget any rank can hold
        chosen = world.size * world.min_int(chosen)
        budget = BudgetChoice(int(chosen), limit / 1e9, tuple(probes))
    # the budget alone sizes batches: no separate row cap
    return dataclasses.replace(t, batch_tokens=int(chosen), batch_size=MAX_ROWS), budget


def _new_token_ids(recipe: Recipe, tokenizer, untrained: tuple[UntrainedToken, ...]) -> list[int]:
    """lora.train_new_tokens: auto trains the rows of template tokens that look untrained."""
    setting = recipe.lora.train_new_tokens
    if recipe.method == "full" or setting is False:
        return []
    if setting is True:
        return sorted(template_tokens(tokenizer).values())
    return [token.id for token in untrained]


def _check_data(train_src: BatchSource, t: TrainConfig, train_file: Path) -> None:
    rows = len(train_src.dataset.examples)
    if rows == 0:
        raise DataError(
            "no trainable rows: every row was skipped (see the reasons above); "
            "check data.mask and train.max_seq_length.",
            path=str(train_file),
        )
    if not t.pack and t.batch_tokens is None and t.batch_size > rows:
        raise DataError(
            f"train.batch_size={t.batch_size} is larger than the {rows} trainable rows; "
            "lower train.batch_size or add data.",
            path=str(train_file),
        )
