"""Loading JSONL: the three formats, tags, and one DataError per kind of bad input."""

import json

import pytest

from mlxsft.data.formats import Example, load_jsonl
from mlxsft.errors import DataError

CHAT = {
    "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
}


def write_lines(tmp_path, lines, name="data.jsonl"):
    """Write raw lines (str rows are written as-is, others as JSON)."""
    path = tmp_path / name
    text = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path, line, *words) -> DataError:
    """Load `path`, expect a DataError at `line` whose message has every word in `words`."""
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    err = info.value
    assert err.path == str(path)
    assert err.line == line
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(err).startswith(where)
    for word in words:
        assert word in str(err), f"{word!r} not in {err}"
    return err


# --- good input ---------------------------------------------------------------------


def test_loads_chat_rows_with_tools_and_line_numbers(tmp_path):
    tools = [{"type": "function", "function": {"name": "f"}}]
    path = write_lines(tmp_path, [CHAT, "", {**CHAT, "tools": tools}])
    examples = load_jsonl(path)
    assert [ex.line for ex in examples] == [1, 3]
    first, second = examples
    assert first == Example(kind="chat", messages=tuple(CHAT["messages"]), path=str(path), line=1)
    assert second.tools == tools
    assert first.prompt is first.completion is first.text is None


def test_loads_prompt_completion_rows(tmp_path):
    path = write_lines(tmp_path, [{"prompt": "2+2=", "completion": "4"}, {"prompt": "", "completion": "x"}])
    examples = load_jsonl(path)
    assert [(ex.kind, ex.prompt, ex.completion) for ex in examples] == [
        ("completion", "2+2=", "4"),
        ("completion", "", "x"),
    ]


def test_loads_text_rows(tmp_path):
    path = write_lines(tmp_path, [{"text": "one"}, {"text": "two", "id": 7}])
    assert [(ex.kind, ex.text) for ex in load_jsonl(path)] == [("text", "one"), ("text", "two")]


def test_tags_come_from_tags_and_bucket(tmp_path):
    rows = [
        {"text": "a", "tags": ["easy", "math"]},
        {"text": "b", "bucket": "hard"},
        {"text": "c", "tags": ["x"], "bucket": "y"},
        {"text": "d"},
    ]
    tags = [ex.tags for ex in load_jsonl(write_lines(tmp_path, rows))]
    assert tags == [("easy", "math"), ("hard",), ("x", "y"), ()]


def test_assistant_content_may_be_null_with_tool_calls(tmp_path):
    call = {"type": "function", "function": {"name": "f", "arguments": {}}}
    row = {
        "messages": [
            {"role": "user", "content": "call f"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "ok"},
            {"role": "assistant", "content": "done"},
        ]
    }
    (example,) = load_jsonl(write_lines(tmp_path, [row]))
    assert example.messages[1]["tool_calls"] == [call]


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a"}\r\n{"text": "b"}\r\n')
    assert [ex.text for ex in load_jsonl(path)] == ["a", "b"]


# --- bad input: one test per case ---------------------------------------------------


def test_missing_file(tmp_path):
    load_error(tmp_path / "nope.jsonl", None, "not found")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    load_error(path, None, "empty")


def test_only_blank_lines_is_empty(tmp_path):
    path = write_lines(tmp_path, ["", "   ", "\t"])
    load_error(path, None, "empty")


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "b"}\n{"text": "caf\xe9"}\n')
    load_error(path, 3, "UTF-8", "0xe9")


def test_malformed_json_names_the_line(tmp_path):
    path = write_lines(tmp_path, [{"text": "a"}, '{"text": "b",}'])
    load_error(path, 2, "malformed JSON", "column")


def test_blank_lines_still_count_in_line_numbers(tmp_path):
    path = write_lines(tmp_path, ["", {"text": "a"}, "", "{oops"])
    load_error(path, 4, "malformed JSON")


def test_row_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path, [{"text": "a"}, ["text", "b"]])
    load_error(path, 2, "JSON object", "list")


def test_row_missing_expected_keys(tmp_path):
    path = write_lines(tmp_path, [{"input": "a", "output": "b"}])
    load_error(path, 1, "'input'", '"messages"', '"prompt"', '"completion"', '"text"')


def test_completion_row_missing_completion(tmp_path):
    path = write_lines(tmp_path, [{"prompt": "a", "completion": "b"}, {"prompt": "c"}])
    load_error(path, 2, "missing key 'completion'", '"prompt"')


def test_text_that_is_not_a_string(tmp_path):
    path = write_lines(tmp_path, [{"text": ["a"]}])
    load_error(path, 1, "'text' must be a string")


def test_mixed_formats(tmp_path):
    path = write_lines(tmp_path, [CHAT, CHAT, {"text": "a"}])
    load_error(path, 3, "text format", "chat format", "line 1")


def test_chat_without_assistant_turn(tmp_path):
    row = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}
    path = write_lines(tmp_path, [CHAT, row])
    load_error(path, 2, "no assistant message")


def test_unknown_role(tmp_path):
    row = {"messages": [{"role": "human", "content": "u"}, {"role": "assistant", "content": "a"}]}
    path = write_lines(tmp_path, [row])
    load_error(path, 1, "messages[0]", "'human'", "system, user, assistant, tool")


def test_non_string_content(tmp_path):
    row = {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "a"}]}
    path = write_lines(tmp_path, [CHAT, CHAT, row])
    load_error(path, 3, "messages[0]", "non-string content", "number")


def test_null_content_needs_tool_calls(tmp_path):
    row = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": None}]}
    path = write_lines(tmp_path, [row])
    load_error(path, 1, "messages[1]", "tool_calls")


def test_null_content_is_refused_for_user(tmp_path):
    row = {
        "messages": [
            {"role": "user", "content": None, "tool_calls": [{}]},
            {"role": "assistant", "content": "a"},
        ]
    }
    load_error(write_lines(tmp_path, [row]), 1, "messages[0] (user)", "non-string content")


def test_message_without_content(tmp_path):
    row = {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}
    load_error(write_lines(tmp_path, [row]), 1, "messages[0]", "no 'content'")


def test_empty_messages(tmp_path):
    path = write_lines(tmp_path, [CHAT, {"messages": []}])
    load_error(path, 2, "'messages' is empty")


def test_messages_not_a_list(tmp_path):
    path = write_lines(tmp_path, [{"messages": "hi"}])
    load_error(path, 1, "'messages' must be a list")


def test_message_not_an_object(tmp_path):
    path = write_lines(tmp_path, [{"messages": ["hi", {"role": "assistant", "content": "a"}]}])
    load_error(path, 1, "messages[0] must be an object")


def test_bad_tags(tmp_path):
    load_error(write_lines(tmp_path, [{"text": "a", "tags": "x"}]), 1, "'tags'")
    load_error(write_lines(tmp_path, [{"text": "a", "bucket": 3}], "b.jsonl"), 1, "'bucket'")


def test_bad_tools(tmp_path):
    path = write_lines(tmp_path, [{**CHAT, "tools": {"name": "f"}}])
    load_error(path, 1, "'tools' must be a list")
