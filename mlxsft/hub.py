"""The Hugging Face hub as the store sees it: settings, one listing call, and plain-words errors.

Hub settings (HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE) are read from the
environment when a pull starts, not when huggingface_hub is imported, so a long-lived
process (the TUI, the test suite) sees changes. `hub_error` turns whatever the hub client
raised (its own error types, httpx/requests connection errors, a full disk) into one
`ModelError` that says what happened and what to do.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .safeio import exception_chain, free_bytes  # noqa: F401 - free_bytes is part of this module's API
from .store import human_bytes

_DEFAULT_ENDPOINT = "https://huggingface.co"
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSettings:
    """Where the hub is and how to reach it."""

    endpoint: str
    cache_dir: str
    offline: bool

    @classmethod
    def from_env(cls) -> HubSettings:
        env = os.environ
        xdg = env.get("XDG_CACHE_HOME") or "~/.cache"
        home = env.get("HF_HOME") or os.path.join(xdg, "huggingface")
        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or f"{home}/hub"
        offline_flag = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or ""
        offline = offline_flag.upper() in _TRUE
        return cls(
            endpoint=(env.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT).rstrip("/"),
            cache_dir=os.path.expanduser(os.path.expandvars(cache)),
            offline=offline,
        )

    def apply(self) -> None:
        """Make huggingface_hub follow these settings: it reads HF_HUB_OFFLINE only once, at import."""
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = self.offline


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None


@dataclass(frozen=True)
class RemoteRepo:
    commit: str
    gated: bool
    files: list[RemoteFile]


def list_remote(hub_id: str, revision: str | None, hub: HubSettings) -> RemoteRepo:
    """Commit, gating and files (with sizes) of a hub model repo, in one API call."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=hub.endpoint).model_info(hub_id, revision=revision, files_metadata=True)
    files = [RemoteFile(s.rfilename, getattr(s, "size", None)) for s in (info.siblings or [])]
    return RemoteRepo(commit=info.sha, gated=bool(info.gated), files=files)


def have_token() -> bool:
    from huggingface_hub import get_token

    return bool(os.environ.get("HF_TOKEN") or get_token())


def _is_connection_problem(exc: BaseException) -> bool:
    markers = ("Connect", "Timeout", "OfflineModeIsEnabled", "NetworkError")
    return any(
        isinstance(e, (ConnectionError, TimeoutError)) or any(m in type(e).__name__ for m in markers)
        for e in exception_chain(exc)
    )


def _disk_error(exc: BaseException) -> OSError | None:
    full = (e for e in exception_chain(exc) if isinstance(e, OSError) and e.errno in _DISK_ERRNOS)
    return next(full, None)


def gated_message(hub_id: str, hub: HubSettings) -> str:
    return (
        f"'{hub_id}' is gated: accept its terms at {hub.endpoint}/{hub_id} while logged in, "
        "then log in here with `hf auth login` (older clients: `huggingface-cli login`) "
        "or set HF_TOKEN, and pull again."
    )


def download(
    hub_id: str, hub: HubSettings, patterns: list[str], *, revision: str | None = None, local_dir: Path | None = None
) -> Path:
    """The one download path: files of `hub_id` matching `patterns` (no pickle weights are ever asked for).

    Into `local_dir` when given (a store pull; finished files are skipped on a rerun), else
    into the hub cache (a recipe naming a hub id). Errors are the hub client's own: callers
    turn them into a message with `hub_error`.
    """
    from huggingface_hub import snapshot_download

    path = snapshot_download(
        hub_id,
        revision=revision,
        local_dir=str(local_dir) if local_dir else None,
        allow_patterns=patterns,
        endpoint=hub.endpoint,
        cache_dir=hub.cache_dir,
        max_workers=4,
    )
    return Path(path)


def hub_error(exc: BaseException, hub_id: str, hub: HubSettings, partial: Path | None = None) -> ModelError:
    """A user-facing ModelError for anything the hub client raised during a download."""
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    resume = (
        f" Files that finished are kept in {partial}; run the same command again to resume."
        if partial is not None and partial.exists()
        else ""
    )
    disk = _disk_error(exc)
    if disk is not None:
        free = free_bytes(partial or Path(hub.cache_dir))
        return ModelError(
            f"could not write the download ({os.strerror(disk.errno)}): the disk is full or a "
            f"file-size limit was hit ({human_bytes(free)} free). Free some space "
            f"(or use --store DIR on another disk).{resume}"
        )
    if isinstance(exc, GatedRepoError):
        return ModelError(gated_message(hub_id, hub) + resume)
    if isinstance(exc, RevisionNotFoundError):
        return ModelError(f"'{hub_id}' has no such revision on the hub; check --revision.")
    if isinstance(exc, RepositoryNotFoundError):
        return ModelError(
            f"no model '{hub_id}' on the hub ({hub.endpoint}): check the spelling (ids are "
            "owner/name, see `mlxsft models list`); for a private model log in with "
            "`hf auth login`."
        )
    if _is_connection_problem(exc):
        return ModelError(
            f"cannot reach the hub at {hub.endpoint} ({type(exc).__name__}). Check your network; "
            f"offline, pick a model already in the store (`mlxsft models list`).{resume}"
        )
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        first = str(exc).splitlines()[0]
        return ModelError(f"the hub answered HTTP {status} for '{hub_id}': {first}.{resume}")
    return ModelError(f"download of '{hub_id}' failed ({type(exc).__name__}: {exc}).{resume}")
