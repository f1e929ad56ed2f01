"""File-system edges that must fail safely: unreadable JSON, failed writes, swaps, leftovers.

Owns:
- `atomic_write_text`/`atomic_write_bytes`, `atomic_copy_file` and `fsync_dir`: the one atomic write (temp file beside
  the target, fsync, rename) every text/JSON file and copied file of a run, store or cache goes through;
- `read_json`: a JSON file the user or a run gave us, or one `MlxsftError` naming file and line;
- `write_guard`: turns a failed write (disk full, quota, file-size limit, read-only disk, or
  MLX's "[write] Unable to write" RuntimeError, which carries no errno) into one error that
  names the disk, its free space and what was kept;
- `require_creatable`: refuses an output path under a file before any work is done;
- `swap_into_place`: replaces a folder with another in one atomic exchange where the
  platform has one (Linux `renameat2(RENAME_EXCHANGE)`, macOS `renamex_np(RENAME_SWAP)`),
  so `--force` never leaves a moment with nothing at the path;
- `new_staging` and `commit_staging`: a temp file or folder beside a target, then made
  durable (fsync) and swapped into place, for writes that must appear whole or not at all;
- staging names that carry the writer's pid, and `remove_stale_staging`, which clears the
  ones whose writer is dead (an export killed with SIGKILL) on the next run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import glob
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import MlxsftError

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
WRITE_ERRNOS = DISK_FULL_ERRNOS | {errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
LOW_SPACE_BYTES = 16 * 2**20  # below this, a write error without an errno is a full disk
STAGING_TAG = ".staging-"


# ---------------------------------------------------------------- atomic writes


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file beside it, fsync, then rename (all or nothing)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file beside it, fsync, then rename (all or nothing)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy_file(src: Path, dst: Path, *, mode: int | None = None, fsync: bool = True) -> None:
    """Copy `src` to `dst` through a temp file beside it (fsync'd unless `fsync=False`), then rename.

    A reader of `dst` sees the old file or the whole new one, never a partial copy.
    """
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- reading


def read_json(path: Path, error: type[MlxsftError] = MlxsftError, what: str = "this file") -> dict:
    """The JSON object in `path`, or `error` naming the file, the line and what to do."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise error(f"{what} is not UTF-8 text; re-save it as UTF-8 JSON.", path=str(path)) from None
    except json.JSONDecodeError as exc:
        raise error(
            f"{what} is not valid JSON ({exc.msg}, column {exc.colno}); fix it or write it again.",
            path=str(path),
            line=exc.lineno,
        ) from None
    except OSError as exc:
        raise error(f"cannot read {what} ({exc.strerror}).", path=str(path)) from None
    if not isinstance(data, dict):
        raise error(f"{what} must hold a JSON object {{...}}, not a {type(data).__name__}.", path=str(path))
    return data


# ---------------------------------------------------------------- writing


def free_bytes(path: Path) -> int:
    """Free space on the disk holding `path` (or its nearest existing parent)."""
    for candidate in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 0


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def write_failure(exc: BaseException) -> OSError | RuntimeError | None:
    """The write failure behind `exc` (an OSError with a write errno, or MLX's writer error), if any."""
    for e in exception_chain(exc):
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return e
        if isinstance(e, RuntimeError) and "Unable to write" in str(e):  # mlx's safetensors writer
            return e
    return None


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def describe_write_failure(failure: OSError | RuntimeError, free: int) -> str:
    """'the disk is full (0.0 MB free)' and the like, for a message."""
    code = getattr(failure, "errno", None)
    if code in DISK_FULL_ERRNOS or (code is None and free < LOW_SPACE_BYTES):
        return f"the disk is full ({_mb(free)} free). Free some space (or write to another disk) and run it again"
    if code == errno.EFBIG:
        return "a file-size limit was hit (ulimit -f). Raise the limit and run it again"
    if code is not None:
        return f"{os.strerror(code)}. Fix the folder's permissions or choose another place"
    return f"{failure} ({_mb(free)} free on that disk). Check the disk and run it again"


@contextmanager
def write_guard(target: Path, what: str, *, kept: str = "", error: type[MlxsftError] = MlxsftError):
    """Raise `error` ("could not write WHAT: the disk is full ... KEPT") for a failed write inside.

    Use it innermost, around the writes only: it measures free space before the caller's
    cleanup frees the partial files, so a full disk is reported as one.
    """
    try:
        yield
    except Exception as exc:
        failure = write_failure(exc)
        if failure is None or isinstance(exc, MlxsftError):
            raise
        reason = describe_write_failure(failure, free_bytes(Path(target)))
        raise error(f"could not write {what}: {reason}.{' ' + kept if kept else ''}", path=str(target)) from None


def require_creatable(path: Path, error: type[MlxsftError] = MlxsftError, what: str = "the output") -> None:
    """Refuse `path` when it, or a folder it would be created in, is an existing file."""
    path = Path(path)
    for ancestor in (path.parent, *path.parent.parents):
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise error(
                    f"cannot create {what} here: {ancestor} is a file, not a folder. Choose another place.",
                    path=str(path),
                )
            return


# ---------------------------------------------------------------- swapping into place

_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 2  # macOS sys/stdio.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the platform or filesystem cannot."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        result = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        result = libc.renamex_np(os.fsencode(a), os.fsencode(b), _RENAME_SWAP)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False  # e.g. a filesystem without exchange support: fall back
    raise OSError(code, os.strerror(code), str(b))


def swap_into_place(new: Path, target: Path) -> None:
    """Make `new` appear at `target`, replacing whatever is there; `new`'s path is gone after.

    A file (or nothing) at `target`: one `os.replace`. A folder: an atomic exchange, then
    the old folder (now at `new`'s path) is removed; only where no exchange exists are
    there two renames, with a brief moment when `target` is missing.
    """
    new, target = Path(new), Path(target)
    if not target.is_dir() or target.is_symlink() or not new.is_dir():
        os.replace(new, target)
        return
    if _exchange(new, target):
        remove_path(new)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    remove_path(old)
    os.replace(target, old)
    os.replace(new, target)
    remove_path(old)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- staging


def _umask_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def new_staging(target: Path, *, is_file: bool = False) -> Path:
    """An empty temp file or folder beside `target`, named for this writer (`staging_prefix`)."""
    target = Path(target)
    if is_file:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=staging_prefix(target), suffix=".tmp")
        os.close(fd)
        path = Path(name)
    else:
        path = Path(tempfile.mkdtemp(dir=target.parent, prefix=staging_prefix(target), suffix=".tmp"))
    path.chmod(_umask_mode(0o666 if is_file else 0o777))  # mkstemp/mkdtemp make them private
    return path


