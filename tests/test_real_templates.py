"""The training mask on real chat templates and real vocabularies (15 model families).

Each case is checked against a reference built without `mlxsft.data.masking` or
`templates`: for every assistant turn, the test renders the generation prompt itself,
finds the reply after the family's own assistant header in the rendering that ends with
that turn, cuts it after the family's own stop token, and then requires that some
training sequence contains a trained run whose preceding tokens are exactly that
generation prompt's tokens and whose tokens decode to exactly that reply. Nothing else may be
trained.
"""

from __future__ import annotations

import pytest

from mlxsft.data.formats import Example
from mlxsft.data.masking import tokenize_dataset, tokenize_row
from mlxsft.errors import DataError
from tests.real_templates import FAMILIES, load_family

# The assistant header each family's template writes before a reply (from the templates).
HEADERS = {
    "qwen2.5": "<|im_start|>assistant\n",
    "qwen3": "<|im_start|>assistant\n",
    "deepseek-r1-qwen": "<｜Assistant｜>",
    "llama3.1": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama3.2": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "hermes3-llama3.1": "<|im_start|>assistant\n",
    "mistral-nemo": "[/INST]",
    "mistral-small-3.2": "[/INST]",
    "gemma2": "<start_of_turn>model\n",
    "gemma4": "<|turn>model\n",
    "phi3.5": "<|assistant|>\n",
    "smollm3": "<|im_start|>assistant\n",
    "granite3.3": "<|start_of_role|>assistant<|end_of_role|>",
    "gpt-oss": "<|start|>assistant",
    "lfm2.5": "<|im_start|>assistant\n",
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City"}},
                "required": ["city"],
            },
        },
    }
]

CHATS = {
    "system_unicode": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi there."},
        {"role": "user", "content": "You said: Hi there. Say it again in French 🇫🇷"},
        {"role": "assistant", "content": "Salut ! 😀"},
    ],
    "user_quotes_reply": [
        {"role": "user", "content": "Reply exactly: The answer is 42."},
        {"role": "assistant", "content": "The answer is 42."},
        {"role": "user", "content": 'Earlier you wrote "The answer is 42." — why? The answer is 42.'},
        {"role": "assistant", "content": "Because you asked."},
    ],
    "whitespace": [
        {"role": "user", "content": "Indent this"},
        {"role": "assistant", "content": "  indented line\n"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "\n\nleading newlines "},
    ],
    "tools": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call12345",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
    ],
    "reasoning": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "reasoning_content": "Add two and two.", "content": "4"},
        {"role": "user", "content": "times 3?"},
        {"role": "assistant", "reasoning_content": "4 times 3 is 12.", "content": "12"},
        {"role": "user", "content": "minus 1?"},
        {"role": "assistant", "content": "<think>\n12 - 1 = 11\n</think>\n\n11"},
    ],
}

# Rows these templates cannot train as written: each must be reported, with its reason.
REFUSED = {
    ("gemma2", "system_unicode"): "System role not supported",
    ("gemma4", "tools"): "drops this turn's tool_calls",
    ("deepseek-r1-qwen", "tools"): "drops this turn's tool_calls",
    ("smollm3", "tools"): "drops this turn's tool_calls",
    ("granite3.3", "tools"): "drops this turn's tool_calls",
}
ALWAYS_TOOLS = {"hermes3-llama3.1"}  # its tool-use template requires `tools`


def _cases():
    for family_name, family in FAMILIES.items():
        for chat in CHATS:
            if chat == "tools" and not family.tools or chat == "reasoning" and not family.reasoning:
                continue
            yield family_name, chat


@pytest.fixture(scope="module")
def tokenizers():
    return {}


def _tok(tokenizers, name):
    if name not in tokenizers:
        tokenizers[name] = load_family(name)
    return tokenizers[name]


def _example(family_name, chat, line=1):
    tools = TOOLS if chat == "tools" or family_name in ALWAYS_TOOLS else None
    return Example(kind="chat", messages=tuple(CHATS[chat]), tools=tools, path="chats.jsonl", line=line)


def _template_messages(messages):
    """Reasoning under the keys the real templates read (Qwen3: reasoning_content, gpt-oss: thinking)."""
    out = []
    for m in messages:
        m = dict(m)
        if "reasoning_content" in m:
            m["thinking"] = m["reasoning_content"]
        out.append(m)
    return out


def expected_turns(tok, family_name, example):
    """(generation prompt's token ids, reply as generated) per assistant turn, from the template alone."""
    family, header = FAMILIES[family_name], HEADERS[family_name]
    messages = _template_messages(example.messages)
    kwargs = {"tools": example.tools} if example.tools is not None else {}
    turns = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False, **kwargs)
        rendered = tok.apply_chat_template(messages[: i + 1], tokenize=False, **kwargs)
        reply = rendered[rendered.rindex(header) + len(header) :]
        if rendered.startswith(prompt):  # what the generation prompt already holds is not generated
            reply = rendered[len(prompt) :]
        stops = [(reply.find(s), s) for s in family.stops if s in reply]
        pos, stop = min(stops)
        prompt_ids = tuple(tok(prompt, add_special_tokens=False)["input_ids"])  # what generation is fed
        turns.append((prompt_ids, reply[: pos + len(stop)]))
    return turns


