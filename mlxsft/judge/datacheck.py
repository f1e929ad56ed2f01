"""Data pre-flight (`mlxsft data check`): everything worth knowing about a data set before training.

Always: schema validation (the data layer's, every bad row with file and line; the
valid rows are still checked), exact and
near duplicates within a split (MinHash over word shingles, `datasketch`), leakage
between splits (exact rows, near rows, and identical prompts), role and turn
statistics. With a tokenizer: the token-length histogram against max_seq_length,
truncated rows, rows whose trained tokens are all masked or cut off, rows the chat
template cannot train or whose turn order no template produces, how multi-turn rows are
laid out (one sequence, or one per turn where the template is not prefix-preserving, and
what that costs in tokens), and the chat template round-trip (the rendered text
tokenizes back to the template's own ids and decodes back to the same text). Every finding names its file and line.

Near duplicates compare the non-system text of a row: system prompts are shared by
design and would make every pair of rows look alike.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.formats import Example, scan_jsonl
from ..data.masking import tokenize_row
from ..data.preference import scan_pairs
from ..data.templates import check_turn_order, has_generation_markers, hf_tokenizer, marked_replies
from ..errors import DataError, MlxsftError

SPLITS = ("train", "valid", "test", "ood")
LEAK_PAIRS = (("train", "valid"), ("train", "test"), ("train", "ood"), ("valid", "test"))
NUM_PERM = 128
SHINGLE_WORDS = 3


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    check: str
    path: str
    line: int | None
    message: str
    other_path: str | None = None  # the row this one duplicates or leaks from
    other_line: int | None = None


@dataclass
class DataReport:
    files: dict[str, str]
    splits: dict[str, dict] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == "warning" for f in self.findings)

    def to_dict(self) -> dict:
        findings = sorted(self.findings, key=lambda f: (f.path, f.line or 0, f.check))
        return {
            "files": self.files,
            "splits": self.splits,
            "notes": self.notes,
            "findings": [asdict(f) for f in findings],
            "summary": {"errors": self.errors, "warnings": self.warnings},
        }


# --------------------------------------------------------------------------- files


def data_files(data: str | Path) -> dict[str, Path]:
    """{split: file}: a folder gives its train/valid/test/ood.jsonl; a single file is the split
    its name says (valid.jsonl is "valid"), or "train"."""
    path = Path(data)
    if path.is_file():
        return {path.stem if path.stem in SPLITS else "train": path}
    if path.is_dir():
        files = {s: path / f"{s}.jsonl" for s in SPLITS if (path / f"{s}.jsonl").is_file()}
        if not files:
            raise MlxsftError(
                "this folder holds none of train.jsonl, valid.jsonl, test.jsonl, ood.jsonl.",
                path=str(path),
            )
        return files
    raise MlxsftError("data not found; give a JSONL file or a folder holding train.jsonl.", path=str(path))


def _load(path: Path, report: DataReport) -> list[Example] | None:
    """The file's valid rows; every bad row becomes a schema finding and the rest are still checked.

    A file of preference pairs (DPO/ORPO) is checked as pairs (`data.preference`: every bad pair
    is a "pair" finding) and then, for the other checks, as its chosen sides.
    """
    if _is_pair_file(path):
        pairs, bad = scan_pairs(path)
        report.findings += [Finding("error", "pair", row.path, row.line, row.reason) for row in bad]
        return [pair.chosen for pair in pairs]
    try:
        rows, problems = scan_jsonl(path)
    except DataError as exc:
        report.findings.append(Finding("error", "schema", exc.path or str(path), exc.line, exc.detail))
        return None
    for exc in problems:
        report.findings.append(Finding("error", "schema", exc.path or str(path), exc.line, exc.detail))
    return rows


def _is_pair_file(path: Path) -> bool:
    """Whether the file's first row is a preference pair (has "chosen" or "rejected")."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = next((line for line in f if line.strip()), "")
        row = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(row, dict) and ("chosen" in row or "rejected" in row)


# --------------------------------------------------------------------------- texts


def _norm(text: str) -> str:
    return " ".join(text.split())


def row_key(example: Example) -> str:
    """The whole row's content, whitespace-normalized: equal keys are exact duplicates."""
    if example.kind == "chat":
        return "\x1e".join(f"{m['role']}\x1f{_norm(m.get('content') or '')}" for m in example.messages)
    if example.kind == "completion":
        return f"{_norm(example.prompt)}\x1e{_norm(example.completion)}"
    return _norm(example.text)


def prompt_key(example: Example) -> str | None:
    """The input side of a row (what a model is asked), or None for text rows."""
    if example.kind == "chat":
        last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
        turns = [m for m in example.messages[:last] if m["role"] != "system"]
        return "\x1e".join(_norm(m.get("content") or "") for m in turns) or None
    if example.kind == "completion":
        return _norm(example.prompt) or None
    return None


