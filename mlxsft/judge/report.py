"""Plain-text tables for the terminal: columns padded with spaces, no control codes.

`table` lays out rows under headers (numbers right-aligned); the `format_*` helpers
turn the data-check report, the evaluation results, the verdicts and one row as
trained (`format_row_view`: ANSI colour only when asked, else [[brackets]]) into text.
"""

from __future__ import annotations

from collections.abc import Sequence

from .verdict import explain

MISSING = "-"
FINDINGS_SHOWN = 50  # per kind of check, in the terminal


def fmt(value, digits: int = 3) -> str:
    """A cell: floats with `digits` decimals, None as '-'."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _numeric(cell: str) -> bool:
    text = cell.rstrip("%").replace(",", "")
    try:
        float(text)
        return True
    except ValueError:
        return cell == MISSING


def table(headers: Sequence[str], rows: Sequence[Sequence], indent: str = "") -> str:
    """Columns separated by two spaces; a column of numbers is right-aligned."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = [bool(cells) and all(_numeric(r[i]) for r in cells) for i in range(len(headers))]

    def line(values):
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in cells])


# --------------------------------------------------------------------------- data show

_TRAINED_ON, _TRAINED_OFF = "\x1b[1;32m", "\x1b[0m"  # bold green
_CONTEXT_ON = "\x1b[2m"  # dim


def format_row_view(view, *, color: bool) -> str:
    """One row as trained (`mlxsft.data.preview.RowView`): header, then each sequence marked up."""
    count = len(view.sequences)
    out = [f"{view.where}: {view.layout}"]
    if view.untrained_turns:
        out.append(f"  not trained (rendered differently later in the chat): messages {list(view.untrained_turns)}")
    if view.trailing_text:
        out.append(f"  the template appends {view.trailing_text!r} after the last turn: never trained")
    for n, seq in enumerate(view.sequences, start=1):
        per_turn = ", ".join(
            (f"message {turn}" if turn is not None else "trained") + f": {tokens} tokens"
            for turn, tokens in seq.trained_by_turn
        )
        out += ["", f"sequence {n} of {count}: {seq.num_tokens} tokens; {per_turn or 'nothing trained'}"]
        out.append("".join(_mark(s.text, s.trained, color) for s in seq.segments))
    if not color:
        out += ["", "[[ ]] marks trained text."]
    return "\n".join(out)


def _mark(text: str, trained: bool, color: bool) -> str:
    if color:
        return (_TRAINED_ON if trained else _CONTEXT_ON) + text + _TRAINED_OFF
    return f"[[{text}]]" if trained else text


# --------------------------------------------------------------------------- data check


def format_data_report(report: dict) -> str:
    out = ["Data check"]
    out += [f"  {split}: {path}" for split, path in report["files"].items()]
    splits = report["splits"]
    if splits:
        rows = []
        for split, s in splits.items():
            turns = s.get("turns") or {}
            roles = ", ".join(f"{r} {n}" for r, n in s.get("roles", {}).items())
            rows.append(
                [
                    split,
                    s["rows"],
                    s.get("kind", MISSING),
                    turns.get("min"),
                    turns.get("mean"),
                    turns.get("max"),
                    roles or MISSING,
                ]
            )
        out += [
            "",
            table(
                ["split", "rows", "kind", "turns min", "mean", "max", "messages by role"],
                rows,
                "  ",
            ),
        ]
        tagged = {split: s["tags"] for split, s in splits.items() if s.get("tags")}
        for split, tags in tagged.items():
            out.append(f"  {split} buckets: " + ", ".join(f"{t} {n}" for t, n in tags.items()))
    tokens = {split: s["tokens"] for split, s in splits.items() if s.get("tokens")}
    if tokens:
        rows = [
            [
                split,
                t["rows"],
                t["min"],
                t["p50"],
                t["p95"],
                t["max"],
                t["trained_share"],
                t["truncated"],
                t["no_trained_tokens"],
            ]
            for split, t in tokens.items()
        ]
        limit = next(iter(tokens.values()))["max_seq_length"]
        out += [
            "",
            f"Tokens (max_seq_length {limit})",
            table(
                [
                    "split",
                    "rows",
                    "min",
                    "p50",
                    "p95",
                    "max",
                    "trained share",
                    "truncated",
                    "no trained",
                ],
                rows,
                "  ",
            ),
        ]
        for split, t in tokens.items():
            peak = max((b["rows"] for b in t["histogram"]), default=1) or 1
            out.append(f"  {split} length histogram:")
            out.append(
                table(
                    ["tokens", "rows", ""],
                    [[b["range"], b["rows"], "#" * round(30 * b["rows"] / peak)] for b in t["histogram"]],
                    "    ",
                )
            )
    out += [""] + [f"note: {n}" for n in report["notes"]]
    findings = report["findings"]
    if findings:
        out.append(f"Findings ({len(findings)}):")
        shown: dict[str, int] = {}
        for f in findings:
            shown[f["check"]] = shown.get(f["check"], 0) + 1
            if shown[f["check"]] > FINDINGS_SHOWN:
                continue
            where = f"{f['path']}:{f['line']}" if f["line"] is not None else f["path"]
            out.append(f"  {where}: {f['severity']} [{f['check']}] {f['message']}")
        for check, count in shown.items():
            if count > FINDINGS_SHOWN:
                out.append(f"  ... and {count - FINDINGS_SHOWN} more [{check}] findings (all in --json)")
    s = report["summary"]
    out.append(f"{s['errors']} errors, {s['warnings']} warnings.")
    return "\n".join(out)


