"""Learning-rate schedules (warmup then constant/linear/cosine) and the optimizer."""

from __future__ import annotations

import mlx.optimizers as optim

from ..config import TrainConfig


def build_schedule(train: TrainConfig, total_steps: int):
    """Return a schedule callable over the optimizer's step count (0-based)."""
    peak = train.learning_rate
    warmup = min(train.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    floor = peak * train.min_lr_ratio
    if train.lr_schedule == "cosine":
        main = optim.cosine_decay(peak, decay_steps, floor)
    elif train.lr_schedule == "linear":
        main = optim.linear_schedule(peak, floor, decay_steps)
    else:
        main = optim.linear_schedule(peak, peak, 1)
    if warmup == 0:
        return main
    if warmup > 1:
        ramp = optim.linear_schedule(peak / warmup, peak, warmup - 1)
    else:
        ramp = optim.linear_schedule(peak, peak, 1)
    return optim.join_schedules([ramp, main], [warmup])


def build_optimizer(train: TrainConfig, total_steps: int) -> optim.Optimizer:
    schedule = build_schedule(train, total_steps)
    if train.optimizer == "adamw":
        return optim.AdamW(learning_rate=schedule, weight_decay=train.weight_decay)
    if train.optimizer == "adam":
        return optim.Adam(learning_rate=schedule)
    return optim.SGD(learning_rate=schedule, momentum=0.9, weight_decay=train.weight_decay)
