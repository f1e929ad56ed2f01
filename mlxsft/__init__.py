"""mlxsft: on-device supervised fine-tuning of LLMs with MLX.

The package is a headless library (config, data, model, train, eval, export);
the CLI (`mlxsft.cli`) and the Textual UI (`mlxsft.tui`) are thin clients of it.
Nothing under `mlxsft/` except `mlxsft.tui` imports textual or rich.
"""

__version__ = "0.1.0"
