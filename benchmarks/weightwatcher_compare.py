"""Our spectra beside WeightWatcher's ``analyze()`` on the same MiniLM matrices, in one run.

Checks (issue 5): stable rank and spectral norm agree to 1e-3 relative, alpha within the fit's stated
sigma; and the time of each. Writes ``reports/benchmarks/weightwatcher_compare.md``.

Conventions, read from weightwatcher 0.7.x's source (``weightwatcher.py``, ``WW_powerlaw.py``):

* WeightWatcher's ``spectral_norm`` column is the largest eigenvalue of WᵀW, i.e. σ₁², and its
  ``norm`` is Σλ = ‖W‖_F²; ours are σ₁ and ‖W‖_F. The comparison squares ours.
* ``stable_rank`` = ``norm / spectral_norm`` = ‖W‖_F² / σ₁² in both.
* Eigenvalues are σ² with no 1/N normalisation (``normalize`` was removed from ``analyze()`` in
  0.6.5); alpha is the Clauset–Shalizi–Newman fit with xmin by KS minimisation over all eigenvalues
  above ``EVALS_THRESH`` = 1e-5 — the fit lowrank_lab reproduces (on CUDA WeightWatcher raises the
  threshold to 1e-4; this benchmark runs on the CPU).
* WeightWatcher computes σ in float64 (SciPy) on the CPU; ours come from ``torch.linalg.svdvals``
  in float32, so tiny differences in σ are expected and xmin can land on a neighbouring eigenvalue.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see lowrank_lab/analyze.py: shared-CPU busy-waiting

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lowrank_lab.analysis.spectra import spectral_stats  # noqa: E402
from lowrank_lab.linalg import singular_values  # noqa: E402
from lowrank_lab.utils.tables import to_markdown  # noqa: E402
from lowrank_lab.weights import load_hf_model, open_source  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "reports" / "benchmarks" / "weightwatcher_compare.md"
DEFAULT_OUT_SMALL = REPO / "reports" / "benchmarks" / "weightwatcher_compare-small.md"
RTOL = 1e-3


def ours(model: str, layers: str | None) -> tuple[pd.DataFrame, float]:
    """Our spectra of every target matrix (load + SVD + statistics), and the seconds it took."""
    src = open_source(model, layers=layers)
    rows = []
    t0 = time.perf_counter()
    for info in src.targets():
        W = src.load(info).weight
        st = spectral_stats(singular_values(W), tuple(W.shape))
        rows.append({"tensor": info.tensor, "layer": info.layer, "module": info.module, **st})
    return pd.DataFrame(rows), time.perf_counter() - t0


def weightwatcher(model: str, tensors: list[str]) -> tuple[pd.DataFrame, float]:
    """WeightWatcher's ``analyze()`` on the same matrices (selected by layer id), and its seconds."""
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    hf = load_hf_model(model, head="base")
    watcher = ww.WeightWatcher(model=hf)
    with contextlib.redirect_stdout(io.StringIO()):
        described = watcher.describe()
    wanted = {t.removesuffix(".weight") for t in tensors}

    def ours_name(longname: str) -> str | None:
        # WeightWatcher's `longname` is the module path; ours is the tensor name without ".weight",
        # possibly with a different model prefix ("bert.").
        hits = [t for t in wanted
                if t == longname or t.endswith("." + longname) or longname.endswith("." + t)]
        return hits[0] if len(hits) == 1 else None

    described["tensor_base"] = described["longname"].map(ours_name)
    ids = described.loc[described["tensor_base"].notna(), "layer_id"].astype(int).tolist()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        details = watcher.analyze(layers=ids)  # defaults: no plots, no randomization, no MP fit
    seconds = time.perf_counter() - t0
    details["tensor_base"] = details["longname"].map(ours_name)
    return details, seconds


