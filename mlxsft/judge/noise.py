"""The verdict's noise model: bootstrap standard errors of metric changes from per-row values.

A 50-row validation set moves by a percent or two between two checkpoints of a
converged run for no reason but which rows it holds. So every change the verdict
counts is compared with its standard error, estimated by resampling the evaluation
rows (or prompts) with replacement. The resampling is *paired*: the same resampled
rows score both checkpoints, because both were measured on the same rows and what
matters is how much the difference would move with other rows.

Per-row values come from `results.json` (`entry["rows"]`, written by the battery):

- losses (valid, ood, probes): summed NLL and trained tokens per row; the metric is
  sum(nll) / sum(tokens) over the resampled rows;
- probe KL: summed KL per row over the same tokens;
- per-prompt values (entropy, pass@1, pass@k): the metric is their mean.

Pure NumPy, no MLX, no files.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# metric name -> (row group in entry["rows"], numerator key, denominator key or None for a mean)
ROW_METRICS: dict[str, tuple[str, str, str | None]] = {
    "valid_loss": ("valid", "nll", "tokens"),
    "ood_loss": ("ood", "nll", "tokens"),
    "probe_loss": ("probes", "nll", "tokens"),
    "probe_kl": ("probes", "kl", "tokens"),
    "entropy": ("prompts", "entropy", None),
    "distinct_2": ("prompts", "distinct_2", None),
    "pass_at_1": ("prompts", "pass_at_1", None),
    "pass_at_k": ("prompts", "pass_at_k", None),
}


def row_values(rows: Mapping, metric: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(numerators, denominators or None) of `metric` from an entry's per-row values, or None."""
    spec = ROW_METRICS.get(metric)
    if spec is None or not rows:
        return None
    group = rows.get(spec[0]) or {}
    num = group.get(spec[1])
    if num is None:
        return None
    den = group.get(spec[2]) if spec[2] else None
    if spec[2] and den is None:
        return None
    num = np.asarray([np.nan if v is None else v for v in num], dtype=np.float64)
    return num, (None if den is None else np.asarray(den, dtype=np.float64))


def _statistic(num: np.ndarray, den: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    """The metric on each resample: idx (B, N) row indices -> (B,)."""
    if den is None:
        return np.nanmean(num[idx], axis=-1)
    return num[idx].sum(axis=-1) / np.maximum(den[idx].sum(axis=-1), 1e-12)


def change_se(
    new: Mapping,
    old: Mapping,
    metric: str,
    *,
    relative: bool,
    samples: int = 400,
    seed: int = 0,
) -> float | None:
    """Standard error of the change of `metric` from `old` to `new` (paired bootstrap over rows).

    `relative`: the change is (new - old) / |old|, else new - old. None when either
    side lacks per-row values or the two were measured on different rows.
    """
    a, b = row_values(new, metric), row_values(old, metric)
    if a is None or b is None or len(a[0]) != len(b[0]) or len(a[0]) < 2:
        return None
    if a[1] is not None and b[1] is not None and not np.array_equal(a[1], b[1]):
        # token counts differ: not the same rows (a different tokenizer or max length)
        return None
    rng = np.random.default_rng(seed)
    n = len(a[0])
    idx = rng.integers(0, n, size=(samples, n))  # (B, N)
    with np.errstate(invalid="ignore", divide="ignore"):
        new_stat, old_stat = _statistic(*a, idx), _statistic(*b, idx)
        change = new_stat - old_stat
        if relative:
            change = change / np.abs(old_stat)
    change = change[np.isfinite(change)]
    if len(change) < samples // 2:
        return None
    return float(np.std(change, ddof=1))


def beyond_noise(change: float | None, se: float | None, z: float) -> bool | None:
    """Is |change| more than z standard errors? None when the change is unmeasured.

    Without a standard error (no per-row values) every change counts as beyond noise,
    as before the noise model: old results files keep their verdicts.
    """
    if change is None:
        return None
    if se is None:
        return True
    return abs(change) > z * se
