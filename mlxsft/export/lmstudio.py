"""LM Studio export: the folder layout LM Studio lists, `<publisher>/<model>/<model>-<quant>.gguf`.

LM Studio finds models under its models folder (~/.lmstudio/models) two levels deep,
publisher then model, each model folder holding its GGUF files. The chat template
travels inside the GGUF (`tokenizer.chat_template`), which LM Studio reads. The
export writes that tree under --out (with parity.json at its root), ready to copy or
`lms import`.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ExportError
from .gguf import GGUF, quant_for
from .parity import Candidate, ReferenceLogits
from .pipeline import ExportOptions, Job, export_run
from .source import AdapterSource
from .staging import PARITY_FILE

PUBLISHER = "mlxsft"


def model_name(run_path: Path) -> str:
    """A folder-safe model name from the run directory's name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_path.resolve().name).strip("-.") or "model"


def gguf_path(run_path: Path, publisher: str, quant: str) -> Path:
    """`<publisher>/<model>/<model>-<QUANT>.gguf`, relative to the export folder."""
    name = model_name(run_path)
    return Path(publisher) / name / f"{name}-{quant.upper()}.gguf"


class LmStudioFormat:
    """The GGUF (`GgufFormat`, whose parity it shares) in LM Studio's folder layout."""

    name = "lmstudio"
    single_file = False
    parity_names = (PARITY_FILE,)  # at the root: LM Studio lists every file in the model folder

    def plan(self, job: Job) -> str:
        announce = GGUF.plan(job)
        job.state["rel"] = gguf_path(job.source.run.path, job.options.publisher, quant_for(None, job.options.quant))
        return announce

    def reference(self, job: Job) -> ReferenceLogits:
        return GGUF.reference(job)

    def write(self, job: Job, path: Path) -> str:
        rel = job.state["rel"]
        (path / rel.parent).mkdir(parents=True)
        GGUF.write(job, path / rel)
        out, publisher = job.out, job.options.publisher
        return f"LM Studio: copy {out}/{publisher} into ~/.lmstudio/models/ (or `lms import {out / rel}`)"

    def load(self, path: Path, source: AdapterSource) -> Candidate:
        found = sorted(path.glob("*/*/*.gguf"))
        if len(found) != 1:
            raise ExportError("not an LM Studio export: expected one publisher/model/*.gguf.", path=str(path))
        return GGUF.load(found[0], source)


LMSTUDIO = LmStudioFormat()


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
    options = ExportOptions(quant=quant, publisher=publisher)
    out = export_run(LMSTUDIO, run_dir, out, checkpoint=checkpoint, force=force, verify=verify, options=options)
    return out / gguf_path(Path(run_dir), publisher, quant_for(None, quant))
