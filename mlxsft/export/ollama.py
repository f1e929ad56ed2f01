"""Ollama export: a folder with the GGUF and a Modelfile that chats as the run trained.

Ollama renders chats with a Go template (`TEMPLATE`), not Jinja. A run's Jinja chat
template is matched to a known turn layout (ChatML/Qwen, Llama-3, Phi-3, Gemma) by
rendering sample conversations with the Jinja template (through transformers) and with
this module's Python twin of each Go template, which must agree character for
character. A default system prompt the template injects (Qwen2.5's "You are Qwen...",
Llama-3.1's knowledge-date header) is carried into the Go template, as a replacement
or as a prefix of the user's system prompt, whichever the Jinja template does (a date
the template computes, as Llama-3.2's does, is frozen at export time).
A template that matches no layout is refused before anything is written.

The Modelfile also carries the stop strings of the layout, and the sampling defaults of
generation_config.json (temperature, top_p, top_k, repeat_penalty).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ExportError
from .gguf import GGUF
from .parity import Candidate, ReferenceLogits
from .pipeline import ExportOptions, Job, export_run
from .source import AdapterSource
from .staging import PARITY_FILE

MODELFILE = "Modelfile"
GGUF_NAME = "model.gguf"


@dataclass(frozen=True)
class Layout:
    """A turn layout: `start` with {role} before each turn's content, `end` after it."""

    name: str
    start: str
    end: str
    stops: tuple[str, ...]
    roles: tuple[tuple[str, str], ...] = ()  # (message role, role as the template writes it)

    def role(self, role: str) -> str:
        return dict(self.roles).get(role, role)

    def go_role(self) -> str:
        expr = "{{ .Role }}"
        for src, dst in reversed(self.roles):
            expr = f'{{{{ if eq .Role "{src}" }}}}{dst}{{{{ else }}}}{expr}{{{{ end }}}}'
        return expr


LAYOUTS = (
    Layout("chatml", "<|im_start|>{role}\n", "<|im_end|>\n", ("<|im_start|>", "<|im_end|>")),
    Layout(
        "llama3",
        "<|start_header_id|>{role}<|end_header_id|>\n\n",
        "<|eot_id|>",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    Layout("phi3", "<|{role}|>\n", "<|end|>\n", ("<|end|>", "<|user|>", "<|assistant|>")),
    Layout(
        "gemma",
        "<start_of_turn>{role}\n",
        "<end_of_turn>\n",
        ("<start_of_turn>", "<end_of_turn>"),
        roles=(("assistant", "model"),),
    ),
)

_SAMPLE = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]
_SYSTEM = {"role": "system", "content": "Answer briefly."}


@dataclass(frozen=True)
class ChatFormat:
    """A layout plus what the template does with system prompts."""

    layout: Layout
    default_system: str | None = None  # emitted when the chat has no system message
    system_prefix: str = ""  # put before a user's system prompt
    system_supported: bool = True  # False: the Jinja template refuses system messages

    def render(self, messages: list[dict]) -> str:
        """What the Go template below renders for `messages` (a chat ending in a user turn)."""
        lay, out = self.layout, ""
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            out += lay.start.format(role=lay.role("system")) + self.default_system + lay.end
        for m in messages:
            if m["role"] == "system" and not self.system_supported:
                continue
            prefix = self.system_prefix if m["role"] == "system" else ""
            out += lay.start.format(role=lay.role(m["role"])) + prefix + m["content"] + lay.end
        return out + lay.start.format(role=lay.role("assistant"))

    def go_template(self) -> str:
        lay = self.layout
        turn_start = lay.start.replace("{role}", lay.go_role())
        out = ""
        if self.default_system is not None:
            out += (
                '{{- if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
                + lay.start.format(role=lay.role("system"))
                + self.default_system
                + lay.end
                + "{{ end }}"
            )
        body = turn_start
        if self.system_prefix:
            body += '{{ if eq .Role "system" }}' + self.system_prefix + "{{ end }}"
        body += "{{ .Content }}" + lay.end
        if not self.system_supported:
            body = '{{ if ne .Role "system" }}' + body + "{{ end }}"
        out += "{{- range .Messages }}" + body + "{{ end }}"
        return out + lay.start.format(role=lay.role("assistant"))


def jinja_render(tokenizer, template: str, messages: list[dict]) -> str:
    """The run's template applied as transformers applies it, without a leading BOS text."""
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos) :] if bos and text.startswith(bos) else text


