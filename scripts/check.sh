#!/usr/bin/env bash
# The checks every commit passes (CI runs them before the tests): lint, format and types.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m ruff check riselm tests benchmarks
$PY -m ruff format --check riselm tests benchmarks
$PY -m mypy riselm
