"""One trainer per run folder: RUN/trainer.lock refuses a second one and names the first's pid."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from mlxsft.tui.runs import RUNNING, summarize_run

from mlxsft.errors import MlxsftError
from mlxsft.runlock import LOCK_NAME, RunLock, lock_holder

from .fixtures.tui_helpers import live_stand_in, make_project, set_meta, stand_in_process


def write_lock(run, pid: int) -> None:
    (run / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 0}))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass", "mlxsft"])
    proc.wait()
    return proc.pid


def test_lock_is_taken_refused_while_held_and_taken_over_when_stale(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()

    with live_stand_in_at(tmp_path) as pid:
        with pytest.raises(MlxsftError, match=f"another trainer \\(pid {pid}\\) is training this run"):
            RunLock(tmp_path).acquire()
        assert lock_holder(tmp_path) == pid
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == pid  # left as it was

    write_lock(tmp_path, dead_pid())  # a trainer killed with -9 left its lock behind
    assert lock_holder(tmp_path) is None
    stale = RunLock(tmp_path)
    stale.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    stale.release()


class live_stand_in_at:
    """A live process whose command line names mlxsft, recorded as the lock's holder."""

    def __init__(self, run):
        self.run = run

    def __enter__(self) -> int:
        self.proc = stand_in_process()
        write_lock(self.run, self.proc.pid)
        return self.proc.pid

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def test_cli_refuses_to_resume_a_run_another_trainer_holds(tmp_path):
    project = make_project(tmp_path / "project")
    run = project / "runs" / "quickstart-lora"
    set_meta(run, status="stopped")
    before = (run / "events.jsonl").read_bytes()
    with live_stand_in_at(run) as pid:
        result = subprocess.run(
            [sys.executable, "-m", "mlxsft.cli", "train", "--resume", str(run)],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"another trainer (pid {pid}) is training this run" in result.stderr
    assert "Traceback" not in result.stderr
    assert (run / "events.jsonl").read_bytes() == before  # nothing written by the refused trainer
    assert json.loads((run / "run.json").read_text())["status"] == "stopped"


def test_runs_list_trusts_the_lock_over_a_stale_run_json(tmp_path):
    project = make_project(tmp_path / "project")
    run = project / "runs" / "quickstart-lora"
    set_meta(run, status="stopped")
    with live_stand_in(run), live_stand_in_at(run) as pid:
        summary = summarize_run(run)
        assert summary.status == RUNNING and summary.pid == pid
