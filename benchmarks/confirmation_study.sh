#!/usr/bin/env bash
# Issue 7's confirmation study: do the papers' downstream claims hold at small scale?
#
#   SST-2 and RTE with MiniLM (real all-MiniLM-L6-v2) at rank 8, every adapter method of the
#   registry plus full fine-tuning and the head-only control, 3 seeds, 300 steps each;
#   GSM8K loss curves with stories260K (real llama2.c weights) for the five methods of the claims;
#   then the intruder counts of every run's merged weights against its base model, which fill the
#   intruder line of each summary.md (--summary-only rebuilds it).
#
# Cost on the 2-core CPU (benchmarks/finetune_step.py): about 4 minutes per MiniLM run of 300 steps
# when the machine is otherwise idle -> SST-2 and RTE: 2 tasks x 15 methods x 3 seeds = 90 runs,
# roughly 5-6 hours; GSM8K (sequences up to 512 tokens): 5 methods x 3 seeds = 15 runs, ~1-2 hours;
# intruders: 36 MiniLM matrices per run, about a minute per run with the base SVDs cached.
# Every step is resumable: rerun the script after an interruption and finished runs are skipped.
#
# Usage:  bash benchmarks/confirmation_study.sh            # everything
#         STUDY_SEEDS=0 STUDY_STEPS=100 bash benchmarks/confirmation_study.sh   # a reduced version
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${LOWRANK_LAB_SHARED_DATA:-../shared/data}"
SEEDS="${STUDY_SEEDS:-0,1,2}"
STEPS="${STUDY_STEPS:-300}"
ALL_METHODS="lora,pissa,pissa-fast,milora,olora,lora-xs,lora-sb,slora,nlora,nlora-pinv,nlora-sketch,inttune,loldu,full,head"
CLAIM_METHODS="lora,pissa,nlora,inttune,full"

for task in sst2 rte; do
  python -m lowrank_lab.finetune --task "$task" --model minilm --methods "$ALL_METHODS" --rank 8 \
    --steps "$STEPS" --seeds "$SEEDS" --batch-size 16 --max-length 64 --eval-every 100 \
    --data-dir "$DATA" --out "reports/finetune/$task" --resume
done

python -m lowrank_lab.finetune --task gsm8k --model stories260K --methods "$CLAIM_METHODS" --rank 8 \
  --steps "$STEPS" --seeds "$SEEDS" --batch-size 16 --max-length 512 --eval-every 50 --eval-samples 256 \
  --data-dir "$DATA" --out reports/finetune/gsm8k --resume

# Intruder dimensions of every finished run (top-10 left singular vectors, eps = 0.5, plus the
# eps sweep), then rebuild each summary.md so its intruder line is filled.
for task in sst2 rte gsm8k; do
  base=minilm; [ "$task" = gsm8k ] && base=stories260K
  for run in reports/finetune/$task/runs/*/; do
    run=${run%/}
    [ -d "$run/merged" ] || continue
    python -m lowrank_lab.intruders --base "$base" --tuned "$run" --sweep --threads 1 \
      --out "reports/finetune/$task/intruders/$(basename "$run")" --resume
  done
  python -m lowrank_lab.finetune --task "$task" --out "reports/finetune/$task" --summary-only
done
