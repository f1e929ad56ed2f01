"""Training: events, schedules, the compiled step, checkpoints and the loop."""
