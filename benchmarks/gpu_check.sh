#!/usr/bin/env bash
# One-shot check of a lent GPU (H100/H200), timings first, within about 7 minutes, needing nothing
# beyond the image (python3 with torch, triton, pytest, hypothesis; nvcc):
#
#   benchmarks/gpu_check.sh [--dry] [DEST]
#
# Steps, each under a time cap (seconds below; the caps add up to less than DEADLINE):
#   preflight       interpreter, torch, triton, nvcc, nvidia-smi, compute-sanitizer, cuobjdump; the GPU
#   build           fastrel._C in place (C++ and CUDA, sm_90), in the background from here on
#   smoke           triton, sort and reference backends against the float64 reference (small shapes)
#   time            bf16 matmul peak and copy bandwidth; triton vs reference vs torch.compile(reference)
#   train           two training steps of configs/synthetic.yaml in the paper's relu/relu form (the fused
#                   kernels; bf16 autocast, nccl, torchrun with one process), then its evaluation
#   host            where the host's time goes in one call of RGTR clips (benchmarks/host_profile.py)
#   build_wait      waits for the build
#   cuda            the cuda backend: smoke check, then its timing rows
#   gpu_tests       pytest -m gpu
#   cuda_tests      the backends' tests (hypothesis included) for cuda
#   triton_tests    the same for triton, with fixed tiles (no autotuning at the tests' many shapes)
#   memcheck        compute-sanitizer memcheck on fastrel's CUDA kernels only, or why it cannot run
#   racecheck       the same with racecheck
#   report          DEST/gpu_check.json (everything), DEST/gpu_check_rows.csv, DEST/gpu_check_logs.tar.gz
#
# DEST defaults to $OUT (the device tool's folder), else /tmp/gpu_check_out. PY picks the
# interpreter (default python3). --dry runs every step here without a GPU: CPU tensors at tiny sizes,
# the Triton interpreter, the C++ build without CUDA (into the scratch folder), the cpu backend
# standing in for cuda, the sanitizer's cases without the sanitizer. Exit status 0 when every step
# passed.
set -uo pipefail
DRY=0
if [ "${1:-}" = "--dry" ]; then DRY=1; shift; fi
DEST=${1:-${OUT:-/tmp/gpu_check_out}}
mkdir -p "$DEST" && DEST=$(cd "$DEST" && pwd) || exit 1
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-python3}
# Caps in seconds for an H100; --dry (a CPU, the Triton interpreter) scales them and the deadline by 3.
SCALE=${GPU_CHECK_CAP_SCALE:-$((DRY ? 3 : 1))}
DEADLINE=$((445 * SCALE))
CAP_PREFLIGHT=$((20 * SCALE))
CAP_SMOKE=$((30 * SCALE))
CAP_TIME=$((130 * SCALE))
CAP_TRAIN=$((40 * SCALE))
CAP_HOST=$((15 * SCALE))
CAP_BUILD_WAIT=$((20 * SCALE))
CAP_CUDA=$((45 * SCALE))
CAP_GPU_TESTS=$((40 * SCALE))  # 14 s of 15 in run 4, before the activation and pair-tile-part tests joined
CAP_CUDA_TESTS=$((20 * SCALE))
CAP_TRITON_TESTS=$((20 * SCALE))  # runs until its cap (run 3 and 4 alike), one line per test
CAP_MEMCHECK=$((15 * SCALE))
CAP_RACECHECK=$((30 * SCALE))
CAP_REPORT=$((15 * SCALE))
# These add up to 440 s (scaled), under the deadline.
# Started after preflight, the build must end by the end of build_wait. --dry may compile the C++
# kernels from scratch on a slow CPU: there build_wait waits as long as the build may run.
CAP_BUILD=$((CAP_SMOKE + CAP_TIME + CAP_TRAIN + CAP_HOST + CAP_BUILD_WAIT))
if [ $DRY = 1 ]; then CAP_BUILD_WAIT=$CAP_BUILD; fi

WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
mkdir -p "$WORK/logs"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export TORCH_CUDA_ARCH_LIST=9.0
DRYFLAG=()
if [ $DRY = 1 ]; then
  DRYFLAG=(--dry)
  HOST_SIZE=(--batch 2 --calls 1 --top 5)  # the interpreter runs the kernels: a tiny call
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  NATIVE=cpu  # the backend that needs the build: cuda on a GPU, the C++ CPU kernels here
  export MAX_JOBS=${MAX_JOBS:-1}
  ONLY=" and rows_without_valid_keys"  # one test per backend: the interpreter is slow
