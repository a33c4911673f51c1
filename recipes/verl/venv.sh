#!/usr/bin/env bash
# Build the verl 0.9.1 environment (default .venv-verl) with hiper installed in it (editable).
# Kept apart from .venv on purpose: verl's vLLM extra pins its own torch.
#
# Usage: bash recipes/verl/venv.sh [venv-dir]        (`make venv-verl` calls this)
# Env:
#   VERL_DEVICE  auto (default) | cpu | gpu. auto = gpu when `nvidia-smi -L` lists a GPU, else cpu.
#   PYTHON       interpreter for the venv (default python3.11).
#   TORCH_SPEC   CPU only: the torch to install first (default torch==2.13.0). Where pip's indexes have no
#                CPU wheel for it, also set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu, or pip pulls
#                the CUDA build (GBs).
#
# cpu: torch (TORCH_SPEC) + hiper[verl,test,webshop,alfworld] = verl==0.9.1, TransferQueue, Ray, the rest of
#      verl's base dependencies; no vLLM. Enough for tests/test_verl_plugin_installed.py (plugin registration,
#      recipes vs verl's config, agent loop, TransferQueue, advantage step, losses) -- not for training.
# gpu: verl[vllm]==0.9.1 (its own torch and vLLM) + hiper[verl,vllm,test,webshop,alfworld].
set -euo pipefail
VENV="${1:-.venv-verl}"
PY="${PYTHON:-python3.11}"
DEVICE="${VERL_DEVICE:-auto}"
if [[ "$DEVICE" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    DEVICE=gpu
  else
    DEVICE=cpu
  fi
fi
[[ "$DEVICE" == cpu || "$DEVICE" == gpu ]] || { echo "VERL_DEVICE must be auto, cpu or gpu (got $DEVICE)" >&2; exit 2; }
echo "building $VENV for $DEVICE with $PY"

"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" -U pip
if [[ "$DEVICE" == cpu ]]; then
  torch_index=()
  [[ -n "${TORCH_INDEX_URL:-}" ]] && torch_index=(--extra-index-url "$TORCH_INDEX_URL")
  "${PIP[@]}" "${torch_index[@]}" "${TORCH_SPEC:-torch==2.13.0}"   # first, so verl's deps keep this torch
  "${PIP[@]}" -e ".[verl,test,webshop,alfworld]"
else
  "${PIP[@]}" "verl[vllm]==0.9.1"                 # torch, vLLM, Ray, TransferQueue and the rest
  "${PIP[@]}" -e ".[verl,vllm,test,webshop,alfworld]"
fi
# Fails (non-zero) unless every hiper component registered with verl through the entry point.
"$VENV/bin/python" - <<'EOF'
import verl  # loads the `verl.plugins` entry points, hiper's among them
import hiper.integrations.verl.plugin as plugin
import torch

bad = {k: v for k, v in plugin.LAST_REPORT.items() if not (v == "ok" or v.startswith("ok: "))}
print("verl", verl.__version__, "torch", torch.__version__, "plugin", plugin.LAST_REPORT)
assert verl.__version__ == "0.9.1" and not bad, bad
EOF
