"""Rows of the Checkpoints screen: the judge's table (a base row, each checkpoint, its verdict).

Training metrics come from the event stream (validation loss at that step, the training
loss reported just before it). When `mlxsft eval` has run, RUN/eval/results.json is read
with the judge's own reader (`mlxsft.judge.results.read_results`) and judged with its own
rules (`judge_history`, `choose`, the same defaults as `mlxsft select`), so the screen and
`mlxsft select` never disagree. The chosen step is run.json's `chosen_step` (what export
uses); the judge's recommendation is shown next to it when they differ.

Columns have a priority: at a narrow width the lowest-priority ones are dropped first
(`DROP_ORDER`), never the mark, step, verdict and validation loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlxsft.errors import MlxsftError
from mlxsft.rundir import RunDir

from .run_state import RunState


@dataclass
class CheckpointRow:
    step: int
    exists: bool  # the folder is on disk (not deleted); the base row always exists
    label: str = ""
    val_loss: float | None = None
    train_loss: float | None = None
    is_best: bool = False  # lowest validation loss during training
    is_chosen: bool = False  # run.json chosen_step
    is_recommended: bool = False  # the judge's choice under the default rule
    verdict: str = "not evaluated"
    explanation: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # the judge's, for this checkpoint


@dataclass
class CheckpointTable:
    rows: list[CheckpointRow]
    rule: str = ""  # the rule that chose, in words
    reasons: tuple[str, ...] = ()  # how the judge narrowed the candidates
    error: str | None = None  # results.json could not be read
    evaluated: bool = False


# (key, header, width) in display order. Judge metrics use results.json's names.
COLUMNS = (
    ("mark", "", 5),
    ("step", "step", 6),
    ("verdict", "verdict", 14),
    ("valid_loss", "valid", 7),
    ("ood_loss", "ood", 7),
    ("probe_kl", "KL", 7),
    ("probe_loss_delta", "probe Δ", 8),
    ("entropy", "entropy", 8),
    ("distinct_2", "dist-2", 7),
    ("exact_match", "exact", 6),
    ("json_valid", "json", 6),
    ("schema_valid", "schema", 7),
    ("regex_pass", "regex", 6),
    ("verifier_pass", "verify", 7),
    ("pass_at_1", "pass@1", 7),
    ("pass_at_k", "pass@k", 7),
    ("train_loss", "train", 7),
)
# Dropped first to last when the table is too wide; the rest always stay.
DROP_ORDER = (
    "train_loss",
    "distinct_2",
    "entropy",
    "probe_loss_delta",
    "regex_pass",
    "schema_valid",
    "verifier_pass",
    "pass_at_k",
    "json_valid",
    "exact_match",
    "pass_at_1",
    "probe_kl",
    "ood_loss",
)


def _judge(run: RunDir, steps_on_disk: set[int]):
    """(entries, verdicts by step, choice, rule) from results.json, or None when not evaluated."""
    from mlxsft.judge.results import read_results
    from mlxsft.judge.verdict import Rule, choose, judge_history, points

    doc = read_results(run)
    if doc is None or not doc["checkpoints"]:
        return None
    rule = Rule()
    history = [p for p in points(doc["checkpoints"]) if p.step in steps_on_disk | {0}]
    verdicts = judge_history(history, rule)
    return doc["checkpoints"], {v.step: v for v in verdicts}, choose(history, verdicts, rule), rule


def checkpoint_table(run_dir: Path, state: RunState) -> CheckpointTable:
    from mlxsft.judge.verdict import explain

    run = RunDir(run_dir)
    meta = run.read_meta() if run.meta_file.is_file() else {}
    on_disk = set(run.checkpoint_steps())
    table = CheckpointTable(rows=[])
    try:
        judged = _judge(run, on_disk)
    except MlxsftError as exc:
        judged, table.error = None, str(exc)
    entries, verdicts, choice, rule = judged or ([], {}, None, None)
    by_step = {e["step"]: e for e in entries}
    best, chosen = meta.get("best_step", state.best_step), meta.get("chosen_step")
    steps = sorted(on_disk | set(state.checkpoints) | ({0} if 0 in by_step else set()))
    for step in steps:
        entry = by_step.get(step, {})
        evaluation = next((e for e in state.evaluations if e.step == step), None)
        saved = state.checkpoints.get(step)
        row = CheckpointRow(
            step=step,
            exists=step == 0 or step in on_disk,
            label=entry.get("label", f"step {step}"),
            val_loss=evaluation.loss if evaluation else (saved.val_loss if saved else None),
            train_loss=state.train_loss_near(step) if step else None,
            is_best=step == best and step != 0,
            is_chosen=step == chosen,
            metrics=dict(entry.get("metrics", {})),
        )
        if step in verdicts:
            row.verdict, row.explanation = verdicts[step].verdict, explain(verdicts[step])
        row.is_recommended = choice is not None and choice.step == step
        table.rows.append(row)
    if choice is not None:
        table.evaluated = True
        table.reasons = choice.reasons
        table.rule = meta.get("chosen_rule") if chosen is not None and meta.get("chosen_rule") else rule.describe()
    return table


def present_columns(rows: list[CheckpointRow]) -> list[str]:
    """The column keys some row has a value for (mark, step, verdict and valid always)."""
    keep = []
    for key, _, _ in COLUMNS:
        if key in ("mark", "step", "verdict", "valid_loss"):
            keep.append(key)
        elif key == "train_loss":
            if any(r.train_loss is not None for r in rows):
                keep.append(key)
        elif any(r.metrics.get(key) is not None for r in rows):
            keep.append(key)
    return keep


def fit_columns(keys: list[str], width: int) -> list[str]:
    """`keys` minus the lowest-priority ones (DROP_ORDER) until the table fits `width` cells."""
    widths = {key: w for key, _, w in COLUMNS}
    keys = list(keys)
    for key in DROP_ORDER:
        if sum(widths[k] + 2 for k in keys) <= width:
            break
        if key in keys:
            keys.remove(key)
    return keys


def header(key: str) -> str:
    return next(h for k, h, _ in COLUMNS if k == key)


def cell(row: CheckpointRow, key: str) -> str:
    """The text of one cell (the mark column is drawn by the screen)."""
    if key == "step":
        return "base" if row.step == 0 else str(row.step)
    if key == "verdict":
        return row.verdict
    if key == "valid_loss":
        value = row.metrics.get("valid_loss", row.val_loss)
    elif key == "train_loss":
        value = row.train_loss
    else:
        value = row.metrics.get(key)
    if value is None:
        return "-"
    return f"{value:+.4f}" if key == "probe_loss_delta" else f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