def match_chat_format(tokenizer, template: str) -> ChatFormat:
    """The ChatFormat reproducing `template` on the sample chats, or ExportError."""
    try:
        plain = jinja_render(tokenizer, template, _SAMPLE)
    except Exception as err:  # a template that needs tools, dates or kwargs we do not pass
        raise ExportError(
            f"the chat template fails on a plain chat ({err}), so no Ollama TEMPLATE can be "
            "derived from it. Export --format gguf and write the Modelfile by hand."
        ) from None
    try:
        with_system = jinja_render(tokenizer, template, [_SYSTEM, *_SAMPLE])
    except Exception:  # the template raises on a system message (Gemma, Mistral)
        with_system = None
    for layout in LAYOUTS:
        found = _match_layout(layout, plain, with_system)
        if found is not None:
            return found
    raise ExportError(
        "Ollama renders chats with a Go template, and this run's chat template matches none of "
        f"the layouts mlxsft can translate ({', '.join(lay.name for lay in LAYOUTS)}). Export "
        "--format gguf and write the Modelfile's TEMPLATE by hand (ollama.com/library has one "
        "per family)."
    )


def _match_layout(layout: Layout, plain: str, with_system: str | None) -> ChatFormat | None:
    supported = with_system is not None
    fmt = ChatFormat(layout, system_supported=supported)
    if fmt.render(_SAMPLE) != plain:
        marker = "\x00"
        pre, _, post = ChatFormat(layout).render([{"role": "system", "content": marker}, *_SAMPLE]).partition(marker)
        if not (plain.startswith(pre) and plain.endswith(post) and len(plain) >= len(pre) + len(post)):
            return None
        default = plain[len(pre) : len(plain) - len(post)]
        fmt = ChatFormat(layout, default_system=default, system_supported=supported)
        if fmt.render(_SAMPLE) != plain:
            return None
    if not supported:
        return fmt
    for prefix in ("", fmt.default_system or ""):
        candidate = ChatFormat(layout, fmt.default_system, prefix, True)
        if candidate.render([_SYSTEM, *_SAMPLE]) == with_system:
            return candidate
    return None


def modelfile(fmt: ChatFormat, generation: dict, gguf_name: str = GGUF_NAME) -> str:
    """The Modelfile text: FROM, TEMPLATE, stop and sampling PARAMETERs."""
    template = fmt.go_template()
    if '"""' in template:
        raise ExportError('the chat template contains """, which a Modelfile TEMPLATE cannot hold.')
    if "{{" in (fmt.default_system or "") + fmt.system_prefix:
        raise ExportError("the template's default system prompt contains '{{', which Go templates would run.")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if fmt.default_system and not fmt.system_prefix:
        # shown by `ollama show --system`; sent as a system message, it renders as the default does
        lines.append(f'SYSTEM """{fmt.default_system}"""')
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in fmt.layout.stops]
    for key, name in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("repetition_penalty", "repeat_penalty"),
    ):
        if generation.get(key) is not None:
            lines.append(f"PARAMETER {name} {generation[key]}")
    return "\n".join(lines) + "\n"


def _generation_defaults(base_path: Path) -> dict:
    path = base_path / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return config if config.get("do_sample", True) else {}


class OllamaFormat:
    """A folder with the GGUF (`GgufFormat`, whose parity it shares) and a Modelfile."""

    name = "ollama"
    single_file = False
    parity_names = (PARITY_FILE, GGUF_NAME + ".parity.json")  # the second: `mlxsft verify OUT/model.gguf`

    def plan(self, job: Job) -> str:
        from transformers import AutoTokenizer  # heavy: only the Ollama export renders Jinja templates

        source = job.source
        template = source.run.chat_template()
        tokenizer = AutoTokenizer.from_pretrained(str(source.base_path))
        template = template or getattr(tokenizer, "chat_template", None)
        if not template:
            raise ExportError("this run has no chat template, so Ollama would have nothing to chat with.")
        fmt = match_chat_format(tokenizer, template)
        job.state.update(layout=fmt.layout.name, modelfile=modelfile(fmt, _generation_defaults(source.base_path)))
        return GGUF.plan(job)

    def reference(self, job: Job) -> ReferenceLogits:
        return GGUF.reference(job)

    def write(self, job: Job, path: Path) -> str:
        GGUF.write(job, path / GGUF_NAME)
        (path / MODELFILE).write_text(job.state["modelfile"], encoding="utf-8")
        out = job.out
        return f"Wrote {out}/{MODELFILE} ({job.state['layout']} layout); run: ollama create NAME -f {out}/{MODELFILE}"

    def load(self, path: Path, source: AdapterSource) -> Candidate:
        return GGUF.load(path / GGUF_NAME, source)


OLLAMA = OllamaFormat()


def export_ollama(
    run_dir: str | Path,
    out: str | Path,
    *,
    checkpoint=None,
    quant: str | None = None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """A folder with model.gguf and a Modelfile: `ollama create NAME -f OUT/Modelfile`."""
    return export_run(
        OLLAMA, run_dir, out, checkpoint=checkpoint, force=force, verify=verify, options=ExportOptions(quant=quant)
    )
