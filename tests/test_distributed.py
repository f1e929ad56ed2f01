"""Data parallelism over loopback (ring backend): same losses as one rank, rank 0 writes, failures stop."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mlxsft.events import CheckpointSaved, RunStarted, StepReported, read_events
from mlxsft.rundir import RunDir

from .conftest import QUICKSTART_DATA


def write_recipe(tmp_path, model, out, iters):
    recipe = {
        "model": str(model),
        "data": str(QUICKSTART_DATA),
        "output": str(out),
        "lora": {"rank": 8, "alpha": 16},
        "train": {
            "iters": iters,
            "batch_size": 8,
            "learning_rate": 2e-3,
            "max_seq_length": 128,
            "steps_per_report": 1,
            "steps_per_eval": 5,
            "steps_per_save": 5,
            "grad_accumulation": 2,
        },
    }
    path = tmp_path / f"{Path(out).name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def train(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "mlxsft.cli", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def losses(run_dir):
    return {e.step: e.loss for e in read_events(Path(run_dir) / "events.jsonl") if isinstance(e, StepReported)}


def test_two_ranks_match_one_rank_and_only_rank_0_writes(tiny_llama, tmp_path):
    one = train(str(write_recipe(tmp_path, tiny_llama, tmp_path / "one", 10)))
    out, err = one.communicate(timeout=300)
    assert one.returncode == 0, err
    two = train(str(write_recipe(tmp_path, tiny_llama, tmp_path / "two", 10)), "--ranks", "2")
    out, err = two.communicate(timeout=300)
    assert two.returncode == 0, out + err
    want, got = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(got) == list(range(1, 11))
    for step in want:
        assert abs(got[step] - want[step]) <= 1e-4 * abs(want[step]), (step, got[step], want[step])
    events = read_events(tmp_path / "two" / "events.jsonl")
    assert sum(isinstance(e, RunStarted) for e in events) == 1  # rank 1 wrote nothing
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [5, 10]
    assert RunDir(tmp_path / "two").read_meta()["world_size"] == 2
    # both ranks processed tokens: the global count equals the single-rank run's
    assert events[-1].step == 10
    one_tokens = [e.tokens_seen for e in read_events(tmp_path / "one" / "events.jsonl") if isinstance(e, StepReported)]
    two_tokens = [e.tokens_seen for e in events if isinstance(e, StepReported)]
    assert one_tokens == two_tokens


def rank_pid(rank: int, marker: str) -> int | None:
    """The pid of the `mlxsft train` process of `rank` whose command line mentions `marker`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if "mlxsft.cli train" in cmdline and marker in cmdline and f"MLX_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_killing_a_rank_stops_the_run_with_a_clear_message(tiny_llama, tmp_path):
    out_dir = tmp_path / "killed"
    recipe = write_recipe(tmp_path, tiny_llama, out_dir, 2000)
    proc = train(str(recipe), "--ranks", "2", "--dist-timeout", "30")
    deadline = time.time() + 180
    while (
        not any(isinstance(e, CheckpointSaved) for e in read_events(out_dir / "events.jsonl"))
        if (out_dir / "events.jsonl").exists()
        else True
    ):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.1)
    pid = rank_pid(1, str(recipe))
    assert pid is not None
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=90)
    assert time.time() - killed_at < 60
    assert proc.returncode == 3
    assert "rank 1 on host localhost" in err and "Last checkpoint" in err and "Traceback" not in err
    run = RunDir(out_dir)
    assert run.read_meta()["status"] == "failed"
    last = run.latest_checkpoint()
    assert last is not None and (last / "adapters.safetensors").is_file()


def test_resume_with_a_different_world_size(tiny_llama, tmp_path):
    """The data cursor counts global batches, so a 1-rank run can continue on 2 ranks."""

    def recipe(out, iters):
        path = write_recipe(tmp_path, tiny_llama, out, iters)
        raw = yaml.safe_load(path.read_text())
        raw["train"].update(lr_schedule="constant", warmup_steps=0)  # the schedule must not depend on iters
        path.write_text(yaml.safe_dump(raw))
        return path

    ref = train(str(recipe(tmp_path / "ref", 10)))
    assert ref.wait(timeout=300) == 0
    part = train(str(recipe(tmp_path / "part", 5)))
    assert part.wait(timeout=300) == 0
    # turn the finished 5-step run into a stopped 10-step one, as if it had been interrupted
    run = RunDir(tmp_path / "part")
    run.recipe_file.write_text(run.recipe_file.read_text().replace("iters: 5", "iters: 10"))
    run.update_meta(status="stopped")
    resumed = train("--resume", str(tmp_path / "part"), "--ranks", "2")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out + err
    want, got = losses(tmp_path / "ref"), losses(tmp_path / "part")
    assert sorted(got) == list(range(1, 11))
    for step in range(6, 11):
        assert abs(got[step] - want[step]) <= 1e-4 * abs(want[step]), (step, got[step], want[step])
