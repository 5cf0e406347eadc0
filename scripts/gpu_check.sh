#!/usr/bin/env bash
# The one GPU check of approxdrop (issue "GPU verification"), ready for the day a GPU is lent: builds
# the kernels, runs every CUDA test, the dispatch's first-use timings, the kernel-level and end-to-end
# benchmarks (fp32 with TF32 off and on, bf16 autocast; eager and CUDA graphs), the LSTM benchmark, the
# host overhead of a step on tiny models (bench-overhead: on a GPU, the step time of every lab; and the
# executor `auto` measures on this GPU against the CPU's rule), eager against CUDA-graphed steps (bench-graphs: torch.compile reduce-overhead, static-shape ARD), and
# compute-sanitizer (memcheck, racecheck, synccheck) on a small workload. Every table goes, with the
# GPU's name, driver, versions, date and command, under one folder: $OUT if set, else ./gpu_check_out
# (at most 8 files, none in subfolders: what the device tool brings back).
#
#   scripts/gpu_check.sh            # on a GPU machine: about 5-6 minutes on one H100/H200
#   scripts/gpu_check.sh --dry-run  # on the CPU: tiny sizes, PyTorch path; GPU-only steps skipped with the reason
#
# Every step runs under `timeout`, cut to the time left of GPU_CHECK_BUDGET seconds (default 460: with
# the last step's kill grace, under 8 minutes); no step starts once it is spent. A failed or timed-out
# step is recorded and the next one runs; the exit status is 1 when any step failed (2: no GPU and no
# --dry-run; the dry run needs none). Python is $PYTHON, else the checkout's .venv when it has one, else
# python3; approxdrop is imported from this checkout. The CUDA tests build the kernels and the later
# steps reuse that build; the dispatch cache starts empty, so the first use of every op is measured.
set -uo pipefail
out=${OUT:-}
[ -z "$out" ] || [[ "$out" == /* ]] || out=$PWD/$out  # a relative $OUT: from where the script was called
cd "$(dirname "$0")/.." || exit 2
root=$PWD

dry=0
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "usage: scripts/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

out=${out:-$root/gpu_check_out}
mkdir -p "$out"
budget=${GPU_CHECK_BUDGET:-460}
deadline=$((SECONDS + budget))
sanitizer=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2>/dev/null)
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=$root/.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export APPROXDROP_CACHE_DIR=${APPROXDROP_CACHE_DIR:-${TMPDIR:-/tmp}/approxdrop-gpu-check-$(id -u)}
rm -rf "$APPROXDROP_CACHE_DIR/gpu-dispatch"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log=$out/logs.txt
: >"$log"
: >"$work/steps"
failed=0
command_line="scripts/gpu_check.sh${1:+ $1}"

# record NAME STATUS SECONDS NOTE: one row of the summary's step table
record() {
  printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "${4//|//}" >>"$work/steps"
  printf '%-28s %-28s %4ss  %s\n' "$1" "$2" "$3" "$4"
  case "$2" in FAILED*) failed=1 ;; esac
}

# skip NAME REASON
skip() { record "$1" "skipped" 0 "$2"; }

# step NAME LIMIT [--stdout FILE] COMMAND...: COMMAND under `timeout` (at most LIMIT seconds, and never
# past the deadline), its output in logs.txt (stdout in FILE instead, with --stdout); the note is the
# output's last line.
step() {
  local name=$1 limit=$2 stdout=""
  shift 2
  if [ "$1" = "--stdout" ]; then stdout=$2; shift 2; fi
  local left=$((deadline - SECONDS))
  if ((left < 5)); then
    record "$name" "FAILED (not run)" 0 "the ${budget}s budget was spent before this step"
    return 1
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS rc
  echo "===== $name: $* (limit ${limit}s)" >>"$log"
  if [ -n "$stdout" ]; then
    timeout --kill-after=10 "$limit" "$@" >"$stdout" 2>"$work/step.err"
    rc=$?
    cat "$stdout" "$work/step.err" >>"$log"
    cat "$stdout" "$work/step.err" >"$work/step.out"
  else
    timeout --kill-after=10 "$limit" "$@" >"$work/step.out" 2>&1
    rc=$?
    cat "$work/step.out" >>"$log"
  fi
  local note
  note=$(grep -v '^[[:space:]]*$' "$work/step.out" | tail -n 1 | cut -c1-160)
  if ((rc == 0)); then
    record "$name" "ok" $((SECONDS - t0)) "$note"
  elif ((rc == 124 || rc == 137)); then
    record "$name" "FAILED (timed out)" $((SECONDS - t0)) "stopped after ${limit}s; $note"
  else
    record "$name" "FAILED (exit $rc)" $((SECONDS - t0)) "$note"
  fi
  return "$rc"
}

# ----------------------------------------------------------------------------- the machine
timeout 60 "$py" - "$dry" "${sanitizer:-compute-sanitizer}" >"$work/machine.md" 2>>"$log" <<'EOF'
import datetime, platform, subprocess, sys
import torch

dry = sys.argv[1] == "1"

def run(*cmd):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "not found"

if torch.cuda.is_available() and not dry:
    props = torch.cuda.get_device_properties(0)
    smi = run("nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader")
    gpu = f"{props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs); driver, memory: {smi}"
else:
    gpu = "none (CPU dry run: tiny sizes, PyTorch path)" if dry else "none visible"
nvcc = run("nvcc", "--version").splitlines()[-1]
sanitizer = run(sys.argv[2], "--version").splitlines()[-1]
cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
commit = run("git", "rev-parse", "--short", "HEAD")
print(f"- GPU: {gpu}")
print(f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}; Python {platform.python_version()}")
print(f"- nvcc: {nvcc}; compute-sanitizer: {sanitizer}")
print(f"- approxdrop commit: {commit} (working tree as sent)")
print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
print(f"- has GPU: {torch.cuda.is_available()}")
EOF
if ! grep -q '^- has GPU' "$work/machine.md"; then
  echo "gpu_check: $py cannot import torch (see $log)" >&2
  record "machine" "FAILED" 0 "$py cannot import torch"
  gpu=False
else
  gpu=$(sed -n 's/^- has GPU: //p' "$work/machine.md")
  sed -i '/^- has GPU: /d' "$work/machine.md"
  record "machine" "ok" 0 "$(head -n 1 "$work/machine.md")"
fi
if ((!dry)) && [ "$gpu" != "True" ]; then
  echo "gpu_check: no CUDA GPU visible to $py; use --dry-run for the CPU smoke test" >&2
  exit 2
fi

# write_table FILE TITLE COMMAND SOURCE: FILE = title, machine, command, then SOURCE's content
write_table() {
  { echo "# $2"; echo; cat "$work/machine.md"; echo "- command: \`$3\`"; echo; cat "$4" 2>/dev/null ||
    echo "(no output: the step did not run)"; } >"$1"
}

bench=(benchmarks/gpu_bench.py --warmup 3 --repeats 10)
lstm=(-m approxdrop bench-lstm --device cuda --sizes paper --ps 0.3 0.5 0.7 --warmup 2 --rounds 5 --no-progress)
overhead=(-m approxdrop bench-overhead --device cuda --threads 1 --warmup 20 --rounds 10 --steps 20
  --crossover-rounds 3 --no-progress)
graphs=(-m approxdrop bench-graphs --device cuda --warmup 5 --rounds 5 --steps 10 --no-progress)
if ((dry)); then
  bench=(benchmarks/gpu_bench.py --dry-run --ps 0.5)
  lstm=(-m approxdrop bench-lstm --device cpu --sizes small --ps 0.5 --methods bernoulli row torch --warmup 0
    --rounds 1 --no-progress)
  overhead=(-m approxdrop bench-overhead --device cpu --threads 1 --warmup 1 --rounds 2 --steps 2 --no-op-counts
    --crossover-widths 16 --crossover-batches 4 --crossover-rounds 1 --no-progress)
  graphs=(-m approxdrop bench-graphs --device cpu --threads 1 --no-paper --backend eager --warmup 1 --rounds 1
    --steps 2 --no-progress)
fi

# ----------------------------------------------------------------------------- build and tests
if ((dry)); then
  skip "CUDA tests (and the build)" "dry run: needs a GPU (without one these tests run in CI, GPU parts skipped)"
  skip "build" "dry run: needs a GPU (tests/test_kernels_compile.py compiles every source in CI)"
else
  # The tests build the kernels first (in the test session's cache folder, tests/conftest.py); the later
  # steps reuse that build instead of compiling a second time, and start with an empty dispatch cache.
  step "CUDA tests (and the build)" 200 "$py" -m pytest -q -p no:cacheprovider --basetemp="$work/pytest" \
    -m "not slow" tests/test_kernels.py tests/test_dispatch.py tests/test_grouped.py tests/test_ops.py
  so=$(find "$work/pytest" -name 'approxdrop_kernels_sm_*.so' -print -quit 2>/dev/null)
  if [ -n "$so" ]; then  # <cache>/kernels/<torch-cuda-arch>/approxdrop_kernels_sm_XY.so
    APPROXDROP_CACHE_DIR=$(dirname "$(dirname "$(dirname "$so")")")
    rm -rf "$APPROXDROP_CACHE_DIR/gpu-dispatch"
  fi
  build='from approxdrop.ops import cuda; m = cuda.load(); print(cuda.status()); raise SystemExit(m is None)'
  if ! step "build" 150 "$py" -c "$build"; then
    export APPROXDROP_KERNELS=torch  # no rebuild attempt in every later step: the PyTorch path only
    echo "gpu_check: the kernels did not build: the later steps run the PyTorch path (APPROXDROP_KERNELS=torch)"
  fi
fi

# ----------------------------------------------------------------------------- dispatch and benchmarks
# (before the sanitizers: if time runs short, the numbers are what a rerun would miss most)
step "dispatch first use" 40 "$py" "${bench[@]}" --dtype float32 --sections dispatch --out "$out/dispatch.md"
step "bench fp32" 75 "$py" "${bench[@]}" --dtype float32 --out "$out/bench_fp32.md"
step "bench fp32 TF32" 60 "$py" "${bench[@]}" --dtype float32 --tf32 --out "$out/bench_tf32.md"
step "bench bf16 autocast" 60 "$py" "${bench[@]}" --autocast bfloat16 --out "$out/bench_bf16_autocast.md"
step "LSTM bench" 60 --stdout "$work/lstm.out" "$py" "${lstm[@]}"
write_table "$out/lstm.md" "approxdrop LSTM language-model step time" "python ${lstm[*]}" "$work/lstm.out"
# 90 s: besides the crossover, the executor table measures 48 probes, each a first use of its shapes here
step "host overhead" 90 --stdout "$work/overhead.out" "$py" "${overhead[@]}"
step "graphed steps" 90 --stdout "$work/graphs.out" "$py" "${graphs[@]}"
# one file for both (the device tool brings back at most 8): the host cost, then eager against graphed steps
{ cat "$work/overhead.out" 2>/dev/null || echo "(host overhead: no output)"; echo; echo "## Eager against graphed steps"
  echo; echo "- command: \`python ${graphs[*]}\`"; echo; cat "$work/graphs.out" 2>/dev/null || echo "(no output)"
} >"$work/host.out"
write_table "$out/overhead.md" "approxdrop host overhead per step, aten ops, crossover, executors; eager against graphed steps" \
  "python ${overhead[*]}" "$work/host.out"

# ----------------------------------------------------------------------------- compute-sanitizer
if ((dry)); then
  step "sanitizer workload" 60 "$py" scripts/sanitizer_workload.py --dry-run
  for tool in memcheck racecheck synccheck; do
    skip "compute-sanitizer $tool" "dry run: needs a GPU (the workload above ran on the CPU, unsanitized)"
  done
elif [ -z "$sanitizer" ]; then
  for tool in memcheck racecheck synccheck; do
    record "compute-sanitizer $tool" "FAILED (not run)" 0 "compute-sanitizer not found (PATH, \$CUDA_HOME/bin)"
  done
else
  # Errors in kernels only (not the CUDA API errors PyTorch provokes and handles itself); memcheck without
  # PyTorch's caching allocator, so each tensor is its own allocation and an overrun past it is seen.
  checks=(--error-exitcode 1 --report-api-errors no)
  step "compute-sanitizer memcheck" 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck \
    "${checks[@]}" "$py" scripts/sanitizer_workload.py
  for tool in racecheck synccheck; do
    step "compute-sanitizer $tool" 60 "$sanitizer" --tool "$tool" "${checks[@]}" "$py" scripts/sanitizer_workload.py
  done
fi

# ----------------------------------------------------------------------------- summary
{
  echo "# approxdrop GPU check"
  echo
  cat "$work/machine.md"
  echo "- command: \`$command_line\` (budget ${budget}s, took $SECONDS s)"
  echo
  echo "| step | status | seconds | note (last output line) |"
  echo "|---|---|---:|---|"
  cat "$work/steps"
  echo
  echo "Tables: dispatch.md (first use), bench_fp32.md, bench_tf32.md, bench_bf16_autocast.md (kernel level,"
  echo "end to end, dispatch choices), lstm.md, overhead.md (host cost per step; eager against CUDA-graphed"
  echo "steps); every step's output: logs.txt."
} >"$out/summary.md"
echo "gpu_check: $([ "$failed" = 0 ] && echo "every step passed" || echo "some steps FAILED"); tables in $out"
exit "$failed"
