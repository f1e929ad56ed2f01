"""The one exception type users see: a problem with their input, said plainly.

The CLI catches `MlxsftError`, prints its message (no traceback) and exits with
`exit_code`. Messages name the file, the line or row, and what to do.
"""

from __future__ import annotations


class MlxsftError(Exception):
    """A user-facing error: bad recipe, bad data, missing model, failed run."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.detail = message  # the message without its "path:line: " location (for reports that list it)
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class RecipeError(MlxsftError):
    """The recipe (YAML or --set overrides) is invalid."""


class DataError(MlxsftError):
    """A data file is unreadable, malformed or has rows that cannot be trained on."""


class ModelError(MlxsftError):
    """The model path or hub id cannot be loaded."""


class TrainingError(MlxsftError):
    """The run stopped: non-finite loss, or an interrupted run that cannot resume."""

    exit_code = 3
