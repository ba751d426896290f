#!/usr/bin/env bash
# Issue 30's re-run: the claims at plateau, on tasks the base model was not trained on (SST-2, CoLA).
#
# Protocol changes against benchmarks/claims_study.sh (issue 15), so the runs go to a new study folder
# (STUDY_OUT, default reports/plateau): early stopping on the validation split (--patience 3 evaluations
# without a gain of --min-delta, the best evaluation's weights kept) inside a maximum budget of one
# epoch of SST-2 and three of CoLA (the issue's floor), ten evaluations per epoch.
# The compute plan, block by block with CPU-hours, is in reports/README.md ("Plateau study"); blocks run
# in its priority order and every block is resumable: rerun the same command and finished runs are
# skipped, an interrupted run continues from its checkpoint (stop with SIGTERM, not SIGINT).
#
# Usage:  STUDY_STAGE=probe bash benchmarks/plateau_study.sh      # block 0: size the plan
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${LOWRANK_LAB_SHARED_DATA:-../shared/data}"
OUT="${STUDY_OUT:-reports/plateau}"
THREADS="${STUDY_THREADS:-1}"
STAGES="${STUDY_STAGE:-probe}"
# SST-2: 67,349 training sentences less the 1,000 of the validation split, batch 16: 4,147 steps an
# epoch; an evaluation every 415 steps is ten an epoch. CoLA: 8,551 less 855, 481 steps an epoch.
SST2=(--task sst2 --model minilm --epochs 1 --eval-every 415 --max-length 64 --batch-size 16)
PLATEAU=(--patience 3 --min-delta 0.002 --data-dir "$DATA" --resume --threads "$THREADS" --no-progress)

for stage in $STAGES; do
  case "$stage" in
    probe)  # block 0: LoRA r = 8 and full fine-tuning, seed 0, at issue 15's selected rates (LoRA 1.5e-3,
      # full 2e-4, head 1e-2): where they stop, how long a run takes, whether they pass 0.87
      python -m lowrank_lab.finetune "${SST2[@]}" --methods lora --rank 8 --lr 1.5e-3 --head-lr 1e-2 \
        --seeds 0 --out "$OUT/probe-sst2" "${PLATEAU[@]}"
      python -m lowrank_lab.finetune "${SST2[@]}" --methods full --lr 2e-4 --head-lr 1e-2 \
        --seeds 0 --out "$OUT/probe-sst2" "${PLATEAU[@]}" ;;
    *) echo "unknown stage $stage (probe)" >&2; exit 2 ;;
  esac
done
