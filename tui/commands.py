"""CLI wiring of `mlxsft tui [PATH]`; Textual is imported only when the command runs.

The core CLI stays headless: building the parser imports this module, which must
not import textual (a test checks `sys.modules`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlxsft.errors import MlxsftError


def add_commands(sub) -> None:
    p = sub.add_parser(
        "tui",
        help="Terminal UI: start, watch, compare and export fine-tunes.",
        description="PATH is a folder of runs (listed on the Runs screen) or one run folder (opened directly).",
    )
    p.add_argument(
        "path",
        nargs="?",
        default="runs",
        help="A folder of runs, or one run folder (default: runs/).",
    )
    p.set_defaults(handler=cmd_tui)


def cmd_tui(args) -> int:
    path = Path(args.path)
    if path.exists() and not path.is_dir():
        raise MlxsftError("expected a folder of runs or a run folder, found a file.", path=str(path))
    if not path.exists() and path != Path("runs"):
        raise MlxsftError("no such folder; give a folder of runs (default runs/) or a run folder.", path=str(path))
    from .app import MlxsftApp  # textual loads here, never at import of the CLI

    app = MlxsftApp(path)
    app.run()
    code = app.return_code or 0
    if code:  # Textual printed the traceback; say what it means and keep the exit status
        print(
            "mlxsft: error: the TUI stopped on an unexpected error (above). Runs and trainers "
            "are not affected; please report it with the traceback.",
            file=sys.stderr,
        )
    for trainer in app.running_trainers():
        print(
            f"Training goes on in the background (pid {trainer.pid}): {trainer.run_dir}\n"
            f"  watch it: mlxsft tui {trainer.run_dir}    stop it: kill -INT {trainer.pid}"
        )
    return code
