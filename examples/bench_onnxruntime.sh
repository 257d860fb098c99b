#!/usr/bin/env bash
# Prune the default model (SmolLM2-135M-Instruct) by 30% with per-layer FFN widths, then benchmark
# the dense and the pruned model on ONNX Runtime side by side (both are exported to ONNX on first
# use and cached under $PRUNENET_CACHE/onnx) and print the table. Per-token decode latency of a
# 135M model on CPU is bound by reading the weights, so pruned/dense should come out close to the
# parameter-bytes ratio (about 0.82 at ratio 0.3).
#
#   examples/bench_onnxruntime.sh [OUT_DIR] [RESULTS_DIR]
#   ENGINES="onnxruntime torch" to add eager PyTorch; THREADS=N (default: physical cores);
#   RUNS=5 and PROMPTS="32 128" by default.
set -euo pipefail

OUT=${1:-smol-pruned}
RESULTS=${2:-bench-results}
ENGINES=${ENGINES:-onnxruntime}
RUNS=${RUNS:-5}
PROMPTS=${PROMPTS:-32 128}

if [[ -f "$OUT/config.json" ]]; then
  echo "== reusing the export in $OUT"
else
  echo "== pruning the default model (ratio 0.3) into $OUT"
  prunenet-export --ratio 0.3 --target hf --out "$OUT"
fi

DENSE=SmolLM2-135M-Instruct  # the default model's name; prunenet resolves it to its cache entry
THREAD_ARGS=()
if [[ -n "${THREADS:-}" ]]; then THREAD_ARGS=(--threads "$THREADS"); fi

echo "== benchmarking dense ($DENSE) vs pruned ($OUT) on: $ENGINES"
# shellcheck disable=SC2086  # ENGINES and PROMPTS are lists of words
prunenet bench "$DENSE" "$OUT" --engine $ENGINES --batch-sizes 1 --prompt-lengths $PROMPTS \
  --generation-length 32 --warmup 2 --runs "$RUNS" "${THREAD_ARGS[@]}" --out "$RESULTS"
