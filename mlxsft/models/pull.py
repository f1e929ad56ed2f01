"""Pull a base model from the Hugging Face hub into the store, safely and resumably.

What is fetched: safetensors weights (`model*.safetensors`, the names mlx-lm loads), JSON
configs, tokenizer and chat-template files. Never Python code (no remote code) and never
pickle `.bin` weights unless the user asks (`allow_bin`).

How: files land in `<store>/.partial-NAME` through `huggingface_hub.snapshot_download`
(local_dir mode, pinned to one commit), and only a complete, checked folder is renamed to
`<store>/NAME`; nothing else in the store is touched. An interrupted pull leaves the
partial folder: within a run huggingface_hub retries a dropped connection with an HTTP
Range request from the last whole chunk it wrote, and the next run skips every file that
finished, so running the same command again resumes.
"""

from __future__ import annotations

import fnmatch
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..hub import (
    HubSettings,
    RemoteFile,
    download,
    free_bytes,
    gated_message,
    have_token,
    hub_error,
    list_remote,
)
from ..model import check_model_dir
from ..safeio import commit_staging
from ..store import (
    SOURCE_FILE,
    find_local,
    folder_name,
    folder_size,
    human_bytes,
    partial_dir,
    read_config,
    read_source,
    write_source,
)
from .catalog import HUB_ID, supported_by_mlx_lm
from .quantize import quantize_into_store

