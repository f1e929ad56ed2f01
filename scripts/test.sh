#!/usr/bin/env bash
# The test command (README): runs the suite with OpenBLAS preloaded when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
blas=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
if [ -f "$blas" ] && [[ "${LD_PRELOAD:-}" != *"$blas"* ]]; then
  export LD_PRELOAD="$blas${LD_PRELOAD:+:$LD_PRELOAD}"
fi
exec python3 -m pytest -q "$@"
