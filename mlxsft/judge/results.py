"""`RUN/eval/results.json`: the evaluation of every checkpoint of a run, kept across calls.

One document per run: the suite it was measured with and one entry per checkpoint
(step 0 is the base model). A new evaluation with the same suite adds or replaces
entries; a different suite starts the document afresh, since its numbers are not
comparable. Written atomically after every checkpoint, so an interrupted `mlxsft eval`
keeps what it finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import MlxsftError
from ..rundir import RunDir
from ..safeio import atomic_write_text

FORMAT = 1


def results_file(run: RunDir) -> Path:
    return run.path / "eval" / "results.json"


def read_results(run: RunDir) -> dict | None:
    path = results_file(run)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MlxsftError(
            f"results.json is not valid JSON ({exc.msg}); delete it and run `mlxsft eval` again.",
            path=str(path),
            line=exc.lineno,
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("checkpoints"), list):
        raise MlxsftError(
            "results.json is not in the format this version writes; run `mlxsft eval` again.",
            path=str(path),
        )
    return doc


def new_results(run: RunDir, suite: dict, previous: dict | None) -> dict:
    """A document for `suite`, keeping `previous`'s entries when they were measured the same way."""
    keep = previous is not None and previous.get("suite") == suite
    return {
        "format": FORMAT,
        "run_dir": str(run.path),
        "suite": suite,
        "notes": [],
        "checkpoints": list(previous["checkpoints"]) if keep else [],
        "updated": time.time(),
    }


def put_checkpoint(doc: dict, entry: dict) -> None:
    """Add or replace the entry of `entry['step']`, keeping entries sorted by step."""
    entries = [e for e in doc["checkpoints"] if e["step"] != entry["step"]]
    entries.append(entry)
    doc["checkpoints"] = sorted(entries, key=lambda e: e["step"])
    doc["updated"] = time.time()


def write_results(run: RunDir, doc: dict) -> Path:
    path = results_file(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False))
    return path


def require_results(run: RunDir) -> dict:
    doc = read_results(run)
    if doc is None or not doc["checkpoints"]:
        raise MlxsftError(
            f"this run has no evaluation yet; run `mlxsft eval {run.path}` first.",
            path=str(run.path),
        )
    return doc
