"""`mlxsft hosts`: the host file mlx.launch reads, and the ssh check (ssh replaced by a local shell)."""

import json
import shutil
import subprocess
import sys

import pytest

from mlxsft.errors import MlxsftError
from mlxsft.launch import read_hosts


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mlxsft.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_writes_a_launch_host_file(tmp_path):
    out = tmp_path / "hosts.json"
    result = run_cli("hosts", "localhost", "mac2", "--ip", "mac2=10.0.0.2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    content = json.loads(out.read_text())
    assert content["backend"] == "ring"
    assert content["hosts"] == [{"ssh": "localhost", "ips": ["127.0.0.1"]}, {"ssh": "mac2", "ips": ["10.0.0.2"]}]
    assert read_hosts(str(out)) == ["localhost", "mac2"]


def test_bad_host_files_are_clear(tmp_path):
    with pytest.raises(MlxsftError, match="hosts file not found"):
        read_hosts(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"hosts": [1, 2]}')
    with pytest.raises(MlxsftError, match="expected"):
        read_hosts(str(bad))


def test_check_compares_model_files(tmp_path, tiny_llama, monkeypatch):
    # a fake "ssh HOST CMD" that runs CMD here, with HOST choosing which model copy it sees
    fake = tmp_path / "fake-ssh"
    other = tmp_path / "other-model"
    shutil.copytree(tiny_llama, other)
    (other / "model.safetensors").write_bytes(b"truncated")
    fake.write_text(
        f'#!/bin/sh\nhost="$1"; shift\ncmd="$*"\n'
        f'if [ "$host" = "stale" ]; then cmd=$(echo "$cmd" | sed "s#{tiny_llama}#{other}#"); fi\n'
        f'exec sh -c "$cmd"\n'
    )
    fake.chmod(0o755)
    env = dict(__import__("os").environ, MLXSFT_SSH=str(fake))
    python_dir = str(__import__("pathlib").Path(sys.executable).parent)
    env["PATH"] = python_dir + ":" + env["PATH"]  # the probe runs `python3` from this environment
    same = run_cli(
        "hosts",
        "localhost",
        "good",
        "--ip",
        "good=127.0.0.1",
        "--out",
        str(tmp_path / "h.json"),
        "--check",
        "--model",
        str(tiny_llama),
        env=env,
    )
    assert same.returncode == 0, same.stderr
    assert "same model files" in same.stdout
    stale = run_cli(
        "hosts",
        "localhost",
        "stale",
        "--ip",
        "stale=127.0.0.1",
        "--out",
        str(tmp_path / "h2.json"),
        "--check",
        "--model",
        str(tiny_llama),
        env=env,
    )
    assert stale.returncode != 0
    assert "stale: model folder" in stale.stdout and "model.safetensors" in stale.stdout
    assert "Traceback" not in stale.stderr


def test_unreachable_host_is_named(tmp_path):
    env = dict(__import__("os").environ, MLXSFT_SSH="false")
    result = run_cli(
        "hosts",
        "localhost",
        "nowhere",
        "--ip",
        "nowhere=10.9.9.9",
        "--out",
        str(tmp_path / "h.json"),
        "--check",
        env=env,
    )
    assert result.returncode != 0
    assert "host 'localhost'" in result.stderr and "ssh" in result.stderr
