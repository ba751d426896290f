#!/usr/bin/env bash
# Issue 15's study: the papers' claims, tested at tuned learning rates on runs that learned the task.
#
#   SST-2 and STS-B with MiniLM (real all-MiniLM-L6-v2, mean pooling as it was trained), rank 8, the
#   claim methods plus full fine-tuning and the head-only control; each method's learning rate (and
#   first the head's) selected on a validation split carved from the training data, over five rates
#   from 0.1x to 10x the published one, on seed 100; then 5 paired seeds (0-4) at the chosen rates,
#   judged on the GLUE dev set that no selection run reads. LoRA at r = 1 and 64 (5 seeds) adds the
#   rank axis of the intruder and forgetting claims. GSM8K with stories260K runs under the n-gram gate.
#   reports/README.md holds the compute plan (CPU-hours per stage, measured per-step times).
#
# Every stage is resumable: rerun the script and finished runs are skipped, an interrupted run
# continues from its checkpoint. Stop with SIGTERM (kill PID of the python process), not SIGINT:
# a nohup'd job ignores SIGINT.
#
# Usage:  bash benchmarks/claims_study.sh                       # every stage, in order
#         STUDY_STAGE=sst2 bash benchmarks/claims_study.sh      # one stage: sst2, ranks, stsb, gsm8k,
#                                                               #   intruders, forgetting, claims
#         STUDY_THREADS=1 ...                                   # torch threads per run (default 1)
#         STUDY_METHODS=pissa STUDY_STAGE=sst2 ...              # some methods only (a second stream)
# On 2 cores, two single-threaded streams side by side use the machine best: the same command twice
# (a process locks each run's folder while it trains it, passes over the runs the other holds and
# waits for them at the end), or one stage split by STUDY_METHODS. selection.csv, runs.csv and
# forgetting.csv keep the rows of both.
#
# Selection grids: LoRA, PiSSA, full fine-tuning and the head get the default five rates (0.1x to
# 10x the published rate, a 100x span). The other claim methods get the three middle ones (0.3x, 1x,
# 3x: a 10x span around the paper's rate), still extended past an edge that holds the best rate, to
# fit the compute plan (reports/README.md); on LoRA's five SST-2 rates the middle three choose the
# same rate as all five. STUDY_GRID replaces these grids (repeatable --lr-grid values).
# Every GLUE call selects the head's rate first unless it is chosen already: start a second stream
# once the first has finished the head's selection runs (or give it --head-lr).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${LOWRANK_LAB_SHARED_DATA:-../shared/data}"
OUT="${STUDY_OUT:-reports/study}"
THREADS="${STUDY_THREADS:-1}"
SEEDS="${STUDY_SEEDS:-0,1,2,3,4}"
METHODS="${STUDY_METHODS:-lora,full,head,pissa,milora,nlora,slora,inttune,lora-xs,lora-sb,loldu}"
GSM8K_METHODS="${STUDY_GSM8K_METHODS:-lora,full}"  # the gate first: add the claim methods only if these beat the bigram
# Seeds on GSM8K only for a claim's methods: LoRA and PiSSA (the PiSSA paper's headline, Table 2). No
# claim compares LoRA with full fine-tuning, whose validation losses at selection already show the
# gate; each more method costs ~2.7 CPU-hours (3 rates + 5 seeds of ~20 min), over the plan.
GSM8K_CLAIM_METHODS="${STUDY_GSM8K_CLAIM_METHODS:-lora,pissa}"
# intruders and forgetting read runs/<run>/merged/ (~90 MB each, never committed): they follow the
# training stages at once, so they run in the session whose machine still holds those weights
STAGES="${STUDY_STAGE:-sst2 ranks intruders forgetting stsb gsm8k claims}"
COMMON=(--model minilm --batch-size 16 --lr-grid --data-dir "$DATA" --resume --threads "$THREADS" --no-progress)
narrow() {  # the three-rate grids of the non-reference claim methods around the LoRA-family rate $1
  local lo mid hi
  read -r lo mid hi < <(python -c "r=$1; print(*(float(f'{r*f:.3g}') for f in (0.3, 1, 3)))")
  for m in milora nlora slora; do printf -- '--lr-grid\n%s=%s,%s,%s\n' "$m" "$lo" "$mid" "$hi"; done
  printf -- '--lr-grid\ncore=1.2e-3,4e-3,1.2e-2\n'  # the core family's 4e-3 (LoRA-XS) x 0.3, 1, 3
}
if [ -n "${STUDY_GRID:-}" ]; then
  read -r -a SST2_GRID <<< "$STUDY_GRID"; STSB_GRID=("${SST2_GRID[@]}")