WEIGHT_PATTERNS = ["model*.safetensors"]
SUPPORT_PATTERNS = ["*.json", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jinja"]
BIN_PATTERNS = ["pytorch_model*.bin"]
DISK_MARGIN_BYTES = 64 * 2**20  # metadata, temp files, room for the filesystem itself


@dataclass(frozen=True)
class PullResult:
    hub_id: str
    path: Path
    already_present: bool
    size_bytes: int
    quantized_path: Path | None = None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def check_hub_id(hub_id: str) -> None:
    if not HUB_ID.match(hub_id):
        raise ModelError(
            f"'{hub_id}' is not a hub id; give one like Qwen/Qwen2.5-0.5B-Instruct (see `mlxsft models list`)."
        )


def select_files(files: list[RemoteFile], hub_id: str, allow_bin: bool) -> list[RemoteFile]:
    """The files to fetch, or a ModelError saying why this repo is not a usable base model."""
    names = [f.name for f in files]
    if "config.json" not in names:
        raise ModelError(
            f"'{hub_id}' has no config.json, so it is not a Transformers model "
            "repo (GGUF-only, adapter-only or a dataset?)."
        )
    has_bin = any(_matches(n, BIN_PATTERNS) for n in names)
    if not any(_matches(n, WEIGHT_PATTERNS) for n in names):
        if not has_bin:
            raise ModelError(f"'{hub_id}' has no model*.safetensors weights that mlx-lm can load.")
        if not allow_bin:
            raise ModelError(
                f"'{hub_id}' has only PyTorch .bin weights (pickle files, which mlxsft does not "
                "load). Pick a repo with safetensors weights, or pass --allow-bin to download "
                "them anyway (then convert them to safetensors yourself)."
            )
    patterns = WEIGHT_PATTERNS + SUPPORT_PATTERNS + (BIN_PATTERNS if allow_bin else [])
    return [f for f in files if _matches(f.name, patterns)]


def _remaining_bytes(files: list[RemoteFile], partial: Path) -> int:
    """Bytes still to download (files already complete in the partial folder excluded)."""

    def done(f: RemoteFile) -> bool:
        local = partial / f.name
        return local.is_file() and local.stat().st_size == f.size

    return sum(f.size for f in files if f.size is not None and not done(f))


def check_disk(needed: int, root: Path) -> None:
    free = free_bytes(root)
    if needed + DISK_MARGIN_BYTES > free:
        raise ModelError(
            f"not enough disk space: this needs {human_bytes(needed)} and {root} has "
            f"{human_bytes(free)} free. Free some space, or pull into a store on another disk "
            "with --store DIR."
        )


def _fetch(hub_id: str, commit: str, partial: Path, names: list[str], hub: HubSettings) -> None:
    """Download `names` of the repo at `commit` into `partial` (finished files are skipped)."""
    download(hub_id, hub, names, revision=commit, local_dir=partial)


def _check_architecture(partial: Path, hub_id: str) -> None:
    config = read_config(partial)
    model_type = config.get("model_type")
    if model_type and supported_by_mlx_lm(str(model_type)):
        return
    import mlx_lm

    needs_code = bool(config.get("auto_map"))
    remote = " (it needs its own Python code, which mlxsft never runs)" if needs_code else ""
    raise ModelError(
        f"'{hub_id}' has model_type {model_type!r}, which mlx-lm "
        f"{mlx_lm.__version__} cannot build{remote}; pick another model."
    )


def _drop_if_empty(partial: Path) -> None:
    """Remove a partial folder that holds no downloaded file (only our marker, hub metadata)."""
    if partial.is_dir() and all(p.name in (SOURCE_FILE, ".cache") for p in partial.iterdir()):
        shutil.rmtree(partial, ignore_errors=True)


def _present(dest: Path, hub_id: str, root: Path) -> PullResult | None:
    """The stored copy of hub_id (None when absent); an error on a name clash."""
    if not dest.exists():
        other = find_local(root, hub_id)
        return PullResult(hub_id, other.path, True, other.size_bytes) if other else None
    source = read_source(dest).get("hub_id")
    if source is not None and source.lower() != hub_id.lower():
        raise ModelError(f"{dest} already holds '{source}'; pull '{hub_id}' under another name with --name.")
    try:
        check_model_dir(dest)
    except ModelError as exc:
        raise ModelError(
            f"{dest} exists but is not a complete model folder ({exc}). Move it away (or use --name) and pull again."
        ) from None
    return PullResult(hub_id, dest, True, folder_size(dest))


def _plan(hub_id, revision, allow_bin, hub, root, partial, quantize_bits):
    """(commit, files to fetch, their bytes), after the checks that need no download."""
    repo = list_remote(hub_id, revision, hub)
    wanted = select_files(repo.files, hub_id, allow_bin)
    if repo.gated and not have_token():
        raise ModelError(gated_message(hub_id, hub))
    total = sum(f.size or 0 for f in wanted)
    quantized = total * quantize_bits // 16 if quantize_bits else 0  # the copy, roughly
    check_disk(_remaining_bytes(wanted, partial) + quantized, root)
    return repo.commit, wanted, total


def _download(
    hub_id: str,
    root: Path,
    name: str,
    revision: str | None,
    allow_bin: bool,
    hub: HubSettings,
    quantize_bits: int | None,
) -> PullResult:
    if hub.offline:
        raise ModelError(
            f"'{hub_id}' is not in the store ({root}) and HF_HUB_OFFLINE is set, so "
            "it cannot be downloaded. Pick a local model (`mlxsft models list`)."
        )
    partial = partial_dir(root, name)
    created, start = not partial.exists(), time.monotonic()
    if not created:
        _say(f"Resuming the unfinished download in {partial} (files that finished are kept).")
    try:
        commit, wanted, total = _plan(hub_id, revision, allow_bin, hub, root, partial, quantize_bits)
        partial.mkdir(parents=True, exist_ok=True)
        write_source(partial, {"hub_id": hub_id, "status": "downloading"})  # for `models list`
        _say(f"Pulling {hub_id} ({len(wanted)} files, {human_bytes(total)}) into {partial} ...")
        # config first: an architecture mlx-lm cannot build fails before gigabytes move
        _fetch(hub_id, commit, partial, ["config.json"], hub)
        _check_architecture(partial, hub_id)
        _fetch(hub_id, commit, partial, [f.name for f in wanted], hub)
    except ModelError:
        if created:
            shutil.rmtree(partial, ignore_errors=True)  # nothing worth keeping was fetched
        raise
    except KeyboardInterrupt:
        _say(f"Interrupted; finished files are kept in {partial}. Run the same command to resume.")
        raise
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types; one message each
        if created:
            _drop_if_empty(partial)
        raise hub_error(exc, hub_id, hub, partial) from None
    dest = root / name
    _finish(
        partial,
        dest,
        allow_bin,
        {
            "hub_id": hub_id,
            "revision": revision or "main",
            "commit": commit,
            "files": sorted(f.name for f in wanted),
            "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    size = folder_size(dest)
    _say(f"Pulled {hub_id} into {dest} ({human_bytes(size)} in {time.monotonic() - start:.0f} s).")
    return PullResult(hub_id, dest, False, size)


def _finish(partial: Path, dest: Path, allow_bin: bool, record: dict) -> None:
    """Check the folder, drop the download metadata, write provenance, rename into place."""
    if any(partial.glob("*.safetensors")) or not allow_bin:
        check_model_dir(partial)
    else:
        _say("Note: only .bin weights were downloaded; convert them to safetensors to train.")
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
    write_source(partial, record)
    commit_staging(partial, dest)  # fsync the files, then rename into place


def pull_model(
    hub_id: str,
    root: Path,
    *,
    name: str | None = None,
    revision: str | None = None,
    quantize_bits: int | None = None,
    group_size: int = 64,
    allow_bin: bool = False,
    hub: HubSettings | None = None,
) -> PullResult:
    """Fetch `hub_id` into `root/NAME` (and a `bits`-bit copy `root/NAME-<bits>bit` if asked)."""
    check_hub_id(hub_id)
    hub = hub or HubSettings.from_env()
    hub.apply()
    name = name or folder_name(hub_id)
    result = _present(root / name, hub_id, root)
    if result is None:
        result = _download(hub_id, root, name, revision, allow_bin, hub, quantize_bits)
    if quantize_bits is None:
        return result

    quantized = quantize_into_store(
        result.path, root, f"{name}-{quantize_bits}bit", quantize_bits, group_size, hub_id=hub_id
    )
    return PullResult(hub_id, result.path, result.already_present, result.size_bytes, quantized)