def compare(our: pd.DataFrame, theirs: pd.DataFrame) -> pd.DataFrame:
    our = our.assign(tensor_base=our["tensor"].str.removesuffix(".weight"))
    merged = our.merge(theirs, on="tensor_base", how="inner", suffixes=("", "_ww"))
    rel = lambda a, b: (a - b).abs() / b.abs()  # noqa: E731
    return pd.DataFrame({
        "layer": merged["layer"],
        "module": merged["module"],
        "stable_rank": merged["stable_rank"],
        "stable_rank_ww": merged["stable_rank_ww"],
        "stable_rank_rel_diff": rel(merged["stable_rank"], merged["stable_rank_ww"]),
        "spec_norm_sq": merged["spec_norm"] ** 2,
        "spectral_norm_ww": merged["spectral_norm"],
        "spec_norm_rel_diff": rel(merged["spec_norm"] ** 2, merged["spectral_norm"]),
        "alpha": merged["alpha"],
        "alpha_ww": merged["alpha_ww"],
        "sigma_ww": merged["sigma"],
        "alpha_diff_over_sigma": (merged["alpha"] - merged["alpha_ww"]).abs() / merged["sigma"],
        "xmin_same": (merged["alpha_xmin"] - merged["xmin"]).abs() <= 1e-4 * merged["xmin"].abs(),
    })


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Our spectra (stable rank, spectral norm, alpha) beside WeightWatcher's analyze().",
        epilog="example: python benchmarks/weightwatcher_compare.py          # all 36 matrices\n"
               "         python benchmarks/weightwatcher_compare.py --small  # layer 0 only, a quick check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="minilm", help="registry name or HF directory (default minilm)")
    p.add_argument("--small", action="store_true", help="layer 0 only (6 matrices), for a quick check")
    p.add_argument("--out", type=Path, default=None,
                   help=f"markdown report (default {DEFAULT_OUT.relative_to(REPO)}, "
                        f"{DEFAULT_OUT_SMALL.relative_to(REPO)} with --small)")
    p.add_argument(
        "--threads", type=int, default=1,
        help="BLAS/LAPACK threads for both sides (torch and SciPy's OpenBLAS). Default 1: on a shared "
             "CPU, OpenBLAS's spinning threads made SciPy's SVD of a 1536x384 matrix 35x slower "
             "(2 s instead of 0.06 s), which would time the machine's load, not WeightWatcher.",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import weightwatcher as _ww  # noqa: F401  (loads SciPy's OpenBLAS, so the limit below reaches it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    layers = "0" if args.small else None
    if args.out is None:
        args.out = DEFAULT_OUT_SMALL if args.small else DEFAULT_OUT
    command = " ".join(["python", "benchmarks/weightwatcher_compare.py", *(argv or sys.argv[1:])])

    our, t_ours = ours(args.model, layers)
    theirs, t_ww = weightwatcher(args.model, list(our["tensor"]))
    table = compare(our, theirs)
    n = len(table)
    ok_stable = bool((table["stable_rank_rel_diff"] <= RTOL).all())
    ok_norm = bool((table["spec_norm_rel_diff"] <= RTOL).all())
    within = int((table["alpha_diff_over_sigma"] <= 1).sum())
    ok_alpha = within == n and n > 0
    ok_all = ok_stable and ok_norm and ok_alpha and n == len(our)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    lines = [
        "# Spectra: lowrank_lab vs WeightWatcher on MiniLM",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}  ",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), torch {torch.__version__}, "
        f"weightwatcher {metadata.version('weightwatcher')}; {args.threads} BLAS thread(s) on both sides; "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min; the machine is shared)",
        "",
        f"**Result: {'PASS' if ok_all else 'FAIL'}** on {n} of {len(our)} matrices matched by name: "
        f"stable rank max relative difference {table['stable_rank_rel_diff'].max():.2e} "
        f"({'≤' if ok_stable else '>'} {RTOL:g}); spectral norm {table['spec_norm_rel_diff'].max():.2e} "
        f"({'≤' if ok_norm else '>'} {RTOL:g}); alpha within WeightWatcher's stated sigma on {within}/{n} "
        f"(max |Δα|/σ = {table['alpha_diff_over_sigma'].max():.3g}); same xmin on "
        f"{int(table['xmin_same'].sum())}/{n}.",
        "",
        "| | seconds | matrices | per matrix (ms) | ratio |",
        "|---|---|---|---|---|",
        f"| lowrank_lab spectra (load, float32 svdvals, statistics, alpha) | {t_ours:.2f} | {len(our)} | "
        f"{1e3 * t_ours / max(len(our), 1):.1f} | 1 |",
        f"| WeightWatcher `analyze()` (float64 SciPy SVD, default options) | {t_ww:.2f} | {len(theirs)} | "
        f"{1e3 * t_ww / max(len(theirs), 1):.1f} | {t_ww / t_ours:.2f} |",
        "",
        "Definitions (from weightwatcher's source): its `spectral_norm` is λ_max = σ₁² of WᵀW, so the "
        "table compares our σ₁² (`spec_norm_sq`) with it; `stable_rank` is ‖W‖_F²/σ₁² in both; alpha is "
        "the same Clauset–Shalizi–Newman fit of the eigenvalues σ² (no 1/N normalisation, eigenvalues "
        "≤ 1e-5 dropped, xmin by KS minimisation, sigma = (alpha − 1)/sqrt(n_tail)). WeightWatcher's "
        "timing includes its own model walk; ours includes reading each matrix from safetensors.",
        "",
        "## Per matrix",
        "",
        to_markdown(table, floatfmt=".6g"),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))
    print(f"wrote {args.out}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
