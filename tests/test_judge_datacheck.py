"""`mlxsft data check` on a data set with planted problems: each is found with its file and line."""

import json

import pytest

from mlxsft.cli import main
from mlxsft.judge.datacheck import _round_trip, check_data
from mlxsft.judge.report import format_data_report, table

from .conftest import write_jsonl

LONG = (
    "The committee reviewed every item on the agenda and agreed to meet again next week to settle "
    "the remaining questions about the budget and the schedule"
)


def chat(user, assistant, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    write_jsonl(
        root / "train.jsonl",
        [
            chat("What is the capital of France?", "Paris is the capital.", "Be brief."),  # 1
            chat("Name a prime number.", "Seven is prime."),  # 2
            chat("Summarize: " + LONG, "They will meet next week."),  # 3
            chat("Name a prime number.", "Seven  is prime."),  # 4: exact duplicate of 2 (whitespace aside)
            chat("What colour is the sky?", "The sky is blue."),  # 5
            chat(
                "Summarize: " + LONG.replace("schedule", "timetable"), "They will meet next week."
            ),  # 6: near dup of 3
            chat("Translate hello to French.", "Bonjour."),  # 7
            chat("Write a long answer.", " ".join(["word"] * 300)),  # 8: truncated, keeps some trained tokens
            chat(" ".join(["please"] * 300), "ok"),  # 9: every trained token beyond max_seq_length
            {**chat("How many legs has a spider?", "Eight legs."), "bucket": "biology"},  # 10
        ],
    )
    write_jsonl(
        root / "valid.jsonl",
        [
            chat("What is two plus two?", "Four."),  # 1
            chat("What colour is the sky?", "The sky is blue."),  # 2: leaked from train 5
            chat("Summarize: " + LONG.replace("budget", "costs"), "They will meet next week."),  # 3: near leak of 3
            chat("What is the capital of France?", "It is Paris."),  # 4: same prompt as train 1
        ],
    )
    write_jsonl(root / "test.jsonl", [{"text": "A plain line."}, {"text": ""}])  # 2: nothing to train
    return root


def by_check(report):
    found = {}
    for f in report.findings:
        found.setdefault(f.check, []).append((f.path.rsplit("/", 1)[-1], f.line, f.other_line))
    return found


def test_every_planted_problem_is_found_with_its_row(planted, tiny_llama):
    from mlx_lm.utils import load_tokenizer

    report = check_data(planted, load_tokenizer(tiny_llama), max_seq_length=256)
    found = by_check(report)
    assert found.pop("duplicate") == [("train.jsonl", 4, 2)]
    assert found.pop("near_duplicate") == [("train.jsonl", 6, 3)]
    assert found.pop("leak") == [("valid.jsonl", 2, 5)]
    assert found.pop("near_leak") == [("valid.jsonl", 3, 3)]
    assert found.pop("prompt_leak") == [("valid.jsonl", 4, 1)]
    assert found.pop("truncated") == [("train.jsonl", 8, None)]
    assert found.pop("trained_cut_off") == [("train.jsonl", 9, None)]
    assert found.pop("no_trained_tokens") == [("test.jsonl", 2, None)]
    assert found == {}  # nothing else: the template round-trips on this tokenizer
    assert report.errors == 0 and report.warnings == 8
    train = report.splits["train"]
    assert train["rows"] == 10 and train["roles"] == {"assistant": 10, "system": 1, "user": 10}
    assert train["rows_with_system"] == 1 and train["tags"] == {"biology": 1}
    tokens = train["tokens"]
    assert tokens["truncated"] == 2 and tokens["no_trained_tokens"] == 1
    assert sum(b["rows"] for b in tokens["histogram"]) == 10 and tokens["histogram"][-1]["rows"] == 2


def test_without_a_model_token_checks_are_skipped_with_a_note(planted):
    report = check_data(planted)
    assert {f.check for f in report.findings} == {
        "duplicate",
        "near_duplicate",
        "leak",
        "near_leak",
        "prompt_leak",
    }
    assert any("no --model" in n for n in report.notes)
    assert "tokens" not in report.splits["train"]


def test_schema_error_is_reported_with_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(chat("a", "b")) + "\n\n" + '{"messages": [{"role": "user", "content": 3}]}\n')
    report = check_data(path)
    (finding,) = report.findings
    assert (finding.severity, finding.check, finding.line) == ("error", "schema", 3)
    assert "non-string content" in finding.message and not finding.message.startswith(str(path))


def test_cli_exit_codes_json_and_strict(planted, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["data", "check", str(planted), "--out", str(out)]) == 0  # warnings only
    text = capsys.readouterr().out
    assert "train.jsonl:4: warning [duplicate] exact duplicate of line 2" in text
    assert "5 warnings" in text
    doc = json.loads(out.read_text())
    assert doc["summary"] == {"errors": 0, "warnings": 5}
    assert main(["data", "check", str(planted), "--strict"]) == 1
    capsys.readouterr()
    assert main(["data", "check", str(planted / "valid.jsonl"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["findings"] == [] and doc["splits"]["valid"]["rows"] == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["data", "check", str(bad)]) == 1
    assert f"{bad}:1: error [schema] malformed JSON" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "data not found" in capsys.readouterr().err


class _Mismatching:
    """A tokenizer whose decode drops a space and whose template tokenization adds an id."""

    chat_template = "x"

    def apply_chat_template(self, messages, tokenize=False, return_dict=False, **kwargs):
        text = "".join(f"<{m['role']}> {m['content']}" for m in messages)
        return [0] + self.encode(text) if tokenize else text

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, **kwargs):
        return "".join(chr(i) for i in ids).replace("> ", ">")


def test_template_round_trip_mismatches_are_reported():
    from mlxsft.data.formats import Example

    row = Example(
        kind="chat",
        messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}),
        path="d.jsonl",
        line=7,
    )
    problems = _round_trip(row, _Mismatching())
    assert [(f.check, f.line) for f in problems] == [("template_round_trip", 7)] * 2
    assert "first difference at token 0" in problems[0].message
    assert "character 6" in problems[1].message


def test_table_pads_with_spaces_and_right_aligns_numbers():
    text = table(["name", "value"], [["a", 1.5], ["long name", None]])
    assert text.splitlines() == ["name       value", "a          1.500", "long name      -"]
    report = {
        "files": {},
        "splits": {},
        "notes": [],
        "findings": [],
        "summary": {"errors": 0, "warnings": 0},
    }
    assert format_data_report(report).endswith("0 errors, 0 warnings.")
