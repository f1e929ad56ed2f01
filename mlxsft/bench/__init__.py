"""`mlxsft bench`: time this project's training step against mlx-lm's (and PyTorch + PEFT's).

Each side runs in its own child process (fresh memory counters, no shared compile
cache) on the same model, data, adapter shape, batch size and seed; the parent
prints one table of tokens/s, ms/step, peak memory and padding waste, with ratios.
"""
