#!/usr/bin/env bash
# The prepared GPU check (one H100/H200/A100, at most 10 minutes), run from the repository root:
#   bash benchmarks/gpu/check.sh OUT_DIR
# 1. a small-scale DAG slice on the GPU (benchmarks/gpu/slice.yaml): pre-train mlm and
#    mlm_seq_tok, fine-tune XNLI and XQuAD, score Tatoeba, build the report;
# 2. benchmarks/run_gpu.sh (veco2 vs the plain Hugging Face baseline, base size), time-boxed.
# Everything it measures lands in OUT_DIR: environment.txt (device, driver, versions, command),
# slice_summary.json (tokens/s, MFU, peak GPU memory of every job), the slice's results tree and
# logs, and the benchmark JSON files.  Copy the figures into benchmarks/RESULTS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:?usage: benchmarks/gpu/check.sh OUT_DIR}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
BIN="$(dirname "$PY")"
SLICE_MINUTES="${SLICE_MINUTES:-6}"
BENCH_MINUTES="${BENCH_MINUTES:-3}"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "command: bash benchmarks/gpu/check.sh $*"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -m veco2.cli --version
  "$PY" -c "import torch; print('cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

# 1. The DAG slice, on the default profile (one GPU per job, pinned by veco2.devices).
WORK="$OUT/slice"
mkdir -p "$WORK"
status=0
timeout "$((SLICE_MINUTES * 60))" "$BIN/snakemake" --snakefile "$PWD/Snakefile" --directory "$WORK" \
    --configfile "$PWD/benchmarks/gpu/slice.yaml" --cores "$(nproc)" --resources gpu=1 \
    --workflow-profile "$PWD/profiles/default" > "$OUT/slice_snakemake.log" 2>&1 || status=$?
echo "slice: snakemake exit status $status (log: $OUT/slice_snakemake.log)"
"$PY" benchmarks/gpu/summarize.py "$WORK/results/gpu_slice" > "$OUT/slice_summary.json" || true
cat "$OUT/slice_summary.json" || true

# 2. veco2 vs the plain HF baseline (base size, synthetic lengths), time-boxed.
timeout "$((BENCH_MINUTES * 60))" bash benchmarks/run_gpu.sh > "$OUT/run_gpu.log" 2>&1 \
    || echo "run_gpu.sh: exit status $? (log: $OUT/run_gpu.log)"
mkdir -p "$OUT/bench"
cp benchmarks/results/*_gpu_*.json "$OUT/bench/" 2>/dev/null || echo "run_gpu.sh wrote no result file"
exit "$status"
