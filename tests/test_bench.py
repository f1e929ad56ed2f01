"""`mlxsft bench` runs each trainer in a child process on the same work and compares them."""

import json
import subprocess
import sys

from .conftest import QUICKSTART_DATA


def test_bench_against_mlx_lm_and_peft(tiny_llama, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "mlxsft.cli", "bench", "--model", str(tiny_llama), "--data", str(QUICKSTART_DATA),
         "--batch-size", "8", "--max-seq-length", "128", "--steps", "4", "--warmup", "2",
         "--against", "mlx-lm", "--against", "peft", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "ours/mlx-lm: tok/s x" in result.stdout and "ours/peft" in result.stdout
    report = json.loads(out.read_text())
    best = report["best"]
    for side in ("mlxsft", "mlx-lm", "peft"):
        assert best[side]["steps"] == 4 and best[side]["tokens_per_second"] > 0
        assert 0 < best[side]["trained_tokens"] <= best[side]["tokens"] <= best[side]["padded_positions"]
    # really length-sorted batches waste far less padding than mlx-lm's unsorted ones
    assert best["mlxsft"]["padding_waste"] < 0.1 < best["mlx-lm"]["padding_waste"]
    # the same batches are fed to PEFT, so both sides process the same tokens
    assert best["peft"]["tokens"] == best["mlxsft"]["tokens"]
    assert set(report["ratios"]) == {"mlx-lm", "peft"}
