#!/usr/bin/env bash
# Install the project with its test extras and the PyTorch references, lint, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# PyTorch's CPU build. From the public index on Linux, `torch==2.13.0` is the CUDA build (several
# GB of nvidia packages): take it from PyTorch's own CPU wheel index, and fall back to the plain
# pin where that index cannot be reached (a machine whose package index serves the CPU build).
TORCH=torch==2.13.0
if ! python3 -m pip install -q --retries 0 --timeout 20 "$TORCH" \
    --index-url https://download.pytorch.org/whl/cpu 2>/dev/null; then
  echo "PyTorch's CPU wheel index is unreachable: installing $TORCH from the configured index" >&2
  python3 -m pip install -q "$TORCH"
fi
python3 -m pip install -q -e ".[test]"
python3 -m pip install -q --no-deps moshi==0.2.13  # Kyutai's reference; its pins pull CUDA torch
python3 -m pip install -q --no-deps hibiki-zero==0.0.4  # Kyutai's Hibiki-Zero loop (reference)
ruff check .
ruff format --check .
# MLX's Linux CPU wheel bundles the reference BLAS (about 5 GFLOP/s on one core). Where Debian's
# OpenBLAS is installed (.ci/run installs it), preload it: the same MLX, 20-30x faster matmuls.
blas=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
if [ "$(uname -s)" = Linux ] && [ -f "$blas" ] && [ -z "${LD_PRELOAD:-}" ]; then
  export LD_PRELOAD="$blas"
fi
# Temporary folders are removed after a passing run (pyproject.toml: tmp_path_retention_policy);
# skipped live-audio tests are reported loudly at the end (tests/live_audio_report.py).
python3 -m pytest -q "$@"
