"""Training masks checked against hand-written spans for the project's ChatML and Llama-3 templates.

(Real templates of 14 model families are covered in test_real_templates.py.)
"""

import json

import numpy as np
import pytest
from mlx_lm.utils import load_tokenizer

from mlxsft.data.formats import Example, load_jsonl
from mlxsft.data.masking import tokenize_dataset, tokenize_row
from mlxsft.errors import DataError

SYSTEM = "You are a helpful assistant."
CHAT = (
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello world"},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "sorry"},
)
TOOL_CHAT = (
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "order 5?"},
    {"role": "assistant", "content": "checking"},
    {"role": "tool", "content": "shipped"},
    {"role": "assistant", "content": "it shipped"},
)
END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}
HEADER_END = {"chatml": "\n", "llama3": "\n"}  # last token of the assistant header


def chat(messages, line=1, **kw) -> Example:
    return Example(kind="chat", messages=tuple(messages), path="data.jsonl", line=line, **kw)


def tokenize_example(example, tokenizer, **kw):
    """The row's only training sequence (these templates are prefix-preserving)."""
    row = tokenize_row(example, tokenizer, **kw)
    assert len(row.sequences) == 1, row.layout
    return row.sequences[0]


def trained_runs(tokenizer, tokenized) -> list[str]:
    """Decoded text of each contiguous run of trained tokens."""
    hf = tokenizer._tokenizer
    runs, current = [], []
    for token, trained in zip(tokenized.ids.tolist(), tokenized.trained.tolist(), strict=True):
        if trained:
            current.append(token)
        elif current:
            runs.append(hf.decode(current))
            current = []
    if current:
        runs.append(hf.decode(current))
    return runs


def decode_untrained(tokenizer, tokenized) -> str:
    return tokenizer._tokenizer.decode(tokenized.ids[~tokenized.trained].tolist())


@pytest.mark.parametrize("template", ["chatml", "llama3"])
@pytest.mark.parametrize(
    "messages, replies",
    [(CHAT, ["hello world", "sorry"]), (TOOL_CHAT, ["checking", "it shipped"])],
    ids=["multi-turn", "with-tool-message"],
)
def test_assistant_mask_trains_replies_and_end_of_turn(data_tokenizers, template, messages, replies):
    tok = data_tokenizers[template]
    out = tokenize_example(chat(messages), tok)
    assert out.ids.dtype == np.int32 and out.trained.dtype == np.bool_
    assert out.ids.shape == out.trained.shape
    assert trained_runs(tok, out) == [reply + END[template] for reply in replies]
    untrained = decode_untrained(tok, out)
    for message in messages:
        if message["role"] != "assistant":
            assert message["content"] in untrained


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_spans_start_after_header_and_stop_at_end_of_turn(data_tokenizers, template):
    """Token by token: the header's last token and the text after the end token stay untrained."""
    tok = data_tokenizers[template]
    hf = tok._tokenizer
    out = tokenize_example(chat(CHAT), tok)
    trained = np.flatnonzero(out.trained)
    starts = [i for i in trained if not out.trained[i - 1]]
    ends = [i for i in trained if i + 1 == len(out.ids) or not out.trained[i + 1]]
    assert [hf.decode([out.ids[i - 1]]) for i in starts] == [HEADER_END[template]] * 2
    assert [hf.decode([out.ids[i]]) for i in ends] == [END[template]] * 2
    if template == "chatml":
        # "<|im_end|>\n": the newline after the end-of-turn token is not a target.
        assert hf.decode([out.ids[ends[0] + 1]]) == "\n"
        # the sequence stops where generation stops: at the last reply's end-of-turn token
        assert hf.decode([out.ids[-1]]) == "<|im_end|>" and out.trained[-1]


def test_llama3_template_trims_content(data_tokenizers):
    tok = data_tokenizers["llama3"]
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "  hello world \n"},
    ]
    assert trained_runs(tok, tokenize_example(chat(messages), tok)) == ["hello world<|eot_id|>"]


