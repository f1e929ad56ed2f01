"""The core is headless: importing it (and the CLI) never loads textual or rich."""

import subprocess
import sys

CORE_MODULES = [
    "mlxsft.config", "mlxsft.model", "mlxsft.rundir", "mlxsft.data.formats", "mlxsft.data.masking",
    "mlxsft.data.batching", "mlxsft.train.loop", "mlxsft.train.events", "mlxsft.cli",
]


def test_core_never_imports_textual_or_rich():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORE_MODULES)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core imported UI modules: {out.stdout}"
