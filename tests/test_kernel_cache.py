"""MLX's compiled CPU kernels are kept in a persistent per-user cache, so g++ runs once per MLX version and CPU."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest

from mlxsft import kernel_cache as kc

COMPILE_ONE = """
import json, sys
import mlx.core as mx
from mlxsft.kernel_cache import use_persistent_kernel_cache, first_use_message
status = use_persistent_kernel_cache()
f = mx.compile(lambda x: mx.exp(x) * 3.0 + 1.0)
mx.eval(f(mx.ones((8,))))
print(json.dumps({"kernels": status.kernels, "mode": status.mode, "cache": str(status.cache_dir),
                  "first": first_use_message(status) is not None}))
"""


def compile_in_child(tmpdir: Path, cache: Path, path: str | None = None, cache_off: bool = False) -> dict:
    tmpdir.mkdir(parents=True, exist_ok=True)  # MLX needs its temp dir to exist
    env = dict(os.environ, TMPDIR=str(tmpdir), MLXSFT_KERNEL_CACHE=str(cache))
    env.pop("MLXSFT_NO_KERNEL_CACHE", None)
    if cache_off:
        env["MLXSFT_NO_KERNEL_CACHE"] = "1"
    if path is not None:
        env["PATH"] = path
    proc = subprocess.run([sys.executable, "-c", COMPILE_ONE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mlx_kernel_dir_follows_libstdcxx_temp_dir_rules():
    assert kc.mlx_kernel_dir("1.2", {}) == Path("/tmp/mlx/1.2/cpu")
    assert kc.mlx_kernel_dir("1.2", {"TMP": "/a", "TEMPDIR": "/b"}) == Path("/a/mlx/1.2/cpu")
    assert kc.mlx_kernel_dir("1.2", {"TMPDIR": "/t", "TMP": "/a"}) == Path("/t/mlx/1.2/cpu")
    assert kc.mlx_version() == mx.__version__  # the folder name MLX's compiler uses


def test_cache_is_keyed_by_mlx_version_and_instruction_set(tmp_path):
    tag = kc.isa_tag()
    assert tag.startswith(os.uname().machine)
    env = {"TMPDIR": str(tmp_path / "t"), "MLXSFT_KERNEL_CACHE": str(tmp_path / "c")}
    status = kc.use_persistent_kernel_cache(env)
    assert status.cache_dir == tmp_path / "c" / f"mlx-{mx.__version__}-{tag}"
    assert status.mode == "linked" and status.mlx_dir.is_symlink() and status.first_use
    assert oct(status.cache_dir.stat().st_mode & 0o777) == "0o700"
    off = kc.use_persistent_kernel_cache(env | {"MLXSFT_NO_KERNEL_CACHE": "1"})
    assert off.cache_dir is None and off.mode.startswith("off")


def logging_compiler(tmp_path: Path) -> tuple[str, Path]:
    """A PATH whose g++ logs each kernel build, then runs the real g++."""
    real = shutil.which("g++")
    if real is None:
        pytest.skip("MLX's CPU compile needs g++")
    bin_dir, log = tmp_path / "bin", tmp_path / "gxx.log"
    bin_dir.mkdir()
    wrapper = bin_dir / "g++"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *-shared*) echo build >> "{log}";; esac\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}", log


def builds(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_kernels_survive_an_emptied_temp_dir(tmp_path):
    cache = tmp_path / "cache"
    path, log = logging_compiler(tmp_path)
    first = compile_in_child(tmp_path / "boot1", cache, path=path)
    assert first["mode"] == "linked" and first["kernels"] == 0 and first["first"]
    libs = sorted(p.name for p in Path(first["cache"]).glob("*.so"))
    assert libs and builds(log) == len(libs), "MLX did not compile into the persistent cache"
    # "after a reboot": a new, empty temp dir; the same graph must not run g++ again
    second = compile_in_child(tmp_path / "boot2", cache, path=path)
    assert second["kernels"] == len(libs) and not second["first"]
    assert builds(log) == len(libs)
    # without the cache (what MLX alone does after a reboot) it would have been built again
    compile_in_child(tmp_path / "boot3", tmp_path / "unused", path=path, cache_off=True)
    assert builds(log) == 2 * len(libs)


def test_existing_real_folder_is_synced_both_ways(tmp_path):
    cache = tmp_path / "cache"
    compile_in_child(tmp_path / "boot1", cache)
    cached = next(Path(p) for p in (cache).glob("*/*.so"))
    mlx_dir = kc.mlx_kernel_dir(mx.__version__, {"TMPDIR": str(tmp_path / "other")})
    mlx_dir.mkdir(parents=True)  # MLX ran here before mlxsft did: a real folder with its own kernel
    theirs = mlx_dir / "libTheirs.so"
    shutil.copyfile(cached, theirs)
    old = time.time() - 3600  # both settled: no process is still writing them
    os.utime(theirs, (old, old))
    os.utime(cached, (old, old))
    status = kc.use_persistent_kernel_cache({"TMPDIR": str(tmp_path / "other"), "MLXSFT_KERNEL_CACHE": str(cache)})
    assert status.mode == "synced" and not mlx_dir.is_symlink()
    assert (status.cache_dir / "libTheirs.so").read_bytes() == cached.read_bytes()
    assert (mlx_dir / cached.name).read_bytes() == cached.read_bytes()


def test_truncated_kernels_are_dropped_so_mlx_rebuilds_them(tmp_path):
    cache = tmp_path / "cache"
    compile_in_child(tmp_path / "boot1", cache)
    lib = next(cache.glob("*/*.so"))
    assert kc.kernel_complete(lib)
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])  # g++ killed mid-write
    assert not kc.kernel_complete(lib)
    fresh = lib.with_name("libFresh.so")
    fresh.write_bytes(data[:100])  # maybe still being written by another process: left alone
    old = time.time() - 3600
    os.utime(lib, (old, old))
    assert kc.drop_broken(lib.parent) == 1
    assert not lib.exists() and fresh.exists()
    fresh.unlink()
    again = compile_in_child(tmp_path / "boot2", cache)  # MLX rebuilds the dropped kernel
    assert again["kernels"] == 0 and lib.exists() and kc.kernel_complete(lib)


@pytest.mark.parametrize("kernels, expected", [(0, True), (3, False)])
def test_first_use_message_only_when_the_cache_is_empty(tmp_path, kernels, expected):
    status = kc.KernelCacheStatus(tmp_path, tmp_path / "mlx", kernels, "linked")
    message = kc.first_use_message(status)
    assert (message is not None) == expected
    if message:
        assert str(tmp_path) in message and "once" in message
    assert kc.first_use_message(kc.KernelCacheStatus(None, tmp_path, 0, "off: x")) is None


def test_cli_announces_the_one_time_compile_only_while_the_cache_is_empty(tmp_path, monkeypatch, capsys):
    from mlxsft.cli import _use_kernel_cache

    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    monkeypatch.setenv("MLXSFT_KERNEL_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("MLXSFT_NO_KERNEL_CACHE", raising=False)
    _use_kernel_cache(announce=True)
    assert "compiling MLX's CPU kernels once" in capsys.readouterr().err
    mlx_dir = kc.mlx_kernel_dir(mx.__version__, {"TMPDIR": str(tmp_path / "t")})
    assert mlx_dir.is_symlink()
    (mlx_dir / "libK.so").write_bytes(b"")  # a kernel is cached now (through MLX's folder)
    _use_kernel_cache(announce=True)
    assert capsys.readouterr().err == ""
