#!/usr/bin/env bash
# GPU check (DESIGN §5): build the extension, run the GPU tests, the benchmark's GPU rows and the
# issue's GPU cases, measure the bf16 matmul peak, and write one results file,
# ${OUT:-./gpu_results}/gpu_check.json (logs beside it). Needs a CUDA machine with torch >= 2.11
# and triton >= 3.6 preinstalled; no package registry. Finishes in under 8 minutes: every step
# has a time cap and the whole run a deadline.
#
#   benchmarks/gpu_check.sh          # on the GPU machine
#   benchmarks/gpu_check.sh --dry    # the same steps at tiny sizes on a CPU (Triton interpreter)
set -u

DRY=0
case "${1:-}" in
  --dry) DRY=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry]" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
RESULTS=$(mkdir -p "${OUT:-./gpu_results}" && cd "${OUT:-./gpu_results}" && pwd)
LOGS=$RESULTS/logs
mkdir -p "$LOGS"
: > "$LOGS/steps.tsv"
PY=${PYTHON:-python}
DEADLINE=${GPU_CHECK_SECONDS:-460}  # the whole run, leaving a margin under 8 minutes
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi

# step NAME SECONDS COMMAND...: run with a cap (never past the deadline), log, record rc and time.
step() {
  local name=$1 cap=$2; shift 2
  local left=$((DEADLINE - SECONDS - 15))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -le 5 ]; then
    echo "skipped: no time left before the deadline" > "$LOGS/$name.log"
    printf '%s\t%s\t%s\n' "$name" 125 0 >> "$LOGS/steps.tsv"
    return
  fi
  local start=$SECONDS
  echo "== $name (cap ${cap}s)"
  timeout --kill-after=10 "$cap" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$LOGS/steps.tsv"
  echo "   rc=$rc in $((SECONDS - start))s"
  tail -n 3 "$LOGS/$name.log" | sed 's/^/   /'
}

if [ "$DRY" = 1 ]; then
  # Build in place (C++ only): the dry run must not install into the environment it runs in.
  step build 300 env FASTREL_BUILD_CUDA=0 "$PY" setup.py build_ext --inplace
  step tests_gpu 120 "$PY" -m pytest -q -m gpu tests
  step tests_property 300 env FASTREL_REQUIRE_BACKENDS=triton "$PY" -m pytest -q -x \
    tests/test_global_relation.py -k "triton and not gradcheck"
  step cases 300 "$PY" benchmarks/gpu_check.py cases --dry --out "$RESULTS/cases.json"
  BENCH_ARGS=(--device cpu --n 16 --hr 16:8 --cases grid --modes fwd --min-time 0.05 --min-repeats 1
              --time-limit 20 --out "$RESULTS/bench_cpu.csv")
else
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  step build 180 "$PY" -m pip install --no-build-isolation --no-deps -e .
  step tests_gpu 40 "$PY" -m pytest -q -m gpu tests
  # Fixed Triton tiles in the tests: autotuning every random shape would compile for minutes.
  step tests_property 130 env FASTREL_TRITON_AUTOTUNE=0 "$PY" -m pytest -q --maxfail=10 \
    tests/test_global_relation.py -k "triton or cuda"
  if command -v compute-sanitizer > /dev/null; then
    for tool in memcheck racecheck; do
      step "sanitize_$tool" 45 compute-sanitizer --tool "$tool" --error-exitcode 1 "$PY" benchmarks/sanitize_cuda.py
    done
  fi
  step cases 200 "$PY" benchmarks/gpu_check.py cases --out "$RESULTS/cases.json"
  BENCH_ARGS=(--device cuda --dtype bfloat16 --quick --time-limit 10 --out "$RESULTS/bench_cuda.csv")
fi

if [ -f benchmarks/bench_global_relation.py ]; then
  step bench 120 "$PY" benchmarks/bench_global_relation.py "${BENCH_ARGS[@]}"
else
  echo "benchmarks/bench_global_relation.py is not in this checkout" > "$LOGS/bench.log"
  printf '%s\t%s\t%s\n' bench 127 0 >> "$LOGS/steps.tsv"
fi

"$PY" benchmarks/gpu_check.py report --dir "$RESULTS"
echo "results: $RESULTS/gpu_check.json (${SECONDS}s)"
