#!/usr/bin/env bash
# GPU checks of the position schemes, as one script for a lent GPU (about 5 minutes on an H200):
#   1. the CUDA tests (tests/attention/test_positions_gpu.py: CUDA == CPU, SDPA == explicit, bf16 per pair);
#   2. a bf16-mixed training run with model.position=rope and eval.lengths (length evaluation on the device);
#   3. a bf16-true run with attention=sdpa model.position=alibi (ALiBi's float mask in bfloat16);
#   4. `attention-lab bench positions` on CUDA at a GPT-2-small width, T = 1024 .. 8192.
# Usage: bash benchmarks/gpu/positions_check.sh [output folder]   (default: benchmarks/results/gpu)
# Everything lands in that folder: log.txt, metrics_*.json and positions.{json,csv,png}.
set -u
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 ATTENTION_LAB_OUTPUTS=${ATTENTION_LAB_OUTPUTS:-/tmp/attention-lab-gpu-check}
log="$out/log.txt"
step() { echo "== $* ==" | tee -a "$log"; }

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$py" -c "import torch; print(torch.__version__)"; } >>"$log" 2>&1

step "1. CUDA tests"
timeout 150 "$py" -m pytest -q -p no:cacheprovider tests/attention/test_positions_gpu.py >>"$log" 2>&1
echo "exit $?" | tee -a "$log"

run() {  # run <name> <overrides...>: one training run, its metrics.json copied as metrics_<name>.json
  local name=$1; shift
  step "$name: attention-lab train $*"
  timeout 120 "$py" -m attention_lab.cli train "$@" >"/tmp/$name.txt" 2>&1
  echo "exit $?" | tee -a "$log"
  tail -n 8 "/tmp/$name.txt" >>"$log"
  local metrics
  metrics=$(ls -t "$ATTENTION_LAB_OUTPUTS"/runs/*/metrics.json 2>/dev/null | head -n 1)
  [ -n "$metrics" ] && cp "$metrics" "$out/metrics_$name.json"
}
run rope_bf16_mixed trainer=gpu trainer.precision=bf16-mixed model.position=rope data.tokenizer=char \
  trainer.max_steps=300 trainer.val_check_interval=100 'eval.lengths=[1,2,4,8]'
run alibi_bf16_true trainer=gpu trainer.precision=bf16-true attention=sdpa model.position=alibi data.tokenizer=char \
  trainer.max_steps=100 trainer.val_check_interval=50 'eval.lengths=[1,4]'

step "4. bench positions on CUDA"
timeout 200 "$py" -m attention_lab.cli bench positions --device cuda --dtype bfloat16 --d-model 768 --heads 12 \
  --n-layers 4 --batch 4 --lengths 1024 4096 8192 --repeats 5 --out "$out" >>"$log" 2>&1
echo "exit $?" | tee -a "$log"
