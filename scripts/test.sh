#!/usr/bin/env bash
# The test command (README): runs the suite with OpenBLAS preloaded when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
blas=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
if [ -f "$blas" ] && [[ "${LD_PRELOAD:-}" != *"$blas"* ]]; then
  export LD_PRELOAD="$blas${LD_PRELOAD:+:$LD_PRELOAD}"
fi
# The kernels the mlxsft command picks for this CPU (OpenBLAS 0.3.21 falls back to SSE3 ones on
# CPUs it does not know; mlxsft/blas.py), so tests run what users run.
if [ -f "$blas" ] && [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  core=$(python3 -c "from mlxsft.blas import openblas_env as e; import os; print(e(dict(os.environ)).get('OPENBLAS_CORETYPE', ''))" 2>/dev/null || true)
  if [ -n "$core" ]; then export OPENBLAS_CORETYPE="$core"; fi
fi
exec python3 -m pytest -q "$@"
