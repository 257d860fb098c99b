#!/usr/bin/env bash
# Prune the default model (SmolLM2-135M-Instruct) by 30% with per-layer FFN widths, then benchmark
# the dense and the pruned model side by side on ONNX Runtime (a plain ORT loop) and on
# onnxruntime-genai's own generator, both on the same graphs: onnxruntime-genai's model builder
# graphs, exported on first use and cached under $PRUNENET_CACHE/onnx. Per-token decode latency of a
# 135M model on CPU is bound by reading the weights, so pruned/dense should come out close to the
# parameter-bytes ratio (about 0.82 at ratio 0.3).
#
#   examples/bench_onnxruntime.sh [OUT_DIR] [RESULTS_DIR]
#   ENGINES="onnxruntime onnxruntime-genai torch" to add eager PyTorch; THREADS=N (default: physical cores);
#   RUNS=5 and PROMPTS="32 128" by default; QUANT=w4a16 adds the pruned model with 4-bit weights
#   (exported from the same plan into OUT_DIR-onnx-w4a16).
set -euo pipefail

OUT=${1:-smol-pruned}
RESULTS=${2:-bench-results}
ENGINES=${ENGINES:-onnxruntime onnxruntime-genai}
QUANT=${QUANT:-}
RUNS=${RUNS:-5}
PROMPTS=${PROMPTS:-32 128}

if [[ -f "$OUT/config.json" ]]; then
  echo "== reusing the export in $OUT"
else
  echo "== pruning the default model (ratio 0.3) into $OUT"
  # --no-heal --no-eval: the benchmark measures speed, which healing and the quality report do not change
  prunenet-export --ratio 0.3 --target hf --no-heal --no-eval --out "$OUT"
fi

DIRS=("$OUT")
if [[ -n "$QUANT" ]]; then
  if [[ -f "$OUT-onnx-$QUANT/model.onnx" ]]; then
    echo "== reusing the $QUANT graph in $OUT-onnx-$QUANT"
  else
    echo "== exporting the pruned model with --quant $QUANT into $OUT-onnx-$QUANT (same plan, no training)"
    # --quant-tune-steps 0: tuned scales change quality, not the graph or its speed
    extra=(); [[ "$QUANT" == w4a16 ]] && extra=(--quant-tune-steps 0)
    prunenet-export --ratio 0.3 --plan "$OUT/prunenet-plan.json" --target onnx --quant "$QUANT" --no-eval --no-heal \
      "${extra[@]}" --out "$OUT-onnx-$QUANT"
  fi
  DIRS+=("$OUT-onnx-$QUANT")
fi

DENSE=SmolLM2-135M-Instruct  # the default model's name; prunenet resolves it to its cache entry
THREAD_ARGS=()
if [[ -n "${THREADS:-}" ]]; then THREAD_ARGS=(--threads "$THREADS"); fi

echo "== benchmarking dense ($DENSE) vs ${DIRS[*]} on: $ENGINES"
# shellcheck disable=SC2086  # ENGINES and PROMPTS are lists of words
prunenet bench "$DENSE" "${DIRS[@]}" --engine $ENGINES --batch-sizes 1 --prompt-lengths $PROMPTS \
  --generation-length 32 --warmup 2 --runs "$RUNS" "${THREAD_ARGS[@]}" --out "$RESULTS"