else
  NATIVE=cuda
  HOST_SIZE=()
  ONLY=""
fi
START=$SECONDS
FAILED=0

record() {  # record NAME STATUS RC SECONDS CAP: one line of WORK/steps.tsv
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$WORK/steps.tsv"
  echo "[$((SECONDS - START)) s] $1: $2 ($4 s)"
  case $2 in ok|unsupported*|dry*) ;; *) FAILED=1 ;; esac
}

capped() {  # capped NAME CAP COMMAND...: run under min(CAP, time left); sets RC, TOOK, CAP_USED
  local name=$1 cap=$2 began=$SECONDS left
  shift 2
  left=$((DEADLINE - CAP_REPORT - (SECONDS - START)))
  CAP_USED=$((cap < left ? cap : left))
  if ((CAP_USED <= 0)); then RC=124 TOOK=0; return; fi
  STEP_CAP=$CAP_USED timeout -k 5 "$CAP_USED" "$@" > "$WORK/logs/$name.log" 2>&1
  RC=$? TOOK=$((SECONDS - began))
}

status_of() {  # status_of RC: ok, timeout or failed
  case $1 in 0) echo ok ;; 124|137) echo "timeout: cap $CAP_USED s" ;; *) echo "failed: exit $1" ;; esac
}

step() {  # step NAME CAP COMMAND...
  local name=$1
  capped "$@"
  record "$name" "$(status_of $RC)" $RC $TOOK "$CAP_USED"
}

# -- preflight ------------------------------------------------------------------------------------
step preflight $CAP_PREFLIGHT "$PY" benchmarks/gpu_check.py preflight --dir "$WORK" "${DRYFLAG[@]}"
cat "$WORK/logs/preflight.log"
GPU_OK=$RC

# -- build, in the background ---------------------------------------------------------------------
NVCC=$(command -v nvcc || true)
export CUDA_HOME=${CUDA_HOME:-${NVCC:+$(dirname "$(dirname "$(readlink -f "$NVCC")")")}}
# --dry compiles the C++ kernels into the scratch folder and leaves the tree's own build (which may
# hold CUDA kernels) alone; its cpu rows use the tree's build.
if [ $DRY = 1 ]; then BUILD_TO=(--build-lib "$WORK/build_lib"); else BUILD_TO=(--inplace); fi
build() {  # niced, 4 jobs: the timing steps run beside it
  local began=$SECONDS rc
  FASTREL_BUILD_CUDA=$((1 - DRY)) MAX_JOBS=${MAX_JOBS:-4} timeout -k 5 $CAP_BUILD \
    nice -n 10 "$PY" setup.py build_ext "${BUILD_TO[@]}" > "$WORK/logs/build.log" 2>&1 &
  echo $! > "$WORK/build.pid"
  wait $!
  rc=$? CAP_USED=$CAP_BUILD
  record build "$(status_of $rc)" $rc $((SECONDS - began)) $CAP_BUILD
}
stop_build() {  # stop_build: end the build if it still runs (timeout passes the signal on)
  [ -n "$BUILD_PID" ] || return
  if kill -0 $BUILD_PID 2>/dev/null; then kill "$(cat "$WORK/build.pid")" 2>/dev/null; fi
  wait $BUILD_PID 2>/dev/null
  awk -F'\t' '$1 == "build" && $2 == "ok" { found = 1 } END { exit !found }' "$WORK/steps.tsv" || FAILED=1
}

# -- smoke and timings while it builds ------------------------------------------------------------
if ((GPU_OK != 0)); then
  echo "preflight failed: no GPU; the other steps are skipped"
  for name in build smoke time train host cuda gpu_tests cuda_tests triton_tests memcheck racecheck; do
    record $name "skipped: preflight failed" "" 0 ""
  done
  BUILD_PID=""
