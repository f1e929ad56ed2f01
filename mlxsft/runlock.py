"""One trainer per run folder: RUN/trainer.lock holds the pid of the trainer writing the run.

A second trainer on the same folder (a resume started twice, from the CLI and the TUI)
would interleave events and checkpoints and leave run.json describing whichever wrote
last. `RunLock.acquire` creates the lock file exclusively; when it already exists and
its pid is a live mlxsft process on this host, it refuses, naming that pid. A lock left
by a trainer that died (kill -9, a crash, a reboot) is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .errors import MlxsftError
from .safeio import pid_alive

LOCK_NAME = "trainer.lock"


def read_lock(run_dir: str | Path) -> dict | None:
    """The lock's record ({"pid", "host", "started"}), or None when there is none or it is torn."""
    try:
        record = json.loads((Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def lock_holder(run_dir: str | Path) -> int | None:
    """The pid of the live trainer holding the run's lock, or None."""
    record = read_lock(run_dir)
    if record and record.get("host") == socket.gethostname() and trainer_alive(record.get("pid")):
        return int(record["pid"])
    return None


def trainer_alive(pid) -> bool:
    """True when `pid` is a live process whose command line mentions mlxsft (not a recycled pid)."""
    if not isinstance(pid, int) or pid <= 0 or not pid_alive(pid):
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no /proc (macOS): the pid is alive, trust it
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return b"mlxsft" in cmdline and state != "Z"


class RunLock:
    """The lock of one run folder, held by this process between `acquire` and `release`."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        for _ in range(3):  # a stale lock is removed, then created again exclusively
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(record)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise MlxsftError("could not take the run's lock (another trainer keeps taking it).", path=str(self.path))

    def _refuse_or_clear(self) -> None:
        holder = lock_holder(self.path.parent)
        if holder is not None and holder != os.getpid():
            raise MlxsftError(
                f"another trainer (pid {holder}) is training this run. Stop it first "
                f"(`kill -INT {holder}` saves a checkpoint, or s in `mlxsft tui`), then resume.",
                path=str(self.path.parent),
            )
        record = read_lock(self.path.parent)
        if record and record.get("host") not in (None, socket.gethostname()):
            raise MlxsftError(
                f"a trainer on host {record.get('host')} (pid {record.get('pid')}) holds this run's lock. "
                f"If it is gone, delete {self.path} and try again.",
                path=str(self.path.parent),
            )
        self.path.unlink(missing_ok=True)  # left by a trainer that died: take it over

    def release(self) -> None:
        if self.held and (read_lock(self.path.parent) or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False
