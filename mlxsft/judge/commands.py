"""CLI: `mlxsft data check|show`, `mlxsft eval`, `mlxsft select` (thin clients of mlxsft.judge and the data layer)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path

from ..config import MASK_MODES, MULTI_TURN_MODES
from ..errors import MlxsftError
from ..rundir import RunDir
from ..safeio import atomic_write_text
from ..typed_yaml import parse_yaml_value, read_yaml_mapping
from .datacheck import SPLITS

# Handlers import the evaluation machinery (MLX, models) when they run, so building the
# CLI parser stays light for every other command.


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="Data tools: `mlxsft data check DATA`, `mlxsft data show DATA --model M`.")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser(
        "check",
        help="Pre-flight a data set: schema, lengths, masks, template, duplicates, leakage, roles.",
    )
    check.add_argument("data", help="A JSONL file, or a folder holding train/valid/test(/ood).jsonl.")
    check.add_argument("--model", help="Model folder or hub id whose tokenizer to check with (token checks).")
    check.add_argument(
        "--max-seq-length",
        type=int,
        default=2048,
        help="Longest sequence in tokens (default 2048).",
    )
    check.add_argument("--mask", choices=MASK_MODES, default="assistant", help="Which tokens are trained.")
    check.add_argument(
        "--near-threshold",
        type=float,
        default=0.8,
        help="Jaccard similarity of word 3-shingles from which rows are near duplicates (0.8).",
    )
    check.add_argument("--json", action="store_true", help="Print the report as JSON.")
    check.add_argument("--out", metavar="FILE", help="Also write the JSON report to FILE.")
    check.add_argument("--strict", action="store_true", help="Exit 1 on warnings too (for CI).")
    check.add_argument(
        "--multi-turn", choices=MULTI_TURN_MODES, default="auto", help="How multi-turn rows are laid out."
    )
    check.set_defaults(handler=cmd_data_check)

    show = data_sub.add_parser(
        "show", help="Show one row as trained: its sequences, trained text marked, tokens per turn."
    )
    show.add_argument("data", help="A JSONL file, or a folder holding train/valid/test(/ood).jsonl.")
    show.add_argument("--model", required=True, help="Model folder or hub id whose template and tokenizer to use.")
    show.add_argument("--row", type=int, default=1, help="Which row, counting from 1 (blank lines not counted).")
    show.add_argument("--split", choices=SPLITS, default="train", help="Split of a data folder (default train).")
    show.add_argument("--mask", choices=MASK_MODES, default="assistant", help="Which tokens are trained.")
    show.add_argument("--multi-turn", choices=MULTI_TURN_MODES, default="auto", help="data.multi_turn.")
    show.add_argument("--no-reasoning", action="store_true", help="Leave reasoning untrained (data.train_reasoning).")
    show.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="Colour trained text (auto: when printing to a terminal); else it is put in [[ ]].",
    )
    show.set_defaults(handler=cmd_data_show)

    ev = sub.add_parser("eval", help="Evaluate a run's checkpoints (and the base as step 0).")
    ev.add_argument("run", help="Run directory.")
    ev.add_argument("--checkpoints", default="all", help="all, or steps like 100,200 (also: best, latest).")
    ev.add_argument(
        "--suite",
        metavar="FILE",
        help="YAML evaluation suite (prompts, k, metrics, verifier, ...).",
    )
    ev.add_argument("--json", action="store_true", help="Print results.json instead of the table.")
    ev.set_defaults(handler=cmd_eval)

    sel = sub.add_parser("select", help="Judge evaluated checkpoints and record the recommended one.")
    sel.add_argument("run", help="Run directory (evaluated with `mlxsft eval`).")
    sel.add_argument("--rule", metavar="FILE", help="YAML file of rule keys (see the flags below).")
    sel.add_argument("--dry-run", action="store_true", help="Print the verdicts without writing run.json.")
    sel.add_argument("--json", action="store_true", help="Print verdicts and choice as JSON.")
    _add_rule_flags(sel)
    sel.set_defaults(handler=cmd_select)


# --------------------------------------------------------------------------- data check


def cmd_data_check(args) -> int:
    from .datacheck import check_data
    from .report import format_data_report

    if args.max_seq_length < 1:
        raise MlxsftError("--max-seq-length must be at least 1.")
    if not 0 < args.near_threshold <= 1:
        raise MlxsftError("--near-threshold must be in (0, 1].")
    if args.out and not Path(args.out).parent.is_dir():
        raise MlxsftError("the folder for --out does not exist; create it first.", path=args.out)
    tokenizer = _tokenizer(args.model) if args.model else None
    report = check_data(
        args.data,
        tokenizer,
        mask=args.mask,
        multi_turn=args.multi_turn,
        max_seq_length=args.max_seq_length,
        near_threshold=args.near_threshold,
    )
    if args.model:
        report.findings += untrained_token_findings(args.model, tokenizer)
    doc = report.to_dict()
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2) if args.json else format_data_report(doc))
    failed = report.errors > 0 or (args.strict and report.warnings > 0)
    return 1 if failed else 0


def cmd_data_show(args) -> int:
    from ..data.formats import scan_jsonl
    from ..data.preview import view_row
    from .datacheck import data_files
    from .report import format_row_view

    files = data_files(args.data)
    if args.split not in files:
        raise MlxsftError(f"this data has no {args.split} split (found: {', '.join(files)}).", path=args.data)
    rows, problems = scan_jsonl(files[args.split])
    if not 1 <= args.row <= len(rows):
        raise MlxsftError(
            f"--row {args.row} is out of range: the file has {len(rows)} valid rows"
            + (f" ({len(problems)} bad rows not counted)." if problems else "."),
            path=str(files[args.split]),
        )
    view = view_row(
        rows[args.row - 1],
        _tokenizer(args.model),
        mask=args.mask,
        multi_turn=args.multi_turn,
        train_reasoning=not args.no_reasoning,
    )
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    print(format_row_view(view, color=color))
    return 0


def untrained_token_findings(model: str, tokenizer) -> list:
    """A data-check warning when the template's tokens look untrained in the base (untrained_tokens.py)."""
    from ..model import resolve_model_path
    from ..untrained_tokens import check_tokens, describe, read_embedding
    from .datacheck import Finding

    path = resolve_model_path(model)
    tokens = check_tokens(read_embedding(path), tokenizer)
    return [Finding("warning", "untrained_tokens", str(path), None, describe(tokens))] if tokens else []


