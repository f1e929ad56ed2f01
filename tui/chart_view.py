"""What the Live run loss chart draws: the visible window, smoothing, y range and ticks.

Pure functions of the loss series and the chart's toggles (no Textual, no plotext), so
the choices are testable on their own. Points are `(step, loss)` pairs in step order.

Why fit y to the window and not to the whole run: the first reports of a fine-tune are
several times the later losses, so a y-axis that includes them squeezes the rest of the
curve (where the decisions are made) onto one or two rows. TensorBoard's answer, used
here too, is to ignore the highest few per cent of points when scaling; they run off the
top instead of flattening everything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Points = list[tuple[int, float]]

WINDOWS = (1.0, 0.5, 0.2)  # share of the steps so far the chart shows, cycled by a key
SMOOTHING = (0.0, 0.6, 0.9)  # EMA weights, cycled by a key; 0 draws the raw curve only
OUTLIER_SHARE = 0.05  # the highest 5% of visible points do not stretch the y-axis


@dataclass(frozen=True)
class ChartOptions:
    log_y: bool = True
    smoothing: float = 0.6
    window: float = 1.0  # share of the steps so far, counted back from the last one


def smooth(points: Points, weight: float) -> Points:
    """Exponential moving average, debiased like TensorBoard's (the start is not pulled to 0)."""
    if weight <= 0:
        return list(points)
    out, avg, norm = [], 0.0, 0.0
    for step, value in points:
        avg = weight * avg + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append((step, avg / norm))
    return out


def window_start(last_step: int, window: float) -> int:
    """The first step shown when the chart shows `window` of the steps up to `last_step`."""
    if window >= 1.0:
        return 0
    return int(last_step * (1 - window))


def visible(points: Points, start: int) -> Points:
    return [(s, v) for s, v in points if s >= start]


def y_range(values: list[float], log_y: bool) -> tuple[float, float] | None:
    """(low, high) for the y-axis in data units: all but the highest few per cent, padded."""
    finite = sorted(v for v in values if math.isfinite(v) and (v > 0 or not log_y))
    if not finite:
        return None
    cut = max(1, math.ceil(len(finite) * (1 - OUTLIER_SHARE))) if len(finite) >= 10 else len(finite)
    low, high = finite[0], finite[cut - 1]
    if log_y:
        lo, hi = math.log10(low), math.log10(high)
        pad = max((hi - lo) * 0.05, 0.01)
        return 10 ** (lo - pad), 10 ** (hi + pad)
    pad = max((high - low) * 0.05, abs(high) * 0.01, 1e-6)
    return low - pad, high + pad


def to_axis(value: float, log_y: bool) -> float:
    """A loss in the chart's y coordinate (log10 when the axis is logarithmic)."""
    return math.log10(value) if log_y else value


def y_ticks(low: float, high: float, log_y: bool, count: int = 4) -> tuple[list[float], list[str]]:
    """Tick positions (in axis coordinates) and labels (in losses) spread over the range."""
    if count < 2 or high <= low:
        return [to_axis(low, log_y)], [_loss_label(low)]
    a, b = to_axis(low, log_y), to_axis(high, log_y)
    positions = [a + (b - a) * i / (count - 1) for i in range(count)]
    values = [10**p if log_y else p for p in positions]
    return positions, [_loss_label(v) for v in values]


def _loss_label(value: float) -> str:
    return f"{value:.3g}"


def step_ticks(first: int, last: int, count: int = 5) -> list[int]:
    """Whole-number step ticks at round intervals (1, 2, 5 x 10^k) between first and last."""
    if last <= first:
        return [first]
    raw = (last - first) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(max(raw, 1)))
    interval = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    interval = max(int(interval), 1)
    start = math.ceil(first / interval) * interval
    return list(range(start, last + 1, interval))


def describe(options: ChartOptions) -> str:
    """The chart's toggles in words, for its title."""
    parts = ["log y" if options.log_y else "linear y"]
    parts.append(f"smoothed {options.smoothing:g}" if options.smoothing else "raw")
    if options.window < 1.0:
        parts.append(f"last {int(options.window * 100)}%")
    return ", ".join(parts)


def next_in(cycle: tuple[float, ...], current: float) -> float:
    """The value after `current` in `cycle` (wrapping), for keys that cycle a setting."""
    try:
        return cycle[(cycle.index(current) + 1) % len(cycle)]
    except ValueError:
        return cycle[0]