def commit_staging(staging: Path, target: Path) -> None:
    """fsync what `staging` holds, then swap it into place at `target`."""
    files = [p for p in staging.rglob("*") if p.is_file()] if staging.is_dir() else [staging]
    for f in files:
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    swap_into_place(staging, target)


# ---------------------------------------------------------------- leftovers of killed writers


def staging_prefix(target: Path) -> str:
    """Name prefix of the staging paths for `target`: `.NAME.staging-PID-` (the pid of this writer)."""
    return f".{Path(target).name}{STAGING_TAG}{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """True when a process `pid` exists (alive or a zombie), also when it is another user's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_staging(target: Path) -> list[Path]:
    """Staging paths beside `target` (and `.NAME.old-PID` swap leftovers) whose writer is dead."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    found = []
    for tag in (STAGING_TAG, ".old-"):
        for path in target.parent.glob(f".{glob.escape(target.name)}{tag}*"):
            pid = path.name[len(target.name) + 1 + len(tag) :].split("-", 1)[0].split(".", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                found.append(path)
    return sorted(found)


def remove_stale_staging(target: Path, what: str = "an interrupted run") -> list[Path]:
    """Remove the staging leftovers of `target` whose writer is dead; say so on stderr."""
    removed = stale_staging(target)
    for path in removed:
        print(f"Removing {path}, left behind by {what}.", file=sys.stderr)
        remove_path(path)
    return removed