def test_chatml_trailing_whitespace_of_content_is_kept_before_end(data_tokenizers):
    tok = data_tokenizers["chatml"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello\n"}]
    assert trained_runs(tok, tokenize_example(chat(messages), tok)) == ["hello\n<|im_end|>"]


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_mask_last_trains_only_the_final_turn(data_tokenizers, template):
    tok = data_tokenizers[template]
    out = tokenize_example(chat(CHAT), tok, mask="last")
    assert trained_runs(tok, out) == ["sorry" + END[template]]


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_mask_none_trains_every_token_but_the_first(data_tokenizers, template):
    tok = data_tokenizers[template]
    out = tokenize_example(chat(CHAT), tok, mask="none")
    assert not out.trained[0] and out.trained[1:].all()


def test_raw_hf_tokenizer_gives_the_same_mask(data_tokenizers):
    tok = data_tokenizers["llama3"]
    a = tokenize_example(chat(CHAT), tok)
    b = tokenize_example(chat(CHAT), tok._tokenizer)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.trained, b.trained)


def test_chat_ids_match_the_template_tokenization(data_tokenizers):
    tok = data_tokenizers["llama3"]
    out = tokenize_example(chat(CHAT), tok)
    expected = tok._tokenizer.apply_chat_template(list(CHAT), tokenize=True, return_dict=False)
    assert out.ids.tolist() == list(expected)
    assert tok._tokenizer.decode(out.ids[:1].tolist()) == "<|begin_of_text|>"


# --- templates that are not prefix-preserving ---------------------------------------

THINK_TEMPLATE = (  # like Qwen3: only the last assistant turn carries a <think> block
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.role == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}"
    "{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL_CALL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.content %}{{ message.content }}{% endif %}"
    "{% for call in message.tool_calls or [] %}"
    "<tool_call>{{ call.function | tojson }}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REWRITING_TEMPLATE = (  # upper-cases earlier assistant turns: the content cannot be found
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.role == 'assistant' and not loop.last %}{{ message.content | upper }}"
    "{% else %}{{ message.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer_with_template(data_tiny_models, template: str):
    tok = load_tokenizer(data_tiny_models["chatml"])  # a private copy: the template changes
    tok._tokenizer.chat_template = template
    return tok


def test_non_prefix_template_trains_each_turn_as_generated(data_tiny_models):
    tok = tokenizer_with_template(data_tiny_models, THINK_TEMPLATE)
    # The user repeats the first reply: only the assistant's turns are trained.
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello world"},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "sorry"},
    ]
    row = tokenize_row(chat(messages), tok)
    assert row.layout == "split into 2 sequences"
    first, second = row.sequences
    assert trained_runs(tok, first) == ["<think>\n\n</think>\n\nhello world<|im_end|>"]
    assert trained_runs(tok, second) == ["<think>\n\n</think>\n\nsorry<|im_end|>"]
    assert "hello world" in decode_untrained(tok, second)  # the user's copy, and the earlier turn


