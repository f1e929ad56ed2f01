"""Training, in mlx-lm's shape: prepared state plus a function.

- `prepare.prepare(recipe, run, world) -> Prepared`: model, data, optimizer, compiled steps,
  the resume point; frozen, and nothing written yet.
- `loop.train(prepared, emit, stop, *, loss=None, batches=None)`: the steps, reports,
  evaluations, early stop (`early_stop`) and checkpoints (`checkpoint`); `take_step` is
  one optimizer step returning its `StepStats`.
- `run.run_training`: the entry point the CLI calls (run folder, events file, signals).
- `step` (compiled step, `StepLoss`), `batches`, `schedule`, `autobatch`, `cpu_ops`, `distributed`.
"""
