#!/usr/bin/env bash
# Build .venv-verl: verl 0.9.1 with its vLLM engine (its own torch 2.11 / vLLM 0.24 pins) plus hiper.
# Kept apart from .venv on purpose: verl's engine extras pin a different torch. Needs a CUDA machine.
# Usage: bash recipes/verl/venv.sh [venv-dir]   (default .venv-verl)
set -euo pipefail
VENV="${1:-.venv-verl}"
PY="${PYTHON:-python3.11}"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -U pip
"$VENV/bin/pip" install "verl[vllm]==0.9.1"            # torch, vLLM, Ray, TransferQueue and the rest
"$VENV/bin/pip" install -e ".[verl,vllm,alfworld,webshop,test]"
"$VENV/bin/python" -c "import verl, hiper.integrations.verl.plugin as p; print('verl', verl.__version__, p.LAST_REPORT)"