else
  mapfile -t SST2_GRID < <(narrow 5e-4)  # LoRA paper, Table 9: 5e-4 on SST-2, 4e-4 on STS-B
  mapfile -t STSB_GRID < <(narrow 4e-4)
fi

source benchmarks/study_lib.sh  # chosen_lr STUDY_DIR METHOD [RANK]
grid_past_top() {  # grid_past_top TASK METHOD: the rates its selection tried, plus 3x the top one
  # when the chosen rate is that top (the extensions ran out there)
  python - "$OUT/$1/selection.csv" "$2" <<'EOF'
import sys
import pandas as pd
sel = pd.read_csv(sys.argv[1])
rows = sel[sel["method"] == sys.argv[2]]
rates = sorted(set(rows["lr"]))
if rows.loc[rows["chosen"] == True, "lr"].max() == rates[-1]:  # noqa: E712
    rates.append(3 * rates[-1])
print(",".join(f"{r:.3g}" for r in rates))
EOF
}

for stage in $STAGES; do
  case "$stage" in
    sst2)  # 600 steps = 9,600 examples (0.15 epoch): LoRA and full pass 0.85 dev accuracy by then
      python -m lowrank_lab.finetune --task sst2 --methods "$METHODS" --rank 8 --steps 600 \
        --eval-every 120 --max-length 64 --seeds "$SEEDS" --out "$OUT/sst2" "${COMMON[@]}" "${SST2_GRID[@]}" ;;
    ranks)  # LoRA at r = 1 and 64 for the intruder/forgetting claims, at the head rate chosen above;
      # three rates around the paper's (as the other non-reference runs), extended past an edge
      head_lr=$(chosen_lr "$OUT/sst2" head)
      for r in 1 64; do
        python -m lowrank_lab.finetune --task sst2 --methods lora --rank "$r" --steps 600 \
          --eval-every 120 --max-length 64 --seeds "$SEEDS" --head-lr "$head_lr" --out "$OUT/sst2" \
          "${COMMON[@]}" --lr-grid lora=1.5e-4,5e-4,1.5e-3
      done ;;
    stsb)  # 400 steps = 6,400 pairs, 1.2 epochs of the 5,175 left after the validation split
      python -m lowrank_lab.finetune --task stsb --methods "$METHODS" --rank 8 --steps 400 \
        --eval-every 80 --max-length 128 --seeds "$SEEDS" --out "$OUT/stsb" "${COMMON[@]}" "${STSB_GRID[@]}" ;;
    gsm8k)  # the bigram gate at selection first: seeds only when a method beats it on validation
      gsm=(python -m lowrank_lab.finetune --task gsm8k --model stories260K --methods "$GSM8K_METHODS"
        --rank 8 --steps 600 --eval-every 120 --batch-size 16 --max-length 512 --eval-samples 256
        --lr-grid --data-dir "$DATA" --out "$OUT/gsm8k" --resume --threads "$THREADS" --no-progress)
      "${gsm[@]}" --select-only
      if python - "$OUT/gsm8k" <<'EOF'
import sys

from lowrank_lab.training.claims import read_baselines, selection_gate

gate = selection_gate(sys.argv[1], read_baselines(sys.argv[1]))
if gate is None:
    sys.exit(f"{sys.argv[1]}: no selection.csv or no bigram_validation in baselines.json: cannot gate")
