"""GGUF export (llama.cpp, Ollama) of a merged model, written with the maintained `gguf` package.

What llama.cpp needs, following its own converter (convert_hf_to_gguf.py):
- tensors renamed by `gguf.TensorNameMap`; Llama/Mistral q/k projections permuted
  from Hugging Face's rotate-half rope layout to llama.cpp's interleaved one (Qwen2
  uses NEOX rope in llama.cpp, so no permutation); 1-D tensors (norms, biases) in
  float32, the rest float32 or float16;
- hyper-parameters under `<arch>.*`, Llama-3 rope scaling as a `rope_freqs` tensor;
- a byte-level BPE vocabulary as `tokenizer.ggml.model = "gpt2"` with token types,
  merges, special ids, the chat template, and `tokenizer.ggml.pre` naming the
  pre-tokenizer (llama.cpp refuses a file whose pre-tokenizer it does not know).

Architectures: llama, mistral, qwen2, qwen3 (q/k norms) and phi3 (fused qkv and gate_up,
partial rotary, sliding window; Phi-3's longrope scaling is refused). All but qwen3 were
loaded in real llama.cpp by scripts/check_gguf_in_llamacpp.py (its llama.cpp predates qwen3). Tokenizers: byte-level BPE
whose pre-tokenizer is GPT-2's, Llama-3's or Qwen2's, and SentencePiece. Anything else is refused with a pointer to
llama.cpp's converter on a `--format hf` export. The parity check reads the file
back (tensors un-permuted) into MLX.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model

from .errors import ExportError
from .gguf_lib import gguf_module as _gguf
from .gguf_quant import (
    QUANT_TOLERANCES,
    QUANT_TYPES,
    check_quantizable,
    dequantize,
    f16_reference,
    file_type,
    quant_name,
    quantize,
    row_lengths,
    tensor_type,
)
from .merged import dequantize_all, fused_once, take_fused
from .parity import Candidate, ReferenceLogits
from .pipeline import ExportOptions, Job, export_run
from .source import AdapterSource

# model_type -> (gguf architecture name, permute q/k for llama.cpp's rope)
ARCHITECTURES = {
    "llama": ("llama", True),
    "mistral": ("llama", True),
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
    "phi3": ("phi3", False),  # fused qkv_proj / gate_up_proj, NEOX rope
}
GGUF_DTYPES = ("float32", "float16")
# Regexes of the Split pre-tokenizer in tokenizer.json -> llama.cpp's pre-tokenizer name.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_PRE = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


# ---------------------------------------------------------------- what can be exported


def quant_for(dtype: str | None, quant: str | None = None) -> str:
    """The GGUF quantization from --dtype (float32/float16) and/or --quant, refusing a conflict."""
    if dtype is not None and dtype not in GGUF_DTYPES:
        raise ExportError(
            f"GGUF export writes float32 or float16 weights (got --dtype {dtype}), or a "
            f"quantized file with --quant {'|'.join(QUANT_TYPES)}."
        )
    if quant is not None and quant not in QUANT_TYPES:
        raise ExportError(f"--quant must be one of {', '.join(QUANT_TYPES)}, not {quant!r}.")
    from_dtype = {"float32": "f32", "float16": "f16"}.get(dtype or "")
    if quant and from_dtype and quant != from_dtype:
        raise ExportError(f"--dtype {dtype} and --quant {quant} disagree; give only --quant.")
    return quant or from_dtype or "f16"


def check_supported(base_config: dict, base_path: Path, quant: str) -> tuple[str, bool, str]:
    """(gguf arch, permute?, tokenizer pre) or a clear ExportError, before any heavy work.

    `quant` is a --quant type (f32, f16, q8_0, q4_0, q4_k_m) or float32/float16.
    """
    if quant in QUANT_TYPES:
        quant_for(None, quant)
    else:
        quant_for(quant)  # float32/float16, or a clear error naming both flags
    model_type = base_config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ExportError(
            f"GGUF export supports {', '.join(ARCHITECTURES)} models, not {model_type}. "
            "Export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    kind = rope_scaling(base_config).get("rope_type")
    if kind not in (None, "default", "linear", "llama3") or (kind == "llama3" and model_type in ("qwen2", "qwen3")):
        raise ExportError(
            f"GGUF export does not handle rope scaling '{kind}'. Export --format hf and "
            "convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    arch, permute = ARCHITECTURES[model_type]
    return arch, permute, tokenizer_pre(base_path)


def is_sentencepiece(base_path: Path) -> bool:
    """A SentencePiece vocabulary (tokenizer.model) and no byte-level BPE tokenizer.json."""
    if not (base_path / "tokenizer.model").is_file():
        return False
    path = base_path / "tokenizer.json"
    if not path.is_file():
        return True
    pre = json.loads(path.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    return "ByteLevel" not in json.dumps(pre)


def tokenizer_pre(base_path: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or ExportError for one we do not know.

    A SentencePiece tokenizer (Llama-2, Mistral, Phi-3) is "default": llama.cpp's SPM
    tokenizer has no pre-tokenizer.
    """
    if is_sentencepiece(base_path):
        return "default"
    path = base_path / "tokenizer.json"
    if not path.is_file():
        raise ExportError(
            "GGUF export needs a tokenizer.json (byte-level BPE) or a SentencePiece "
            "tokenizer.model; this model has neither. Export --format hf and use "
            "llama.cpp's convert_hf_to_gguf.py.",
            path=str(base_path),
        )
    tok = json.loads(path.read_text(encoding="utf-8"))
    if tok.get("model", {}).get("type") != "BPE":
        raise ExportError(
            "GGUF export handles byte-level BPE and SentencePiece tokenizers, not this "
            f"{tok.get('model', {}).get('type')} one. Export --format hf and use llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [s.get("type") for s in steps]
    if types == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if types == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex in _SPLIT_PRE:
            return _SPLIT_PRE[regex]
    raise ExportError(
        "this tokenizer's pre-tokenizer is not one the GGUF exporter knows (GPT-2, Llama-3, "
        "Qwen2). Export --format hf and use llama.cpp's convert_hf_to_gguf.py."
    )


def rope_theta(config: dict) -> float:
    """Rope base: `rope_theta`, or inside transformers v5's `rope_parameters`."""
    params = config.get("rope_parameters") or {}
    return float(config.get("rope_theta", params.get("rope_theta", 10000.0)))


def rope_scaling(config: dict) -> dict:
    """Rope scaling with its kind under `rope_type` ({} for none), old or v5 config style."""
    scaling = dict(config.get("rope_scaling") or config.get("rope_parameters") or {})
    kind = scaling.get("rope_type", scaling.get("type"))
    return {} if kind in (None, "default") else scaling | {"rope_type": kind}


# ---------------------------------------------------------------- tensors


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows -> llama.cpp interleaved rows: per head (2, d/2) -> (d/2, 2)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_qk`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _heads_for(name: str, config: dict) -> int | None:
    """Heads to permute over for q/k projections (k uses the kv heads), None for other tensors."""
    if ".self_attn.q_proj." in name:
        return config["num_attention_heads"]
    if ".self_attn.k_proj." in name:
        return config.get("num_key_value_heads", config["num_attention_heads"])
    return None


def gguf_names(names, arch: str, num_layers: int) -> dict[str, str]:
    """{MLX/HF tensor name: GGUF tensor name} via the gguf package's own tensor map."""
    gguf = _gguf()
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    table = gguf.TensorNameMap(arch_enum, num_layers)
    mapping = {}
    for name in names:
        mapped = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ExportError(f"no GGUF name for tensor {name} ({arch}).")
        mapping[name] = mapped
    return mapping


def llama3_rope_factors(config: dict) -> np.ndarray:
    """llama.cpp's `rope_freqs` for Llama-3 rope scaling: the divisor applied to each frequency."""
    s = rope_scaling(config)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor, low, high = (
        s.get("factor", 8.0),
        s.get("low_freq_factor", 1.0),
        s.get("high_freq_factor", 4.0),
    )
    old_context = s.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (rope_theta(config) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


# ---------------------------------------------------------------- vocabulary


def vocab_tokens(base_path: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """(tokens, token types) for ids 0..vocab_size-1, as llama.cpp's converter lists them."""
    from tokenizers import Tokenizer  # transformers' tokenizer library: loaded only when a GGUF is written

    gguf = _gguf()
    tokenizer = Tokenizer.from_file(str(base_path / "tokenizer.json"))
    reverse = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    added = tokenizer.get_added_tokens_decoder()  # {id: AddedToken}
    if reverse and max(reverse) >= vocab_size:
        raise ExportError(f"the tokenizer has ids up to {max(reverse)} but the model only {vocab_size} rows.")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        tokens.append(token)
        if i in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            types.append(gguf.TokenType.CONTROL if added[i].special or looks_special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def sentencepiece_tokens(base_path: Path, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) of a SentencePiece vocabulary, as llama.cpp's converter
    lists them (convert_hf_to_gguf.py `_create_vocab_sentencepiece`): pieces with their
    scores and kinds, then added tokens (added_tokens.json, tokenizer_config.json's
    added_tokens_decoder) as user-defined or control tokens with score -1000."""
    from sentencepiece import SentencePieceProcessor  # optional: only SentencePiece vocabularies need it

    gguf = _gguf()
    T = gguf.TokenType
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(base_path / "tokenizer.model"))
    if sp.vocab_size() > vocab_size:
        raise ExportError(f"tokenizer.model has {sp.vocab_size()} pieces but the model only {vocab_size} rows.")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores, types = [-10000.0] * vocab_size, [T.UNUSED] * vocab_size
    kinds = _piece_types(base_path)
    for i in range(sp.vocab_size()):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = (
            T(kinds[i])
            if kinds
            else (
                T.UNKNOWN
                if sp.IsUnknown(i)
                else T.CONTROL
                if sp.IsControl(i)
                else T.UNUSED
                if sp.IsUnused(i)
                else T.BYTE
                if sp.IsByte(i)
                else T.NORMAL
            )
        )
    for i, (token, special) in _added_tokens(base_path).items():
        if i >= vocab_size:
            raise ExportError(f"added token {token!r} has id {i}, past the model's {vocab_size} rows.")
        if i < sp.vocab_size() and sp.IdToPiece(i) == token:
            continue  # <s>, </s>, <unk>: the piece itself, keep its kind and score
        looks_special = token.startswith("<") and token.endswith(">")
        special = special or looks_special
        tokens[i], scores[i] = token if special else token.replace("\u2581", " "), -1000.0
        types[i] = T.CONTROL if special else T.USER_DEFINED
    return tokens, scores, types


def _sentencepiece_proto(base_path: Path):
    """The tokenizer.model's ModelProto, or None without protobuf."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:  # sentencepiece ships it, but it needs the protobuf package
        return None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((base_path / "tokenizer.model").read_bytes())
    return proto


def _piece_types(base_path: Path) -> list[int] | None:
    """Each piece's type from the model itself: sentencepiece's enum (NORMAL 1, UNKNOWN 2,
    CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6) is gguf.TokenType's. Its Python API cannot
    tell USER_DEFINED from NORMAL, and llama.cpp must know: it matches user-defined pieces
    (e.g. <|im_start|>) whole in the text, and splits a NORMAL one into characters."""
    proto = _sentencepiece_proto(base_path)
    return [piece.type for piece in proto.pieces] if proto is not None else None


def add_space_prefix(base_path: Path) -> bool:
    """Whether SentencePiece adds a dummy prefix space (llama.cpp: tokenizer.ggml.add_space_prefix)."""
    proto = _sentencepiece_proto(base_path)
    return bool(proto.normalizer_spec.add_dummy_prefix) if proto is not None else True


def _sentencepiece_special_ids(base_path: Path) -> dict[str, int]:
    from sentencepiece import SentencePieceProcessor  # optional: only SentencePiece vocabularies need it

    sp = SentencePieceProcessor(model_file=str(base_path / "tokenizer.model"))
    ids = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "pad": sp.pad_id()}
    return {k: i for k, i in ids.items() if i >= 0}


def _added_tokens(base_path: Path) -> dict[int, tuple[str, bool]]:
    """{id: (text, special?)} from added_tokens.json and tokenizer_config.json."""
    added: dict[int, tuple[str, bool]] = {}
    path = base_path / "added_tokens.json"
    if path.is_file():
        for token, i in json.loads(path.read_text(encoding="utf-8")).items():
            added[int(i)] = (token, False)
    path = base_path / "tokenizer_config.json"
    if path.is_file():
        decoder = json.loads(path.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}
        for i, data in decoder.items():
            added[int(i)] = (data["content"], bool(data.get("special")))
    return added


# ---------------------------------------------------------------- writing


def write_gguf(
    path: Path,
    weights: dict[str, np.ndarray],
    config: dict,
    base_path: Path,
    quant: str,
    arch: str,
    pre: str,
    name: str,
    chat_template: str | None = None,
) -> None:
    """Write a GGUF file of `weights` (float numpy, HF/MLX names, HF layout), each tensor in
    the ggml type `gguf_quant.tensor_type` picks for `quant` (f32, f16, q8_0, q4_0, q4_k_m)."""
    gguf = _gguf()
    quant = quant_for(quant) if quant in GGUF_DTYPES else quant
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_type("model")
    extra = _add_hyperparameters(writer, config)
    writer.add_file_type(file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, base_path, config["vocab_size"], pre, chat_template)

    n_layers = config["num_hidden_layers"]
    names = gguf_names(weights, arch, n_layers)
    has_output = "output.weight" in names.values()
    for key, w in weights.items():
        heads = _heads_for(key, config) if ARCHITECTURES[config["model_type"]][1] else None
        if heads is not None:
            w = permute_qk(w, heads)
        qtype = tensor_type(names[key], w.shape, quant, n_layers, has_output)
        data = quantize(np.ascontiguousarray(w), qtype)
        raw = None if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else qtype
        writer.add_tensor(names[key], data, raw_dtype=raw)
    for key, w in extra.items():
        writer.add_tensor(key, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_hyperparameters(writer, config: dict) -> dict[str, np.ndarray]:
    """`<arch>.*` keys; returns extra tensors (Llama-3 rope factors) the file needs."""
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads", n_head))
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(int(head_dim * config.get("partial_rotary_factor", 1.0)))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if config["model_type"] == "phi3" and config.get("sliding_window"):
        writer.add_sliding_window(int(config["sliding_window"]))
    return _rope_scaling(writer, config)


def add_vocab(writer, base_path: Path, vocab_size: int, pre: str, chat_template: str | None) -> None:
    """The tokenizer: SentencePiece as "llama" (tokens, scores, types), byte-level BPE as
    "gpt2" (tokens, types, merges); special ids and add_bos from the tokenizer config, and the
    chat template the run trained with as `tokenizer.chat_template`."""
    gguf = _gguf()
    spm = is_sentencepiece(base_path)
    if spm:
        tokens, scores, types = sentencepiece_tokens(base_path, vocab_size)
        writer.add_tokenizer_model("llama")
    else:
        tokens, types = vocab_tokens(base_path, vocab_size)
        writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if spm:
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(add_space_prefix(base_path))
    writer.add_token_types(types)
    special = gguf.SpecialVocab(base_path, load_merges=not spm, n_vocab=len(tokens))
    if spm:  # without a tokenizer.json the ids config.json lacks come from the model itself
        for kind, i in _sentencepiece_special_ids(base_path).items():
            special.special_token_ids.setdefault(kind, i)
    if chat_template:
        special.chat_template = chat_template  # the template the run trained with
    special.add_to_gguf(writer, quiet=True)


def _rope_scaling(writer, config: dict) -> dict[str, np.ndarray]:
    """Rope-scaling metadata, and for Llama-3 scaling the extra `rope_freqs.weight` tensor."""
    gguf = _gguf()
    scaling = rope_scaling(config)
    kind = scaling.get("rope_type")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    if kind == "llama3":
        return {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight": llama3_rope_factors(config)}
    return {}


class GgufFormat:
    """A GGUF file of the merged (de-quantized) model, read back and checked.

    f32/f16 files are checked against the trained adapter; quantized ones (q8_0, q4_0,
    q4_k_m) against the f16 export they are quantized from, at `QUANT_TOLERANCES`.
    """

    name = "gguf"
    single_file = True
    parity_names = ()

    def plan(self, job: Job) -> str:
        quant = _quant(job)
        source = job.source
        config = json.loads((source.base_path / "config.json").read_text(encoding="utf-8"))
        arch, _permute, pre = check_supported(config, source.base_path, quant)
        check_quantizable(row_lengths(config), quant)  # before anything heavy is loaded
        job.state.update(config=config, arch=arch, pre=pre)
        return f"Merging {source.run.path} into GGUF ({arch}, {quant}, pre-tokenizer {pre}) at {job.out}"

    def reference(self, job: Job) -> ReferenceLogits:
        model, reference = _merged(job)
        if _quant(job) in QUANT_TOLERANCES:
            reference = f16_reference(model, reference)  # quantize from f16, as llama.cpp does
        return reference

    def write(self, job: Job, path: Path) -> str:
        _merged(job)
        weights = gguf_arrays(take_fused(job, dequantize=True), _quant(job))
        state, source = job.state, job.source
        write_gguf(
            path,
            weights,
            state["config"],
            source.base_path,
            _quant(job),
            state["arch"],
            state["pre"],
            name=source.run.path.name,
            chat_template=source.run.chat_template(),
        )
        return f"Wrote {job.out} ({path.stat().st_size / 1e6:.1f} MB)"

    def load(self, path: Path, source: AdapterSource) -> Candidate:
        return load_gguf_model(path, source.base_path)


GGUF = GgufFormat()


def _quant(job: Job) -> str:
    """The job's --quant type (f32, f16, q8_0, q4_0, q4_k_m) from its dtype and quant options."""
    if "quant" not in job.state:
        job.state["quant"] = quant_for(job.options.dtype, job.options.quant)
    return job.state["quant"]


def _merged(job: Job) -> tuple[nn.Module, ReferenceLogits]:
    """The fused, de-quantized model (checked against the quantization's block size) and
    its reference logits, loaded once per job."""
    trained, reference = fused_once(job, dequantize=True)
    check_quantizable({k: v.shape for k, v in tree_flatten(trained.model.parameters())}, _quant(job))
    return trained.model, reference


def export_gguf(
    run_dir: str | Path,
    out: str | Path,
    *,
    checkpoint=None,
    dtype: str | None = None,
    quant: str | None = None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """A GGUF file of the merged (de-quantized) model, read back and checked (`GgufFormat`)."""
    options = ExportOptions(dtype=dtype, quant=quant)
    return export_run(GGUF, run_dir, out, checkpoint=checkpoint, force=force, verify=verify, options=options)


def gguf_arrays(model: nn.Module, quant: str) -> dict[str, np.ndarray]:
    """The model's weights as numpy, one tensor at a time: 2-D ones in float16 (what an f16
    file stores, and what a quantized file is quantized from, as llama-quantize does) unless
    the file is f32; 1-D ones in float32. Converting per tensor keeps memory at one float32
    copy of one tensor, and the whole model at 2 bytes a weight.
    """
    arrays = {}
    for name, v in tree_flatten(model.parameters()):
        target = mx.float32 if quant in ("f32", "float32") or v.ndim == 1 else mx.float16
        arrays[name] = np.array(v.astype(target))
    return arrays


# ---------------------------------------------------------------- reading back


def read_gguf_weights(path: Path, config: dict, names) -> tuple[dict[str, mx.array], str]:
    """GGUF tensors back under MLX/HF names in HF layout (q/k un-permuted, quantized ones
    through gguf's own dequantization), and how the file stores them (float32, float16 or
    the --quant type)."""
    gguf = _gguf()
    arch, permute = ARCHITECTURES[config["model_type"]]
    inverse = {v: k for k, v in gguf_names(names, arch, config["num_hidden_layers"]).items()}
    reader = gguf.GGUFReader(str(path))
    weights, stored = {}, "float32"
    for tensor in reader.tensors:
        if tensor.name not in inverse:
            continue  # rope_freqs: not a model parameter
        key = inverse[tensor.name]
        if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w = np.array(tensor.data)  # numpy order, e.g. (out, in)
            if w.dtype == np.float16:
                stored = "float16" if stored == "float32" else stored
        else:
            w = dequantize(np.array(tensor.data), tensor.tensor_type)
            stored = quant_name(reader)
        heads = _heads_for(key, config) if permute else None
        if heads is not None:
            w = unpermute_qk(w, heads)
        weights[key] = mx.array(w)
    missing = set(inverse.values()) - set(weights)
    if missing:
        raise ExportError(f"the GGUF file lacks tensors: {sorted(missing)[:3]}.", path=str(path))
    return weights, stored


def load_gguf_model(path: Path, base_path: Path) -> Candidate:
    """An MLX model of the base architecture with the GGUF file's weights; a quantized file
    carries its type's tolerances against the f16 export."""
    config = json.loads((base_path / "config.json").read_text(encoding="utf-8"))
    model, _ = load_model(base_path, lazy=True)
    dequantize_all(model)
    names = [k for k, _ in tree_flatten(model.parameters())]
    weights, stored = read_gguf_weights(Path(path), config, names)
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return Candidate(model, stored, quantized=QUANT_TOLERANCES.get(stored))


def gguf_type(path: Path) -> str:
    """A GGUF file's general.type: "model", or "adapter" for a LoRA adapter file."""
    reader = _gguf().GGUFReader(str(path))
    return reader.fields["general.type"].contents() if "general.type" in reader.fields else "model"
