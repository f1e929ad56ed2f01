"""Probe sets shipped with mlxsft as data (general.jsonl: neutral text for regression checks)."""
