#!/usr/bin/env bash
# The GPU check: run this first whenever a GPU machine is lent (about 8 minutes on one recent GPU).
#
#   benchmarks/gpu_check.sh                        # CUDA: the cuda-marked tests, selection cost with stacking at
#                                                  # batches 256 and 1024, step time, DARTS step, paper-scale slice
#   benchmarks/gpu_check.sh --device cpu --quick   # the same code paths on the CPU, small sizes (under 3 minutes)
#   benchmarks/gpu_check.sh --out FILE             # where the markdown goes (default: $OUT/gpu_check.md when $OUT is
#                                                  # set, else benchmarks/results/gpu_check-<time>.md)
#
# Each step runs under its own time limit; a failing or timed-out step is recorded and the next one runs. The markdown
# file holds a summary table (step, status, seconds) and each step's output. Exit status: the number of failed steps.
set -u
cd "$(dirname "$0")/.."

DEVICE=cuda
QUICK=0
FILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) FILE="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1 (--device DEV, --quick, --out FILE)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -z "$FILE" ]; then
  if [ -n "${OUT:-}" ]; then FILE="$OUT/gpu_check.md"; else FILE="benchmarks/results/gpu_check-$(date +%Y%m%d-%H%M%S).md"; fi
fi
mkdir -p "$(dirname "$FILE")"
LOGS="$(mktemp -d)"
SUMMARY=()
FAILED=0

step() {  # step NAME SECONDS COMMAND...: run it, keep its output, record status and time
  local name="$1" limit="$2"; shift 2
  local log="$LOGS/$(echo "$name" | tr -c 'A-Za-z0-9' _).log" start end rc status
  echo "== $name" >&2
  start=$(date +%s)
  timeout "$limit" "$@" >"$log" 2>&1
  rc=$?
  end=$(date +%s)
  if [ $rc -eq 0 ]; then status=ok; elif [ $rc -eq 124 ]; then status="timed out (${limit} s)"; else status="failed ($rc)"; fi
  [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
  SUMMARY+=("| $name | $status | $((end - start)) |")
  { echo; echo "## $name"; echo; echo '`'"$*"'`'; echo; echo '```'; tail -n 60 "$log"; echo '```'; } >>"$LOGS/sections.md"
  tail -n 3 "$log" >&2
}

if [ $QUICK -eq 1 ]; then
  COST_256=(--N 1 --batch 64 --stack 2 --permutations 1)    # quick: smaller batches than the step names say
  COST_1024=(--N 1 --batch 128 --stack 2 --permutations 1)
  STEP=(--grid 8,1,16,32 --repeats 2 --eval-repeats 1 --eval-batch 64 --variants nchw,cl)
  DARTS=(--C 4 --layers 5 --size 16 --batch 16 --rounds 1 --steps 1 --variants K1-cl)
  SLICE=(--quick --steps 3 --valid-batches 1)
else
  COST_256=(--N 1 5 --batch 256 --stack 8 --permutations 2)
  COST_1024=(--N 1 --batch 1024 --stack 8 --permutations 2)
  STEP=(--grid 16,5,32,64 16,1,32,64 --repeats 5 --eval-repeats 3 --eval-batch 256 --variants nchw,cl,cl+bf16)
  DARTS=(--rounds 1 --steps 3 --variants K1-cl,K1-cl-store,K4-cl)
  SLICE=(--steps 20 --valid-batches 8)
fi

step "environment" 60 "$PY" -c "import torch, platform; print('torch', torch.__version__, '| python', platform.python_version()); \
print('cuda', torch.cuda.is_available(), torch.version.cuda, '| cudnn', torch.backends.cudnn.version()); \
[print(torch.cuda.get_device_name(i), round(torch.cuda.get_device_properties(i).total_memory / 2**30), 'GiB') for i in range(torch.cuda.device_count())]"
step "cuda-marked tests (stacking, evaluator, pipeline, bf16)" 240 \
  env ARCHSELECT_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
step "selection cost (stacking), batch 256" 150 "$PY" benchmarks/selection_cost.py --device "$DEVICE" "${COST_256[@]}"
step "selection cost (stacking), batch 1024" 120 "$PY" benchmarks/selection_cost.py --device "$DEVICE" "${COST_1024[@]}"
step "NB201 search step and eval" 90 "$PY" benchmarks/step_time.py --device "$DEVICE" "${STEP[@]}"
step "DARTS search step" 90 "$PY" benchmarks/darts_step.py --device "$DEVICE" "${DARTS[@]}"
step "paper-scale NB201 DARTS-PT slice" 120 "$PY" benchmarks/paper_slice.py --device "$DEVICE" "${SLICE[@]}"

{
  echo "# GPU check: $DEVICE$([ $QUICK -eq 1 ] && echo ' (quick)'), $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${SUMMARY[@]}"
  cat "$LOGS/sections.md"
} >"$FILE"
rm -rf "$LOGS"
echo "gpu_check: $FAILED failed step(s); table in $FILE" >&2
exit $FAILED
