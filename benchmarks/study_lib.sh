# Shell helpers the study scripts share (sourced by benchmarks/claims_study.sh and plateau_study.sh).

chosen_lr() {  # chosen_lr STUDY_DIR METHOD [RANK]: the rate that study's selection chose (selection.csv)
  python - "$1/selection.csv" "$2" "${3:-}" <<'PY'
import sys
import pandas as pd
path, method, rank = sys.argv[1:4]
sel = pd.read_csv(path)
row = sel[(sel["method"] == method) & (sel["chosen"] == True)]  # noqa: E712
if rank:
    row = row[row["rank"] == int(rank)]
if row.empty:
    sys.exit(f"{path}: no {method}{' r=' + rank if rank else ''} rate chosen yet; run its selection first")
print(float(row["lr"].iloc[0]))
PY
}

around() {  # around RATE: the three rates 0.3x, 1x and 3x RATE, as a comma list
  python -c "r=$1; print(','.join(f'{r*f:.3g}' for f in (0.3, 1, 3)))"
}