def content_text(example: Example) -> str:
    """The non-system text of a row, for near-duplicate detection."""
    if example.kind == "chat":
        return " ".join(m.get("content") or "" for m in example.messages if m["role"] != "system")
    if example.kind == "completion":
        return f"{example.prompt} {example.completion}"
    return example.text


def shingles(text: str, n: int = SHINGLE_WORDS) -> frozenset[str]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def _minhash(grams: frozenset[str]):
    from datasketch import MinHash

    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([g.encode("utf-8") for g in grams])
    return m


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class _Indexed:
    """One split's rows with their keys, shingles and MinHash signatures."""

    rows: list[Example]
    keys: list[str]
    prompts: list[str | None]
    grams: list[frozenset]
    hashes: list

    @classmethod
    def build(cls, rows: list[Example]) -> _Indexed:
        grams = [shingles(content_text(r)) for r in rows]
        return cls(
            rows,
            [row_key(r) for r in rows],
            [prompt_key(r) for r in rows],
            grams,
            [_minhash(g) for g in grams],
        )


def _lsh(threshold: float):
    from datasketch import MinHashLSH

    # A lower LSH threshold than the reported one: candidates are then checked with the
    # exact Jaccard of their shingle sets, so LSH only has to avoid missing pairs.
    return MinHashLSH(threshold=max(threshold - 0.15, 0.05), num_perm=NUM_PERM)


# --------------------------------------------------------------------------- duplicates and leaks


def find_duplicates(split: _Indexed, threshold: float) -> list[Finding]:
    """Rows that repeat (exactly, or above `threshold` Jaccard) an earlier row of the same split."""
    findings, first_of, lsh = [], {}, _lsh(threshold)
    for i, row in enumerate(split.rows):
        earlier = first_of.get(split.keys[i])
        if earlier is not None:
            findings.append(
                Finding(
                    "warning",
                    "duplicate",
                    row.path,
                    row.line,
                    f"exact duplicate of line {split.rows[earlier].line}",
                    split.rows[earlier].path,
                    split.rows[earlier].line,
                )
            )
        else:
            first_of[split.keys[i]] = i
            match = _best_match(split, i, lsh, split, threshold)
            if match is not None:
                j, sim = match
                findings.append(
                    Finding(
                        "warning",
                        "near_duplicate",
                        row.path,
                        row.line,
                        f"near duplicate of line {split.rows[j].line} (similarity {sim:.2f})",
                        split.rows[j].path,
                        split.rows[j].line,
                    )
                )
        if split.grams[i]:
            lsh.insert(i, split.hashes[i])
    return findings


def _best_match(query: _Indexed, i: int, lsh, indexed: _Indexed, threshold: float):
    if not query.grams[i]:
        return None
    best = None
    for j in lsh.query(query.hashes[i]):
        sim = _jaccard(query.grams[i], indexed.grams[j])
        if sim >= threshold and (best is None or sim > best[1]):
            best = (j, sim)
    return best


def find_leaks(source: _Indexed, target: _Indexed, source_name: str, threshold: float) -> list[Finding]:
    """Rows of `target` that appear in `source`: exactly, nearly, or with the same prompt."""
    exact = {}
    prompts = {}
    for j, key in enumerate(source.keys):
        exact.setdefault(key, j)
        if source.prompts[j]:
            prompts.setdefault(source.prompts[j], j)
    lsh = _lsh(threshold)
    for j, h in enumerate(source.hashes):
        if source.grams[j]:
            lsh.insert(j, h)
    findings = []
    for i, row in enumerate(target.rows):
        j = exact.get(target.keys[i])
        check, text = "leak", "exact copy of {} line {}"
        if j is None:
            match = _best_match(target, i, lsh, source, threshold)
            if match is not None:
                j, sim = match
                check, text = "near_leak", f"near copy (similarity {sim:.2f}) of {{}} line {{}}"
        if j is None and target.prompts[i] and target.prompts[i] in prompts:
            j = prompts[target.prompts[i]]
            check, text = "prompt_leak", "same prompt as {} line {}"
        if j is not None:
            other = source.rows[j]
            findings.append(
                Finding(
                    "warning",
                    check,
                    row.path,
                    row.line,
                    text.format(source_name, other.line),
                    other.path,
                    other.line,
                )
            )
    return findings


# --------------------------------------------------------------------------- statistics


