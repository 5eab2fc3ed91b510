#!/usr/bin/env bash
# The first checks to run on a GPU machine, the most important first, within a fixed budget (9 minutes).
#
#   bash bench/gpu.sh [--budget SECONDS] [--out DIR] [--skip STEP]... [--no-setup] [--dry-run] [--help]
#
# On a device machine with a time limit per command, set up first, as its own command (detectron2's source build
# alone can take many minutes; setup is outside the 540 s budget), then run the steps:
#   bash scripts/setup_env.sh                      (TORCH_CUDA=cu128 on a driver older than 580, see README)
#   bash bench/gpu.sh --no-setup --out "$OUT"      (the results file and log under $OUT, so they come back)
# Without --no-setup it runs scripts/setup_env.sh itself first (with nothing changed it reinstalls nothing; an
# unset TORCH_CUDA keeps the build the venv was set up with); setup time is printed, not part of the budget. Then
# each step runs under its own fixed time cap (`timeout`); a step that fails or times out is recorded and the next
# runs:
#   1 env           the NVIDIA driver, torch's CUDA build, each device, bf16 support. Without a usable GPU the
#                   run stops here, with one line saying why (exit 2)
#   2 gpu_tests     pytest -m gpu on the test files that mark tests gpu (grep -rl "mark.gpu" tests/), not a
#                   collection of the whole suite
#   3 cls_resume    nasnet-det train (configs/train/cifar10_smoke.yaml) on CUDA with TRAIN.AMP bf16, killed (kill
#                   -9) after its first checkpoint, resumed with --resume to the end (bench/gpu_checks.py)
#   4 det_resume    tools/train_net.py (configs/detection/smoke-nasnet-c4.yaml) on CUDA with SOLVER.AMP.ENABLED,
#                   killed after its first checkpoint, rerun (it resumes) to the end
#   5 model_mobile  NASNet-A mobile inference and training step vs pretrainedmodels nasnetamobile, bf16 autocast
#   6 model_large   NASNet-A large, the same vs timm nasnetalarge
#   7 latency       the lut latency estimator against measured latency, on CUDA
#   8 workers       the GPU each local search worker lands on (SEARCH.OBJECTIVE latency, min(4, GPUs) workers)
# The check for a usable GPU (20 s at most), each cap plus 5 s for `timeout` to kill a step that ignores SIGTERM,
# and 10 s for the report fit in the budget.
#
# Output: ONE results file, DIR/<UTC date-time>-<gpu>.json (each step's outcome, the env, each check's section and
# every benchmark row with its ratio against the peer), and the whole log beside it (.log); both paths are printed.
#
#   --budget S   seconds for the steps (default 540 = 9 minutes): steps are taken in order while their caps fit,
#                the others are recorded as skipped
#   --out DIR    where the results file and the log go (default bench/gpu_results)
#   --skip STEP  leave a step out (repeatable; the names above; env cannot be skipped)
#   --no-setup   use $PY (default .venv/bin/python) as it is: no scripts/setup_env.sh
#   --dry-run    print the steps with their caps and check that they fit the budget; runs nothing
# Exit: 0 every step that ran is ok, 1 a step failed or timed out, 2 bad arguments, setup failed or no usable GPU.
# (Set PY to another interpreter to use it; a path with spaces is fine.)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-.venv/bin/python}
STEPS="env gpu_tests cls_resume det_resume model_mobile model_large latency workers"
GATE_S=20        # the check for a usable GPU before step 1
GRACE=5          # seconds `timeout --kill-after` gives a step after SIGTERM
REPORT_S=10      # the final report
BUDGET=540
OUT=bench/gpu_results
DRY=0
SETUP=1
SKIP=" "

die() { echo "bench/gpu.sh: $*" >&2; exit 2; }
while (( $# )); do
    case "$1" in
        --budget) [[ "${2:-}" =~ ^[0-9]+$ && "$2" -gt 0 ]] || die "--budget needs a number of seconds > 0, got '${2:-}'"
                  BUDGET=$2; shift ;;
        --out) [[ -n "${2:-}" ]] || die "--out needs a folder"; OUT=$2; shift ;;
        --skip) [[ " $STEPS " == *" ${2:-} "* ]] || die "--skip: unknown step '${2:-}' (steps: $STEPS)"
                [[ "$2" == env ]] && die "--skip env: step 1 cannot be skipped (it checks that there is a usable GPU)"
                SKIP+="$2 "; shift ;;
        --no-setup) SETUP=0 ;;
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

