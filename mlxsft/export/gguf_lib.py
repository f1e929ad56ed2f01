"""The `gguf` package (llama.cpp's own reader and writer), imported on first use.

It is an optional dependency that only GGUF exports need, so importing the export wing
must not require it; a missing package is one ExportError saying how to install it.
"""

from __future__ import annotations

from .errors import ExportError


def gguf_module():
    try:
        import gguf  # optional: only GGUF exports need it
    except ImportError:
        raise ExportError("GGUF export needs the `gguf` package: pip install gguf") from None
    return gguf
