#!/usr/bin/env bash
# Install riselm and what its tests need into the current Python environment.
# torch is pinned first: on these machines `torch==2.13.0` is a local CPU wheel, while an unpinned
# torch would pull several GB of CUDA packages. riselm itself only asks for a range (torch>=2.2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch" >/dev/null 2>&1; then
  $PY -m pip install -q "torch==2.13.0"
fi
$PY -m pip install -q -e ".[test]" "$@"
