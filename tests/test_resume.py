"""Exact resume: a run killed with SIGKILL and resumed matches an uninterrupted run step for step."""

import os
import signal
import subprocess
import sys
import time

import yaml

from mlxsft.events import CheckpointSaved, RunFinished, StepReported, read_events
from mlxsft.rundir import RunDir

from .conftest import QUICKSTART_DATA

ITERS = 40


def write_recipe(path, model, out):
    recipe = {
        "model": str(model),
        "data": str(QUICKSTART_DATA),
        "output": str(out),
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.1},  # dropout: the RNG must resume too
        "train": {
            "iters": ITERS,
            "batch_size": 8,
            "learning_rate": 2e-3,
            "max_seq_length": 128,
            "warmup_steps": 5,
            "steps_per_report": 1,
            "steps_per_eval": 0,
            "steps_per_save": 5,
            "grad_accumulation": 2,
        },
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "mlxsft.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def step_losses(run_dir) -> dict[int, float]:
    """Loss per step; a resumed run re-reports steps after its checkpoint, the last report wins."""
    return {e.step: e.loss for e in read_events(RunDir(run_dir).events_file) if isinstance(e, StepReported)}


def kill_after_first_checkpoint(proc, events_file, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if events_file.exists() and any(isinstance(e, CheckpointSaved) for e in read_events(events_file)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before it could be killed: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared in time")


def test_sigkill_and_resume_gives_identical_losses(tiny_llama, tmp_path):
    reference = tmp_path / "reference"
    proc = cli("train", str(write_recipe(tmp_path / "a.yaml", tiny_llama, reference)))
    assert proc.wait() == 0, proc.stderr.read()

    killed = tmp_path / "killed"
    proc = cli("train", str(write_recipe(tmp_path / "b.yaml", tiny_llama, killed)))
    kill_after_first_checkpoint(proc, killed / "events.jsonl")
    assert proc.returncode == -signal.SIGKILL
    resumed_from = RunDir(killed).checkpoint_steps()[-1]
    assert resumed_from < ITERS

    proc = cli("train", "--resume", str(killed))
    assert proc.wait() == 0, proc.stderr.read()

    want, got = step_losses(reference), step_losses(killed)
    assert sorted(got) == list(range(1, ITERS + 1))
    for step in range(resumed_from + 1, ITERS + 1):
        assert abs(got[step] - want[step]) <= 1e-6 * max(1.0, abs(want[step])), (step, got[step], want[step])
    assert isinstance(read_events(killed / "events.jsonl")[-1], RunFinished)
    assert RunDir(killed).read_meta()["status"] == "finished"


def test_sigint_stops_with_checkpoint_then_resumes(tiny_llama, tmp_path):
    out = tmp_path / "run"
    proc = cli("train", str(write_recipe(tmp_path / "r.yaml", tiny_llama, out)))
    deadline = time.time() + 120
    while not (out / "events.jsonl").exists() or not any(
        isinstance(e, StepReported) for e in read_events(out / "events.jsonl")
    ):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    assert proc.wait() == 130
    meta = RunDir(out).read_meta()
    assert meta["status"] == "stopped"
    stopped_at = RunDir(out).checkpoint_steps()[-1]
    assert stopped_at == meta["last_step"] < ITERS
    proc = cli("train", "--resume", str(out))
    assert proc.wait() == 0, proc.stderr.read()
    assert RunDir(out).read_meta()["status"] == "finished"
