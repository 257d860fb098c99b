#!/usr/bin/env bash
# Prune once: train the policy at ratio 0.3, then prune at 0.1 and 0.2 with no training.
#   examples/reuse_policy.sh [--model SRC] [more prunenet-export options]
set -euo pipefail
OUT="${OUT:-out-reuse}"
prunenet-export "$@" --ratio 0.3 --out "$OUT/0.3" --force
for ratio in 0.1 0.2; do
    prunenet-export "$@" --ratio "$ratio" --policy "$OUT/0.3/prunenet-policy.safetensors" --out "$OUT/$ratio" --force
done
grep -h '"ratio"\|"width"' "$OUT"/*/prunenet-plan.json | head -n 3
