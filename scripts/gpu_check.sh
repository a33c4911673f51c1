#!/usr/bin/env bash
# One run of hiper's GPU checks on a CUDA machine (about 7 minutes on one H200); results in docs/scale_out.md.
#
#   bash scripts/gpu_check.sh                 # on a GPU machine, from the repo root; results in $OUT (or a temp dir)
#   GPU_CHECK_SMALL=1 bash scripts/gpu_check.sh   # the same steps at toy sizes on CPU: checks the script only
#
# Needs torch, transformers and the Qwen2.5 tokenizer folder under $HIPER_SHARED/models (default ../shared); runs
# hiper from this checkout (PYTHONPATH), so nothing is installed. Steps, each under its own time limit, so one that
# fails or overruns does not stop the others (summary in $OUT/steps.tsv, every output in $OUT/gpu_check.log):
#   1. info      GPU, driver, torch/transformers versions
#   2. model     a random-weight model of Qwen2.5-1.5B's shape (bf16, Qwen2.5 vocabulary) saved to a temp folder
#   3. generate  hiper bench generate: HFEngine vs plain model.generate, 128 household prompts x 256 new tokens
#   4. iteration hiper bench iteration: the alfworld_qwen2.5_1.5b preset (paper batch shape: 128 envs, 512 new
#                tokens, separate critic, bf16, gradient checkpointing) on the household world, episodes cut to 2
#                turns and the critic in bf16 (the preset: float32) so that an iteration fits the budget
#   5. tests     pytest tests/test_cuda.py tests/test_config.py (runs beside step 6: both use small models)
#   6. train     hiper train: the cpu_demo recipe with a from-scratch model 33x the demo's, on CUDA, 10 iterations
set -u
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
SMALL=${GPU_CHECK_SMALL:-0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HIPER_SHARED=${HIPER_SHARED:-$PWD/../shared}
TOK=$HIPER_SHARED/models/qwen2.5-instruct-tokenizer
WORK=$(mktemp -d)
LOG=$OUT/gpu_check.log
mkdir -p "$OUT"
printf 'step\trc\tseconds\n' >"$OUT/steps.tsv"

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log everything, record rc and wall time
    local name=$1 limit=$2 t0 rc
    shift 2
    t0=$(date +%s)
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" | tee -a "$OUT/steps.tsv"
}

if [ "$SMALL" = 1 ]; then
    DEVICE=cpu; SHAPE=tiny; NP=8; NEW=16; GEN_NEW=16; ENVS=4; MINI=8; MICRO=4; ITERS=2
    TRAIN_SIZE='model.tiny={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2}'
    TRAIN_EXTRA=(sft.episodes=8 sft.epochs=1 env.eval_episodes=4 env.n_envs=4 env.max_steps=3)
else
    DEVICE=cuda; SHAPE=qwen2.5-1.5b; NP=128; NEW=512; GEN_NEW=256; ENVS=128; MINI=256; MICRO=16; ITERS=10
    # 24.7M parameters (the demo's: 0.74M): hidden 512, 8 layers
    TRAIN_SIZE='model.tiny={hidden_size: 512, intermediate_size: 1536, num_hidden_layers: 8, num_attention_heads: 8, num_key_value_heads: 2}'
    TRAIN_EXTRA=(rollout.batch_size=96 env.eval_episodes=96)
fi
MODEL=$WORK/random-$SHAPE

step info 30 bash -c "nvidia-smi || true; $PY -c 'import sys, torch, transformers; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0)); print(\"transformers\", transformers.__version__)'"

step model 60 "$PY" -c "
import sys
from transformers import AutoTokenizer
from hiper.bench.workload import random_model_dir
print(random_model_dir(sys.argv[1], AutoTokenizer.from_pretrained(sys.argv[2]), folder=sys.argv[3], device=sys.argv[4]))
" "$SHAPE" "$TOK" "$MODEL" "$DEVICE"

step generate 110 bash -c "$PY -m hiper.cli bench generate --model '$MODEL' --n-prompts $NP --max-new-tokens $GEN_NEW \
    --repeats 1 --device $DEVICE --dtype bfloat16 | tee '$OUT/generate.json'"

step iteration 240 bash -c "$PY -m hiper.cli bench iteration --config alfworld_qwen2.5_1.5b --iterations 2 --warmup 1 \
    env.name=household 'env.kwargs={}' env.max_steps=2 env.n_envs=$ENVS rollout.max_new_tokens=$NEW \
    actor.mini_batch_size=$MINI actor.micro_batch_size=$MICRO model.path='$MODEL' critic.path='$MODEL' \
    critic.dtype=bfloat16 trainer.device=$DEVICE output_dir='$WORK/bench' | tee '$OUT/iteration.json'"

# tests beside the training run (both small); the training run's iteration times are therefore upper bounds
step tests 130 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_config.py &
TESTS=$!
step train 130 "$PY" -m hiper.cli train -o "$WORK/run" --overwrite "$TRAIN_SIZE" trainer.device=$DEVICE \
    trainer.total_iterations=$ITERS trainer.eval_every=$ITERS trainer.num_threads=4 "${TRAIN_EXTRA[@]}"
wait $TESTS
cp "$WORK/run/metrics.jsonl" "$OUT/train_metrics.jsonl" 2>/dev/null
echo "results in $OUT"; cat "$OUT/steps.tsv"
