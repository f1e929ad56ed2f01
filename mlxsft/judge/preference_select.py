"""`mlxsft select` for preference runs: the choice rule of `judge.preference` over the run's own
validation passes (PreferenceReported + EvalFinished events), recorded as for SFT runs."""

from __future__ import annotations

import json
import time

from ..events import EvalFinished, JsonlSink, PreferenceReported, SelectionMade, read_events
from ..rundir import RunDir
from .preference import PrefPoint, choose_preference, flagged_steps

RULE = (
    "preference runs: not collapse-flagged; validation preference accuracy within 1% of the best, then "
    "margin within 1%, then the lowest chosen-reply perplexity; earliest step"
)


def objective_of(run: RunDir) -> str:
    return run.read_meta().get("objective") or "sft"


def preference_history(run: RunDir) -> list[PrefPoint]:
    """One point per validation pass at a step that has a checkpoint (the last report of a step wins)."""
    events = read_events(run.events_file) if run.events_file.is_file() else []
    perplexity = {e.step: e.perplexity for e in events if isinstance(e, EvalFinished)}
    points = {
        e.step: PrefPoint(e.step, e.accuracy, e.margin, e.logps_chosen, perplexity.get(e.step))
        for e in events
        if isinstance(e, PreferenceReported) and e.split == "valid"
    }
    available = set(run.checkpoint_steps())
    return [points[s] for s in sorted(points) if s in available]


def select_preference(run: RunDir, *, dry_run: bool, as_json: bool) -> int:
    history = preference_history(run)
    step, reasons = choose_preference(history)
    flagged = sorted(flagged_steps(history))
    warnings = (
        [
            f"WARNING steps {', '.join(map(str, flagged))}: likelihood collapse (margin growing while the "
            "chosen log-prob falls)"
        ]
        if flagged
        else []
    )
    written = not dry_run and step is not None
    if written:
        run.update_meta(chosen_step=step, chosen_rule=RULE, chosen_at=time.time())
        sink = JsonlSink(run.events_file)
        try:
            sink(
                SelectionMade(
                    chosen_step=step,
                    rule=RULE,
                    reason="; ".join(reasons + warnings),
                    verdicts=tuple(f"{p.step}: acc {p.accuracy:.3f} margin {p.margin:.3f}" for p in history),
                )
            )
        finally:
            sink.close()
    if as_json:
        print(
            json.dumps(
                {"chosen_step": step, "reasons": reasons, "rule": RULE, "warnings": warnings, "written": written},
                indent=2,
            )
        )
        return 0
    for p in history:
        ppl = f"  ppl {p.perplexity:.3f}" if p.perplexity is not None else ""
        flag = "  (collapse)" if p.step in flagged else ""
        print(
            f"step {p.step}: pref acc {p.accuracy:.1%}  margin {p.margin:.3f}  "
            f"logps chosen {p.logps_chosen:.2f}{ppl}{flag}"
        )
    print("\n".join([*reasons, *warnings]))
    print(f"chosen: step {step}" + (" (recorded in run.json)" if written else ""))
    return 0
