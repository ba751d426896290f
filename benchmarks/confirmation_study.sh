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
#         STUDY_METHODS=lora,pissa,nlora,inttune,full STUDY_TASKS=sst2 STUDY_THREADS=1 \
#           bash benchmarks/confirmation_study.sh      # the claims' methods, one task, one thread
#         STUDY_STAGE=intruders bash benchmarks/confirmation_study.sh   # only count intruders of the runs done
# The intruder stage needs each run's merged/ weights (~90 MB, never committed); runs whose weights
# are gone are replayed first (finetune --rebuild-merged --replace-different).
# Stop with Ctrl-C or SIGTERM (kill PID of the python process): the run in progress saves a checkpoint
# and the next invocation continues it (--resume; lowrank_lab.training.checkpoint).
# On 2 cores, run two single-threaded studies side by side (e.g. STUDY_TASKS=sst2 and STUDY_TASKS=rte):
# MiniLM's small matmuls do not keep 2 threads busy (step CPU time ~= wall time with 2 threads,
# reports/benchmarks/finetune_step.md), and a 1-thread SST-2 LoRA run beside the RTE study took 195 s,
# against 187 s for a 2-thread run alone.
# Each task writes its own folder, so parallel studies never share a file; rerunning with more
# methods or seeds later adds the missing runs (--resume) to the same study.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${LOWRANK_LAB_SHARED_DATA:-../shared/data}"
SEEDS="${STUDY_SEEDS:-0,1,2}"
STEPS="${STUDY_STEPS:-300}"
ALL_METHODS="lora,pissa,pissa-fast,milora,olora,lora-xs,lora-sb,slora,nlora,nlora-pinv,nlora-sketch,inttune,loldu,full,head"
CLAIM_METHODS="lora,pissa,nlora,inttune,full"
METHODS="${STUDY_METHODS:-$ALL_METHODS}"
TASKS="${STUDY_TASKS:-sst2 rte gsm8k}"
THREADS=()
[ -n "${STUDY_THREADS:-}" ] && THREADS=(--threads "$STUDY_THREADS")

STAGE="${STUDY_STAGE:-all}"
case "$STAGE" in all|train|intruders) ;; *) echo "STUDY_STAGE must be all, train or intruders, got $STAGE" >&2; exit 2 ;; esac

for task in $TASKS; do
  [ "$STAGE" = intruders ] && break
  case "$task" in
    sst2|rte)
      python -m lowrank_lab.finetune --task "$task" --model minilm --methods "$METHODS" --rank 8 \
        --steps "$STEPS" --seeds "$SEEDS" --batch-size 16 --max-length 64 --eval-every 100 \
        --data-dir "$DATA" --out "reports/finetune/$task" --resume "${THREADS[@]}" ;;
    gsm8k)
      python -m lowrank_lab.finetune --task gsm8k --model stories260K --methods "${STUDY_METHODS:-$CLAIM_METHODS}" \
        --rank 8 --steps "$STEPS" --seeds "$SEEDS" --batch-size 16 --max-length 512 --eval-every 50 \
        --eval-samples 256 --data-dir "$DATA" --out reports/finetune/gsm8k --resume "${THREADS[@]}" ;;
    *) echo "unknown task in STUDY_TASKS: $task (sst2, rte, gsm8k)" >&2; exit 2 ;;
  esac
done

# Intruder dimensions of every finished run (top-10 left singular vectors, eps = 0.5, plus the
# eps sweep), then rebuild each summary.md so its intruder line is filled.
for task in $TASKS; do
  [ "$STAGE" = train ] && break
  base=minilm; [ "$task" = gsm8k ] && base=stories260K
  # merged/ is not committed: a finished run not yet counted whose weights are gone is replayed
  # (finetune --rebuild-merged; a replay on another CPU type replaces the record, see its --help)
  lost=()
  for run in reports/finetune/$task/runs/*/; do
    run=${run%/}; name=$(basename "$run")
    [ -d "$run/merged" ] || [ -f "reports/finetune/$task/intruders/$name/run.json" ] && continue
    grep -q '"status": "finished"' "$run/run.json" 2>/dev/null && lost+=("$name")
  done
  if [ ${#lost[@]} -gt 0 ]; then
    python -m lowrank_lab.finetune --task "$task" --out "reports/finetune/$task" --data-dir "$DATA" \
      --rebuild-merged "$(IFS=,; echo "${lost[*]}")" --replace-different "${THREADS[@]}"
  fi
  for run in reports/finetune/$task/runs/*/; do
    run=${run%/}
    [ -d "$run/merged" ] || continue
    python -m lowrank_lab.intruders --base "$base" --tuned "$run" --sweep --threads "${STUDY_THREADS:-1}" \
      --out "reports/finetune/$task/intruders/$(basename "$run")" --resume
  done
  python -m lowrank_lab.finetune --task "$task" --out "reports/finetune/$task" --summary-only
done
