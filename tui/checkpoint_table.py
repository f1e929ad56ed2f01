"""Rows of the Checkpoints screen: each saved step with its metrics, best and chosen marks.

Metrics come from the event stream (validation loss, perplexity and token accuracy
at that step, the training loss reported just before it) and, when the eval battery
has run, from RUN/eval/results.json. That file's layout belongs to the eval module,
so it is read leniently: a list of records with a `step`, or a mapping keyed by step
(`"40"` or `"step-0000040"`), optionally under `checkpoints` or `results`; every
number in a record (nested ones with dotted names) becomes a column.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlxsft.rundir import RunDir

from .run_state import RunState

EVAL_RESULTS = Path("eval") / "results.json"
MAX_EVAL_COLUMNS = 4
_STEP_KEY = re.compile(r"^(?:step-?)?0*(\d+)$")


@dataclass
class CheckpointRow:
    step: int
    exists: bool  # the folder is on disk (not deleted)
    val_loss: float | None = None
    perplexity: float | None = None
    token_accuracy: float | None = None
    train_loss: float | None = None
    is_best: bool = False
    is_chosen: bool = False
    eval_metrics: dict[str, float] = field(default_factory=dict)


def _numbers(record: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[f"{prefix}{key}"] = float(value)
        elif isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
    return out


def read_eval_results(run_dir: Path) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} from RUN/eval/results.json, or {} when absent or unreadable."""
    path = Path(run_dir) / EVAL_RESULTS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if isinstance(data, dict):
        for key in ("checkpoints", "results"):
            if key in data:
                data = data[key]
                break
    results: dict[int, dict[str, float]] = {}
    if isinstance(data, list):
        for record in data:
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                results[record["step"]] = _numbers(record)
    elif isinstance(data, dict):
        for key, record in data.items():
            match = _STEP_KEY.match(str(key))
            if match and isinstance(record, dict):
                results[int(match[1])] = _numbers(record)
    return results


def checkpoint_rows(
    run_dir: Path, state: RunState, evals: dict[int, dict[str, float]] | None = None
) -> list[CheckpointRow]:
    run = RunDir(run_dir)
    meta = run.read_meta() if run.meta_file.is_file() else {}
    on_disk = set(run.checkpoint_steps())
    evals = evals if evals is not None else read_eval_results(run_dir)
    best = meta.get("best_step", state.best_step)
    chosen = meta.get("chosen_step")
    rows = []
    for step in sorted(on_disk | set(state.checkpoints)):
        saved = state.checkpoints.get(step)
        row = CheckpointRow(
            step=step,
            exists=step in on_disk,
            train_loss=state.train_loss_near(step),
            is_best=step == best,
            is_chosen=step == chosen,
            eval_metrics=evals.get(step, {}),
        )
        evaluation = next((e for e in state.evaluations if e.step == step), None)
        if evaluation is not None:
            row.val_loss, row.perplexity, row.token_accuracy = (
                evaluation.loss,
                evaluation.perplexity,
                evaluation.token_accuracy,
            )
        elif saved is not None:
            row.val_loss = saved.val_loss
        rows.append(row)
    return rows


def eval_columns(rows: list[CheckpointRow]) -> list[str]:
    names: list[str] = []
    for row in rows:
        for name in row.eval_metrics:
            if name not in names:
                names.append(name)
    return names[:MAX_EVAL_COLUMNS]
