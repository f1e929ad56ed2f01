"""Export side of mlxsft: a trained run -> artifacts other tools load, each checked for parity.

    fuse_run(run, out, dequantize=False)        merged MLX model (mlxsft fuse)
    export_peft(run, out)                       PEFT adapter folder
    export_hf(run, out, dtype="bfloat16")       merged Hugging Face model
    export_gguf(run, out, quant="q4_k_m")       GGUF file for llama.cpp (f32, f16, q8_0, q4_0, q4_k_m)
    export_gguf_lora(run, out)                  llama.cpp LoRA adapter GGUF (--lora)
    export_ollama(run, out, quant=)             GGUF + Modelfile folder
    export_lmstudio(run, out, quant=)           LM Studio publisher/model/ folder
    push(run_or_export, repo)                   upload to the Hugging Face hub with a model card
    export_mlx_adapter(run, out)                mlx-lm adapter folder
    verify_export(export, against=run)          parity of any export vs the trained adapter
    import_peft_adapter(peft_dir, out, base=)   a PEFT adapter as a run

Every export goes through one pipeline (`pipeline.export_run`): resolve the run's
adapter (`checkpoint=`: a step, "best", or None for the chosen/latest one), refuse an
existing output unless `force=True` (and then replace only an earlier export), compute
the reference, write into a temp path beside the output, read it back and compare, and
swap it into place only after the parity check passed. A format (`pipeline.Format`) is
a name, a `write` and a `load`, plus its `plan` and `reference`; `registry.FORMATS`
lists them, and `verify` dispatches through it. Problems raise `ExportError`.

Modules: errors; source (which adapter a run provides, loaded in MLX); staging (target
checks, stage and commit over mlxsft/safeio.py); parity (reference logits, comparison,
reports); pipeline (`Format`, `export_run`); the formats mlx_adapter, peft (writing and
reading PEFT), merged (hf, fused), gguf, gguf_quant (quantization types and bytes),
gguf_lora, ollama, lmstudio; registry; verify; keymap (mlx-lm <-> PEFT tensor names);
safetensors_info; side_files; import_adapter; push; commands (CLI handlers).
"""

# Names resolve on first use, so `mlxsft --help` (which imports .commands) stays light.
_EXPORTS = {
    "AdapterSource": "source",
    "ExportError": "errors",
    "ExportOptions": "pipeline",
    "FORMATS": "registry",
    "Format": "pipeline",
    "ParityReport": "parity",
    "export_gguf": "gguf",
    "export_gguf_lora": "gguf_lora",
    "export_lmstudio": "lmstudio",
    "export_ollama": "ollama",
    "export_hf": "merged",
    "export_mlx_adapter": "mlx_adapter",
    "export_peft": "peft",
    "fuse_run": "merged",
    "export_run": "pipeline",
    "import_peft_adapter": "import_adapter",
    "load_trained": "source",
    "mlx_to_peft": "keymap",
    "peft_to_mlx": "keymap",
    "push": "push",
    "read_peft_adapter": "peft",
    "resolve_source": "source",
    "trained_reference": "parity",
    "verify_export": "verify",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlxsft.export' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
