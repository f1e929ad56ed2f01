"""Judge a fine-tune: data pre-flight, per-checkpoint evaluation, verdicts and checkpoint choice.

- `datacheck`: `mlxsft data check` (schema, token lengths, masks, template round-trip,
  duplicates, leakage, role statistics).
- `battery` (+ `weights`, `scoring`, `sampling`, `tasks`, `suite`, `results`): `mlxsft eval`.
- `verdict`: pure rules, "still learning" / "plateau" / "overshooting", the choice
  rule and `plateau_reached` (the trainer's early-stop rule, `train/early_stop.py`); `mlxsft select`.
- `metrics`: pure metric functions; `report`: plain-text tables; `commands`: the CLI.
"""
