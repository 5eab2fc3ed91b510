#!/usr/bin/env bash
# The whole GPU part of the benchmarks in under 8 minutes (each step has its own time limit and a failed
# step does not stop the others). Run from anywhere: bash bench/gpu.sh   (PY=... to choose the python).
# Writes the *_gpu sections of bench/results.json and re-renders bench/RESULTS.md.
# --dry-run: no GPU needed; prints each step with its time limit and runs the CPU check of the AMP bench
# (bench_amp.py on the tiny smoke detector and a tiny classifier, bfloat16 autocast, nothing recorded).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-.venv/bin/python}
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
if (( DRY )); then
    echo "=== dry run: the CPU check of bench/bench_amp.py"
    timeout 300 $PY bench/bench_amp.py --task detection --device cpu --smoke --iters 3 --batch 2 --no-record || exit 1
    timeout 300 $PY bench/bench_amp.py --task classification --device cpu --iters 2 --penultimate 96 --size 64 \
        --no-record || exit 1
else
    timeout 60 $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device visible to torch; nothing to run')" || exit 2
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
status=0
start=$SECONDS
# The step limits add up to more than the whole budget when every step runs long, so each step also gets at
# most what is left of it (the 8 minutes include the 10 s grace of each kill and the final render).
BUDGET=${BUDGET:-420}
step() {  # step SECONDS command...
    local limit=$1; shift
    local left=$((BUDGET - (SECONDS - start) - 10))
    if (( left < 30 )); then echo "!!! skipped (time budget of $BUDGET s spent): $*"; status=1; return; fi
    (( limit > left )) && limit=$left
    echo "=== [$limit s] $*"
    if (( DRY )); then return; fi
    timeout --kill-after=10 "$limit" "$@" || { echo "!!! step failed or timed out: $*"; status=1; }
}
# 1. NASNet-A vs the peer ports (each also in channels_last): AMP both sides; ours as shipped (channels_last).
step 90  $PY bench/bench_model.py --device cuda --model mobile --batch 64 --iters 10 --repeats 5 --amp
step 110 $PY bench/bench_model.py --device cuda --model large --batch 16 --iters 5 --repeats 5 --amp --tag large
# 2. mixed precision vs float32 through the real trainers (early: never run on a GPU before): detection
#    (detectron2's AMPTrainer, float16) on the embedded COCO photos at 600 px; classification TRAIN.AMP bf16 /
#    fp16 (NASNet-A 6@1056, 224 px).
step 75  $PY bench/bench_amp.py --task detection --device cuda --size 600 --batch 4 --iters 15
step 60  $PY bench/bench_amp.py --task classification --device cuda --size 224 --batch 64 --iters 15
# 3. ours in NCHW: is channels_last (MODEL.NASNET.CHANNELS_LAST, measured on CPUs) the right default on a GPU?
step 60  $PY bench/bench_model.py --device cuda --model mobile --batch 64 --iters 10 --repeats 5 --amp --nchw --tag nchw
# 4. Faster R-CNN: NASNet-A mobile FPN / C4 vs R50-FPN at 800 px.
step 100 $PY bench/bench_detection.py --device cuda --size 800 --batch 4 --rois 512 --proposals 1000 --repeats 5
# 5. ours with torch.compile (compile time is not in the timing; mobile only; last: it gets what is left).
step 120 $PY bench/bench_model.py --device cuda --model mobile --batch 64 --iters 10 --repeats 5 --amp --compile --tag compile
# 6. COCO evaluation does not use the GPU; it is measured by make bench.
(( DRY )) && { echo "dry run done in $((SECONDS - start)) s"; exit 0; }
$PY bench/run_all.py --render-only
echo "GPU benchmarks done in $((SECONDS - start)) s (status $status)"
exit $status
