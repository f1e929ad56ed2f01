"""The core is headless: importing any module outside tui/ (the CLI included) never loads textual or rich."""

import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlxsft"


def core_modules() -> list[str]:
    """Every module under mlxsft/ (tui/ lives outside it; a mlxsft/tui link is not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(PACKAGE):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                parts = ["mlxsft", *Path(dirpath).relative_to(PACKAGE).parts, name[:-3]]
                found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_every_core_module_is_listed():
    modules = core_modules()
    assert {
        "mlxsft.cli",
        "mlxsft.train.loop",
        "mlxsft.export.verify",
        "mlxsft.judge.battery",
        "mlxsft.models.fit",
        "mlxsft.bench.runner",
        "mlxsft.events",
    } <= set(modules)
    assert not any(m.startswith("mlxsft.tui") for m in modules)


def test_core_never_imports_textual_or_rich():
    code = (
        "import importlib, sys\n"
        f"for m in {core_modules()!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "", f"core imported UI modules: {out.stdout}"
