#!/usr/bin/env bash
# Issue 30's re-run: the claims at plateau, on tasks the base model was not trained on (SST-2, CoLA).
#
# Protocol changes against benchmarks/claims_study.sh (issue 15), so the runs go to a new study folder
# (STUDY_OUT, default reports/plateau): early stopping on the validation split (--patience 3 evaluations
# without a gain of --min-delta, the best evaluation's weights kept) inside a maximum budget of one
# epoch of SST-2 and three of CoLA (the issue's floor), ten evaluations per epoch; patience three
# evaluations on SST-2 and ten (one epoch) on CoLA.
# The compute plan, block by block with CPU-hours, is in reports/README.md ("Plateau study"); blocks run
# in its priority order and every block is resumable: rerun the same command and finished runs are
# skipped, an interrupted run continues from its checkpoint (stop with SIGTERM, not SIGINT).
#
# Usage:  STUDY_STAGE=probe bash benchmarks/plateau_study.sh      # block 0: size the plan
#         STUDY_STAGE=sst2-ref ...                                # block 1: SST-2 gate and references
#         STUDY_STAGE=cola ...                                    # block 3: CoLA, every method
#           (cola-ref, cola-capacity, cola-variants, cola-frontier: its four parts, in that order)
#         STUDY_STAGE=sst2-rest ...                               # after block 1, revision 5's order:
#           sst2-r1 (4a), sst2-xs, sst2-loldu, sst2-inttune (2a-c), sst2-r64 (4b), intruder-counts (4c),
#           each started only if the study's recorded CPU-hours plus its estimate stay within 40
#           (sst2-capacity = 2a-c, intruders = 4a, 4b, 4c: the names of revisions 1-4)
#         STUDY_STAGE=sst2-variants ...                           # block 5: the init variants
#         STUDY_STAGE=gsm8k ...                                   # block 6: the GSM8K exact-match floor
#         STUDY_STAGE=claims ...                                  # the tables, once runs are done
#         STUDY_STAGE=budget ...                                  # CPU-hours recorded, selection budget
# Two streams on 2 cores: the same command twice (a run's folder is locked while one process trains it).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${LOWRANK_LAB_SHARED_DATA:-../shared/data}"
OUT="${STUDY_OUT:-reports/plateau}"
THREADS="${STUDY_THREADS:-1}"
STAGES="${STUDY_STAGE:-probe}"
# SST-2: 67,349 training sentences less the 1,000 of the validation split, batch 16: 4,147 steps an
# epoch; an evaluation every 415 steps is ten an epoch. CoLA: 8,551 less 855, 481 steps an epoch.
SST2=(--task sst2 --model minilm --epochs 1 --eval-every 415 --max-length 64 --batch-size 16)
COLA=(--task cola --model minilm --epochs 3 --eval-every 48 --max-length 64 --batch-size 16)
# Patience: three evaluations on SST-2 (1,245 steps, 0.3 epoch); ten on CoLA (one epoch). CoLA's first
# evaluations sit at the majority class (Matthews 0) while the model finds the minority one: with three
# (144 steps) every LoRA and full fine-tuning run of a first attempt stopped at step 144 on MCC near 0.
COMMON=(--min-delta 0.002 --data-dir "$DATA" --resume --threads "$THREADS" --no-progress)
SST2+=(--patience 3 "${COMMON[@]}"); COLA+=(--patience 10 "${COMMON[@]}")
PLATEAU=()
SELECT=(--lr-grid --selection-seeds 100,101)
SEEDS="${STUDY_SEEDS:-0,1,2,3,4}"
# Every SST-2 run of the study is judged on dev + the labelled test file (one scored set per folder).
SST2_OUT="$OUT/sst2"; SST2+=(--eval-set dev+test)
COLA_OUT="$OUT/cola"

