"""A persistent cache for the CPU kernels `mx.compile` builds, so the compile cost is paid once.

MLX's CPU backend compiles every fused graph with g++ into
`temp_directory_path()/mlx/<mlx version>/cpu` (`temp_directory_path` reads TMPDIR, TMP,
TEMP, TEMPDIR, else /tmp) and reuses a kernel whose `lib*.so` is already there. /tmp
does not survive a reboot, so a LoRA step paid about 20 s of g++ on every first run.

This module points that folder at a per-user cache keyed by MLX version and the CPU's
instruction set (a cache in a shared home must not hand AVX2 kernels to a CPU without
them): `$XDG_CACHE_HOME/mlxsft/mlx-kernels/mlx-<version>-<arch>-<isa>` (0700).

- MLX's folder is missing (after a reboot): it becomes a symlink to the cache.
- It is a real folder of ours (MLX ran before mlxsft did): it is left in place (a process
  may be compiling into it); finished kernels are copied both ways, atomically.
- Anything else (another user's folder, no permission): left alone, nothing cached.

A kernel truncated by a killed g++ would make MLX's dlopen fail on every later run, so
kernels whose ELF section table runs past the end of the file are removed on setup.
MLXSFT_KERNEL_CACHE=DIR picks the cache root; MLXSFT_NO_KERNEL_CACHE=1 turns it off.
"""

from __future__ import annotations

import atexit
import os
import platform
import struct
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .safeio import atomic_copy_file

# instruction-set extensions that change what g++ may emit for MLX's kernels
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_fp16",
    "avx512_bf16",
    "asimd",
    "asimdhp",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
)
SETTLE_S = 120.0  # a kernel younger than this may still be being written by another process


@dataclass
class KernelCacheStatus:
    cache_dir: Path | None  # the persistent folder, None when not in use
    mlx_dir: Path  # where MLX looks for its kernels
    kernels: int  # kernels already cached when set up
    mode: str  # "linked", "synced", or "off: <why>"

    @property
    def first_use(self) -> bool:
        return self.cache_dir is not None and self.kernels == 0

    def describe(self) -> str:
        if self.cache_dir is None:
            return f"{self.mode} (MLX compiles into {self.mlx_dir})"
        return f"{self.cache_dir} ({self.kernels} kernels, {self.mode})"


def mlx_kernel_dir(version: str, env: dict | None = None) -> Path:
    """The folder MLX's CPU compiler writes to, as libstdc++'s temp_directory_path picks it."""
    env = os.environ if env is None else env
    for name in ("TMPDIR", "TMP", "TEMP", "TEMPDIR"):
        if env.get(name):
            return Path(env[name]) / "mlx" / version / "cpu"
    return Path("/tmp/mlx") / version / "cpu"


def mlx_version() -> str:
    """MLX's version (the folder name its compiler uses) without importing MLX (CLI start-up)."""
    try:
        return metadata.version("mlx")
    except metadata.PackageNotFoundError:
        import mlx.core as mx

        return mx.__version__


def isa_tag() -> str:
    """`<arch>-<extensions>`, e.g. `x86_64-avx.avx2.fma.f16c.avx512f`."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    present = [f for f in ISA_FLAGS if f in flags]
    return f"{platform.machine()}-{'.'.join(present) or 'base'}"


def cache_root(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("MLXSFT_KERNEL_CACHE"):
        return Path(env["MLXSFT_KERNEL_CACHE"])
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mlxsft" / "mlx-kernels"


def kernel_complete(path: Path) -> bool:
    """A whole ELF shared object: its section header table (written last by ld) fits in the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # ELF64: x86-64 and arm64
        return False
    order = "<" if head[5] == 1 else ">"
    shoff = struct.unpack_from(order + "Q", head, 0x28)[0]
    shentsize, shnum = struct.unpack_from(order + "HH", head, 0x3A)
    return size >= shoff + shentsize * shnum > 0


def _kernels(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.name.endswith(".so") and p.is_file()]
    except OSError:
        return []


def _settled(path: Path, now: float, settle_s: float = SETTLE_S) -> bool:
    try:
        return now - path.stat().st_mtime >= settle_s
    except OSError:
        return False


def drop_broken(folder: Path) -> int:
    """Remove truncated kernels (a killed g++) so MLX rebuilds them instead of failing dlopen."""
    now, dropped = time.time(), 0
    for lib in _kernels(folder):
        if _settled(lib, now) and not kernel_complete(lib):
            lib.unlink(missing_ok=True)
            dropped += 1
    return dropped


def sync_kernels(src: Path, dst: Path, settle_s: float = SETTLE_S) -> int:
    """Copy finished kernels that `dst` lacks (each by temp file + rename); returns the count."""
    have = {p.name for p in _kernels(dst)}
    now, copied = time.time(), 0
    for lib in _kernels(src):
        if lib.name not in have and _settled(lib, now, settle_s) and kernel_complete(lib):
            # no fsync: a cache, and a copy lost in a crash is rebuilt by MLX
            atomic_copy_file(lib, dst / lib.name, mode=0o700, fsync=False)
            copied += 1
    return copied


def _link(mlx_dir: Path, cache: Path) -> str:
    """Make MLX's folder point at the cache; returns the mode, or raises OSError."""
    if mlx_dir.is_symlink():
        if mlx_dir.resolve() == cache.resolve():
            return "linked"
        raise OSError(f"{mlx_dir} is a link to {os.readlink(mlx_dir)}")
    if not mlx_dir.exists():
        mlx_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            mlx_dir.symlink_to(cache, target_is_directory=True)
            return "linked"
        except FileExistsError:  # another process got there first
            return _link(mlx_dir, cache)
    if mlx_dir.is_dir() and mlx_dir.stat().st_uid == os.getuid():
        sync_kernels(mlx_dir, cache)
        sync_kernels(cache, mlx_dir)
        atexit.register(_harvest, mlx_dir, cache)
        return "synced"
    raise OSError(f"{mlx_dir} belongs to another user")


def _harvest(mlx_dir: Path, cache: Path) -> None:
    try:  # at exit this process's own compiles are finished, so no settling time
        sync_kernels(mlx_dir, cache, settle_s=0.0)
    except OSError:
        pass


def use_persistent_kernel_cache(env: dict | None = None) -> KernelCacheStatus:
    """Point MLX's CPU kernel folder at this user's persistent cache (see the module doc)."""
    env = os.environ if env is None else env
    version = mlx_version()
    mlx_dir = mlx_kernel_dir(version, env)
    if env.get("MLXSFT_NO_KERNEL_CACHE"):
        return KernelCacheStatus(None, mlx_dir, 0, "off: MLXSFT_NO_KERNEL_CACHE is set")
    cache = cache_root(env) / f"mlx-{version}-{isa_tag()}"
    try:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        drop_broken(cache)
        mode = _link(mlx_dir, cache)
        kernels = len(_kernels(cache))
    except OSError as exc:
        return KernelCacheStatus(None, mlx_dir, 0, f"off: {exc}")
    return KernelCacheStatus(cache, mlx_dir, kernels, mode)


def first_use_message(status: KernelCacheStatus) -> str | None:
    """The one-time notice for a run that will compile the CPU kernels, or None."""
    if not status.first_use:
        return None
    return (
        f"mlxsft: first run with this MLX version on this CPU: compiling MLX's CPU kernels once "
        f"(about 20 s for a LoRA step); they are kept in {status.cache_dir} for later runs."
    )
