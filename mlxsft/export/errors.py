"""The one error type of `mlxsft.export`: what every export, fuse, verify, push and import raises."""

from __future__ import annotations

from ..errors import MlxsftError


class ExportError(MlxsftError):
    """An export, fuse, verify or import cannot be done as asked."""