def role_statistics(rows: list[Example]) -> dict:
    kinds = Counter(r.kind for r in rows)
    stats: dict = {"rows": len(rows), "kind": ", ".join(kinds)}
    chats = [r for r in rows if r.kind == "chat"]
    if chats:
        turns = [len(r.messages) for r in chats]
        roles = Counter(m["role"] for r in chats for m in r.messages)
        chars = {
            role: round(
                float(np.mean([len(m.get("content") or "") for r in chats for m in r.messages if m["role"] == role])),
                1,
            )
            for role in roles
        }
        stats |= {
            "turns": {
                "min": min(turns),
                "mean": round(float(np.mean(turns)), 2),
                "max": max(turns),
            },
            "roles": dict(sorted(roles.items())),
            "mean_chars_by_role": dict(sorted(chars.items())),
            "assistant_turns_per_row": round(roles["assistant"] / len(chats), 2),
            "rows_with_system": sum(any(m["role"] == "system" for m in r.messages) for r in chats),
            "rows_with_tools": sum(r.tools is not None for r in chats),
        }
    tags = Counter(t for r in rows for t in r.tags)
    if tags:
        stats["tags"] = dict(tags.most_common(20))
    return stats


def _histogram(lengths: list[int], limit: int) -> list[dict]:
    edges = [e for e in (2**i for i in range(4, 24)) if e < limit] + [limit]
    bins, low = [], 0
    for edge in edges:
        bins.append({"range": f"{low + 1}-{edge}", "rows": sum(low < n <= edge for n in lengths)})
        low = edge
    bins.append({"range": f">{limit}", "rows": sum(n > limit for n in lengths)})
    return bins


def token_checks(
    rows: list[Example], tokenizer, mask: str, limit: int, multi_turn: str = "auto"
) -> tuple[dict, list[Finding]]:
    """Length statistics, how multi-turn rows are laid out, and the findings that need a tokenizer."""
    findings, lengths, trained = [], [], []
    truncated = no_trained = 0
    layouts: Counter = Counter()
    extra = trailing = 0
    hf = hf_tokenizer(tokenizer)
    marked = has_generation_markers(hf)  # the template marks replies with {% generation %}
    for row in rows:
        if row.kind == "chat" and (problem := check_turn_order(row.messages)):
            findings.append(
                Finding(
                    "warning",
                    "turn_order",
                    row.path,
                    row.line,
                    problem + " Training stops on this row unless data.on_bad_row: skip.",
                )
            )
            continue
        try:
            tokenized = tokenize_row(row, tokenizer, mask=mask, multi_turn=multi_turn)
        except DataError as exc:
            findings.append(Finding("error", "template", row.path, row.line, exc.detail))
            continue
        layouts[tokenized.layout] += 1
        if tokenized.layout.startswith("split"):
            extra += tokenized.num_tokens - tokenized.one_sequence_tokens
        trailing += bool(tokenized.plan and tokenized.plan.trailing_text)
        sequences = tokenized.sequences
        n = max(len(s.ids) for s in sequences)
        total = sum(s.num_trained for s in sequences)
        kept = sum(int(s.trained[:limit].sum()) for s in sequences)
        lengths += [len(s.ids) for s in sequences]
        trained.append(total)
        findings += _trained_findings(row, mask, limit, n, total, kept)
        if marked:
            findings += _marker_check(row, hf, tokenized, mask)
        no_trained += kept == 0
        truncated += n > limit
        findings += _round_trip(row, tokenizer)
    layout_stats = {"layouts": dict(layouts), "split_extra_tokens": extra, "rows_with_trailing_text": trailing}
    if not lengths:
        return {"multi_turn": layout_stats} if layouts else {}, findings
    arr = np.asarray(lengths)
    stats = {
        "sequences": len(lengths),
        "rows": len(trained),
        "multi_turn": layout_stats,
        "max_seq_length": limit,
        "min": int(arr.min()),
        "p50": int(np.percentile(arr, 50)),
        "p95": int(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "total": int(arr.sum()),
        "trained_share": round(sum(trained) / max(int(arr.sum()), 1), 3),
        "truncated": truncated,
        "no_trained_tokens": no_trained,
        "histogram": _histogram(lengths, limit),
    }
    return stats, findings


def _trained_findings(row: Example, mask: str, limit: int, n: int, total: int, kept: int) -> list[Finding]:
    """Warnings for a row with nothing to train, or trained tokens lost to truncation."""

    def warn(check, message):
        return [Finding("warning", check, row.path, row.line, message)]

    if total == 0:
        return warn("no_trained_tokens", f"no trained tokens with mask={mask!r} ({n} tokens); the trainer skips it")
    if kept == 0:
        return warn(
            "trained_cut_off",
            f"all {total} trained tokens lie beyond max_seq_length={limit} "
            f"(the row has {n} tokens); the trainer skips it",
        )
    if n > limit:
        return warn(
            "truncated",
            f"{n} tokens > max_seq_length={limit}: truncated, losing {total - kept} of {total} trained tokens",
        )
    return []


def _marker_check(row: Example, hf, tokenized, mask: str) -> list[Finding]:
    """Where the template marks replies with {% generation %}, they must be what the rule trains."""
    if row.kind != "chat" or mask != "assistant" or tokenized.layout != "one sequence":
        return []
    seq = tokenized.plan.sequences[0]
    trained = [seq.text[s:e] for s, e, _ in seq.spans]
    marked = marked_replies(hf, row)
    if marked == trained:
        return []
    return [
        Finding(
            "warning",
            "generation_markers",
            row.path,
            row.line,
            f"the template's {{% generation %}} blocks mark {marked!r} but the model generates {trained!r} "
            "here; mlxsft trains what is generated",
        )
    ]


def template_note(stats: dict, split: str) -> str | None:
    """How the chat template lays out this split's multi-turn rows, for people."""
    layout = stats.get("multi_turn")
    if not layout or not layout["layouts"]:
        return None
    split_rows = {k: v for k, v in layout["layouts"].items() if k.startswith("split")}
    dropped = {k: v for k, v in layout["layouts"].items() if "not trained" in k}
    if split_rows:
        rows = sum(split_rows.values())
        total = stats.get("total", 0)
        share = layout["split_extra_tokens"] / max(total - layout["split_extra_tokens"], 1)
        text = (
            f"{split}: the chat template is not prefix-preserving (it renders earlier turns differently "
            f"from how they were generated): {rows} rows are trained as one sequence per turn that needs it "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(split_rows.items()))}), "
            f"+{layout['split_extra_tokens']} tokens (+{share:.0%}); data.multi_turn: single trains one "
            "sequence per row without those turns"
        )
    elif dropped:
        text = f"{split}: data.multi_turn: single leaves turns untrained in {sum(dropped.values())} rows"
    else:
        text = f"{split}: the chat template is prefix-preserving here: every row is one training sequence"
    if layout.get("rows_with_trailing_text"):
        text += "; text the template appends after the last turn is never trained"
    return text


