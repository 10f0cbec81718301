#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the default suite (no slow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec ${PYTHON:-python3} -m pytest -q "$@"
