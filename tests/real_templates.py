"""Real chat templates and real vocabularies, for tests of the training mask.

The templates are llama.cpp's `models/templates/*.jinja` and the vocabularies its
`models/ggml-vocab-*.gguf`, both from the source distribution of `llama-cpp-python`
0.3.36 (see fixtures/real_templates/SOURCES.md). Each family pairs its template with
its own vocabulary where llama.cpp ships it, else with the nearest real one plus the
template's special tokens added as the model's tokenizer adds them.
"""

from __future__ import annotations

import json
import lzma
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

FIXTURES = Path(__file__).parent / "fixtures" / "real_templates"


@dataclass(frozen=True)
class Family:
    template: str  # file name under fixtures/real_templates
    vocab: str  # vocab/<vocab>.tokenizer.json.xz
    bos: str | None
    eos: str
    stops: tuple[str, ...]  # what generation stops on (the family's generation_config)
    special: tuple[str, ...] = ()  # control tokens the template uses, added when the vocab lacks them
    plain: tuple[str, ...] = ()  # tokens the family adds as non-special (e.g. <think>)
    tools: bool = True  # the template renders tool calls
    reasoning: bool = False  # the template renders reasoning_content / <think>
    extra: dict = field(default_factory=dict)


FAMILIES = {
    "qwen2.5": Family(
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        "qwen2",
        None,
        "<|im_end|>",
        ("<|im_end|>",),
        plain=("<tool_call>", "</tool_call>"),
    ),
    "qwen3": Family(
        "Qwen-Qwen3-0.6B.jinja",
        "qwen2",
        None,
        "<|im_end|>",
        ("<|im_end|>",),
        plain=("<think>", "</think>", "<tool_call>", "</tool_call>"),
        reasoning=True,
    ),
    "deepseek-r1-qwen": Family(
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        "qwen2",
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        ("<｜end▁of▁sentence｜>",),
        special=(
            "<｜begin▁of▁sentence｜>",
            "<｜end▁of▁sentence｜>",
            "<｜User｜>",
            "<｜Assistant｜>",
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>",
            "<｜tool▁call▁end｜>",
            "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>",
            "<｜tool▁output▁begin｜>",
            "<｜tool▁output▁end｜>",
            "<｜tool▁sep｜>",
        ),
        plain=("<think>", "</think>"),
        reasoning=True,
    ),
    "llama3.1": Family(
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        "llama-bpe",
        "<|begin_of_text|>",
        "<|eot_id|>",
        ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
        special=("<|eom_id|>", "<|python_tag|>"),
    ),
    "llama3.2": Family(
        "meta-llama-Llama-3.2-3B-Instruct.jinja",
        "llama-bpe",
        "<|begin_of_text|>",
        "<|eot_id|>",
        ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
        special=("<|eom_id|>", "<|python_tag|>"),
    ),
    "hermes3-llama3.1": Family(
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
        "llama-bpe",
        "<|begin_of_text|>",
        "<|im_end|>",
        ("<|im_end|>",),
        special=("<|im_start|>", "<|im_end|>"),
    ),
    "mistral-nemo": Family(
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        "llama-spm",
        "<s>",
        "</s>",
        ("</s>",),
        special=(
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ),
    ),
    "mistral-small-3.2": Family(
        "Mistral-Small-3.2-24B-Instruct-2506.jinja",
        "llama-spm",
        "<s>",
        "</s>",
        ("</s>",),
        special=(
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
            "[SYSTEM_PROMPT]",
            "[/SYSTEM_PROMPT]",
            "[ARGS]",
            "[CALL_ID]",
            "[TOOL_CONTENT]",
        ),
    ),
    "gemma2": Family(
        "google-gemma-2-2b-it.jinja",
        "llama-spm",
        "<s>",
        "<end_of_turn>",
        ("<end_of_turn>", "</s>"),
        special=("<start_of_turn>", "<end_of_turn>"),
        tools=False,
    ),
    "gemma4": Family(
        "google-gemma-4-31B-it.jinja",
        "llama-spm",
        "<s>",
        "<turn|>",
        ("<turn|>", "</s>"),
        special=(
            "<|turn>",
            "<turn|>",
            "<|tool>",
            "<tool|>",
            "<|tool_call>",
            "<tool_call|>",
            "<|tool_response>",
            "<tool_response|>",
            '<|"|>',
            "<|think|>",
            "<|channel>",
            "<channel|>",
        ),
    ),
    "phi3.5": Family(
        "microsoft-Phi-3.5-mini-instruct.jinja",
        "phi-3",
        "<s>",
        "<|endoftext|>",
        ("<|end|>", "<|endoftext|>"),
        special=("<|user|>",),
        tools=False,
    ),
    "smollm3": Family(
        "HuggingFaceTB-SmolLM3-3B.jinja",
        "llama-bpe",
        "<|begin_of_text|>",
        "<|im_end|>",
        ("<|im_end|>",),
        special=("<|im_start|>", "<|im_end|>"),
        plain=("<think>", "</think>"),
        reasoning=True,
    ),
    "granite3.3": Family(
        "ibm-granite-granite-3.3-2B-Instruct.jinja",
        "starcoder",
        None,
        "<|end_of_text|>",
        ("<|end_of_text|>",),
        special=(
            "<|start_of_role|>",
            "<|end_of_role|>",
            "<|end_of_text|>",
            "<|tool_call|>",
            "<|start_of_cite|>",
            "<|end_of_cite|>",
        ),
    ),
    "gpt-oss": Family(
        "openai-gpt-oss-120b.jinja",
        "gpt-2",
        "<|startoftext|>",
        "<|return|>",
        ("<|return|>", "<|call|>"),
        special=(
            "<|startoftext|>",
            "<|start|>",
            "<|end|>",
            "<|message|>",
            "<|channel|>",
            "<|return|>",
            "<|call|>",
            "<|constrain|>",
        ),
        reasoning=True,
    ),
    "lfm2.5": Family(
        "LFM2.5-8B-A1B.jinja",
        "gpt-2",
        "<|startoftext|>",
        "<|im_end|>",
        ("<|im_end|>",),
        special=("<|startoftext|>", "<|im_start|>", "<|im_end|>", "<|tool_call_start|>", "<|tool_call_end|>"),
        plain=("<think>", "</think>"),
        reasoning=True,
    ),
}


@cache
def _tokenizer_json(vocab: str) -> str:
    return lzma.decompress((FIXTURES / "vocab" / f"{vocab}.tokenizer.json.xz").read_bytes()).decode()


def load_family(name: str) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer with the family's real template and vocabulary."""
    family = FAMILIES[name]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json(family.vocab)))
    vocab = tok.get_vocab()
    tok.add_special_tokens({"additional_special_tokens": [t for t in family.special if t not in vocab]})
    tok.add_tokens([t for t in family.plain if t not in vocab])
    tok.bos_token = family.bos
    tok.eos_token = family.eos
    tok.chat_template = (FIXTURES / family.template).read_text()
    return tok


def save_family(name: str, folder: Path) -> Path:
    """A model folder holding just the family's tokenizer and template (for tokenizer-only commands)."""
    tok = load_family(name)
    tok.save_pretrained(str(folder))
    config = {"model_type": "llama", "vocab_size": len(tok), "eos_token_id": tok.eos_token_id}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"placeholder": np.zeros(1, np.float32)}, str(folder / "model.safetensors"))  # no weights needed
    return folder
