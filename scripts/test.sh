#!/usr/bin/env bash
# Install the project with its test extras and the PyTorch references, lint, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0          # the CPU build; a plain `torch` pulls CUDA
python3 -m pip install -q -e ".[test]"
python3 -m pip install -q --no-deps moshi==0.2.13  # Kyutai's reference; its pins pull CUDA torch
ruff check .
ruff format --check .
# MLX's Linux CPU wheel bundles the reference BLAS (about 5 GFLOP/s on one core). Where Debian's
# OpenBLAS is installed (.ci/run installs it), preload it: the same MLX, 20-30x faster matmuls.
blas=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
if [ "$(uname -s)" = Linux ] && [ -f "$blas" ] && [ -z "${LD_PRELOAD:-}" ]; then
  export LD_PRELOAD="$blas"
fi
python3 -m pytest -q "$@"