def test_tool_calls_and_tools_are_rendered_and_trained(data_tiny_models):
    tok = tokenizer_with_template(data_tiny_models, TOOL_CALL_TEMPLATE)
    call = {"type": "function", "function": {"name": "get_order", "arguments": {"id": 5}}}
    messages = [
        {"role": "user", "content": "order 5?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "shipped"},
        {"role": "assistant", "content": "It shipped."},
    ]
    tools = [{"type": "function", "function": {"name": "get_order"}}]
    out = tokenize_example(chat(messages, tools=tools), tok)
    assert trained_runs(tok, out) == [
        '<tool_call>{"name": "get_order", "arguments": {"id": 5}}</tool_call><|im_end|>',
        "It shipped.<|im_end|>",
    ]
    assert "Tools:" in decode_untrained(tok, out)


def test_template_that_rewrites_earlier_turns_trains_them_as_generated(data_tiny_models):
    tok = tokenizer_with_template(data_tiny_models, REWRITING_TEMPLATE)
    row = tokenize_row(chat(CHAT, line=7), tok)
    assert [trained_runs(tok, seq) for seq in row.sequences] == [["hello world<|im_end|>"], ["sorry<|im_end|>"]]


def test_template_that_rewrites_the_reply_is_a_data_error(data_tiny_models):
    tok = tokenizer_with_template(data_tiny_models, REWRITING_TEMPLATE.replace("and not loop.last", ""))
    with pytest.raises(DataError) as info:
        tokenize_row(chat(CHAT, line=7), tok)
    assert str(info.value).startswith("data.jsonl:7: ")
    assert "assistant message 2" in str(info.value) and "does not render this reply" in str(info.value)


def test_chat_row_without_chat_template_is_a_data_error(data_tiny_models):
    tok = tokenizer_with_template(data_tiny_models, None)
    with pytest.raises(DataError, match="no chat template"):
        tokenize_example(chat(CHAT, line=3), tok)


# --- prompt/completion and text -----------------------------------------------------


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_completion_trains_completion_and_eos(data_tokenizers, template):
    tok = data_tokenizers[template]
    example = Example(kind="completion", prompt="What is the capital of France?", completion=" Paris")
    out = tokenize_example(example, tok)
    assert trained_runs(tok, out) == [" Paris" + END[template]]  # eos = end-of-turn here
    assert out.ids[-1] == tok.eos_token_id
    assert "<|im_start|>" not in tok._tokenizer.decode(out.ids.tolist())  # no chat template


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_text_trains_every_token_and_eos(data_tokenizers, template):
    tok = data_tokenizers[template]
    out = tokenize_example(Example(kind="text", text="hello world thanks"), tok)
    assert out.ids[-1] == tok.eos_token_id
    assert not out.trained[0] and out.trained[1:].all()


def test_completion_mask_none_and_last(data_tokenizers):
    tok = data_tokenizers["chatml"]
    example = Example(kind="completion", prompt="2 3", completion=" 4")
    assert tokenize_example(example, tok, mask="none").trained[1:].all()
    last = tokenize_example(example, tok, mask="last")
    assert trained_runs(tok, last) == [" 4<|im_end|>"]


# --- truncation and skipped rows ----------------------------------------------------


def test_truncation_keeps_the_start(data_tokenizers):
    tok = data_tokenizers["chatml"]
    full = tokenize_example(chat(CHAT), tok)
    n = int(np.flatnonzero(full.trained)[0]) + 2  # keeps two tokens of the first reply
    cut = tokenize_dataset([chat(CHAT)], tok, max_seq_length=n).examples[0]
    assert cut.truncated and not full.truncated
    assert np.array_equal(cut.ids, full.ids[:n])
    assert np.array_equal(cut.trained, full.trained[:n])


def test_dataset_skips_rows_whose_targets_are_truncated_away(tmp_path, data_tokenizers):
    tok = data_tokenizers["chatml"]
    long_user = "the quick brown fox jumps over the lazy dog " * 20
    rows = [
        {"messages": list(CHAT)},
        {
            "messages": [
                {"role": "user", "content": long_user},
                {"role": "assistant", "content": "ok"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": long_user},
            ]
        },
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n\n" for r in rows))  # rows on lines 1, 3, 5
    ds = tokenize_dataset(load_jsonl(path), tok, mask="assistant", max_seq_length=64)
    assert [ex.line for ex in ds.examples] == [1, 5]
    assert [(s.path, s.line) for s in ds.skipped] == [(str(path), 3)]
    reason = ds.skipped[0].reason
    assert "all assistant tokens were truncated away by max_seq_length=64" in reason
    assert ds.num_truncated == 1 and ds.examples[1].truncated
    assert all(len(ex.ids) <= 64 and ex.num_trained > 0 for ex in ds.examples)
    summary = ds.summary()
    assert "2 sequences" in summary and "1 rows skipped" in summary and f"{path}:3" in summary


def test_dataset_skips_rows_without_trained_tokens(data_tokenizers):
    tok = data_tokenizers["chatml"]
    one_token = Example(kind="text", text="", path="t.jsonl", line=2)  # just EOS, never a target
    ds = tokenize_dataset([one_token], tok, mask="assistant", max_seq_length=None)
    assert ds.examples == []
    assert ds.skipped[0].line == 2 and "no trained tokens" in ds.skipped[0].reason


def test_tags_are_carried(data_tokenizers):
    tok = data_tokenizers["chatml"]
    out = tokenize_example(Example(kind="text", text="hello", tags=("easy",), line=4), tok)
    assert out.tags == ("easy",) and out.line == 4
