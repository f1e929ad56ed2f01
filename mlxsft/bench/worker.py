"""Child-process entry: run one side of a benchmark and print its result as JSON.

    python -m mlxsft.bench.worker SIDE SPEC_JSON

A user-facing error (bad model or data path) is printed as one marked line for the
parent to show as it is; anything else is a bug, and its traceback goes to stderr.
"""

from __future__ import annotations

import json
import sys

from ..errors import MlxsftError
from .spec import BenchSpec

# Each side is imported only in the child that runs it (mlx-lm and PyTorch are not loaded elsewhere).

RESULT_MARKER = "MLXSFT_BENCH_RESULT "
ERROR_MARKER = "MLXSFT_BENCH_ERROR "


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


def main() -> int:
    side, raw = sys.argv[1], sys.argv[2]
    try:
        result = run_side(side, BenchSpec.from_dict(json.loads(raw)))
    except MlxsftError as exc:
        print(ERROR_MARKER + json.dumps({"message": str(exc), "exit_code": exc.exit_code}), flush=True)
        return exc.exit_code
    print(RESULT_MARKER + json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
