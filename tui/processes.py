"""Child processes the TUI starts: the trainer, exports, and generation.

MLX work never runs in the UI process. Training is `python -m mlxsft.cli train`
in its own session (an out-of-memory abort on Metal kills only the child, and the
run outlives the UI: reattach with `mlxsft tui RUN`); stopping it is SIGINT, on
which the trainer saves a checkpoint and exits 130. Exports and generation are
children whose stdout the UI reads line by line in a worker thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlxsft.blas import find_openblas

from .runs import LAUNCH_LOG, python_command


def child_env() -> dict[str, str]:
    """The environment for a child: unbuffered output, OpenBLAS preloaded where installed."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    lib = find_openblas()
    if lib and sys.platform.startswith("linux") and lib not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    return env


@dataclass
class TrainerProcess:
    """A trainer child this UI started, writing its output to RUN/tui-train.log."""

    run_dir: Path
    popen: subprocess.Popen
    command: list[str]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self) -> None:
        """SIGINT: the trainer finishes its step, saves a checkpoint and exits 130."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def start_trainer(args: list[str], run_dir: Path, cwd: Path | None = None) -> TrainerProcess:
    """Start `mlxsft train ARGS` detached from the UI's terminal session."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = python_command("train", *args, "--quiet")
    with open(run_dir / LAUNCH_LOG, "ab") as log:
        log.write(("$ " + " ".join(command[1:]) + "\n").encode())
        log.flush()
        popen = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=child_env(),
            start_new_session=True,
        )
    return TrainerProcess(run_dir, popen, command)


def train_recipe(recipe_path: Path, run_dir: Path, cwd: Path | None = None) -> TrainerProcess:
    return start_trainer([str(recipe_path)], run_dir, cwd)


def resume_run(run_dir: Path, cwd: Path | None = None) -> TrainerProcess:
    return start_trainer(["--resume", str(run_dir)], run_dir, cwd)


class StreamingChild:
    """A child whose stdout+stderr are read line by line (in a worker thread)."""

    def __init__(self, command: list[str], cwd: Path | None = None):
        self.command = command
        self.popen = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=child_env(),
            text=True,
            bufsize=1,
            start_new_session=True,
        )

    def lines(self) -> Iterator[str]:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            yield line.rstrip("\n")

    def wait(self) -> int:
        return self.popen.wait()

    def cancel(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
