"""The local model store: a curated catalog, hub pulls, quantized copies, model facts, fit.

`models/` (or `--store DIR`, or `$MLXSFT_MODELS`) holds one folder per base model plus
`catalog.yaml`. One job per module:

- `catalog`: the curated base models (`load_catalog()`), for the CLI, recipes and the TUI.
- `pull`: download (safetensors, config, tokenizer only) into a temp folder, then rename.
- `quantize`: a quantized copy of a stored model through mlx-lm's converter.
- `info`: architecture, parameters, dtype, quantization, chat template, LoRA targets.
- `fit` (estimate), `measure` (this machine, dry runs), `report` (the verdict).
- `commands`: the `mlxsft models ...` subcommands.

The store itself (`mlxsft.store`: where it is, what is in it, where each folder came
from) and the hub (`mlxsft.hub`: settings, listing, errors in plain words) sit a floor
below, because `mlxsft.model` resolves hub ids through them. Loading a base for
training stays in `mlxsft.model`; this package calls it.
"""

from .catalog import CatalogEntry, find_entry, load_catalog

__all__ = ["CatalogEntry", "find_entry", "load_catalog"]