print(f"GSM8K gate at selection: {'pass' if gate[0] else 'fail'}: {gate[1]}")
sys.exit(0 if gate[0] else 1)
EOF
      then
        # PiSSA over three rates around LoRA's chosen one (0.3x, 1x, 3x; its paper trains both at one
        # rate); LoRA one step (3x) past its top when it chose the top, so neither stops at an edge.
        # Fixed once, from the gate's selection, in claim_grids.txt: every stream and every later
        # session runs the same grids, whatever the claim runs have added to selection.csv since.
        grids="$OUT/gsm8k/claim_grids.txt"
        (
          flock 9
          if [ ! -s "$grids" ]; then
            lora_lr=$(chosen_lr "$OUT/gsm8k" lora)
            read -r lo mid hi < <(python -c "r=$lora_lr; print(*(float(f'{r*f:.3g}') for f in (0.3, 1, 3)))")
            printf 'lora=%s\npissa=%s,%s,%s\n' "$(grid_past_top gsm8k lora)" "$lo" "$mid" "$hi" > "$grids.tmp"
            mv "$grids.tmp" "$grids"
          fi
        ) 9> "$OUT/gsm8k/.claim_grids.lock"
        claim_grids=()
        while IFS= read -r line; do
          [[ ",$GSM8K_CLAIM_METHODS," == *",${line%%=*},"* ]] && claim_grids+=(--lr-grid "$line")
        done < "$grids"
        "${gsm[@]}" --methods "$GSM8K_CLAIM_METHODS" --seeds "$SEEDS" "${claim_grids[@]}"
      else echo "GSM8K: no seeds trained (the gate above)" >&2; fi ;;
    intruders)  # LoRA r = 1, 8, 64 and full fine-tuning, seeds 0-4: every matrix, the epsilon sweep
      lost=()  # finished runs whose merged/ weights went with an earlier machine: replayed first
      for run in "$OUT"/sst2/runs/{lora-r1,lora-r8,lora-r64,full}-seed{0,1,2,3,4}; do
        name=$(basename "$run")
        [ -d "$run/merged" ] || [ -f "$OUT/sst2/intruders/$name/run.json" ] && continue
        grep -q '"status": "finished"' "$run/run.json" 2>/dev/null && lost+=("$name")
      done
      if [ ${#lost[@]} -gt 0 ]; then
        python -m lowrank_lab.finetune --task sst2 --out "$OUT/sst2" --data-dir "$DATA" --threads "$THREADS" \
          --rebuild-merged "$(IFS=,; echo "${lost[*]}")" --replace-different --no-progress
      fi
      for run in "$OUT"/sst2/runs/{lora-r1,lora-r8,lora-r64,full}-seed{0,1,2,3,4}; do
        name=$(basename "$run")
        [ -f "$OUT/sst2/intruders/$name/run.json" ] && continue
        [ -d "$run/merged" ] || { echo "skip $name: no merged/ weights (not trained yet?)" >&2; continue; }
        python -m lowrank_lab.intruders --base minilm --tuned "$run" --sweep --out "$OUT/sst2/intruders/$name" \
          --threads "$THREADS" --no-figures
      done ;;
    forgetting)
      python -m lowrank_lab.finetune --task sst2 --out "$OUT/sst2" --data-dir "$DATA" --forgetting stsb \
        --threads "$THREADS" --no-progress ;;
    claims)  # once the runs are done: each task's summary.md and figures, the claims table over
      # the three tasks, and notebook 05 (which reads both) at full size
      for task in sst2 stsb gsm8k; do  # (a task whose seeds have not run has no summary yet)
        if compgen -G "$OUT/$task/runs/*/run.json" > /dev/null; then
          python -m lowrank_lab.finetune --task "$task" --out "$OUT/$task" --summary-only
        fi
      done
      python -m lowrank_lab.claims --studies "$OUT"/sst2 "$OUT"/stsb "$OUT"/gsm8k --out reports --readme README.md
      jupyter nbconvert --to notebook --execute --output-dir "${TMPDIR:-/tmp}/nbout" notebooks/05_convergence.ipynb ;;
    *) echo "unknown STUDY_STAGE $stage (sst2, ranks, stsb, gsm8k, intruders, forgetting, claims)" >&2; exit 2 ;;
  esac
done
