#!/usr/bin/env bash
# The main job: install riselm, then run the embedded RISE demo on the synthetic task (CPU, minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
exec ${PYTHON:-python3} -m riselm.cli demo "$@"
