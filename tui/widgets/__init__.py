"""Widgets of the mlxsft TUI, one per module."""
