"""Dev check (not a test): load mlxsft's GGUF exports in real llama.cpp and compare logits with MLX.

Two steps in two processes, so llama.cpp's libraries never share a process with MLX:

    PYTHONPATH=$PWD python scripts/check_gguf_in_llamacpp.py make /tmp/llc     # MLX: runs, exports, logits
    LD_PRELOAD=/tmp/shim/libshim.so PYTHONPATH=/tmp/lcc LLAMA_CPP_BACKEND=cpu \\
        python scripts/check_gguf_in_llamacpp.py check /tmp/llc              # llama.cpp: load, compare

llama.cpp comes prebuilt from the `llama-cpp-cffi` wheel (0.4.42, CPU library, cffi bindings of
the C API), installed aside: `pip download llama-cpp-cffi --no-deps --only-binary=:all: -d W;
pip install --no-deps --target /tmp/lcc W/*.whl`. Its library wants GCC 14's libstdc++ symbol
`__cxa_call_terminate`; on Debian 12 a two-line shim provides it (see SHIM below; build with
`g++ -shared -fPIC -o libshim.so shim.cc`). That llama.cpp predates qwen3, so qwen3 is not covered.

Cases: Llama-style (BPE, ChatML) and Qwen2-style (BPE, Llama-3 template) 256-wide tiny models,
a SentencePiece Llama and a Phi-3 on the SentencePiece vocabulary. For each: the merged model
at f16 and each --quant, and the unmodified base GGUF plus the LoRA adapter GGUF, against the
trained adapter's logits in MLX (teacher-forced on the parity probe prompts, same token ids).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

SHIM = """#include <exception>
extern "C" void* __cxa_begin_catch(void*) noexcept;
extern "C" [[noreturn]] void __cxa_call_terminate(void* ue) noexcept {
  if (ue) __cxa_begin_catch(ue);
  std::terminate();
}
"""
QUANTS = ("f16", "q8_0", "q4_k_m", "q4_0")
PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|endoftext|>"]


# ---------------------------------------------------------------- MLX side


def _sentencepiece(base: Path, root: Path, corpus: list[str]) -> Path:
    import sentencepiece as sp

    out = root / "spm-base"
    shutil.copytree(base, out)
    (root / "corpus.txt").write_text("\n".join(corpus))
    sp.SentencePieceTrainer.train(
        input=str(root / "corpus.txt"),
        model_prefix=str(root / "sp"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        user_defined_symbols=SPECIAL,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    shutil.copyfile(root / "sp.model", out / "tokenizer.model")
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (out / name).unlink(missing_ok=True)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("added_tokens_decoder", "tokenizer_class")}
    config |= {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "legacy": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def _phi3(base: Path, root: Path) -> Path:
    from safetensors.numpy import load_file, save_file

    out = root / "phi3-base"
    shutil.copytree(base, out)
    config = json.loads((out / "config.json").read_text())
    config |= {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "sliding_window": 1024}
    (out / "config.json").write_text(json.dumps(config))
    w = load_file(str(out / "model.safetensors"))
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.qkv_proj.weight"] = np.concatenate([w.pop(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        w[p + "mlp.gate_up_proj.weight"] = np.concatenate(
            [w.pop(p + "mlp.gate_proj.weight"), w.pop(p + "mlp.up_proj.weight")]
        )
    save_file(w, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def make(root: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transformers import AutoTokenizer

    from mlxsft.devmodel import TinyModelSpec, build_tiny_model
    from mlxsft.export import export_gguf, export_gguf_lora
    from mlxsft.export.parity import trained_reference
    from mlxsft.export.source import resolve_source
    from tests.conftest import quickstart_corpus
    from tests.export_fixtures import make_run

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    corpus = quickstart_corpus()
    wide = dict(hidden_size=256, intermediate_size=512)  # K-quant rows
    llama = build_tiny_model(root / "llama-base", TinyModelSpec(**wide), corpus=corpus)
    qwen = build_tiny_model(root / "qwen2-base", TinyModelSpec("qwen2", "llama3", **wide), corpus=corpus)
    spm = _sentencepiece(llama, root, corpus)
    bases = {
        "llama": (llama, None),
        "qwen2": (qwen, None),
        "spm-llama": (spm, None),
        "phi3": (_phi3(spm, root), PHI3_TARGETS),
    }
    cases = {}
    for name, (base, targets) in bases.items():
        run = make_run(root / f"{name}-run", base, steps=(1,), targets=targets)
        zero = make_run(root / f"{name}-zero", base, steps=(1,), lora_b_std=0.0, targets=targets)  # = the base
        files = {q: str(export_gguf(run, root / f"{name}-{q}.gguf", quant=q)) for q in QUANTS}
        files["base"] = str(export_gguf(zero, root / f"{name}-base.gguf", quant="f16"))
        files["lora"] = str(export_gguf_lora(run, root / f"{name}-lora.gguf"))
        ref = trained_reference(resolve_source(run))
        np.savez(root / f"{name}.npz", *ref.logits)
        text = "Hello world, the quick brown fox!"
        cases[name] = {
            "files": files,
            "prompts": ref.prompts,
            "text": text,
            "hf_ids": AutoTokenizer.from_pretrained(str(base)).encode(text),
        }
    (root / "cases.json").write_text(json.dumps(cases))


# ---------------------------------------------------------------- llama.cpp side


def check(root: Path) -> None:
    from llama._llama_cpp_cpu import ffi, lib

    lib.llama_backend_init()

    def load(path: str):
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        return lib.llama_model_load_from_file(path.encode(), params)

    def logits(model, ids, lora=None) -> np.ndarray:
        params = lib.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = 256
        params.n_threads = params.n_threads_batch = 1
        ctx = lib.llama_init_from_model(model, params)
        if lora is not None:
            assert lib.llama_set_adapter_lora(ctx, lora, 1.0) == 0
        batch = lib.llama_batch_init(len(ids), 0, 1)
        for i, t in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(ids)
        assert lib.llama_decode(ctx, batch) == 0
        n = lib.llama_n_vocab(lib.llama_model_get_vocab(model))
        out = np.stack(
            [
                np.frombuffer(ffi.buffer(lib.llama_get_logits_ith(ctx, i), 4 * n), np.float32).copy()
                for i in range(len(ids))
            ]
        )
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)
        return out

    def report(name: str, ref, got) -> None:
        r, c = np.concatenate(ref), np.concatenate(got)
        d = np.abs(r - c)
        print(
            f"  {name:26s} max|Δlogit| {d.max():.2e} (rel {d.max() / np.abs(r).max():.2e}), "
            f"greedy agreement {np.mean(r.argmax(-1) == c.argmax(-1)):.1%} over {len(r)} tokens"
        )

    for name, case in json.loads((root / "cases.json").read_text()).items():
        z = np.load(root / f"{name}.npz")
        trained = [z[f"arr_{i}"] for i in range(len(z.files))]
        print(name)
        for q in QUANTS:
            model = load(case["files"][q])
            if model == ffi.NULL:
                print(f"  {q}: llama.cpp could not load it")
                continue
            report(f"{q} vs trained", trained, [logits(model, p) for p in case["prompts"]])
            if q == "f16":
                buf = ffi.new("llama_token[]", 256)
                text = case["text"].encode()
                n = lib.llama_tokenize(lib.llama_model_get_vocab(model), text, len(text), buf, 256, True, True)
                print(f"  tokenizer: same ids as transformers: {[buf[i] for i in range(n)] == case['hf_ids']}")
            lib.llama_model_free(model)
        base = load(case["files"]["base"])
        adapter = lib.llama_adapter_lora_init(base, case["files"]["lora"].encode())
        assert adapter != ffi.NULL
        report("base f16 + LoRA GGUF", trained, [logits(base, p, adapter) for p in case["prompts"]])
        report("base f16 alone", trained, [logits(base, p) for p in case["prompts"]])


if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]](Path(sys.argv[2]))