# --------------------------------------------------------------------------- eval


EVAL_COLUMNS = (
    ("valid_loss", "valid"),
    ("assistant_nll", "asst nll"),
    ("token_accuracy", "acc"),
    ("ood_loss", "ood"),
    ("probe_loss_delta", "probe d"),
    ("probe_kl", "kl"),
    ("entropy", "entropy"),
    ("distinct_2", "dist-2"),
    ("self_similarity", "self-sim"),
    ("mean_length", "len"),
    ("template_start_share", "tmpl"),
    ("exact_match", "exact"),
    ("json_valid", "json"),
    ("schema_valid", "schema"),
    ("regex_pass", "regex"),
    ("verifier_pass", "verify"),
    ("pass_at_1", "pass@1"),
    ("pass_at_k", "pass@k"),
)


def format_eval(doc: dict) -> str:
    """One row per checkpoint; only the columns some checkpoint has."""
    entries = doc["checkpoints"]
    k = doc.get("suite", {}).get("k")
    columns = [
        (key, label.replace("@k", f"@{k}") if k else label)
        for key, label in EVAL_COLUMNS
        if any(e["metrics"].get(key) is not None for e in entries)
    ]
    rows = [[e["label"]] + [e["metrics"].get(key) for key, _ in columns] for e in entries]
    out = [table(["checkpoint"] + [label for _, label in columns], rows)]
    buckets = sorted({b for e in entries for b in e.get("buckets", {})})
    for bucket in buckets:
        cols = [
            (key, label)
            for key, label in columns
            if any(e.get("buckets", {}).get(bucket, {}).get(key) is not None for e in entries)
        ]
        rows = [[e["label"]] + [e.get("buckets", {}).get(bucket, {}).get(key) for key, _ in cols] for e in entries]
        out += [
            "",
            f"bucket {bucket}",
            table(["checkpoint"] + [label for _, label in cols], rows, "  "),
        ]
    out += [f"note: {n}" for n in doc.get("notes", [])]
    return "\n".join(out)


# --------------------------------------------------------------------------- select


def format_verdicts(verdicts, choice, rule, chosen_written: bool) -> str:
    rows = []
    for v in verdicts:
        n = v.numbers
        rows.append(
            [
                v.step,
                v.verdict + (" (disagree)" if v.disagree else ""),
                v.reference_step,
                _pct_se(n.get("dev_gain"), n.get("dev_gain_se")),
                _pct_se(n.get("ood_gain"), n.get("ood_gain_se")),
                _pct(n.get("entropy_change")),
                _pct(n.get("distinct_2_change")),
                fmt(n.get("pass_at_1_change")),
                fmt(n.get("pass_at_k_change")),
                _pct_se(n.get("probe_loss_change"), n.get("probe_loss_change_se")),
                _pct_se(n.get("probe_loss_vs_base"), n.get("probe_loss_vs_base_se")),
                fmt(n.get("probe_kl_change")),
                fmt(n.get("probe_kl_vs_base")),
                ", ".join(v.fired) or MISSING,
                ", ".join(v.within_noise) or MISSING,
            ]
        )
    headers = ["step", "verdict", "vs step", "dev gain", "ood gain", "entropy", "dist-2", "pass@1", "pass@k"]
    headers += ["probe", "probe/base", "KL change", "KL/base", "fired", "within noise"]
    out = ["Rule: " + rule.describe(), "", table(headers, rows), ""]
    out += ["Why:"] + ["  " + explain(v) for v in verdicts]
    warnings = [(v.step, w) for v in verdicts for w in v.warnings]
    out += [f"WARNING step {step}: {w}" for step, w in warnings]
    out.append("")
    if choice.step is None:
        out.append("No checkpoint chosen: " + "; ".join(choice.reasons))
    else:
        out.append(f"Chosen: step {choice.step} (" + "; ".join(choice.reasons) + ")")
        if chosen_written:
            out.append(f"Recorded as chosen_step={choice.step} in run.json: export uses it unless told otherwise.")
    return "\n".join(out)


def _pct_se(value: float | None, se: float | None) -> str:
    if value is None:
        return MISSING
    return f"{100 * value:+.1f}%" + (f"±{100 * se:.1f}" if se is not None else "")


def _pct(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:+.1f}%"
