"""What a chat template says the model generates for each assistant turn.

This module owns the rule behind the training mask: the text trained for assistant
turn i is exactly the continuation the model would generate at that point of the
conversation under its own template, i.e. what `render(messages[:i+1])` adds after
`render(messages[:i], add_generation_prompt=True)`, through the template's own end
of turn, and nothing else. The rendering is never searched for message text.

End of turn and trailing text come from the template, not from a list of markers:
text that the template appends after the last message of any conversation (Phi-3.5's
`<|endoftext|>`) is what `render(messages[:i])` has beyond its common prefix with the
generation prompt; it is cut off the turn, as is the whitespace after the turn.

It also groups turns into training sequences (`group_turns`): a turn can share a
sequence with later turns only when the later rendering still shows it exactly as
at generation time (the prefix property). Templates that drop earlier reasoning
(Qwen3, DeepSeek-R1), move the system prompt (Mistral) or close history turns with
another marker than the one generated (gpt-oss) break that property; those turns get
a sequence of their own (`auto`, `split`) or are not trained (`single`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..config import MULTI_TURN_MODES
from ..errors import DataError
from .formats import Example

REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@dataclass(frozen=True)
class TurnTarget:
    """One assistant turn as the model generates it."""

    index: int  # position of the assistant message in the row's messages
    prompt: str  # render(messages[:index], add_generation_prompt=True)
    target: str  # the generated continuation, through the template's end of turn
    content_start: int  # where the reply's own text starts in `target` (after reasoning)
    has_reasoning: bool
    trailing: str = ""  # text the template appends after a final turn (cut off, never trained)

    @property
    def text(self) -> str:
        return self.prompt + self.target


@dataclass(frozen=True)
class SequencePlan:
    """One training sequence: its text and the (start, end, message index) spans trained in it."""

    text: str
    spans: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class RowPlan:
    """How one chat row is trained: its sequences, and turns left untrained (with why)."""

    sequences: tuple[SequencePlan, ...]
    layout: str  # "one sequence" | "split into N sequences" | "last turn only" | "all tokens"
    dropped_turns: tuple[int, ...] = ()
    trailing_text: str = ""  # what the template appends after the last turn (never trained)


# --- rendering ---


def hf_tokenizer(tokenizer):
    """The transformers tokenizer inside mlx-lm's `TokenizerWrapper`, or `tokenizer` itself.

    (A transformers fast tokenizer also has a `_tokenizer`: the Rust one, which has no
    chat template; hence the check.)
    """
    inner = getattr(tokenizer, "_tokenizer", None)
    return inner if hasattr(inner, "apply_chat_template") else tokenizer


def chat_template_of(tokenizer) -> str | None:
    """The tokenizer's chat template text (None when it has none, or only named templates)."""
    template = getattr(hf_tokenizer(tokenizer), "chat_template", None)
    return template if isinstance(template, str) and template else None


# ---------------------------------------------------------------------


def template_messages(messages) -> list[dict]:
    """Messages as templates read them: reasoning under every key templates use for it."""
    out = []
    for message in messages:
        message = dict(message)
        reasoning = next((message[k] for k in REASONING_KEYS if isinstance(message.get(k), str)), None)
        if reasoning is not None and message.get("role") == "assistant":
            message["reasoning_content"] = reasoning  # Qwen3, DeepSeek, SmolLM3
            message["thinking"] = reasoning  # gpt-oss
        out.append(message)
    return out


def render(hf, example: Example, messages, *, generation_prompt: bool) -> str:
    """The chat template applied to `messages` (with the row's tools), as text."""
    if not getattr(hf, "chat_template", None):
        raise DataError(
            "this is a chat row but the tokenizer has no chat template; use a model with "
            'one, or write the data as {"prompt", "completion"} or {"text"} rows.',
            path=example.path,
            line=example.line,
        )
    kwargs = {"tools": example.tools} if example.tools is not None else {}
    try:
        return hf.apply_chat_template(
            template_messages(messages), tokenize=False, add_generation_prompt=generation_prompt, **kwargs
        )
    except Exception as e:  # jinja raises anything, e.g. "roles must alternate"
        raise DataError(
            f"the model's chat template cannot render this row ({type(e).__name__}: {e}); fix "
            "the row (role order, tool-call format) or drop it.",
            path=example.path,
            line=example.line,
        ) from None


