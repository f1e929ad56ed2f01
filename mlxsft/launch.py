"""`mlxsft train --ranks N` / `--hosts hosts.json`: run the same command on every rank via `mlx.launch`.

The launcher (MLX's own, ring backend by default) starts one `mlxsft train` per rank
with MLX_RANK and the ring's host file set; this wrapper streams their output, and
when a rank dies (the launcher then ends the others) it says which rank and host,
marks the run failed in its run.json and exits non-zero. The run's last checkpoint
is untouched (checkpoints are written atomically by rank 0).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .errors import MlxsftError
from .rundir import RunDir

_RANK_EXIT = re.compile(r"Node with rank (\d+) (exited with code (-?\d+)|was killed)")
_RUN_DIR = re.compile(r"^Run directory: (.+)$")
LAUNCH = "from mlx._distributed_utils.launch import main; main()"


def read_hosts(path: str) -> list[str]:
    """Host names of each rank in an `mlx.launch` host file (JSON list of {ssh, ips})."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MlxsftError("hosts file not found; write one with `mlxsft hosts HOST1 HOST2 ...`.", path=path) from None
    except json.JSONDecodeError as exc:
        raise MlxsftError(f"not valid JSON ({exc.msg}).", path=path, line=exc.lineno) from None
    hosts = raw.get("hosts", raw) if isinstance(raw, dict) else raw
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, dict) and "ssh" in h for h in hosts):
        raise MlxsftError(
            'expected {"hosts": [{"ssh": "host1", "ips": ["10.0.0.1"]}, ...]} (as written by `mlxsft hosts`).',
            path=path,
        )
    return [str(h["ssh"]) for h in hosts]


def launcher_command(train_args: list[str], ranks: int | None, hosts_file: str | None, timeout_s: float) -> list[str]:
    where = ["--hostfile", hosts_file] if hosts_file else ["-n", str(ranks)]
    env = ["--env", f"MLXSFT_DIST_TIMEOUT={timeout_s:g}"]
    if not hosts_file and "OPENBLAS_NUM_THREADS" not in os.environ:
        # ranks sharing this machine split its cores: OpenBLAS threads that spin-wait on
        # each other's cores made 2 local ranks 3x slower still
        env += ["--env", f"OPENBLAS_NUM_THREADS={max(1, (os.cpu_count() or 1) // int(ranks or 1))}"]
    return [
        sys.executable,
        "-c",
        LAUNCH,
        "--backend",
        "ring",
        *where,
        *env,
        "--",
        sys.executable,
        "-m",
        "mlxsft.cli",
        "train",
        *train_args,
    ]


def launch_training(train_args: list[str], ranks: int | None, hosts_file: str | None, timeout_s: float) -> int:
    """Run distributed training; return the exit code for the CLI."""
    hosts = read_hosts(hosts_file) if hosts_file else ["localhost"] * int(ranks or 1)
    try:
        import mlx._distributed_utils.launch  # noqa: F401 - the launcher we drive
    except ImportError:
        raise MlxsftError("this MLX has no `mlx.launch`; upgrade mlx (pip install -U mlx).") from None
    cmd = launcher_command(train_args, ranks, hosts_file, timeout_s)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    failures, run_dir = [], None
    for line in proc.stdout:
        print(line, end="", flush=True)
        clean = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if m := _RANK_EXIT.search(clean):
            code = m.group(3)
            failures.append((int(m.group(1)), f"exited with code {code}" if code else "was killed"))
        elif m := _RUN_DIR.match(clean):
            run_dir = m.group(1)
    proc.wait()
    if not failures:
        return 0 if _run_status(run_dir) in ("finished", None) else 130
    return _report_failure(failures, hosts, run_dir)


def _run_status(run_dir: str | None) -> str | None:
    return RunDir(run_dir).read_meta().get("status") if run_dir else None


def _report_failure(failures: list[tuple[int, str]], hosts: list[str], run_dir: str | None) -> int:
    # the first rank to go is the cause; the launcher then terminates the rest
    rank, how = failures[0]
    host = hosts[rank] if rank < len(hosts) else "?"
    reason = f"rank {rank} on host {host} {how}; the launcher stopped the other ranks"
    last = None
    if run_dir and RunDir(run_dir).exists():
        run = RunDir(run_dir)
        last = run.latest_checkpoint()
        if run.read_meta().get("status") != "finished":
            run.update_meta(status="failed", error=reason, updated=time.time())
    resume = f" Resume with `mlxsft train --resume {run_dir} --ranks N`." if run_dir else ""
    print(
        f"mlxsft: error: distributed run failed: {reason}. Last checkpoint: {last}.{resume}",
        file=sys.stderr,
        flush=True,
    )
    return 3