def _round_trip(row: Example, tokenizer) -> list[Finding]:
    """The rendered text must encode to the template's own ids and decode back to itself."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    if not hasattr(hf, "apply_chat_template"):
        hf = tokenizer
    if row.kind == "chat":
        kwargs = {"tools": row.tools} if row.tools is not None else {}
        text = hf.apply_chat_template(list(row.messages), tokenize=False, **kwargs)
        ids = list(hf.apply_chat_template(list(row.messages), tokenize=True, return_dict=False, **kwargs))
        encoded = list(hf.encode(text, add_special_tokens=False))
    else:
        text = row.prompt + row.completion if row.kind == "completion" else row.text
        encoded = list(hf.encode(text, add_special_tokens=False))
        ids = encoded
    decoded = hf.decode(encoded, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    problems = []
    if encoded != ids:
        at = next(
            (i for i, (a, b) in enumerate(zip(encoded, ids, strict=False)) if a != b),
            min(len(encoded), len(ids)),
        )
        problems.append(
            f"encoding the rendered text gives other ids than the template's tokenization "
            f"(first difference at token {at})"
        )
    if decoded != text:
        at = next(
            (i for i, (a, b) in enumerate(zip(decoded, text, strict=False)) if a != b),
            min(len(decoded), len(text)),
        )
        problems.append(
            f"decode(encode(text)) differs from the text at character {at}: "
            f"{text[max(at - 10, 0) : at + 10]!r} became {decoded[max(at - 10, 0) : at + 10]!r}"
        )
    return [Finding("warning", "template_round_trip", row.path, row.line, p) for p in problems]


# --------------------------------------------------------------------------- the check


def check_data(
    data: str | Path,
    tokenizer=None,
    *,
    mask: str = "assistant",
    multi_turn: str = "auto",
    max_seq_length: int = 2048,
    near_threshold: float = 0.8,
) -> DataReport:
    """Check every split of `data`; token checks only when a tokenizer is given."""
    files = data_files(data)
    report = DataReport({s: str(p) for s, p in files.items()})
    loaded = {s: rows for s, p in files.items() if (rows := _load(p, report)) is not None}
    if tokenizer is None:
        report.notes.append("no --model given: token lengths, masks and the template round-trip were not checked")
    indexed = {}
    for split, rows in loaded.items():
        report.splits[split] = role_statistics(rows)
        if tokenizer is not None:
            stats, findings = token_checks(rows, tokenizer, mask, max_seq_length, multi_turn)
            report.splits[split]["tokens"] = stats
            report.findings += findings
            if note := template_note(stats, split):
                report.notes.append(note)
        indexed[split] = _Indexed.build(rows)
        report.findings += find_duplicates(indexed[split], near_threshold)
    for source, target in LEAK_PAIRS:
        if source in indexed and target in indexed:
            report.findings += find_leaks(indexed[source], indexed[target], source, near_threshold)
    if len(files) == 1:
        report.notes.append("one file only: leakage between splits was not checked")
    return report
