"""Build small local models in Hugging Face format, for tests, demos and benchmarks.

No machine of this project reaches the model hub, so every test and the demo build
their model here: random weights in the HF safetensors layout, a `config.json`
that mlx-lm and transformers both load, and a byte-level BPE tokenizer trained in
process with `tokenizers`, with a chat template (ChatML or Llama-3 style).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

TEMPLATES = {
    "chatml": dict(
        template=CHATML_TEMPLATE,
        special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
    ),
    "llama3": dict(
        template=LLAMA3_TEMPLATE,
        special=[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|end_of_text|>",
    ),
}

_BASE_CORPUS = (
    "The quick brown fox jumps over the lazy dog. "
    "You are a helpful assistant. Answer the question in one short sentence. "
    "user assistant system tool What is the capital of France? Paris is the capital. "
    '{"name": "Alice", "age": 31, "city": "Berlin"} Convert to JSON: name age city '
    "0 1 2 3 4 5 6 7 8 9 hello world thanks please sorry order refund shipping "
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny model. Defaults make a ~100k-parameter Llama."""

    architecture: str = "llama"  # "llama" or "qwen2" (attention biases)
    template: str = "chatml"  # "chatml" or "llama3"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 512
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    seed: int = 0
    # Embedding rows; None = the tokenizer's size. Real checkpoints often pad the
    # vocabulary (e.g. to 32000 or 151936): benchmarks use this to get realistic heads.
    model_vocab_size: int | None = None


def train_tokenizer(corpus: list[str], template: str, vocab_size: int):
    """Train a byte-level BPE tokenizer (GPT-2 style) with the template's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    spec = TEMPLATES[template]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def _tokenizer_config(template: str) -> dict:
    spec = TEMPLATES[template]
    added = {}
    for token in spec["special"]:
        added[token] = token
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": spec["bos"],
        "eos_token": spec["eos"],
        "pad_token": spec["pad"],
        "unk_token": None,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": spec["template"],
    }


def _model_config(spec: TinyModelSpec, vocab_size: int, eos_id: int, bos_id: int | None) -> dict:
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[spec.architecture]
    config = {
        "architectures": [arch],
        "model_type": spec.architecture,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.hidden_size // spec.num_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": spec.tie_word_embeddings,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }
    if bos_id is not None:
        config["bos_token_id"] = bos_id
    if spec.architecture == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    return config


def _random_weights(spec: TinyModelSpec, vocab: int) -> dict[str, np.ndarray]:
    """HF tensor names and shapes, (out, in) for every linear layer."""
    rng = np.random.default_rng(spec.seed)
    d, f, h = spec.hidden_size, spec.intermediate_size, spec.hidden_size // spec.num_heads
    kv = spec.num_kv_heads * h

    def normal(*shape):
        # std 1/sqrt(fan_in) keeps activations and logits at unit scale, so a
        # random model's outputs are not near-uniform and adapters learn quickly
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    embed = rng.standard_normal((vocab, d)).astype(np.float32)
    w = {"model.embed_tokens.weight": embed, "model.norm.weight": np.ones(d, np.float32)}
    if not spec.tie_word_embeddings:
        w["lm_head.weight"] = normal(vocab, d)
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = normal(spec.num_heads * h, d)
        w[p + "self_attn.k_proj.weight"] = normal(kv, d)
        w[p + "self_attn.v_proj.weight"] = normal(kv, d)
        w[p + "self_attn.o_proj.weight"] = normal(d, spec.num_heads * h)
        if spec.architecture == "qwen2":
            w[p + "self_attn.q_proj.bias"] = normal(spec.num_heads * h)
            w[p + "self_attn.k_proj.bias"] = normal(kv)
            w[p + "self_attn.v_proj.bias"] = normal(kv)
        w[p + "mlp.gate_proj.weight"] = normal(f, d)
        w[p + "mlp.up_proj.weight"] = normal(f, d)
        w[p + "mlp.down_proj.weight"] = normal(d, f)
        w[p + "input_layernorm.weight"] = np.ones(d, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(d, np.float32)
    return w


def build_tiny_model(
    out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec(), corpus: list[str] | None = None
) -> Path:
    """Write a random-weight HF-format causal LM with a trained tokenizer to `out_dir`.

    `corpus` (texts) shapes the tokenizer's merges; the model's vocab size is the
    tokenizer's actual size.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [_BASE_CORPUS] * 4 + list(corpus or [])
    tokenizer = train_tokenizer(texts, spec.template, spec.vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    template = TEMPLATES[spec.template]
    vocab = max(tokenizer.get_vocab_size(), spec.model_vocab_size or 0)
    eos_id = tokenizer.token_to_id(template["eos"])
    bos_id = tokenizer.token_to_id(template["bos"]) if template["bos"] else None
    tok_config = _tokenizer_config(spec.template)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({k: tok_config[k] for k in ("bos_token", "eos_token", "pad_token")}, indent=2)
    )
    (out / "chat_template.jinja").write_text(template["template"])
    config = _model_config(spec, vocab, eos_id, bos_id)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    gen = {"eos_token_id": eos_id} | ({"bos_token_id": bos_id} if bos_id is not None else {})
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    save_file(_random_weights(spec, vocab), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
