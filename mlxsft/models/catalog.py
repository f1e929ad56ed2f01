"""The curated catalog of base models (`models/catalog.yaml`): load, validate, look up.

The catalog is data kept apart from the code: one YAML file listing hub ids with their
architecture, size, license and recommended LoRA targets. `load_catalog()` finds it in
the store (`models/catalog.yaml` by default), falling back to the copy in a source
checkout, and checks every entry so a typo is an error with a line number, not a
surprise in the TUI.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ModelError
from ..store import store_root

CATALOG_FILE = "catalog.yaml"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REPO_CATALOG = Path(__file__).resolve().parents[2] / "models" / CATALOG_FILE


@dataclass(frozen=True)
class CatalogEntry:
    """One base model of the catalog."""

    id: str  # hub id, owner/name
    family: str
    model_type: str  # config.json model_type
    params_b: float  # parameters in billions
    license: str
    gated: bool
    lora_targets: tuple[str, ...]
    note: str = ""

    @property
    def name(self) -> str:
        """The folder name in the store: the repo part of the hub id."""
        return self.id.split("/", 1)[1]


# field -> (python types accepted, required)
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": ((str,), True),
    "family": ((str,), True),
    "model_type": ((str,), True),
    "params_b": ((int, float), True),
    "license": ((str,), True),
    "gated": ((bool,), True),
    "lora_targets": ((list,), True),
    "note": ((str,), False),
}


def catalog_path(store: str | Path | None = None) -> Path:
    """The catalog file: `<store>/catalog.yaml`, else the one in this source checkout."""
    candidate = store_root(store) / CATALOG_FILE
    if candidate.is_file():
        return candidate
    if _REPO_CATALOG.is_file():
        return _REPO_CATALOG
    raise ModelError(
        f"no model catalog found (looked for {candidate} and {_REPO_CATALOG}); "
        "pass --store DIR pointing at a folder with catalog.yaml.",
    )


def _entry_lines(text: str) -> list[int]:
    """1-based line of each item under `models:`, for error messages."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if key.value == "models" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _check_entry(raw, path: str, line: int | None) -> CatalogEntry:
    if not isinstance(raw, dict):
        raise ModelError("each catalog entry must be a mapping (id:, family:, ...).", path=path, line=line)
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ModelError(
            f"unknown catalog field(s) {unknown}; known: {', '.join(_FIELDS)}.",
            path=path,
            line=line,
        )
    for key, (types, required) in _FIELDS.items():
        if key not in raw:
            if required:
                raise ModelError(f"catalog entry is missing '{key}'.", path=path, line=line)
            continue
        value = raw[key]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in types)
            raise ModelError(f"catalog field '{key}' must be {names}, got {value!r}.", path=path, line=line)
    if not HUB_ID.match(raw["id"]):
        raise ModelError(f"catalog id {raw['id']!r} is not a hub id like owner/name.", path=path, line=line)
    targets = raw["lora_targets"]
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ModelError(
            "catalog field 'lora_targets' must be a non-empty list of module names.",
            path=path,
            line=line,
        )
    return CatalogEntry(
        id=raw["id"],
        family=raw["family"],
        model_type=raw["model_type"],
        params_b=float(raw["params_b"]),
        license=raw["license"],
        gated=raw["gated"],
        lora_targets=tuple(targets),
        note=raw.get("note", ""),
    )


def load_catalog(path: str | Path | None = None, *, store: str | Path | None = None) -> list[CatalogEntry]:
    """The catalog's entries, checked; `path` overrides where the file is read from."""
    file = Path(path) if path is not None else catalog_path(store)
    try:
        text = file.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
        lines = _entry_lines(text)
    except OSError as exc:
        raise ModelError(f"cannot read the catalog ({exc.strerror}).", path=str(file)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ModelError(
            f"invalid YAML: {getattr(exc, 'problem', exc)}.",
            path=str(file),
            line=mark.line + 1 if mark else None,
        ) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise ModelError("the catalog must have a top-level 'models:' list.", path=str(file))
    entries, seen = [], {}
    for i, item in enumerate(raw["models"]):
        line = lines[i] if i < len(lines) else None
        entry = _check_entry(item, str(file), line)
        if entry.id.lower() in seen:
            raise ModelError(
                f"'{entry.id}' is listed twice (first at line {seen[entry.id.lower()]}).",
                path=str(file),
                line=line,
            )
        seen[entry.id.lower()] = line
        entries.append(entry)
    return entries


def find_entry(hub_id: str, entries: list[CatalogEntry] | None = None) -> CatalogEntry | None:
    """The catalog entry for a hub id (case-insensitive), or None."""
    entries = load_catalog() if entries is None else entries
    wanted = hub_id.lower()
    return next((e for e in entries if e.id.lower() == wanted), None)


def mlx_lm_module(model_type: str) -> str:
    """The mlx-lm module that implements `model_type` (after mlx-lm's own renames)."""
    from mlx_lm.utils import MODEL_REMAPPING

    return f"mlx_lm.models.{MODEL_REMAPPING.get(model_type, model_type)}"


def supported_by_mlx_lm(model_type: str) -> bool:
    """Whether the installed mlx-lm has an architecture for `model_type`."""
    try:
        importlib.import_module(mlx_lm_module(model_type))
    except ImportError:
        return False
    return True
