"""The local model store: its root, the model folders in it, and where each came from.

Layout of the store (default `models/` under the current directory; `--store DIR` or
`MLXSFT_MODELS` moves it):

    models/catalog.yaml              the curated catalog (committed)
    models/NAME/                     a complete model folder (config, safetensors, tokenizer)
    models/NAME/.mlxsft-source.json  provenance: hub id, commit, quantization, when pulled
    models/.partial-NAME/            a download in progress; renamed to NAME when complete

Only folders that hold a `config.json` count as models; hidden folders are never listed
as models, so a half-finished download can never be picked for training.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .safeio import atomic_write_text

DEFAULT_STORE = "models"
STORE_ENV = "MLXSFT_MODELS"
SOURCE_FILE = ".mlxsft-source.json"
PARTIAL_PREFIX = ".partial-"


def store_root(store: str | Path | None = None) -> Path:
    """The store folder: `store` if given, else $MLXSFT_MODELS, else ./models."""
    chosen = store if store is not None else os.environ.get(STORE_ENV) or DEFAULT_STORE
    return Path(chosen).expanduser()


def folder_name(hub_id: str, bits: int | None = None) -> str:
    """Store folder name for a hub id: its repo part, plus `-4bit` for a quantized copy."""
    name = hub_id.rstrip("/").split("/")[-1]
    return f"{name}-{bits}bit" if bits else name


def partial_dir(root: Path, name: str) -> Path:
    return root / f"{PARTIAL_PREFIX}{name}"


def folder_size(path: Path) -> int:
    """Bytes of all files under `path` (symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(dirpath) / name).lstat().st_size
            except OSError:
                continue  # vanished while walking: a concurrent download moved it
    return total


def read_source(path: Path) -> dict:
    """The provenance record of a model folder ({} when absent or unreadable)."""
    try:
        data = json.loads((path / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_source(path: Path, record: dict) -> None:
    atomic_write_text(path / SOURCE_FILE, json.dumps(record, indent=2) + "\n")


@dataclass(frozen=True)
class LocalModel:
    """A model folder in the store."""

    name: str
    path: Path
    size_bytes: int
    hub_id: str | None  # from provenance, when it was pulled
    model_type: str | None
    bits: int | None  # quantization bits, when quantized


def read_config(path: Path) -> dict:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except OSError:
        raise ModelError(
            "this folder has no readable config.json, so it is not a model folder.", path=str(path)
        ) from None
    except ValueError as exc:
        raise ModelError(f"config.json is not valid JSON ({exc}).", path=str(path / "config.json")) from None
    if not isinstance(config, dict):
        raise ModelError("config.json must hold a JSON object.", path=str(path / "config.json"))
    return config


def quantization_bits(config: dict) -> int | None:
    q = config.get("quantization") or config.get("quantization_config") or {}
    bits = q.get("bits") if isinstance(q, dict) else None
    return int(bits) if isinstance(bits, (int, float)) else None


def describe_folder(path: Path) -> LocalModel:
    config = read_config(path)
    return LocalModel(
        name=path.name,
        path=path,
        size_bytes=folder_size(path),
        hub_id=read_source(path).get("hub_id"),
        model_type=config.get("model_type"),
        bits=quantization_bits(config),
    )


def list_local(root: Path) -> list[LocalModel]:
    """Model folders in the store, by name (unreadable configs skipped)."""
    if not root.is_dir():
        return []
    found = []
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir() or not (child / "config.json").is_file():
            continue
        try:
            found.append(describe_folder(child))
        except ModelError:
            continue  # a broken folder is reported by `models info`, not by the listing
    return found


def list_partial(root: Path) -> list[Path]:
    """Unfinished downloads (`.partial-NAME` folders)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PARTIAL_PREFIX))


def find_local(root: Path, hub_id: str, bits: int | None = None) -> LocalModel | None:
    """The stored folder for a hub id (by provenance, else by folder name), or None."""
    wanted = hub_id.lower()
    models = list_local(root)
    for model in models:
        if model.hub_id and model.hub_id.lower() == wanted and model.bits == bits:
            return model
    name = folder_name(hub_id, bits).lower()
    return next((m for m in models if m.name.lower() == name and m.hub_id is None), None)


def resolve_local(spec: str, root: Path) -> Path:
    """A model folder from a path, a name in the store, or a hub id already pulled."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError("expected a model folder, found a file.", path=spec)
    in_store = root / spec
    if "/" not in spec.strip("/") and in_store.is_dir():
        return in_store
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        local = find_local(root, spec)
        if local is not None:
            return local.path
        raise ModelError(f"'{spec}' is not in the store ({root}); fetch it with `mlxsft models pull {spec}`.")
    raise ModelError(
        f"model folder not found (nor as a name in the store {root}); see `mlxsft models list`.",
        path=spec,
    )


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disks are sold)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
