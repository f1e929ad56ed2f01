"""Preference pairs: the formats, SFT's masking of each side, and every kind of bad row."""

import numpy as np
import pytest

from mlxsft.data.formats import Example
from mlxsft.data.masking import tokenize_row
from mlxsft.data.preference import collate_pairs, load_pairs
from mlxsft.errors import DataError

from .conftest import write_jsonl

USER = [{"role": "user", "content": "What is the capital of France?"}]


def reply(text):
    return [{"role": "assistant", "content": text}]


def test_conversational_sides_train_exactly_the_sft_reply_tokens(data_tokenizers, tmp_path):
    tok = data_tokenizers["chatml"]
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": USER, "chosen": reply("Paris is the capital."), "rejected": reply("hello world")},
        ],
    )
    (pair,) = load_pairs(path, tok).pairs
    for side, text in ((pair.chosen, "Paris is the capital."), (pair.rejected, "hello world")):
        sft = tokenize_row(Example(kind="chat", messages=tuple(USER + reply(text))), tok).sequences[0]
        np.testing.assert_array_equal(side.ids, sft.ids)
        np.testing.assert_array_equal(side.trained, sft.trained)
        trained = tok.decode(side.ids[side.trained].tolist())
        assert trained.startswith(text) and "<|im_end|>" in trained and "user" not in trained
    first = int(np.argmax(pair.chosen.trained))
    np.testing.assert_array_equal(pair.chosen.ids[:first], pair.rejected.ids[:first])


def test_implicit_prompt_and_plain_forms(data_tokenizers, tmp_path):
    tok = data_tokenizers["llama3"]
    implicit = write_jsonl(
        tmp_path / "i.jsonl",
        [
            {"chosen": USER + reply("Paris."), "rejected": USER + reply("Berlin.")},
        ],
    )
    (pair,) = load_pairs(implicit, tok).pairs
    assert "Paris" in tok.decode(pair.chosen.ids[pair.chosen.trained].tolist())
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}])
    (pair,) = load_pairs(plain, tok).pairs
    assert tok.decode(pair.chosen.ids[pair.chosen.trained].tolist()).startswith(" 4")
    assert pair.chosen.ids[-1] == tok.eos_token_id and pair.chosen.trained[-1]


BAD_ROWS = [
    ({"prompt": USER, "chosen": reply("Paris.")}, "missing 'rejected'"),
    ({"prompt": USER, "rejected": reply("Paris.")}, "missing 'chosen'"),
    ({"prompt": USER, "chosen": reply("Paris."), "rejected": reply("Paris.")}, "identical"),
    ({"prompt": "q", "chosen": " a", "rejected": " a "}, "identical"),
    ({"prompt": USER, "chosen": reply("  "), "rejected": reply("Paris.")}, "chosen response is empty"),
    ({"prompt": "q", "chosen": "a", "rejected": ""}, "rejected response is empty"),
    (
        {"chosen": USER + reply("Paris."), "rejected": [{"role": "user", "content": "Other?"}, *reply("No.")]},
        "prompt differs between the sides",
    ),
    ({"prompt": USER, "chosen": "Paris.", "rejected": reply("No.")}, "must both be strings"),
    ({"prompt": USER, "chosen": USER, "rejected": reply("No.")}, "must end with an assistant message"),
]


def test_every_bad_row_is_listed_in_one_pass_with_its_line(data_tokenizers, tmp_path):
    good = {"prompt": USER, "chosen": reply("Paris."), "rejected": reply("Berlin.")}
    rows = [good]
    for row, _ in BAD_ROWS:
        rows += [row]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_pairs(path, data_tokenizers["chatml"])
    message = str(info.value)
    assert f"{len(BAD_ROWS)} rows cannot be trained" in message
    for line, (_, reason) in enumerate(BAD_ROWS, start=2):
        assert f"{path}:{line}: " in message
        at = message.index(f"{path}:{line}: ")
        assert reason in message[at:].splitlines()[0], (line, reason)
    assert "on_bad_row: skip" in message


def test_skip_policy_trains_the_good_pairs_and_lists_the_rest(data_tokenizers, tmp_path):
    good = {"prompt": USER, "chosen": reply("Paris."), "rejected": reply("Berlin.")}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, BAD_ROWS[0][0], good, BAD_ROWS[2][0]])
    ds = load_pairs(path, data_tokenizers["chatml"], on_bad_row="skip")
    assert [p.line for p in ds.pairs] == [1, 3]
    assert [(r.line, "identical" in r.reason) for r in ds.bad_rows] == [(2, False), (4, True)]


def test_truncated_away_response_is_skipped_not_trained(data_tokenizers, tmp_path):
    long = {
        "prompt": [{"role": "user", "content": "hello " * 40}],
        "chosen": reply("Paris."),
        "rejected": reply("Berlin."),
    }
    short = {"prompt": USER, "chosen": reply("Paris."), "rejected": reply("Berlin.")}
    ds = load_pairs(write_jsonl(tmp_path / "t.jsonl", [long, short]), data_tokenizers["chatml"], max_seq_length=30)
    assert [p.line for p in ds.pairs] == [2]
    assert "max_seq_length=30" in ds.skipped[0].reason


def test_collated_pairs_keep_chosen_then_rejected_rows(data_tokenizers, tmp_path):
    rows = [{"prompt": USER, "chosen": reply(f"Paris {i}."), "rejected": reply("No" + " no" * i)} for i in range(3)]
    ds = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), data_tokenizers["chatml"])
    batch = collate_pairs(ds.pairs, [2, 0], pad_id=0)
    assert batch.inputs.shape[0] == 4
    for row, ex in enumerate([ds.pairs[2].chosen, ds.pairs[0].chosen, ds.pairs[2].rejected, ds.pairs[0].rejected]):
        n = len(ex.ids) - 1
        np.testing.assert_array_equal(batch.inputs[row, :n], ex.ids[:-1])
        np.testing.assert_array_equal(batch.weights[row, :n], ex.trained[1:])


def test_data_check_reads_pair_files_and_lists_bad_pairs(tmp_path):
    from mlxsft.judge.datacheck import check_data

    good = {"prompt": USER, "chosen": reply("Paris."), "rejected": reply("Berlin.")}
    write_jsonl(tmp_path / "d" / "train.jsonl", [good, BAD_ROWS[2][0], good | {"chosen": reply("Lyon.")}])
    report = check_data(tmp_path / "d")
    pair_findings = [(f.line, f.check) for f in report.findings if f.severity == "error"]
    assert pair_findings == [(2, "pair")]
    assert "identical" in next(f.message for f in report.findings if f.check == "pair")
    assert report.splits["train"]["rows"] == 2  # the good pairs, seen as their chosen sides