source benchmarks/study_lib.sh  # chosen_lr STUDY_DIR METHOD [RANK], around RATE
# The claim configurations of "comparable with far fewer parameters" (reports/README.md, Plateau study):
# LoLDU at full rank (384 = min(m, n) for every MiniLM matrix), LoRA-XS at 25, IntTune at 128.
CAPACITY=("loldu 384 1.2e-3" "lora-xs 25 1.2e-2" "inttune 128 3.6e-2")  # method, rank, grid centre

BUDGET_HOURS="${STUDY_BUDGET_HOURS:-40}"  # issue 30: the whole study within 40 CPU-hours of this machine

recorded_hours() {  # CPU-hours of every run record of the study so far (time x threads, as --status);
  # not counted: the untuned models' measurements (about 0.4 CPU-hours, untuned.json keeps no time) and
  # the time runs lost when a session ended before their first checkpoint
  python - "$OUT" <<'PY'
import sys
from pathlib import Path
from lowrank_lab.training.record import RunRecord
from lowrank_lab.training.study import run_cpu_hours
recs = (RunRecord.read(p.parent) for p in Path(sys.argv[1]).glob("*/*/*/run.json"))
print(f"{sum(run_cpu_hours(r) or 0.0 for r in recs if r is not None):.2f}")
PY
}

selection_fraction() {  # revision 5's rule: 0.5 when half-epoch selection chose block 1's and CoLA's rates, else 1
  python benchmarks/selection_budget.py "$COLA_OUT" "$SST2_OUT" --out "$SST2_OUT/selection_budget.md"
}

not_run() {  # not_run LABEL REASON: why the SST-2 study holds no runs of LABEL (a method label as the claims
  # table names it, or "mitigation"), into its not_run.json, which the claims repeat beside the missing
  # runs (lowrank_lab.training.claims.NOT_RUN); merged with what earlier sessions wrote, replaced atomically
  python - "$SST2_OUT/not_run.json" "$1" "$2" <<'PY'
import json
import os
import sys

path, label, reason = sys.argv[1:]
try:
    with open(path, encoding="utf-8") as f:
        said = json.load(f)
except (FileNotFoundError, json.JSONDecodeError):
    said = {}
said[label] = reason
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
tmp = f"{path}.{os.getpid()}.tmp"
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(said, f, indent=1, sort_keys=True)
os.replace(tmp, path)
PY
}

fits() {  # fits NAME RUNS [GLOB [LABEL]]: whether a block of RUNS whole SST-2 runs (0.7 CPU-hours each: block
  # 1's LoRA runs under two streams) fits the budget beside what is recorded; a block that has begun (a
  # folder matching GLOB exists) always finishes. Says why a block does not start, and records it as the
  # reason the study has no runs of LABEL.
  local spent need
  if [ -n "${3:-}" ] && compgen -G "$3" > /dev/null; then return 0; fi
  spent=$(recorded_hours); need=$(python -c "print(round($2 * 0.7, 1))")
  if python -c "import sys; sys.exit(0 if $spent + $need <= $BUDGET_HOURS else 1)"; then return 0; fi
  echo "$1: not started: $spent CPU-hours recorded + about $need for it > the $BUDGET_HOURS-hour budget" >&2
  if [ -n "${4:-}" ]; then
    not_run "$4" "outside the $BUDGET_HOURS CPU-hour budget (block $1: $spent CPU-hours recorded + about \
$need for it)"
  fi
  return 1
}

block() {  # block NAME METHOD RANK GRID [finetune options]: a block of blocks 2 and 4, if it fits
  local runs
  runs=$(python -c "print(6 * $(selection_fraction) + 5)")  # 3 rates x 2 selection seeds, 5 verdict seeds
  fits "$1" "$runs" "$SST2_OUT/*/$2-r$3-seed*" "$2@$3" || return 0  # over budget: said why, not an error
  select_then_seeds "${@:2}"
}