def check_turn_order(messages) -> str | None:
    """Why no chat template would produce this role order, or None when it is fine."""
    roles = [m["role"] for m in messages]
    first = next((i for i, r in enumerate(roles) if r != "system"), None)
    if first is not None and roles[first] != "user":
        article = "an" if roles[first] == "assistant" else "a"
        return (
            f"the chat begins with {article} {roles[first]} message (messages[{first}]); "
            "a chat starts with a user turn."
        )
    for i in range(1, len(roles)):
        prev, role = roles[i - 1], roles[i]
        if role == prev and role in ("user", "assistant"):
            return (
                f"two {role} messages in a row (messages[{i - 1}] and [{i}]); merge them into one turn, "
                "since the model never sees such a conversation at inference."
            )
        if role == "tool" and prev not in ("assistant", "tool"):
            return f"messages[{i}] is a tool result that follows a {prev} message, not an assistant's tool call."
        if role == "system" and i > 0:
            return f"messages[{i}] is a system message after the start of the chat; put it first."
    return None


# --- one turn ---------------------------------------------------------------------------


def turn_target(hf, example: Example, i: int) -> TurnTarget:
    """What the model generates for assistant message i, per the template (see module doc)."""
    messages = example.messages
    prompt = render(hf, example, messages[:i], generation_prompt=True)
    through = render(hf, example, messages[: i + 1], generation_prompt=False)
    start = len(prompt) if through.startswith(prompt) else _reply_start(hf, example, i, prompt, through)
    target = through[start:]
    trailing = trailing_text(hf, example, messages[:i], prompt)
    if trailing and target.endswith(trailing):
        target = target[: -len(trailing)]
    target = target.rstrip()  # formatting whitespace after the end of turn is never generated
    message = messages[i]
    _check_rendered(example, i, message, target)
    content_start, has_reasoning = _content_start(message, target)
    return TurnTarget(i, prompt, target, content_start, has_reasoning, trailing)


def _reply_start(hf, example: Example, i: int, prompt: str, through: str) -> int:
    """Where the reply begins in `through` when the template renders its context differently.

    Seen in real templates: a generation prompt that opens an empty reasoning block the
    rendered reply lacks (DeepSeek-R1, Gemma 4), or a system prompt rendered only at
    generation time (Mistral). The reply starts where a rendering of the same turn with
    other text first differs; the model is then trained on `prompt` + the reply.
    """
    message = dict(example.messages[i])
    for key in ("content", *REASONING_KEYS):
        if isinstance(message.get(key), str):  # templates may cut content at </think>: mark both parts
            message[key] = "\u00a7" + message[key].replace("</think>", "</think>\u00a7")
    other = render(hf, example, [*example.messages[:i], message], generation_prompt=False)
    start = len(os.path.commonprefix([through, other]))
    if start < len(os.path.commonprefix([through, prompt])) or start >= len(through):
        raise DataError(
            f"assistant message {i}: the template renders the conversation before this reply "
            "differently once the reply is added, and the reply's place in it cannot be told; "
            "check the row's role order.",
            path=example.path,
            line=example.line,
        )
    return start


def trailing_text(hf, example: Example, messages, prompt: str) -> str:
    """Text the template appends after the last message of a conversation (e.g. Phi's EOS)."""
    if not messages:
        return ""
    try:
        plain = render(hf, example, messages, generation_prompt=False)
    except DataError:
        return ""
    common = len(os.path.commonprefix([plain, prompt]))
    if common == len(plain):
        return ""
    # back off to a token boundary: "<|endoftext|>" and "<|assistant|>" share "<|"
    enc = hf(plain, add_special_tokens=False, return_offsets_mapping=True)
    for a, b in enc["offset_mapping"]:
        if a < common < b:
            common = a
            break
    return plain[common:].strip()


def reply_text(message: dict) -> str:
    """The reply's own text: content without an inline <think> block, stripped."""
    return _THINK.sub("", message.get("content") or "").strip()


def reasoning_text(message: dict) -> str:
    for key in REASONING_KEYS:
        if isinstance(message.get(key), str) and message[key].strip():
            return message[key].strip()
    found = _THINK.search(message.get("content") or "")
    return found.group(1).strip() if found else ""


