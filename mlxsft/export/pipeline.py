"""One exporter: every format goes through `export_run`, and a format is only what differs.

    resolve source -> format's plan (refuse early) -> check target -> reference
      -> stage -> format's write -> format's load + parity -> commit

A format (`Format`, a Protocol: no base class) has a `name`, says whether it writes one
file or a folder, and provides `plan`, `reference`, `write` and `load`. `export_run`
owns the rest, the same for all: an existing output is refused unless --force (and then
only an earlier export is replaced), the artifact is written into a temp path beside
the output, read back and compared with the reference, and swapped into place only
when the comparison passed. A failed check or any error removes the temp path and
leaves an existing output untouched.

The parity report goes inside a folder (`parity.json`, and any further names the
format lists) or beside a single file (`OUT.parity.json`, renamed into place just
after the file).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .errors import ExportError
from .parity import Candidate, ReferenceLogits, check_artifact, skipped_report
from .source import AdapterSource, resolve_source
from .staging import check_target, parity_path_for, staged_output

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


@dataclass(frozen=True)
class ExportOptions:
    """The per-format knobs of `mlxsft export`/`fuse`; each format reads the ones it has."""

    dtype: str | None = None  # hf, fused: weight dtype; gguf: float32/float16
    quant: str | None = None  # gguf, ollama, lmstudio: llama.cpp quantization
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES  # hf
    dequantize: bool = False  # fused
    publisher: str = "mlxsft"  # lmstudio


@dataclass
class Job:
    """One export in progress: its source, target and options, and what the format worked out."""

    source: AdapterSource
    out: Path
    options: ExportOptions = field(default_factory=ExportOptions)
    state: dict = field(default_factory=dict)  # a format's findings from plan() for its later steps


class Format(Protocol):
    name: str  # the --format value
    single_file: bool  # writes one file (parity report beside it) instead of a folder
    parity_names: tuple[str, ...]  # a folder's parity report file names (the first is the report)

    def plan(self, job: Job) -> str:
        """Refuse what this format cannot write (nothing is touched yet); return the line announcing it."""
        ...

    def reference(self, job: Job) -> ReferenceLogits:
        """The logits the artifact must reproduce."""
        ...

    def write(self, job: Job, path: Path) -> str:
        """Write the artifact at `path` (a temp file or folder); return the line saying what was written."""
        ...

    def load(self, path: Path, source: AdapterSource) -> Candidate:
        """The artifact at `path` read back into MLX, for the parity check."""
        ...


def export_run(
    fmt: Format,
    run_dir: str | Path,
    out: str | Path,
    *,
    checkpoint=None,
    force: bool = False,
    verify: bool = True,
    options: ExportOptions | None = None,
) -> Path:
    """Export the run's adapter (at `checkpoint`) as `fmt` at `out`; see the module docstring."""
    out = Path(out)
    job = Job(resolve_source(run_dir, checkpoint), out, options or ExportOptions())
    announce = fmt.plan(job)
    check_target(out, force)
    if announce:
        print(announce)
    reference = fmt.reference(job) if verify else None
    parity_final = parity_path_for(out, fmt.single_file)
    parity_tmp = parity_final.with_name(f".{parity_final.name}.tmp")  # single file: committed after it
    try:
        with staged_output(out, force, is_file=fmt.single_file) as tmp:
            done = fmt.write(job, tmp)
            first, *copies = [parity_tmp] if fmt.single_file else [tmp / n for n in fmt.parity_names]
            _check(fmt, job, reference, tmp, first)
            for copy in copies:
                shutil.copyfile(first, copy)
        if fmt.single_file:
            os.replace(parity_tmp, parity_final)
    finally:
        parity_tmp.unlink(missing_ok=True)
    print(done)
    return out


def _check(fmt: Format, job: Job, reference: ReferenceLogits | None, path: Path, parity_path: Path) -> None:
    """Write the parity report of the staged artifact; raise when it does not match."""
    if reference is None:
        skipped_report(fmt.name, job.source).write(parity_path)
        return
    report = check_artifact(
        reference, fmt.load(path, job.source), fmt=fmt.name, source=job.source, parity_path=parity_path
    )
    if not report.passed:
        raise ExportError(f"{report.failure()} Nothing was written.")
