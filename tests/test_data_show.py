"""`mlxsft data show` and `data check` on a real template (Qwen3), through the CLI."""

import json

import pytest

from mlxsft.cli import main

from .real_templates import save_family

ROWS = [
    {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "reasoning_content": "Add two and two.", "content": "4"},
            {"role": "user", "content": "You said 4. Times 3?"},
            {"role": "assistant", "content": "12"},
        ]
    },
    {"messages": [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "ok"}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
]


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return save_family("qwen3", tmp_path_factory.mktemp("qwen3"))


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    lines = [json.dumps(r) for r in ROWS]
    lines.insert(1, "{not json")  # line 2: a schema error
    lines.append(json.dumps(ROWS[2]))  # line 5: an exact duplicate of line 4
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_data_show_marks_trained_text_and_the_split(qwen3, data, capsys):
    assert main(["data", "show", str(data), "--model", str(qwen3), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "train.jsonl:1: split into 2 sequences" in out
    assert "sequence 1 of 2" in out and "sequence 2 of 2" in out
    assert "[[<think>\nAdd two and two.\n</think>\n\n4<|im_end|>]]" in out
    assert "[[<think>\n\n</think>\n\n12<|im_end|>]]" in out
    assert "[[" not in out.split("You said 4.")[0].rsplit("sequence 2 of 2", 1)[1].split("<|im_start|>assistant")[0]
    assert "message 1: " in out and "message 3: " in out


def test_data_show_colours_in_a_terminal_and_reports_bad_rows(qwen3, data, capsys):
    assert main(["data", "show", str(data), "--model", str(qwen3), "--row", "3", "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[1;32m<think>\n\n</think>\n\nhello<|im_end|>\x1b[0m" in out and "[[" not in out
    assert main(["data", "show", str(data), "--model", str(qwen3), "--row", "2"]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl:3:" in err and "begins with an assistant message" in err and "Traceback" not in err
    assert main(["data", "show", str(data), "--model", str(qwen3), "--row", "9"]) == 2
    assert "4 valid rows (1 bad rows not counted)" in capsys.readouterr().err


def test_data_check_lists_every_problem_in_one_pass(qwen3, data, capsys):
    code = main(["data", "check", str(data), "--model", str(qwen3), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    found = {(f["check"], f["line"]) for f in doc["findings"]}
    assert ("schema", 2) in found  # the schema error does not hide what follows
    assert ("turn_order", 3) in found
    assert ("duplicate", 5) in found
    layout = doc["splits"]["train"]["tokens"]["multi_turn"]
    assert layout["layouts"] == {"split into 2 sequences": 1, "one sequence": 2}
    assert layout["split_extra_tokens"] > 0
    assert any("not prefix-preserving" in note for note in doc["notes"])
