#!/usr/bin/env bash
# One node (4-8 GPUs): hiper on verl 0.9.1 v1 (trainer mode hiper_sync, agent loop hiper_plan_execute, vLLM).
# Usage: bash recipes/verl/run_single_node.sh <recipe> [hydra overrides...]
#   recipe: alfworld_qwen2.5_1.5b | alfworld_qwen2.5_7b | webshop_qwen2.5_1.5b | webshop_qwen2.5_7b
# Env: HIPER_DATA (datasets from make_data.sh, default data/hiper), NGPUS (overrides trainer.n_gpus_per_node),
#      PYTHON (default: python of the active .venv-verl).
set -euo pipefail
recipe="${1:?usage: run_single_node.sh <recipe> [overrides...]}"; shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HIPER_DATA="${HIPER_DATA:-data/hiper}"
export VERL_USE_EXTERNAL_PLUGINS="${VERL_USE_EXTERNAL_PLUGINS:-auto}"   # loads the `hiper` verl.plugins entry point
PY="${PYTHON:-python}"
extra=()
[[ -n "${NGPUS:-}" ]] && extra+=("trainer.n_gpus_per_node=${NGPUS}")
"$PY" -c "import verl, hiper.integrations.verl.plugin as p; bad={k: v for k, v in p.LAST_REPORT.items() if v != 'ok'}; assert not bad, bad" \
  || { echo "hiper verl plugin did not register (see above); is hiper installed in this env (pip install -e '.[verl]')?" >&2; exit 1; }
exec "$PY" -m verl.trainer.main_ppo --config-path="$here" --config-name="$recipe" "${extra[@]}" "$@"