status=0
planned=$GATE_S  # seconds the run so far may take (the GPU check, then caps + kill grace)
step_index=0
TSV=""
step() {  # step NAME CAP command...: run it under its cap (or, in a dry run, print it)
    local name=$1 cap=$2; shift 2
    local state="" n=$(( ++step_index ))
    if [[ "$SKIP" == *" $name "* ]]; then
        state="skipped (--skip)"
    elif (( planned + cap + GRACE + REPORT_S > BUDGET )); then
        state="skipped (over budget)"
    else
        planned=$(( planned + cap + GRACE ))
    fi
    if (( DRY )); then
        printf '%d %-13s %3d s  %s%s\n' "$n" "$name" "$cap" "$*" "${state:+  [$state]}"
        return
    fi
    if [[ -n "$state" ]]; then
        echo "=== $n $name: $state" | tee -a "$LOG"
        printf '%s\t%s\t\t\t%s\t%s\n' "$name" "$cap" "$state" "$*" >> "$TSV"
        return
    fi
    echo "=== $n $name [cap $cap s]: $*" | tee -a "$LOG"
    local start=$SECONDS rc
    timeout --kill-after=$GRACE "$cap" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if (( rc == 0 )); then state=ok
    elif (( rc == 124 || rc == 137 )); then state="timed out"; status=1
    else state="failed (exit $rc)"; status=1
    fi
    echo "=== $n $name: $state in $((SECONDS - start)) s" | tee -a "$LOG"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$cap" "$rc" "$((SECONDS - start))" "$state" "$*" >> "$TSV"
}

# The test files with gpu-marked tests: collecting the whole suite (every detectron2 / Ray import) costs tens of
# seconds of the step's cap for tests -m gpu would deselect anyway.
mapfile -t GPU_TEST_FILES < <(grep -rlE "mark\.gpu\b" tests --include='*.py' | sort)
(( ${#GPU_TEST_FILES[@]} )) || GPU_TEST_FILES=(tests)

steps() {
    # 1. the environment; the gate before it has already stopped a run without a usable GPU
    step env          30 "$PY" bench/gpu_checks.py env
    # 2. the tests that need CUDA (skipped everywhere else)
    step gpu_tests    70 "$PY" -m pytest -q -p no:cacheprovider -m gpu "${GPU_TEST_FILES[@]}"
    # 3-4. the trainers as they ship on a GPU: bf16 / AMP, a kill -9 and a resume
    step cls_resume   60 "$PY" bench/gpu_checks.py train-resume --task classification
    step det_resume   75 "$PY" bench/gpu_checks.py train-resume --task detection
    # 5-6. NASNet-A vs the peer ports (the peers also in channels_last), bf16 autocast both sides as TRAIN.AMP ships
    step model_mobile 75 "$PY" bench/bench_model.py --device cuda --model mobile --batch 64 --iters 10 --repeats 3 --amp bf16
    step model_large  80 "$PY" bench/bench_model.py --device cuda --model large --batch 16 --iters 4 --repeats 3 --amp bf16 --tag large
    # 7. the latency estimators on the GPU: lut against measure
    step latency      40 "$PY" bench/bench_latency_lut.py --device cuda --cells 10 --repeats 5
    # 8. where the search's workers land
    step workers      40 "$PY" bench/gpu_checks.py workers --estimator measure SEARCH.LATENCY.DEVICE cuda
}

if (( DRY )); then
    echo "bench/gpu.sh dry run: the steps, their caps, and what runs (budget $BUDGET s)"
    steps
    total=$(( planned + REPORT_S ))
    if (( total <= BUDGET )); then
        echo "GPU check ${GATE_S} s + caps + ${GRACE} s kill grace each + ${REPORT_S} s report = $total s <= budget $BUDGET s"
    else
        echo "GPU check ${GATE_S} s + caps + ${GRACE} s kill grace each + ${REPORT_S} s report = $total s > budget $BUDGET s"
        exit 1
    fi
    exit 0
fi

# --------------------------------------------------------------------------- set-up (outside the budget)
if (( SETUP )); then
    setup_start=$SECONDS
    bash scripts/setup_env.sh || die "setup failed (scripts/setup_env.sh exit $?; its output is above)"
    SETUP_S=$((SECONDS - setup_start))
    echo "bench/gpu.sh: setup took $SETUP_S s (not part of the $BUDGET s budget)"
else
    SETUP_S=""
fi
[[ -x "$PY" ]] || die "stopped at step 1 (env): no python at $PY (run without --no-setup, or set PY)"
# --------------------------------------------------------------------------- no usable GPU: one line, exit 2
run_start=$SECONDS
GPU=$(timeout "$GATE_S" "$PY" bench/gpu_checks.py gate) || die "stopped at step 1 (env): ${GPU:-the check of CUDA failed}"

mkdir -p "$OUT" || die "--out: cannot create $OUT"
STEM="$OUT/$(date -u +%Y%m%d-%H%M%S)-$GPU"
export BENCH_RESULTS_JSON="$STEM.json"   # bench/_common.record and bench/gpu_checks.py write their sections here
LOG="$STEM.log"
TSV="$STEM.steps.tsv"
: > "$TSV"
echo "bench/gpu.sh: results -> $BENCH_RESULTS_JSON, log -> $LOG; budget $BUDGET s" | tee "$LOG"
[[ -n "$SETUP_S" ]] && echo "setup took $SETUP_S s (outside the budget)" >> "$LOG"
steps
timeout "$REPORT_S" "$PY" bench/gpu_checks.py report --steps "$TSV" --log "$LOG" --budget "$BUDGET" \
    ${SETUP_S:+--setup-seconds "$SETUP_S"} 2>&1 | tee -a "$LOG"
(( PIPESTATUS[0] == 0 || status != 0 )) || status=1
rm -f "$TSV" "$STEM.lock"
echo "bench/gpu.sh: done in $((SECONDS - run_start)) s (status $status); results: $BENCH_RESULTS_JSON" | tee -a "$LOG"
exit $status
