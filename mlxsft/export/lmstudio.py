"""LM Studio export: the folder layout LM Studio lists, `<publisher>/<model>/<model>-<quant>.gguf`.

LM Studio finds models under its models folder (~/.lmstudio/models) two levels deep,
publisher then model, each model folder holding its GGUF files. The chat template
travels inside the GGUF (`tokenizer.chat_template`), which LM Studio reads. The
export writes that tree under --out (with parity.json at its root), ready to copy or
`lms import`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .mlx_adapter import resolve_source, staged_output

PUBLISHER = "mlxsft"


def model_name(run_path: Path) -> str:
    """A folder-safe model name from the run directory's name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_path.resolve().name).strip("-.") or "model"


def export_lmstudio(
    run_dir: str | Path,
    out: str | Path,
    *,
    checkpoint=None,
    quant: str | None = None,
    publisher: str = PUBLISHER,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """OUT/<publisher>/<model>/<model>-<quant>.gguf; returns the GGUF's path."""
    from .gguf import export_gguf, quant_for

    source = resolve_source(run_dir, checkpoint)
    name = model_name(source.run.path)
    rel = Path(publisher) / name / f"{name}-{quant_for(None, quant).upper()}.gguf"
    with staged_output(Path(out), force) as tmp:
        (tmp / rel.parent).mkdir(parents=True)
        gguf_path = export_gguf(run_dir, tmp / rel, checkpoint=checkpoint, quant=quant, verify=verify)
        parity = gguf_path.with_name(gguf_path.name + ".parity.json")
        shutil.move(parity, tmp / "parity.json")  # LM Studio lists every file in the model folder
    print(f"LM Studio: copy {out}/{publisher} into ~/.lmstudio/models/ (or `lms import {Path(out) / rel}`)")
    return Path(out) / rel