def _tokenizer(model: str):
    from mlx_lm.utils import load_tokenizer

    from ..model import resolve_model_path

    return load_tokenizer(resolve_model_path(model))


# --------------------------------------------------------------------------- eval


def cmd_eval(args) -> int:
    from .battery import evaluate_run
    from .report import format_eval
    from .suite import load_suite

    suite = load_suite(args.suite)
    stream = sys.stderr if args.json else sys.stdout

    def progress(entry: dict) -> None:
        m = entry["metrics"]
        shown = " ".join(
            f"{k} {m[k]:.3f}"
            for k in ("valid_loss", "ood_loss", "probe_kl", "entropy", "pass_at_1")
            if m.get(k) is not None
        )
        print(
            f"evaluated {entry['label']} in {entry['elapsed_s']:.1f}s: {shown}",
            file=stream,
            flush=True,
        )

    from .preference_select import objective_of

    objective = objective_of(RunDir(args.run))
    if objective != "sft":
        raise MlxsftError(
            f"`mlxsft eval` runs the SFT battery, which does not read preference pairs; this {objective} run's "
            f"validation passes are in its events already: run `mlxsft select {args.run}` to choose a checkpoint.",
            path=str(args.run),
        )
    doc = evaluate_run(args.run, suite, args.checkpoints, on_entry=progress)
    print(json.dumps(doc, indent=2) if args.json else "\n" + format_eval(doc))
    return 0


# --------------------------------------------------------------------------- select


def _rule_fields():
    from .verdict import Rule

    hints = typing.get_type_hints(Rule)
    return [(f.name, hints[f.name], f.default) for f in dataclasses.fields(Rule)]


def _add_rule_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rule keys (override the --rule file)")
    for name, _tp, default in _rule_fields():
        shown = ",".join(default) if isinstance(default, tuple) else default
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"rule:{name}",
            metavar="VALUE",
            default=None,
            help=f"(default: {shown})",
        )


def _flag_values(args) -> dict:
    values = {}
    for name, tp, _ in _rule_fields():
        text = getattr(args, f"rule:{name}")
        if text is not None:
            values[name] = text if tp is str or typing.get_origin(tp) is tuple else parse_yaml_value(text)
    return values


def load_rule(path: str | None, flags: dict):
    """The default rule, updated by the --rule file, then by flags."""
    from .verdict import RuleError, rule_from_dict

    raw = _read_rule_file(path) if path else {}
    try:
        return rule_from_dict(flags, rule_from_dict(raw))
    except RuleError as exc:
        raise MlxsftError(str(exc), path=path) from None


def _read_rule_file(path: str) -> dict:
    raw, _lines = read_yaml_mapping(
        path,
        MlxsftError,
        "rule file not found; check the path given to --rule.",
        "a rule file must be a mapping of rule keys, e.g. `within: 0.05`.",
    )
    return raw


def cmd_select(args) -> int:
    from ..events import JsonlSink, SelectionMade
    from .report import format_verdicts
    from .results import require_results
    from .verdict import RuleError, choose, explain, judge_history, points

    run = RunDir(args.run)
    run.require_existing()
    from .preference_select import objective_of, select_preference

    if objective_of(run) != "sft":  # judged from the run's own validation passes
        return select_preference(run, dry_run=args.dry_run, as_json=args.json)
    doc = require_results(run)
    rule = load_rule(args.rule, _flag_values(args))
    available = set(run.checkpoint_steps()) | {0}
    history = [p for p in points(doc["checkpoints"]) if p.step in available]
    try:
        verdicts = judge_history(history, rule)
        choice = choose(history, verdicts, rule)
    except RuleError as exc:
        raise MlxsftError(str(exc), path=str(run.path)) from None
    written = not args.dry_run and choice.step is not None
    if written:
        run.update_meta(chosen_step=choice.step, chosen_rule=rule.describe(), chosen_at=time.time())
        sink = JsonlSink(run.events_file)
        try:
            sink(
                SelectionMade(
                    chosen_step=choice.step,
                    verdicts=tuple(f"{v.step}: {v.verdict}" for v in verdicts),
                    rule=rule.describe(),
                    reason="; ".join(choice.reasons + _warnings(verdicts)),
                )
            )
        finally:
            sink.close()
    if args.json:
        print(
            json.dumps(
                {
                    "chosen_step": choice.step,
                    "reasons": list(choice.reasons),
                    "rule": dataclasses.asdict(rule),
                    "verdicts": [dataclasses.asdict(v) | {"explanation": explain(v)} for v in verdicts],
                    "warnings": list(_warnings(verdicts)),
                    "written": written,
                },
                indent=2,
            )
        )
    else:
        print(format_verdicts(verdicts, choice, rule, written))
    return 0


def _warnings(verdicts) -> tuple[str, ...]:
    """Every checkpoint's warnings (forgetting against the base), for the event and --json."""
    return tuple(f"WARNING step {v.step}: {w}" for v in verdicts for w in v.warnings)
