"""Packaging: every package folder is listed in pyproject, and tui/ installs as mlxsft.tui."""

import tomllib
from pathlib import Path

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
