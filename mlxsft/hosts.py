"""`mlxsft hosts`: write the host file for multi-machine runs and check the hosts agree.

The file is `mlx.launch`'s own format ({"backend": "ring", "hosts": [{"ssh", "ips"}]}).
`--check` logs into each host over ssh (non-interactive) and compares its mlxsft and
MLX versions and, with `--model`, the model folder's files and sizes with this
machine's, so a run does not die on step one because one Mac has an older copy.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
from pathlib import Path

from .errors import MlxsftError
from .safeio import atomic_write_text

PROBE = (
    "import json, os, sys\n"
    "import mlx.core as mx, mlxsft\n"
    "model = sys.argv[1]\n"
    "files = {}\n"
    "if model and os.path.isdir(model):\n"
    "    files = {f: os.path.getsize(os.path.join(model, f)) for f in sorted(os.listdir(model))\n"
    "             if f.endswith(('.json', '.safetensors', '.model', '.jinja'))}\n"
    "print(json.dumps({'mlxsft': mlxsft.__version__, 'mlx': mx.__version__, 'model_files': files}))\n"
)


def host_entry(host: str, ip: str | None) -> dict:
    if ip is None:
        try:
            ip = socket.gethostbyname(host)
        except OSError:
            raise MlxsftError(f"cannot resolve host '{host}'; give its address with --ip {host}=ADDR.") from None
    return {"ssh": host, "ips": [ip]}


def write_hosts(hosts: list[str], out: str, ips: dict[str, str]) -> dict:
    if len(hosts) < 2:
        raise MlxsftError("give at least two hosts (e.g. `mlxsft hosts mac1.local mac2.local`).")
    content = {"backend": "ring", "hosts": [host_entry(h, ips.get(h)) for h in hosts]}
    atomic_write_text(Path(out), json.dumps(content, indent=2) + "\n")
    return content


def probe(host: str, model: str | None, python: str = "python3") -> dict:
    """Versions and model files as `host` sees them (ssh, no password prompts)."""
    ssh = shlex.split(os.environ.get("MLXSFT_SSH", "ssh -o BatchMode=yes -o ConnectTimeout=10"))
    remote = f"{python} -c {shlex.quote(PROBE)} {shlex.quote(model or '')}"
    try:
        done = subprocess.run([*ssh, host, remote], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MlxsftError(f"host '{host}': ssh failed ({exc}).") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MlxsftError(
            f"host '{host}': cannot run mlxsft there over ssh ({why}). Check `ssh {host}` works "
            "without a password and that mlxsft is installed in its python3."
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_hosts(hosts: list[str], model: str | None) -> list[str]:
    """Problems found (empty when every host matches the first)."""
    seen = {h: probe(h, model) for h in hosts}
    ref_host, ref = hosts[0], seen[hosts[0]]
    problems = []
    for host in hosts[1:]:
        info = seen[host]
        for key in ("mlxsft", "mlx"):
            if info[key] != ref[key]:
                problems.append(f"{host} has {key} {info[key]}, {ref_host} has {ref[key]}")
        if model and info["model_files"] != ref["model_files"]:
            missing = sorted(set(ref["model_files"]) - set(info["model_files"]))
            differ = sorted(
                f
                for f in ref["model_files"]
                if f in info["model_files"] and info["model_files"][f] != ref["model_files"][f]
            )
            problems.append(
                f"{host}: model folder {model} differs from {ref_host}'s "
                f"(missing: {missing or 'none'}, different size: {differ or 'none'})"
            )
    return problems


def add_commands(sub) -> None:
    p = sub.add_parser("hosts", help="Write (and check) the host file for a multi-machine run.")
    p.add_argument("hosts", nargs="+", help="ssh names of the machines; the first is rank 0.")
    p.add_argument("--out", default="hosts.json")
    p.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="HOST=ADDR",
        help="Address to use for a host's ring connection (e.g. its Thunderbolt bridge IP).",
    )
    p.add_argument("--check", action="store_true", help="ssh into each host and compare versions (and --model).")
    p.add_argument("--model", default=None, help="Model folder that must be the same on every host.")
    p.set_defaults(handler=cmd_hosts)


def cmd_hosts(args) -> int:
    ips = dict(item.split("=", 1) for item in args.ip if "=" in item)
    content = write_hosts(args.hosts, args.out, ips)
    print(f"Wrote {args.out} with {len(content['hosts'])} hosts (rank 0: {args.hosts[0]}).")
    if not args.check:
        return 0
    problems = check_hosts(args.hosts, args.model)
    for line in problems:
        print(f"  mismatch: {line}")
    if problems:
        raise MlxsftError("the hosts differ; install the same mlxsft/mlx and copy the model to every host.")
    print("All hosts run the same mlxsft and mlx" + (" and hold the same model files." if args.model else "."))
    print(f"Train with: mlxsft train RECIPE.yaml --hosts {args.out}")
    return 0