else
  build &
  BUILD_PID=$!
  FASTREL_TRITON_AUTOTUNE=0 step smoke $CAP_SMOKE \
    "$PY" benchmarks/gpu_check.py smoke --backends triton,sort,reference --dir "$WORK" "${DRYFLAG[@]}"
  step time $CAP_TIME "$PY" benchmarks/gpu_check.py time --ceilings --impls triton,reference,compiled,triton_det \
    --dir "$WORK" "${DRYFLAG[@]}"

  FASTREL_TRITON_AUTOTUNE=0 step train $CAP_TRAIN "$PY" benchmarks/gpu_check.py train --dir "$WORK" "${DRYFLAG[@]}"
  step host $CAP_HOST "$PY" benchmarks/host_profile.py "${HOST_SIZE[@]}"

  began=$SECONDS
  while kill -0 $BUILD_PID 2>/dev/null && ((SECONDS - began < CAP_BUILD_WAIT)); do sleep 1; done
  if kill -0 $BUILD_PID 2>/dev/null; then
    record build_wait "timeout: the build was still running; stopped" 124 $((SECONDS - began)) $CAP_BUILD_WAIT
  else
    record build_wait ok 0 $((SECONDS - began)) $CAP_BUILD_WAIT
  fi
  stop_build

  step cuda $CAP_CUDA "$PY" benchmarks/gpu_check.py time --smoke $NATIVE --impls $NATIVE,${NATIVE}_det \
    --dir "$WORK" "${DRYFLAG[@]}"

  # -- tests, one line per test (-v) so that a step stopped at its cap still says what passed ------
  export FASTREL_TRITON_AUTOTUNE=0 HYPOTHESIS_PROFILE=gpu  # 3 examples a property: each compiles kernels
  PYTEST=("$PY" -m pytest -v -p no:cacheprovider)
  step gpu_tests $CAP_GPU_TESTS "${PYTEST[@]}" -m gpu tests
  step cuda_tests $CAP_CUDA_TESTS "${PYTEST[@]}" tests/test_global_relation.py -k "$NATIVE$ONLY"
  step triton_tests $CAP_TRITON_TESTS "${PYTEST[@]}" tests/test_global_relation.py -k "triton$ONLY"

  # -- sanitizers, on fastrel's CUDA kernels only ---------------------------------------------------
  UNSUPPORTED=""
  for tool in memcheck racecheck; do
    cap=$([ $tool = memcheck ] && echo $CAP_MEMCHECK || echo $CAP_RACECHECK)
    if [ $DRY = 1 ]; then
      capped $tool $cap "$PY" benchmarks/sanitize_cases.py --backend $NATIVE --quick
      status=$(status_of $RC)
      [ $RC = 0 ] && status="dry: the cases ran without compute-sanitizer"
      record $tool "$status" $RC $TOOK "$CAP_USED"
    elif ! command -v compute-sanitizer > /dev/null; then
      record $tool "unsupported: compute-sanitizer is not on the PATH" "" 0 ""
    elif [ -n "$UNSUPPORTED" ]; then
      record $tool "$UNSUPPORTED" "" 0 ""
    else
      capped $tool $cap compute-sanitizer --tool $tool --kernel-name kns=global_relation --error-exitcode 1 \
        "$PY" benchmarks/sanitize_cases.py --backend cuda --quick
      status=$(status_of $RC)
      log=$WORK/logs/$tool.log
      # Where the sanitizer cannot attach (the gVisor H200: "Device not supported", error 999), the
      # reason is recorded instead of a failure; a real finding prints an ERROR SUMMARY.
      if [ $RC != 0 ] && ! grep -q "ERROR SUMMARY: [1-9]" "$log"; then
        reason=$(grep -m1 -iE "not supported|error 999|unable to|failed to initialize" "$log")
        if [ -n "$reason" ]; then
          UNSUPPORTED="unsupported: $reason (kernel $(uname -r))"
          status=$UNSUPPORTED
        fi
      fi
      record $tool "$status" $RC $TOOK "$CAP_USED"
    fi
  done
fi

# -- report ---------------------------------------------------------------------------------------
stop_build
echo "total $((SECONDS - START)) s of the ${DEADLINE} s deadline" > "$WORK/logs/total.log"
# The report always runs, with its own cap: the steps before it stop CAP_REPORT before the deadline.
timeout -k 5 $CAP_REPORT "$PY" benchmarks/gpu_check.py report --dir "$WORK" --dest "$DEST" \
  > "$WORK/logs/report.log" 2>&1 || FAILED=1
tar -czf "$DEST/gpu_check_logs.tar.gz" -C "$WORK" --exclude=./build_lib --exclude=./build.pid --exclude=./train .
cat "$WORK/logs/report.log"
echo "gpu_check: $((SECONDS - START)) s; results in $DEST:"
ls "$DEST"
rm -rf "$WORK"
exit $FAILED
