"""Packaging: every package folder is listed in pyproject, and tui/ installs as mlxsft.tui."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mlxsft").rglob("__init__.py")}
    found |= {"mlxsft.tui." + ".".join(p.parent.relative_to(ROOT / "tui").parts) if p.parent != ROOT / "tui"
              else "mlxsft.tui" for p in (ROOT / "tui").rglob("__init__.py")}
    assert found <= listed, f"package folders missing from pyproject: {sorted(found - listed)}"
    assert config["package-dir"]["mlxsft.tui"] == "tui"
    assert "tui" not in listed


def test_pip_install_in_a_fresh_venv(tmp_path):
    """`pip install .` into a new venv gives the `mlxsft` command and `mlxsft.tui`, no bare `tui`."""
    import subprocess
    import sys

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                   check=True)
    py = venv / "bin" / "python"
    # pip, setuptools and the dependencies come from the system site-packages (no network in
    # tests); the package itself is built from this checkout and installed into the venv
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(ROOT)],
                   check=True, capture_output=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    installed = Path(site)
    assert (installed / "mlxsft" / "tui" / "__init__.py").is_file()
    assert not (installed / "tui").exists()
    out = subprocess.run([str(venv / "bin" / "mlxsft"), "doctor"], check=True, capture_output=True,
                         text=True, cwd=tmp_path)
    assert "mlx-lm" in out.stdout and "blas" in out.stdout
