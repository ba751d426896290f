"""summary.md and summary.tex of an analysis run, built from its CSV files alone.

Everything is computed from factorization.csv, spectra.csv and skipped.csv (plus run.json for the
provenance line), so a summary can be rebuilt at any time — after ``--resume``, or by a notebook —
and always describes every row on disk, not only those of the last process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lowrank_lab.utils.files import atomic_write_text
from lowrank_lab.utils.tables import to_latex, to_markdown

from .spectra import energy_column


def method_rank_table(fact: pd.DataFrame) -> pd.DataFrame:
    """Per (method, rank): matrices, median and worst (largest) err_ratio, median relative error,
    and the total init time over all matrices.

    NaN ratios (rank at or above the numerical rank, where the optimum is 0; see
    :func:`lowrank_lab.analysis.factorization.error_ratio`) are left out of the median and worst,
    and counted in ``undefined_ratio``.
    """
    cols = ["method", "rank", "matrices", "median_err_ratio", "worst_err_ratio",
            "median_rel_err_fro", "total_init_seconds", "undefined_ratio"]
    if fact.empty:
        return pd.DataFrame(columns=cols)
    order = list(dict.fromkeys(fact["method"]))
    rows = []
    for (method, rank), g in fact.groupby(["method", "rank"], sort=False):
        ratio = pd.to_numeric(g["err_ratio"], errors="coerce")
        finite = ratio.dropna()
        rows.append({
            "method": method,
            "rank": int(rank),
            "matrices": len(g),
            "median_err_ratio": float(finite.median()) if len(finite) else float("nan"),
            "worst_err_ratio": float(finite.max()) if len(finite) else float("nan"),
            "median_rel_err_fro": float(pd.to_numeric(g["rel_err_fro"]).median()),
            "total_init_seconds": float(pd.to_numeric(g["init_seconds"]).sum()),
            "undefined_ratio": int(ratio.isna().sum()),
        })
    out = pd.DataFrame(rows, columns=cols)
    out["_m"] = out["method"].map({m: i for i, m in enumerate(order)})
    return out.sort_values(["_m", "rank"]).drop(columns="_m").reset_index(drop=True)


def module_spectra_table(spectra: pd.DataFrame, ranks: Sequence[int] = ()) -> pd.DataFrame:
    """Per module type (in model order): matrices, shape, and the median of each spectral statistic
    over layers (the alpha median is over matrices whose fit succeeded)."""
    stats = ["fro_norm", "spec_norm", "stable_rank", "effective_rank", "numerical_rank",
             "alpha", "alpha_sigma"]
    energies = [energy_column(r) for r in ranks if energy_column(r) in spectra.columns]
    cols = ["module", "matrices", "shape", *(f"median_{s}" for s in [*stats, *energies])]
    if spectra.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for module, g in spectra.groupby("module", sort=False):
        shapes = sorted({f"{int(m)}x{int(n)}" for m, n in zip(g["m"], g["n"], strict=True)})
        row: dict[str, Any] = {"module": module, "matrices": len(g), "shape": ", ".join(shapes)}
        for s in [*stats, *energies]:
            row[f"median_{s}"] = float(pd.to_numeric(g[s], errors="coerce").median())
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def skipped_notes(skipped: pd.DataFrame) -> list[str]:
    """One sentence per (rank, reason) group of skipped pairs, e.g.
    ``"rank 64 (svd, rsvd): skipped on 12 matrices (rank 64 > min(m, n) = 32)"``, and one per
    whole matrix that could not be factored (a row with no rank: NaN weights, an all-zero matrix)."""
    if skipped.empty:
        return []
    whole = skipped["rank"].isna() | (skipped["rank"].astype(str) == "")
    notes = [f"`{r.tensor}`: {r.reason}" for r in skipped[whole].itertuples()]
    for (rank, reason), g in skipped[~whole].groupby(["rank", "reason"], sort=False):
        methods = ", ".join(dict.fromkeys(g["method"]))
        tensors = list(dict.fromkeys(g["tensor"]))
        where = f"{len(tensors)} matrices" if len(tensors) > 3 else ", ".join(f"`{t}`" for t in tensors)
        notes.append(f"rank {int(rank)} ({methods}): skipped on {where} ({reason})")
    return notes


def provenance_line(meta: Mapping[str, Any] | None) -> str:
    """One line saying what made the files: command, device, versions, seed, commit, date, wall time."""
    if not meta:
        return "Provenance: run.json not found."
    versions = meta.get("versions") or {}
    parts = [
        f"`{meta.get('command')}`",
        f"device {meta.get('device')}",
        f"torch {versions.get('torch')}",
        f"lowrank_lab {versions.get('lowrank_lab')}",
        f"seed {meta.get('seed')}",
        f"git {meta.get('git_commit')}",
        f"started {meta.get('started')}",
    ]
    if meta.get("wall_seconds") is not None:
        parts.append(f"wall {float(meta['wall_seconds']):.1f} s")
    return "Made by " + ", ".join(parts) + "."


#: What a synthetic run's spectra are (issue 31): lowrank_lab.weights.synthetic gives every matrix a
#: power-law spectrum fixed by its shape alone.
SYNTHETIC_NOTE = (
    "**Synthetic weights: the spectra are shape-level stand-ins.** Every matrix has the power-law "
    "spectrum σ_k ∝ k^slope of `lowrank_lab.weights.synthetic`, scaled by its shape alone, so all "
    "matrices of one shape (q, k, v and o of a square attention, say) have the same singular values "
    "and the same spectral statistics (alpha, ranks, energy). They measure the factorizations' error "
    "and time at the model's shapes, not the spectra of its trained weights."
)


def _is_synthetic(fact: pd.DataFrame, meta: Mapping[str, Any] | None) -> bool:
    """Whether the run analysed synthetic weights (run.json's config, else the rows' column)."""
    config = (meta or {}).get("config") or {}
    if "synthetic" in config:
        return bool(config["synthetic"])
    if not fact.empty and "synthetic" in fact:
        return bool(fact["synthetic"].astype(str).str.lower().eq("true").any())
    return False


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_csv(path)


def write_summary(
    out_dir: str | Path,
    *,
    ranks: Sequence[int] = (),
    meta: Mapping[str, Any] | None = None,
    model: str | None = None,
) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``summary.tex`` in ``out_dir`` from the CSV files there.

    Returns
    -------
    (Path, Path)
        The markdown and LaTeX files.
    """
    out_dir = Path(out_dir)
    fact = _read_csv(out_dir / "factorization.csv")
    spectra = _read_csv(out_dir / "spectra.csv")
    skipped = _read_csv(out_dir / "skipped.csv")
    if model is None and not fact.empty:
        model = str(fact["model"].iloc[0])
    model = model or out_dir.name

    synthetic = _is_synthetic(fact, meta)
    by_method = method_rank_table(fact)
    by_module = module_spectra_table(spectra, ranks)
    notes = skipped_notes(skipped)
    prov = provenance_line(meta)
    n_matrices = len(spectra)

    md = [f"# Low-rank factorization of {model}: summary", "", prov, ""]
    md += [
        f"{n_matrices} matrices, {len(fact)} factorizations. `err_ratio` = rel_err_fro / "
        "opt_rel_err_fro, the Frobenius error over the Eckart–Young optimum (1 = optimal); "
        "init time is the median of repeats per matrix, summed over matrices.",
        "",
        *([SYNTHETIC_NOTE, ""] if synthetic else []),
        "## Error ratio and init time per method and rank",
        "",
        to_markdown(by_method),
        "## Spectral statistics per module type (median over layers)",
        "",
        "alpha: power-law exponent of the eigenvalue density of WᵀW (WeightWatcher's fit); "
        "effective_rank: Roy & Vetterli 2007; numerical_rank: numpy.linalg.matrix_rank's tolerance.",
        "",
        to_markdown(by_module),
        "## Skipped (method, rank) pairs",
        "",
    ]
    md += [f"- {n}" for n in notes] if notes else ["None."]
    md_path = atomic_write_text(out_dir / "summary.md", "\n".join(md) + "\n")

    def tex_escape(s: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("`", ""), ("$", r"\$")):
            s = s.replace(a, b)
        return s

    tex = [f"% {prov}", r"\section*{Low-rank factorization of " + tex_escape(model) + "}", ""]
    cap_method = f"{model}: err_ratio (median, worst) and total init time per method and rank"
    cap_module = f"{model}: spectral statistics per module type (median over layers)"
    if synthetic:
        body = SYNTHETIC_NOTE.split("** ", 1)[1].replace("σ_k ∝ k^slope", "SIGMA")
        tex += [r"\paragraph{Synthetic weights: the spectra are shape-level stand-ins.} "
                + tex_escape(body).replace("SIGMA", r"$\sigma_k \propto k^{\mathrm{slope}}$"), ""]
    tex += [to_latex(by_method, caption=cap_method), to_latex(by_module, caption=cap_module)]
    if notes:
        tex.append(r"\paragraph{Skipped.}")
        tex.append(r"\begin{itemize}")
        tex += [r"\item " + tex_escape(n) for n in notes]
        tex.append(r"\end{itemize}")
    tex_path = atomic_write_text(out_dir / "summary.tex", "\n".join(tex) + "\n")
    return md_path, tex_path

