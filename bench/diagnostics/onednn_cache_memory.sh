#!/bin/bash
# Peak RSS and wall time of a 16-step demo-recipe training run under oneDNN primitive-cache
# capacities and a glibc arena cap (issue 36's first lead). Run from the repo root:
#   bash bench/diagnostics/onednn_cache_memory.sh
set -euo pipefail
export LMEMBED_DATA_DIR=${LMEMBED_DATA_DIR:-$(realpath ../shared/data)} HF_HUB_OFFLINE=1
out=$(mktemp -d)
for variant in "" "MALLOC_ARENA_MAX=2" "ONEDNN_PRIMITIVE_CACHE_CAPACITY=16" \
               "ONEDNN_PRIMITIVE_CACHE_CAPACITY=1"; do
  rm -rf "$out/run"
  start=$(date +%s)
  env $variant /usr/bin/time -f "%M KB" .venv/bin/lmembed train \
      --config configs/gemma-3-270m-cpu.yaml --steps 16 --output "$out/run" > "$out/log" 2>&1
  echo "${variant:-default}: peak $(tail -1 "$out/log") wall $(( $(date +%s) - start )) s"
done
