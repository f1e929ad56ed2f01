"""Data parallelism on MLX's own distributed engine (`mx.distributed`, launched by `mlx.launch`).

Every rank walks the same global batch plan; rank r takes rows r, r+N, r+2N, ... of
each global batch. Gradient sums, loss sums and token counts are summed across ranks
before the update, so the step is the one a single machine would take on the whole
global batch (up to float summation order). Only rank 0 writes the run directory.

A rank that dies is reported by `mlx.launch`, which then terminates the others; a rank
that hangs is caught by a watchdog thread on every rank (MLX's blocking collectives
release the GIL, so the thread keeps running) that exits with a message naming the
host after `MLXSFT_DIST_TIMEOUT` seconds without a finished step.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from ..data.batching import Batch
from .checkpoint import TrainerState, assign_tree

DEFAULT_TIMEOUT_S = 120.0


class World:
    """This process's place in the run: rank, size and the collectives the trainer needs."""

    def __init__(self, group=None):
        self.group = group
        self.rank = group.rank() if group is not None else 0
        self.size = group.size() if group is not None else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_sum(self, x):
        """Sum an array (or a tree of arrays) over ranks; identity on one rank.

        A tree goes over the wire as one flat buffer: one collective per step instead of one
        per adapter tensor (latency, not bandwidth, dominates small LoRA gradients).
        """
        if not self.distributed:
            return x
        leaves, structure = tree_flatten(x), None
        if len(leaves) == 1 and leaves[0][0] == "":
            return mx.distributed.all_sum(x, group=self.group)
        structure = [(name, a.shape, a.dtype) for name, a in leaves]
        flat = mx.concatenate([a.astype(mx.float32).reshape(-1) for _, a in leaves])
        summed = mx.distributed.all_sum(flat, group=self.group)
        out, start = [], 0
        for name, shape, dtype in structure:
            size = int(np.prod(shape)) if shape else 1
            out.append((name, summed[start : start + size].reshape(shape).astype(dtype)))
            start += size
        return tree_unflatten(out)

    def broadcast_from_main(self, x):
        """Rank 0's values on every rank (a sum where the other ranks contribute zeros)."""
        if not self.distributed:
            return x
        keep = self.is_main
        return tree_map(lambda a: mx.distributed.all_sum(a if keep else mx.zeros_like(a), group=self.group), x)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any (e.g. a stop request)."""
        if not self.distributed:
            return flag
        total = mx.distributed.all_sum(mx.array(1.0 if flag else 0.0), group=self.group)
        return total.item() > 0

    def min_int(self, value: int) -> int:
        """The smallest of every rank's `value`."""
        if not self.distributed:
            return value
        gathered = mx.distributed.all_gather(mx.array([value], dtype=mx.int32), group=self.group)
        return int(gathered.min().item())

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's `text` on every rank (e.g. the recipe of a resumed run)."""
        if not self.distributed:
            return text or ""
        data = (text or "").encode("utf-8") if self.is_main else b""
        size = int(self.broadcast_from_main(mx.array([len(data)], dtype=mx.int32)).item())
        payload = np.frombuffer(data, dtype=np.uint8) if self.is_main else np.zeros(size, np.uint8)
        received = self.broadcast_from_main(mx.array(payload.astype(np.int32)))
        return bytes(np.array(received, dtype=np.uint8).tolist()).decode("utf-8")

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size} on {host_name()}"


def init_world() -> World:
    """The world this process was launched into (size 1 outside `mlx.launch`)."""
    if os.environ.get("MLX_WORLD_SIZE", "1") in ("", "1") and "MLX_HOSTFILE" not in os.environ:
        return World(None)
    return World(mx.distributed.init(strict=True))


def sync_from_main(world: World, model, optimizer, state):
    """Give every rank rank 0's trainable weights, optimizer state and trainer state.

    On resume only rank 0 reads the run directory (the other hosts may not have it).
    Returns the trainer state to use on this rank.
    """
    from dataclasses import fields

    from mlx.utils import tree_flatten

    optimizer.init(model.trainable_parameters())  # no-op where a checkpoint already filled it
    weights = world.broadcast_from_main(dict(tree_flatten(model.trainable_parameters())))
    model.load_weights(list(weights.items()), strict=False)
    opt_flat = world.broadcast_from_main(dict(tree_flatten(optimizer.state)))
    for key, value in opt_flat.items():
        assign_tree(optimizer.state, key, value)
    ints = [
        f.name
        for f in fields(TrainerState)
        if f.name in ("step", "epoch", "cursor", "tokens_seen", "trained_tokens_seen")
    ]
    values = world.broadcast_from_main(mx.array([float(getattr(state, n)) for n in ints], dtype=mx.float32))
    mx.eval(model.parameters(), optimizer.state, values)
    if world.is_main:
        return state
    return TrainerState(**{n: int(v) for n, v in zip(ints, values.tolist(), strict=True)})


def host_name() -> str:
    return socket.gethostname()


def shard_rows(rows: list[list[int]], world: World) -> list[list[int]]:
    """This rank's rows of one global batch: rows rank, rank+N, ..."""
    return rows[world.rank :: world.size]


def empty_batch(pad_id: int, length: int = 8) -> Batch:
    """One row of padding with no trained tokens: a rank whose shard is empty still joins
    the collectives, contributing zero loss, zero tokens and zero gradient."""
    zeros = np.zeros((1, length), np.float32)
    ids = np.full((1, length), pad_id, np.int32)
    return Batch(
        inputs=ids,
        targets=ids,
        weights=zeros,
        segments=zeros.astype(np.int32),
        num_sequences=0,
        num_tokens=0,
        num_trained=0,
    )


class Watchdog:
    """Exit with a clear message when no step finishes for `timeout_s` seconds (armed after
    the first step, since compiling it can take long)."""

    def __init__(self, world: World, timeout_s: float | None = None):
        self.world = world
        self.timeout_s = timeout_s or float(os.environ.get("MLXSFT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        self.last_beat: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mlxsft-watchdog", daemon=True)

    def start(self) -> Watchdog:
        if self.world.distributed:
            self._thread.start()
        return self

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            if self.last_beat is not None and time.monotonic() - self.last_beat > self.timeout_s:
                print(
                    f"mlxsft: error: {self.world.describe()}: no training step finished in "
                    f"{self.timeout_s:.0f} s; another rank has died or hangs (check every host's "
                    "output). The last checkpoint in the run directory is intact; resume with "
                    "`mlxsft train --resume RUN_DIR`.",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(4)
