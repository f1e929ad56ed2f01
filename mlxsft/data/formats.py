"""Load and validate JSONL training data: one `Example` per non-blank line.

This module owns the three row formats people already use and every check that can
be made without a tokenizer:

- chat:       {"messages": [{"role": ..., "content": ...}, ...], "tools": [...]?}
- completion: {"prompt": "...", "completion": "..."}
- text:       {"text": "..."}

The format is detected per file from its first row; a later row in another format is
an error. Optional `tags` (list of strings) or `bucket` (string) become `Example.tags`.
Every problem is a `DataError` naming the file and the 1-based line, and saying what
to do about it; `scan_jsonl` keeps reading after a bad row, so one pass lists them all.
Blank lines are skipped but still counted in line numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

KINDS = ("chat", "completion", "text")
ROLES = ("system", "user", "assistant", "tool")
_SHOWN = 20  # bad rows quoted in one error message

# What each format looks like, quoted in error messages.
SHAPES = {
    "chat": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
    "completion": '{"prompt": "...", "completion": "..."}',
    "text": '{"text": "..."}',
}


@dataclass(frozen=True)
class Example:
    """One validated row. Exactly the fields of its `kind` are set; the others are None."""

    kind: str  # "chat" | "completion" | "text"
    messages: tuple[dict, ...] | None = None
    tools: list | None = None
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None
    tags: tuple[str, ...] = ()
    path: str = ""
    line: int = 0  # 1-based line number in `path`


def load_jsonl(path: str | Path) -> list[Example]:
    """Read and validate every row of a JSONL file; one `DataError` lists every bad row."""
    examples, problems = scan_jsonl(path)
    if problems:
        first = problems[0]
        if len(problems) == 1:
            raise first
        more = "\n".join(f"  {p}" for p in problems[1:_SHOWN])
        rest = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise DataError(
            f"{first.detail}\n{len(problems) - 1} more rows have problems:\n{more}{rest}",
            path=first.path,
            line=first.line,
        )
    return examples


def scan_jsonl(path: str | Path) -> tuple[list[Example], list[DataError]]:
    """Every valid row of a JSONL file, and a `DataError` for each bad one (file:line).

    A problem with the file itself (missing, a folder, no rows at all) is raised at once.
    """
    path = Path(path)
    where = str(path)
    _check_file(path, where)
    examples: list[Example] = []
    problems: list[DataError] = []
    file_kind: tuple[str, int] | None = None  # (kind, line of the first row)
    for line_no, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            example = _read_line(raw, where, line_no, file_kind)
        except DataError as exc:
            problems.append(exc)
            continue
        if example is None:
            continue
        if file_kind is None:
            file_kind = (example.kind, line_no)
        examples.append(example)
    if not examples and not problems:
        raise DataError(
            "the file is empty (no rows); write one JSON object per line, e.g. " + SHAPES["chat"],
            path=where,
        )
    return examples, problems


def _check_file(path: Path, where: str) -> None:
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as exc:  # e.g. a symlink loop
        raise DataError(f"cannot read the data file ({exc.strerror}); check the path.", path=where) from None
    if not exists:
        raise DataError("data file not found; check the path in the recipe.", path=where)
    if not is_file:
        raise DataError("expected a JSONL file, found a directory or special file.", path=where)


def _read_line(raw: bytes, where: str, line_no: int, file_kind) -> Example | None:
    """The row on one line (None for a blank line); raises `DataError` naming the line."""
    text = _decode_line(raw, where, line_no)
    if not text.strip():
        return None
    row = _parse_row(text, where, line_no)
    kind = _detect_kind(row, where, line_no)
    if file_kind is not None and kind != file_kind[0]:
        raise DataError(
            f"this row is in the {kind} format but the file's first row (line "
            f"{file_kind[1]}) is in the {file_kind[0]} format; use one format per file "
            f"(expected {SHAPES[file_kind[0]]}).",
            path=where,
            line=line_no,
        )
    return _make_example(kind, row, where, line_no)


def _decode_line(raw: bytes, where: str, line_no: int) -> str:
    """UTF-8 text of one line, without a BOM on line 1 or a trailing CR."""
    if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError as e:
        raise DataError(
            f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line); "
            "re-save the file as UTF-8.",
            path=where,
            line=line_no,
        ) from None


def _parse_row(text: str, where: str, line_no: int) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"malformed JSON ({e.msg} at column {e.colno}); each line must be one complete JSON object.",
            path=where,
            line=line_no,
        ) from None
    if not isinstance(row, dict):
        raise DataError(
            f"expected a JSON object on each line, found a {_json_type(row)}.",
            path=where,
            line=line_no,
        )
    return row


def _detect_kind(row: dict, where: str, line_no: int) -> str:
    if "messages" in row:
        return "chat"
    if "prompt" in row or "completion" in row:
        return "completion"
    if "text" in row:
        return "text"
    found = ", ".join(repr(k) for k in row) or "none"
    raise DataError(
        f"the row has none of the expected keys (found: {found}); expected one of "
        f"{SHAPES['chat']}, {SHAPES['completion']} or {SHAPES['text']}.",
        path=where,
        line=line_no,
    )


def _make_example(kind: str, row: dict, where: str, line_no: int) -> Example:
    tags = _read_tags(row, where, line_no)
    common = dict(kind=kind, tags=tags, path=where, line=line_no)
    if kind == "chat":
        messages = _read_messages(row["messages"], where, line_no)
        tools = row.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise DataError(
                f"'tools' must be a list of tool schemas, found a {_json_type(tools)}.",
                path=where,
                line=line_no,
            )
        return Example(messages=messages, tools=tools, **common)
    if kind == "completion":
        for key in ("prompt", "completion"):
            _require_string(row, key, kind, where, line_no)
        return Example(prompt=row["prompt"], completion=row["completion"], **common)
    _require_string(row, "text", kind, where, line_no)
    return Example(text=row["text"], **common)


def _require_string(row: dict, key: str, kind: str, where: str, line_no: int) -> None:
    if key not in row:
        raise DataError(f"missing key '{key}'; {kind} rows look like {SHAPES[kind]}.", path=where, line=line_no)
    if not isinstance(row[key], str):
        raise DataError(f"'{key}' must be a string, found a {_json_type(row[key])}.", path=where, line=line_no)


def _read_tags(row: dict, where: str, line_no: int) -> tuple[str, ...]:
    tags = row.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DataError("'tags' must be a list of strings.", path=where, line=line_no)
    bucket = row.get("bucket")
    if bucket is not None:
        if not isinstance(bucket, str):
            raise DataError("'bucket' must be a string.", path=where, line=line_no)
        tags = [*tags, bucket]
    return tuple(tags)


def _read_messages(messages, where: str, line_no: int) -> tuple[dict, ...]:
    if not isinstance(messages, list):
        raise DataError(
            f"'messages' must be a list of objects with 'role' and 'content', found a {_json_type(messages)}.",
            path=where,
            line=line_no,
        )
    if not messages:
        raise DataError(
            "'messages' is empty; a chat needs at least one user and one assistant message.",
            path=where,
            line=line_no,
        )
    for i, message in enumerate(messages):
        _check_message(message, i, where, line_no)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(
            "the chat has no assistant message, so nothing would be trained; add the "
            "assistant's reply or drop the row.",
            path=where,
            line=line_no,
        )
    # Copies: the template may read extra keys (name, tool_call_id, tool_calls), so keep them.
    return tuple(dict(m) for m in messages)


def _check_message(message, index: int, where: str, line_no: int) -> None:
    at = f"messages[{index}]"
    if not isinstance(message, dict):
        raise DataError(
            f"{at} must be an object with 'role' and 'content', found a {_json_type(message)}.",
            path=where,
            line=line_no,
        )
    role = message.get("role")
    if role not in ROLES:
        raise DataError(
            f"{at} has role {role!r}; allowed roles are {', '.join(ROLES)}.",
            path=where,
            line=line_no,
        )
    content = message.get("content")
    if isinstance(content, str):
        return
    if content is None and role == "assistant" and message.get("tool_calls"):
        return  # an assistant turn that only calls tools
    if "content" not in message:
        problem = "has no 'content'"
    else:
        problem = f"has non-string content (a {_json_type(content)})"
    raise DataError(
        f"{at} ({role}) {problem}; content must be a string (null is allowed only for an "
        "assistant message with 'tool_calls').",
        path=where,
        line=line_no,
    )


def _json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    for py, name in names.items():
        if isinstance(value, py):
            return name
    return "number"
