#!/bin/bash
# A first STSb-dev probe of distillation (issue 34; one seed, not the 30-minute protocol):
# the demo recipe (configs/gemma-3-270m-cpu.yaml, 64 steps) with all-MiniLM-L6-v2 (fp32) as
# teacher at each distill weight given, STSb dev every 16 steps. The same recipe without a
# teacher is `make demo`'s run (its adapter/eval.jsonl). Run from the repo root:
#   bash bench/diagnostics/distill_probe.sh 1.0 [0.3 ...]
# Each run's eval.jsonl, teacher.json and train_config.json land in runs/distill-probe/w<W>.
# PROBE_FLAGS adds training flags, e.g. PROBE_FLAGS="--eval-every 64 --no-eval-at-start"
# scores STSb dev only at the end.
set -euo pipefail
export LMEMBED_DATA_DIR=${LMEMBED_DATA_DIR:-$(realpath ../shared/data)} HF_HUB_OFFLINE=1
for weight in "$@"; do
  .venv/bin/lmembed train --config configs/gemma-3-270m-cpu.yaml --teacher all-minilm-l6-v2 \
      --teacher-dtype fp32 --distill-weight "$weight" --output "runs/distill-probe/w$weight" \
      --resume ${PROBE_FLAGS:-}
done
