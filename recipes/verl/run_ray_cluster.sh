#!/usr/bin/env bash
# Several nodes: a Ray cluster, then one verl job over it (every node needs the same .venv-verl with hiper
# installed, the model weights or HF cache, and the datasets at the same $HIPER_DATA path).
#   head node:      bash recipes/verl/run_ray_cluster.sh head
#   each worker:    bash recipes/verl/run_ray_cluster.sh worker <head-ip>
#   then, on head:  bash recipes/verl/run_ray_cluster.sh submit <recipe> trainer.nnodes=<N> [overrides...]
#   status / stop:  ray status ; bash recipes/verl/run_ray_cluster.sh stop
set -euo pipefail
cmd="${1:?usage: run_ray_cluster.sh head|worker <head-ip>|submit <recipe> [overrides]|stop}"; shift
PORT="${RAY_PORT:-6379}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "$cmd" in
  head)
    ray start --head --port="$PORT" --dashboard-host=0.0.0.0 --num-gpus="${NGPUS:-8}" ;;
  worker)
    head_ip="${1:?worker needs the head node ip}"
    ray start --address="${head_ip}:${PORT}" --num-gpus="${NGPUS:-8}" ;;
  submit)
    recipe="${1:?submit needs a recipe name}"; shift
    export RAY_ADDRESS="${RAY_ADDRESS:-auto}"          # main_ppo's ray.init() joins the running cluster
    exec bash "$here/run_single_node.sh" "$recipe" "trainer.n_gpus_per_node=${NGPUS:-8}" "$@" ;;
  stop)
    ray stop ;;
  *)
    echo "unknown command $cmd" >&2; exit 2 ;;
esac
