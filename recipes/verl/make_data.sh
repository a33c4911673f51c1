#!/usr/bin/env bash
# Write the verl task datasets (one parquet row per task) for ALFWorld, WebShop and the embedded household world.
# Usage: bash recipes/verl/make_data.sh [alfworld|webshop|household|all]   (output: $HIPER_DATA, default data/hiper)
set -euo pipefail
HIPER_DATA="${HIPER_DATA:-data/hiper}"
PY="${PYTHON:-python}"
which="${1:-all}"
mk() { "$PY" -m hiper.integrations.verl.data --env "$1" --split "$2" --out "$HIPER_DATA/$3.parquet" ${4:+--n "$4"}; }
if [[ "$which" == alfworld || "$which" == all ]]; then
  mk alfworld train alfworld_train
  mk alfworld valid_seen alfworld_valid_seen 128        # §4.1: 128 validation episodes
fi
if [[ "$which" == webshop || "$which" == all ]]; then
  mk webshop train webshop_train
  mk webshop test webshop_test 128
fi
if [[ "$which" == household || "$which" == all ]]; then
  mk household train household_train
  mk household valid_seen household_valid_seen 64
fi
