"""The Textual terminal UI, installed as `mlxsft.tui` (never as a top-level `tui`).

It renders the core's typed event stream and calls the core's API; the core never
imports it.
"""
