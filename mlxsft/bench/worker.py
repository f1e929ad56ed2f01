"""Child-process entry: run one side of a benchmark and print its result as JSON.

    python -m mlxsft.bench.worker SIDE SPEC_JSON
"""

from __future__ import annotations

import json
import sys

from .spec import BenchSpec


def run_side(side: str, spec: BenchSpec):
    if side == "mlxsft":
        from .ours import run_ours

        return run_ours(spec)
    if side == "mlx-lm":
        from .mlx_lm_side import run_mlx_lm

        return run_mlx_lm(spec)
    if side == "peft":
        from .peft_side import run_peft

        return run_peft(spec)
    raise ValueError(f"unknown benchmark side {side!r}")


def main() -> None:
    side, raw = sys.argv[1], sys.argv[2]
    result = run_side(side, BenchSpec.from_dict(json.loads(raw)))
    print("MLXSFT_BENCH_RESULT " + json.dumps(result.to_dict()), flush=True)


if __name__ == "__main__":
    main()