def trained_runs(tok, sequence):
    """(token ids before the run, text of the run) for every run of trained tokens."""
    ids, trained = sequence.ids.tolist(), sequence.trained.tolist()
    runs, start = [], None
    for t in range(len(ids) + 1):
        on = t < len(ids) and trained[t]
        if on and start is None:
            start = t
        elif not on and start is not None:
            before = tok.decode(ids[:start])
            runs.append((tuple(ids[:start]), tok.decode(ids[:t])[len(before) :]))
            start = None
    return runs


@pytest.mark.parametrize("family_name,chat", list(_cases()))
def test_trained_text_is_the_generated_continuation(tokenizers, family_name, chat):
    tok = _tok(tokenizers, family_name)
    example = _example(family_name, chat)
    refused = REFUSED.get((family_name, chat))
    if refused:
        with pytest.raises(DataError, match=refused):
            tokenize_row(example, tok)
        return
    row = tokenize_row(example, tok)
    runs = [run for seq in row.sequences for run in trained_runs(tok, seq)]
    expected = expected_turns(tok, family_name, example)
    assert sorted(runs) == sorted(expected), row.layout
    user_text = [m["content"] for m in example.messages if m["role"] != "assistant"]
    for _, text in runs:  # no user, system or tool text inside a trained run
        assert not any(u and u in text for u in user_text if len(u) > 12)


@pytest.mark.parametrize("family_name", ["qwen3", "gpt-oss", "mistral-nemo", "deepseek-r1-qwen", "gemma4"])
def test_families_that_need_splitting_are_split(tokenizers, family_name):
    """Templates that are not prefix-preserving get one sequence per turn that needs it."""
    tok = _tok(tokenizers, family_name)
    chat = "system_unicode" if family_name == "mistral-nemo" else "user_quotes_reply"
    row = tokenize_row(_example(family_name, chat), tok)
    assert row.layout == "split into 2 sequences"
    assert row.num_tokens > row.one_sequence_tokens  # the cost of faithfulness


def test_prefix_preserving_family_trains_all_turns_in_one_sequence(tokenizers):
    tok = _tok(tokenizers, "llama3.1")
    row = tokenize_row(_example("llama3.1", "system_unicode"), tok)
    assert row.layout == "one sequence" and len(row.sequences) == 1


def test_single_mode_trains_only_turns_that_keep_their_rendering(tokenizers):
    tok = _tok(tokenizers, "qwen3")
    example = _example("qwen3", "reasoning")
    single = tokenize_row(example, tok, multi_turn="single")
    assert len(single.sequences) == 1 and single.plan.dropped_turns == (1, 3)
    runs = trained_runs(tok, single.sequences[0])
    assert runs == [expected_turns(tok, "qwen3", example)[-1]]


def test_split_mode_gives_one_sequence_per_turn(tokenizers):
    tok = _tok(tokenizers, "llama3.2")
    row = tokenize_row(_example("llama3.2", "user_quotes_reply"), tok, multi_turn="split")
    assert len(row.sequences) == 2


def test_reasoning_can_be_left_untrained(tokenizers):
    tok = _tok(tokenizers, "qwen3")
    example = _example("qwen3", "reasoning")
    row = tokenize_row(example, tok, train_reasoning=False)
    texts = [text for seq in row.sequences for _, text in trained_runs(tok, seq)]
    assert sorted(texts) == sorted(["4<|im_end|>", "12<|im_end|>", "11<|im_end|>"])


def test_trailing_text_after_the_last_turn_is_never_trained(tokenizers):
    tok = _tok(tokenizers, "phi3.5")
    row = tokenize_row(_example("phi3.5", "user_quotes_reply"), tok)
    eot, end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|end|>"])
    seq = row.sequences[-1]
    assert eot not in seq.ids.tolist()  # the sequence stops where generation stops
    assert seq.ids[-1] == end and seq.trained[-1]
    assert row.plan.trailing_text == "<|endoftext|>"


def test_every_bad_row_is_listed_in_one_pass(tokenizers):
    tok = _tok(tokenizers, "gemma2")
    rows = [_example("gemma2", "system_unicode", line=n) for n in (3, 7)] + [_example("gemma2", "whitespace", 9)]
    with pytest.raises(DataError) as info:
        tokenize_dataset(rows, tok)
    message = str(info.value)
    assert "chats.jsonl:3:" in message and "chats.jsonl:7:" in message and "on_bad_row" in message
    ds = tokenize_dataset(rows, tok, on_bad_row="skip")
    assert [r.line for r in ds.bad_rows] == [3, 7]
    assert {ex.line for ex in ds.examples} == {9}


def test_generation_markers_agree_with_the_rule_or_data_check_says_so(tokenizers):
    from mlxsft.judge.datacheck import token_checks

    tok = _tok(tokenizers, "lfm2.5")  # a template with {% generation %} blocks
    rows = [_example("lfm2.5", chat, line=n) for n, chat in enumerate(("user_quotes_reply", "tools"), start=1)]
    _, findings = token_checks(rows, tok, "assistant", 2048)
    assert [f for f in findings if f.check == "generation_markers"] == []
    tok.chat_template = tok.chat_template.replace(
        '{{- "<|im_end|>\\n" -}}\n        {%- endgeneration -%}', '{%- endgeneration -%}{{- "<|im_end|>\\n" -}}'
    )
    _, findings = token_checks(rows[:1], tok, "assistant", 2048)
    assert [(f.check, f.line) for f in findings] == [("generation_markers", 1)]
