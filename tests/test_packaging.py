"""Packaging: every package folder is listed in pyproject, and tui/ installs as mlxsft.tui."""

import importlib.metadata
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mlxsft").rglob("__init__.py")}
    found |= {
        "mlxsft.tui." + ".".join(p.parent.relative_to(ROOT / "tui").parts) if p.parent != ROOT / "tui" else "mlxsft.tui"
        for p in (ROOT / "tui").rglob("__init__.py")
    }
    assert found <= listed, f"package folders missing from pyproject: {sorted(found - listed)}"
    assert config["package-dir"]["mlxsft.tui"] == "tui"
    assert "tui" not in listed


def _site_dirs() -> list[str]:
    """Site-packages of the environment running the tests, then of its base interpreter."""
    here = sysconfig.get_paths()
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    dirs: list[str] = []
    for path in (here["purelib"], here["platlib"], base["purelib"], base["platlib"]):
        if path not in dirs and Path(path).is_dir():
            dirs.append(path)
    return dirs


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _build_backend_dir(dirs: list[str]) -> str:
    """The first site dir holding a setuptools new enough for pyproject's [build-system].

    A venv made by `python3 -m venv` (the README's setup) carries the setuptools its
    interpreter bundles (65 for Python 3.11), older than the build needs; the base
    interpreter's is usually newer. No network in tests, so a suitable one must be here.
    """
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    wanted = _version(next(r for r in requires if r.startswith("setuptools")).partition(">=")[2])
    found = []
    for path in dirs:
        for dist in importlib.metadata.distributions(path=[path]):
            if (dist.metadata["Name"] or "").lower() == "setuptools":
                found.append(f"{dist.version} in {path}")
                if _version(dist.version) >= wanted:
                    return path
    raise AssertionError(
        f"no setuptools >= {'.'.join(map(str, wanted))} to build with offline (found: {found}); "
        "install one: pip install 'setuptools>=68'"
    )


def test_pip_install_in_a_fresh_venv(tmp_path):
    """`pip install .` into a new venv gives the `mlxsft` command and `mlxsft.tui`, no bare `tui`.

    Works from the system interpreter and from the README's venv alike: the new venv sees
    the running environment's packages (pip, the dependencies) through a .pth file, with a
    setuptools that meets the build requirement first (`--system-site-packages` would show
    the base interpreter's packages instead of the venv's).
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    inner = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirs = _site_dirs()
    (Path(inner) / "_outer_env.pth").write_text("\n".join([_build_backend_dir(dirs), *dirs]) + "\n")
    # no network in tests: build from this checkout with the setuptools found above, no dependencies
    build = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    installed = Path(inner)
    assert (installed / "mlxsft" / "tui" / "__init__.py").is_file()
    assert not (installed / "tui").exists()
    out = subprocess.run(
        [str(venv / "bin" / "mlxsft"), "doctor"], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert "mlx-lm" in out.stdout and "blas" in out.stdout
