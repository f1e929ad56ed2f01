"""Where an export goes: the target checks, and the stage-then-commit that makes it atomic.

Owns:
- `check_target`: an existing output is refused without --force, and with it anything
  mlxsft did not write (`is_export`: an earlier export has a parity report);
- `staged_output`: every artifact is written into a temp folder (or file) beside the
  target and swapped into place only when the block succeeds (after its parity check);
  on any error the temp path is removed and an existing target is untouched. The
  mechanism (temp names, fsync, atomic swap, leftovers of killed writers) is
  `mlxsft/safeio.py`'s; this module adds the export's policy and messages;
- `parity_path_for`: where an export's parity report lives (`OUT/parity.json` in a
  folder, `OUT.parity.json` beside a single file).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from ..safeio import (
    commit_staging,
    new_staging,
    remove_path,
    remove_stale_staging,
    require_creatable,
    write_guard,
)
from .errors import ExportError

PARITY_FILE = "parity.json"


def parity_path_for(path: Path, single_file: bool | None = None) -> Path:
    """The parity report of an export: inside a folder, beside a single file (default: as `path` is)."""
    path = Path(path)
    single_file = path.is_file() if single_file is None else single_file
    return path.with_name(path.name + ".parity.json") if single_file else path / PARITY_FILE


def is_export(path: Path) -> bool:
    """What --force may replace: an earlier export (it has a parity report) or an empty folder."""
    if path.is_file():
        return path.suffix == ".gguf" and path.with_name(path.name + ".parity.json").is_file()
    return path.is_dir() and (not any(path.iterdir()) or (path / PARITY_FILE).is_file())


def check_target(out: Path, force: bool, replaceable: Callable[[Path], bool] = is_export) -> None:
    """Refuse an existing output without --force, and with it anything mlxsft did not write."""
    if not out.exists() and not out.is_symlink():
        require_creatable(out, ExportError)
        return
    if not force:
        raise ExportError(
            "the output already exists; choose another --out, or pass --force to replace it.",
            path=str(out),
        )
    if out.is_symlink() or not replaceable(out):
        raise ExportError(
            "the output exists and does not look like an earlier mlxsft export, so --force "
            "will not replace it; remove it yourself or choose another --out.",
            path=str(out),
        )


@contextmanager
def staged_output(
    out: str | Path,
    force: bool = False,
    *,
    is_file: bool = False,
    replaceable: Callable[[Path], bool] = is_export,
):
    """Yield a temp path beside `out`; on success swap it into place, on any error remove it.

    The temp path carries this process's pid, so the next export to `out` removes what
    a killed one left (`remove_stale_staging`). A failed write (a full disk) is one
    `ExportError`; an existing `out` is untouched until the swap.
    """
    out = Path(out)
    check_target(out, force, replaceable)
    remove_stale_staging(out, "an interrupted export")
    with write_guard(out.parent, f"the export {out}", kept=_kept(out), error=ExportError):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = new_staging(out, is_file=is_file)
    try:
        # innermost around the writes: the guard measures free space before the cleanup below
        with write_guard(out.parent, f"the export {out}", kept=_kept(out), error=ExportError):
            yield tmp
            commit_staging(tmp, out)
    except BaseException:
        remove_path(tmp)
        raise


def _kept(out: Path) -> str:
    if out.exists():
        return f"The earlier export at {out} is untouched; nothing else was left behind."
    return "Nothing was left behind."


def write_json(path: Path, data: dict) -> None:
    """A JSON file inside a staging folder (the folder's commit makes it durable and atomic)."""
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