def _check_rendered(example: Example, i: int, message: dict, target: str) -> None:
    """A turn whose reply or tool calls the template does not render would train something else."""
    if not target:
        raise DataError(
            f"assistant message {i}: the template renders nothing for this reply.",
            path=example.path,
            line=example.line,
        )
    content = reply_text(message)
    if content and content not in target:
        raise DataError(
            f"assistant message {i}: the template does not render this reply's text as written "
            "(it rewrites or drops it), so the trained tokens would not be the reply.",
            path=example.path,
            line=example.line,
        )
    for call in message.get("tool_calls") or []:
        name = (call.get("function") or call).get("name") if isinstance(call, dict) else None
        if isinstance(name, str) and name not in target:
            raise DataError(
                f"assistant message {i}: the model's template drops this turn's tool_calls "
                f"(no '{name}' in its rendering), so an empty reply would be trained; use a "
                "model whose template renders tool calls, or drop the row.",
                path=example.path,
                line=example.line,
            )


def _content_start(message: dict, target: str) -> tuple[int, bool]:
    """Where the reply's text starts in `target`, and whether reasoning precedes it."""
    reasoning = reasoning_text(message)
    if not reasoning or reasoning not in target:
        return 0, False
    after = target.index(reasoning) + len(reasoning)
    content = reply_text(message)
    at = target.find(content, after) if content else -1
    return (at if at >= 0 else after), True


# --- {% generation %} markers ------------------------------------------------------------

_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(hf) -> bool:
    template = getattr(hf, "chat_template", None)
    return isinstance(template, str) and bool(_GENERATION_BLOCK.search(template))


def marked_replies(hf, example: Example) -> list[str]:
    """The text inside the template's {% generation %} blocks for the whole chat, each trimmed.

    A cross-check of the generation rule on templates that mark assistant text themselves
    (transformers' `return_assistant_tokens_mask`).
    """
    kwargs = {"tools": example.tools} if example.tools is not None else {}
    out = hf.apply_chat_template(
        template_messages(example.messages),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        **kwargs,
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    runs, start = [], None
    for t in range(len(ids) + 1):
        on = t < len(ids) and bool(mask[t])
        if on and start is None:
            start = t
        elif not on and start is not None:
            before = hf.decode(ids[:start])
            runs.append(hf.decode(ids[:t])[len(before) :].rstrip())
            start = None
    return runs


# --- grouping turns into sequences ----------------------------------------------------------


def plan_chat(hf, example: Example, *, mask: str, multi_turn: str, train_reasoning: bool = True) -> RowPlan:
    """The training sequences of a chat row under `mask` and `multi_turn` (see module doc)."""
    if multi_turn not in MULTI_TURN_MODES:
        raise ValueError(f"multi_turn must be one of {MULTI_TURN_MODES}, got {multi_turn!r}")
    if mask == "none":
        text = render(hf, example, example.messages, generation_prompt=False)
        return RowPlan((SequencePlan(text, ((0, len(text), -1),)),), "all tokens")
    indices = [i for i, m in enumerate(example.messages) if m["role"] == "assistant"]
    if mask == "last":
        indices = indices[-1:]
    turns = [turn_target(hf, example, i) for i in indices]
    groups, dropped = group_turns(turns, multi_turn)
    sequences = tuple(_sequence(group, train_reasoning) for group in groups)
    if mask == "last":
        layout = "last turn only"
    elif len(sequences) == 1:
        layout = "one sequence" if not dropped else f"one sequence, {len(dropped)} earlier turns not trained"
    else:
        layout = f"split into {len(sequences)} sequences"
    return RowPlan(sequences, layout, tuple(t.index for t in dropped), turns[-1].trailing)


def group_turns(turns: list[TurnTarget], multi_turn: str) -> tuple[list[list[TurnTarget]], list[TurnTarget]]:
    """Sequences of turns (each trained in one rendering) and the turns left out.

    A sequence is the rendering up to its last turn; an earlier turn joins it when that
    rendering starts with the earlier turn's prompt + target (the prefix property).
    """
    if multi_turn == "split":
        return [[t] for t in turns], []
    groups, dropped, left = [], [], list(turns)
    while left:
        last = left.pop()
        joined = [t for t in left if last.text.startswith(t.text)]
        groups.insert(0, [*joined, last])
        rest = [t for t in left if t not in joined]
        if multi_turn == "single":
            dropped = rest
            break
        left = rest
    return groups, dropped


def _sequence(group: list[TurnTarget], train_reasoning: bool) -> SequencePlan:
    """The last turn's rendering, with every turn's target as a trained span."""
    spans = []
    for t in group:
        skip = t.content_start if (t.has_reasoning and not train_reasoning) else 0
        spans.append((len(t.prompt) + skip, len(t.prompt) + len(t.target), t.index))
    return SequencePlan(group[-1].text, tuple(spans))
