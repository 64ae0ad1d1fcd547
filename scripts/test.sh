#!/usr/bin/env bash
# Install the project with its test extras and the PyTorch references, lint, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0          # the CPU build; a plain `torch` pulls CUDA
python3 -m pip install -q -e ".[test]"
python3 -m pip install -q --no-deps moshi         # Kyutai's reference; its pins pull CUDA torch
ruff check .
ruff format --check .
python3 -m pytest -q "$@"