select_then_seeds() {  # select_then_seeds METHOD RANK GRID [finetune options]: block 2 and 4's runs.
  # Rates are chosen on half-epoch runs when benchmarks/selection_budget.py says the half budget chose
  # block 1's and CoLA's rates as the whole one did (revision 5), else on whole-epoch runs; then the
  # verdict seeds train the whole epoch at the chosen rate.
  local m=$1 r=$2 grid=$3 head_lr lr; shift 3
  head_lr=$(chosen_lr "$SST2_OUT" head 8)
  python -m lowrank_lab.finetune "${SST2[@]}" --epochs "$(selection_fraction)" --methods "$m" --rank "$r" \
    --head-lr "$head_lr" "${SELECT[@]}" --lr-grid "$m=$grid" --select-only --out "$SST2_OUT" "$@"
  lr=$(chosen_lr "$SST2_OUT" "$m" "$r")
  python -m lowrank_lab.finetune "${SST2[@]}" --methods "$m" --rank "$r" --head-lr "$head_lr" --lr "$lr" \
    --seeds "$SEEDS" --out "$SST2_OUT" "$@"
}

for stage in $STAGES; do
  case "$stage" in
    probe)  # block 0: LoRA r = 8 and full fine-tuning, seed 0, at issue 15's selected rates (LoRA 1.5e-3,
      # full 2e-4, head 1e-2): where they stop, how long a run takes, whether they pass 0.87
      python -m lowrank_lab.finetune "${SST2[@]}" --methods lora --rank 8 --lr 1.5e-3 --head-lr 1e-2 \
        --seeds 0 --out "$OUT/probe-sst2" "${PLATEAU[@]}"
      python -m lowrank_lab.finetune "${SST2[@]}" --methods full --lr 2e-4 --head-lr 1e-2 \
        --seeds 0 --out "$OUT/probe-sst2" "${PLATEAU[@]}" ;;
    sst2-ref)  # block 1: the head's rate first (with the head-only control), then LoRA r = 8 and full
      # fine-tuning, each over three rates on two selection seeds, then the verdict seeds
      python -m lowrank_lab.finetune "${SST2[@]}" --methods lora,full,head --rank 8 "${SELECT[@]}" \
        --lr-grid head=3e-3,1e-2,3e-2 --lr-grid lora=1.5e-4,5e-4,1.5e-3 --lr-grid full=2e-5,6e-5,2e-4 \
        --seeds "$SEEDS" --out "$SST2_OUT" "${PLATEAU[@]}" ;;
    budget)  # where the study stands against its budget, and the selection budget of blocks 2 and 4
      echo "recorded: $(recorded_hours) of $BUDGET_HOURS CPU-hours; selection runs of blocks 2 and 4: $(
        selection_fraction) epoch" ;;
    sst2-rest)  # everything after block 1, in revision 5's order (verdicts per CPU-hour); block 5 is not in it
      for m in pissa milora nlora slora lora-sb lora-xs; do  # the init variants at r = 8 (lora-xs: LoRA-SB's)
        compgen -G "$SST2_OUT/runs/$m-r8-seed*" > /dev/null || not_run "$m" "block 5 (the init variants at \
r = 8, about 14 CPU-hours) was left out of the $BUDGET_HOURS CPU-hour budget before block 1 (reports/README.md)"
      done
      STUDY_STAGE="sst2-r1 sst2-xs sst2-loldu sst2-inttune sst2-r64 intruder-counts" \
        bash benchmarks/plateau_study.sh ;;
    sst2-capacity) STUDY_STAGE="sst2-xs sst2-loldu sst2-inttune" bash benchmarks/plateau_study.sh ;;
    intruders) STUDY_STAGE="sst2-r1 sst2-r64 intruder-counts" bash benchmarks/plateau_study.sh ;;
    sst2-r1)  # block 4a: LoRA r = 1 (the intruders claim, and the runs intruder mitigation acts on)
      block "$stage" lora 1 5e-4,1.5e-3,4.5e-3 ;;
    sst2-xs)  # block 2a: LoRA-XS at r = 25, its paper's configuration
      block "$stage" lora-xs 25 "$(around 1.2e-2)" ;;
    sst2-loldu)  # block 2b: LoLDU at full rank (384 = min(m, n) of every MiniLM matrix)
      block "$stage" loldu 384 "$(around 1.2e-3)" ;;
    sst2-inttune)  # block 2c: IntTune at r = 128
      block "$stage" inttune 128 "$(around 3.6e-2)" ;;
    sst2-r64)  # block 4b: LoRA r = 64 with rank-stabilised scaling alpha/sqrt(r), the contrast
      block "$stage" lora 64 5e-5,1.5e-4,5e-4 --scaling rslora ;;
    intruder-counts)  # block 4c: intruder counts of every LoRA r = 1, 8, 64 and full fine-tuning run (every
      # matrix, the epsilon sweep; epsilon 0.5 decides), STS-B forgetting, and mitigation; minutes a run
      fits "$stage" 2 "$SST2_OUT/intruders" mitigation || continue
      for run in "$SST2_OUT"/runs/{lora-r1,lora-r8,lora-r64,full}-seed{0,1,2,3,4}; do
        name=$(basename "$run")
        [ -f "$SST2_OUT/intruders/$name/run.json" ] && continue
        [ -d "$run/merged" ] || { echo "skip $name: no merged/ weights (not trained yet?)" >&2; continue; }
        python -m lowrank_lab.intruders --base minilm --tuned "$run" --sweep --out "$SST2_OUT/intruders/$name" \
          --threads "$THREADS" --no-figures
      done
      python -m lowrank_lab.finetune --task sst2 --out "$SST2_OUT" --data-dir "$DATA" --forgetting stsb \
        --threads "$THREADS" --no-progress
      # intruder mitigation on the LoRA runs (issue 32): PEFT's lambda 0.75 decides, the others trace the
      # trade-off; each run scored at each lambda on its task and on the STS-B forgetting measure
      for run in "$SST2_OUT"/runs/{lora-r1,lora-r8}-seed{0,1,2,3,4}; do
        name=$(basename "$run")
        [ -f "$SST2_OUT/mitigation/$name/mitigation.csv" ] && continue
        [ -d "$run/merged" ] || { echo "skip $name: no merged/ weights" >&2; continue; }
        python -m lowrank_lab.intruders --base minilm --tuned "$run" --mitigate 0,0.25,0.5,0.75 \
          --data-dir "$DATA" --out "$SST2_OUT/mitigation/$name" --threads "$THREADS" --no-figures
      done ;;
    cola-ref)  # block 3a: the CoLA gate and references (head rate first, LoRA r = 8, full fine-tuning)
      python -m lowrank_lab.finetune "${COLA[@]}" --methods lora,full,head --rank 8 "${SELECT[@]}" \
        --lr-grid head=3e-3,1e-2,3e-2 --lr-grid lora=1.2e-4,4e-4,1.2e-3 --lr-grid full=2e-5,6e-5,2e-4 \
        --seeds "$SEEDS" --out "$COLA_OUT" "${PLATEAU[@]}" ;;
    cola-capacity)  # block 3b: the three "far fewer parameters" configurations at the head rate of 3a
      head_lr=$(chosen_lr "$COLA_OUT" head 8)
      for cfg in "${CAPACITY[@]}"; do
        read -r m r centre <<< "$cfg"
        python -m lowrank_lab.finetune "${COLA[@]}" --methods "$m" --rank "$r" --head-lr "$head_lr" \
          "${SELECT[@]}" --lr-grid "$m=$(around "$centre")" --seeds "$SEEDS" --out "$COLA_OUT" "${PLATEAU[@]}"
      done ;;
    cola-variants)  # block 3c: the init variants at r = 8 against LoRA
      head_lr=$(chosen_lr "$COLA_OUT" head 8)
      python -m lowrank_lab.finetune "${COLA[@]}" --methods pissa,milora,nlora,slora,lora-sb --rank 8 \
        --head-lr "$head_lr" "${SELECT[@]}" --lr-grid core=1.2e-3,4e-3,1.2e-2 \
        --lr-grid lora=1.2e-4,4e-4,1.2e-3 --seeds "$SEEDS" --out "$COLA_OUT" "${PLATEAU[@]}" ;;
    cola-frontier)  # block 3d: the capacity frontier, three seeds a point
      head_lr=$(chosen_lr "$COLA_OUT" head 8)
      for cfg in "lora 1 4e-4" "lora 2 4e-4" "lora 4 4e-4" "lora 16 4e-4" \
          "lora-xs 4 1.2e-2" "lora-xs 8 1.2e-2" "lora-xs 16 1.2e-2" "lora-xs 64 1.2e-2" \
          "inttune 8 3.6e-2" "inttune 32 3.6e-2" "loldu 8 1.2e-3" "loldu 64 1.2e-3"; do
        read -r m r centre <<< "$cfg"
        python -m lowrank_lab.finetune "${COLA[@]}" --methods "$m" --rank "$r" --head-lr "$head_lr" \
          "${SELECT[@]}" --lr-grid "$m=$(around "$centre")" --seeds 0,1,2 --out "$COLA_OUT" "${PLATEAU[@]}"
      done ;;
    cola)  # block 3, whole: 3a to 3d in order
      STUDY_STAGE="cola-ref cola-capacity cola-variants cola-frontier" bash benchmarks/plateau_study.sh ;;
    sst2-variants)  # block 5: the init variants against LoRA, three rates around LoRA's chosen one
      head_lr=$(chosen_lr "$SST2_OUT" head 8)
      lora_lr=$(chosen_lr "$SST2_OUT" lora 8)
      grids=(); for m in pissa milora nlora slora; do grids+=(--lr-grid "$m=$(around "$lora_lr")"); done
      python -m lowrank_lab.finetune "${SST2[@]}" --methods pissa,milora,nlora,slora,lora-sb --rank 8 \
        --head-lr "$head_lr" "${SELECT[@]}" "${grids[@]}" --lr-grid lora-sb=1.2e-3,4e-3,1.2e-2 \
        --seeds "$SEEDS" --out "$SST2_OUT" "${PLATEAU[@]}" ;;
    gsm8k)  # block 6: the GSM8K floor (issue 30, item 10): LoRA r = 8 on stories260K at issue 15's
      # selected rate (0.0222) and budget (600 steps), judged by greedy exact match of the final number on
      # the 256 dev problems the untuned model was scored on; the GSM8K claims are testable only if the
      # fine-tuned exact match beats the untuned model's by the floor (0.05)
      python -m lowrank_lab.finetune --task gsm8k --model stories260K --methods lora --rank 8 --lr 0.0222 \
        --steps 600 --eval-every 120 --batch-size 16 --max-length 512 --eval-samples 256 --eval generate \
        --seeds "$SEEDS" --data-dir "$DATA" --out "$OUT/gsm8k" --resume --threads "$THREADS" --no-progress ;;
    claims)
      studies=()
      for d in "$SST2_OUT" "$COLA_OUT" "$OUT/gsm8k"; do
        compgen -G "$d/runs/*/run.json" > /dev/null || continue
        python -m lowrank_lab.finetune --task "$(basename "$d")" --out "$d" --summary-only
        studies+=("$d")
      done
      python -m lowrank_lab.claims --studies "${studies[@]}" --out "$OUT" --data-dir "$DATA" ;;
    *) echo "unknown stage $stage (probe sst2-ref sst2-capacity cola cola-ref cola-capacity cola-variants cola-frontier budget sst2-rest sst2-r1 sst2-xs sst2-loldu sst2-inttune sst2-r64 intruder-counts intruders sst2-variants gsm8k claims)" >&2
      exit 2 ;;
  esac
done
