"""The folder ``benchmarks/gpu_check.sh`` wrote, as one report: ``reports/benchmarks/gpu.md`` (issue 19).

Reads what the check left in its ``$OUT`` folder — ``env.txt`` (device, versions), ``steps.tsv``
(each step's status, seconds and limit), ``pytest.xml`` (``pytest -m gpu`` as JUnit XML),
``analyze.md`` and ``analyze_svd.md`` (``benchmarks/analyze_scale.py``), ``rsvd.csv``
(``benchmarks/factorizations.py --methods rsvd``) and ``svd_drivers.csv``
(``benchmarks/svd_drivers.py``) — and writes the device, the date, the command, the steps, the
gpu-test results and the tables, with issue 19's targets checked:

* the llama-7b-shaped analysis (224 matrices; spectra and rsvd, nystrom, ldu at rank 128),
  extrapolated from the slice: at most 60 s on one GPU;
* ``rsvd`` at most 1.0 × ``torch.svd_lowrank``'s time at the same sketch (q = r + 10, niter = 2),
  paired: the median over rounds of the per-round ratio, with its sign-test 95% CI
  (``lowrank_lab.utils.timing.median_ci``, computed by factorizations.py).

A file that is missing (its step was skipped, failed or timed out) is reported as such, never
guessed. A CPU dry run (``env.txt``: ``device: cpu``) is never written as a measurement: its
default output is ``reports/benchmarks/gpu-dryrun.md``, its title says DRY RUN, and ``--out`` naming
``gpu.md`` is refused.
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from lowrank_lab.utils.tables import to_markdown

REPO = Path(__file__).resolve().parents[1]
MEASURED_OUT = REPO / "reports" / "benchmarks" / "gpu.md"
DRYRUN_OUT = REPO / "reports" / "benchmarks" / "gpu-dryrun.md"
TARGET_ANALYSIS_S = 60.0
TARGET_RSVD_RATIO = 1.0
RATIO_VERDICT = f"≤ {TARGET_RSVD_RATIO:g}x"


class ReportError(ValueError):
    """The folder cannot be reported (missing, not a gpu_check folder, or a dry run sent to gpu.md)."""


def read_env(folder: Path) -> dict[str, str]:
    """``key: value`` lines of env.txt (the first of a repeated key wins)."""
    path = folder / "env.txt"
    if not path.is_file():
        raise ReportError(f"{path} not found: pass the $OUT folder that benchmarks/gpu_check.sh wrote")
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in env:
            env[key.strip()] = value.strip()
    if env.get("device") not in ("cuda", "cpu"):
        raise ReportError(f"{path} names no device (cuda or cpu): not written by benchmarks/gpu_check.sh")
    return env


def read_steps(folder: Path) -> pd.DataFrame:
    path = folder / "steps.tsv"
    if not path.is_file():
        return pd.DataFrame(columns=["step", "status", "seconds", "limit_s", "command"])
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def read_pytest(folder: Path) -> dict | None:
    """Counts (``tests``, ``passed``, ``failed``, ``errors``, ``skipped``) and each problem's first line."""
    path = folder / "pytest.xml"
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    cases = root.iter("testcase")
    out: dict = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "problems": [], "skips": {}}
    for case in cases:
        out["tests"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            tag = "failure" if "failure" in kinds else "error"
            out["failed" if tag == "failure" else "errors"] += 1
            msg = (case.find(tag).get("message") or "").strip().splitlines()
            out["problems"].append((name, tag, msg[0][:200] if msg else ""))
        elif "skipped" in kinds:
            out["skipped"] += 1
            reason = (case.find("skipped").get("message") or "").strip()
            out["skips"][reason] = out["skips"].get(reason, 0) + 1
        else:
            out["passed"] += 1
    return out


def extrapolated_seconds(analyze_md: str) -> tuple[float, int] | None:
    """``(seconds, matrices)`` of the whole-model wall time in an analyze_scale.py report."""
    m = re.search(r"wall time, all (\d+) matrices \| (\d+(?:\.\d+)?) s", analyze_md)
    return (float(m.group(2)), int(m.group(1))) if m else None


def demote(markdown: str, levels: int = 2) -> str:
    """Headings ``#`` → ``###`` so an embedded report nests under this one's sections."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown, flags=re.M)


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def step_status(steps: pd.DataFrame, name: str) -> str:
    row = steps[steps["step"] == name]
    return "not run" if row.empty else str(row["status"].iloc[0])


def missing(path: Path, steps: pd.DataFrame, step: str) -> str:
    """What stands in a section whose file the check did not write: the file and its step's status."""
    return f"No {path.name}: step {step_status(steps, step)}."


def not_measured(target: str, path: Path, steps: pd.DataFrame, step: str) -> str:
    """A target row for a file the check did not write."""
    return f"| {target} | no {path.name} (step: {step_status(steps, step)}) | not measured |"


def rsvd_tables(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired rsvd / torch.svd_lowrank rows per (shape, rank), and the full SVD once per shape."""
    rows = []
    for (shape, rank), g in df.groupby(["shape", "rank"], sort=False):
        by = g.set_index("method")
        if "rsvd" not in by.index or "torch.svd_lowrank" not in by.index:
            continue
        r, p = by.loc["rsvd"], by.loc["torch.svd_lowrank"]
        ratio = float(r["time_ratio_vs_svd_lowrank"])
        rows.append(
            {
                "shape": shape,
                "rank": int(rank),
                "rsvd ms": 1e3 * float(r["median_s"]),
                "svd_lowrank ms": 1e3 * float(p["median_s"]),
                "rounds": int(r["repeats"]),
                "paired ratio": ratio,
                "95% CI": f"[{float(r['time_ratio_ci_lo']):.3f}, {float(r['time_ratio_ci_hi']):.3f}]",
                "rsvd err/opt": float(r["err_ratio"]),
                "svd_lowrank err/opt": float(p["err_ratio"]),
                RATIO_VERDICT: verdict(ratio <= TARGET_RSVD_RATIO),
            }
        )
    full = df[df["method"] == "torch.linalg.svd"].drop_duplicates("shape")
    svd = pd.DataFrame({"shape": full["shape"], "torch.linalg.svd s (default driver)": full["median_s"]})
    return pd.DataFrame(rows), svd


def build_report(folder: Path, out: Path) -> str:
    env = read_env(folder)
    dry = env["device"] == "cpu"
    steps = read_steps(folder)
    title = (
        "# GPU check: CPU DRY RUN (nothing here is a GPU measurement)"
        if dry
        else f"# GPU check: measured on {env.get('gpu', env.get('nvidia-smi', 'a GPU'))}"
    )
    lines = [
        title,
        "",
        f"Command: `{env.get('command', 'bash benchmarks/gpu_check.sh')}`, then "
        f"`python benchmarks/gpu_report.py <its $OUT> --out {_rel(out)}`  ",
        f"Date: {env.get('date', '?')}. Commit measured: {env.get('commit', '?')}.  ",
        f"Device: {env.get('gpu', 'cpu (dry run)')}; nvidia-smi: {env.get('nvidia-smi', '?')}; "
        f"host {env.get('host', '?')}.  ",
        f"Versions: Python {env.get('python', '?')}, torch {env.get('torch', '?')} "
        f"(CUDA {env.get('torch_cuda', '?')}, cuDNN {env.get('cudnn', '?')}, CUDA driver API "
        f"{env.get('cuda_driver', '?')}), transformers {env.get('transformers', '?')}, "
        f"peft {env.get('peft', '?')}, numpy {env.get('numpy', '?')}, scipy {env.get('scipy', '?')}.",
        "",
    ]
    if dry:
        lines += [
            "This is `benchmarks/gpu_check.sh --device cpu`: the same steps at small sizes (MiniLM's "
            "shapes, 512² and 1376 × 512) on the development CPU, to prove the script and this report "
            "before a lent GPU's minutes are spent. Its times are CPU times of small matrices; its "
            "`gpu`-marked tests are skipped; its SVD drivers are all LAPACK. The targets below are "
            "evaluated only to exercise the code.",
            "",
        ]
    heading = "## Targets (issue 19)" + (": CPU figures of the dry run, no verdict on a GPU" if dry else "")
    lines += [heading, "", "| target | value | verdict |", "|---|---|---|"]
    sections: list[str] = []

    analyze = folder / "analyze.md"
    if analyze.is_file():
        text = analyze.read_text()
        ext = extrapolated_seconds(text)
        if ext is not None:
            secs, n = ext
            lines.append(
                f"| whole analysis, {n} matrices (spectra; rsvd, nystrom, ldu at rank 128), extrapolated "
                f"from the slice: ≤ {TARGET_ANALYSIS_S:g} s | {secs:.0f} s "
                f"| {verdict(secs <= TARGET_ANALYSIS_S)} |"
            )
        sections += ["## Analysis slice (`analyze_scale.py`)", "", demote(text).strip(), ""]
    else:
        lines.append(not_measured(f"whole analysis ≤ {TARGET_ANALYSIS_S:g} s", analyze, steps, "analyze"))
        sections += ["## Analysis slice", "", missing(analyze, steps, "analyze"), ""]

    rsvd_csv = folder / "rsvd.csv"
    if rsvd_csv.is_file():
        paired, svd = rsvd_tables(pd.read_csv(rsvd_csv))
        for d in paired.to_dict("records"):
            lines.append(
                f"| rsvd / torch.svd_lowrank ≤ {TARGET_RSVD_RATIO:g}x, paired, {d['shape']} rank {d['rank']} "
                f"| {d['paired ratio']:.3f} {d['95% CI']} | {d[RATIO_VERDICT]} |"
            )
        sections += [
            "## rsvd against torch.svd_lowrank (`factorizations.py --methods rsvd`)",
            "",
            "Same matrix, same sketch (q = r + 10, niter = 2), interleaved rounds; the ratio is the median "
            "over rounds of rsvd's time over svd_lowrank's in the same round, its 95% CI the sign-test "
            "interval. `err/opt` is the Frobenius error over the Eckart–Young optimum.",
            "",
            to_markdown(paired, floatfmt=".4g") if not paired.empty else "(no paired rows)\n",
            to_markdown(svd, floatfmt=".4g") if not svd.empty else "",
        ]
    else:
        lines.append(not_measured(f"rsvd / torch.svd_lowrank {RATIO_VERDICT}", rsvd_csv, steps, "rsvd"))
        sections += ["## rsvd against torch.svd_lowrank", "", missing(rsvd_csv, steps, "rsvd"), ""]

    drivers_csv = folder / "svd_drivers.csv"
    sections += ["## torch.linalg.svd drivers (`svd_drivers.py`)", ""]
    if drivers_csv.is_file():
        d = pd.read_csv(drivers_csv)
        cols = [
            "shape",
            "driver",
            "driver_used",
            "median_s",
            "repeats",
            "sv_err",
            "recon_err",
            "orth_err",
            "status",
        ]
        table = d[cols].rename(columns={"median_s": "median s"})
        refs = d.drop_duplicates("shape")
        ref = ", ".join(f"{s}: {v:.1e}" for s, v in zip(refs["shape"], refs["ref_vs_known"], strict=True))
        sections += [
            "Full SVD with vectors, float32; errors against the float64 singular values of the same matrix "
            f"(that reference is within {ref} of σ_1 from the exact synthetic spectrum). `sv_err` = "
            "max |σ̂ − σ| / σ_1, `recon_err` = ‖W − ÛΣ̂V̂ᵀ‖_F / ‖W‖_F, `orth_err` = the largest entry of "
            "ÛᵀÛ − I or V̂ᵀV̂ − I.",
            "",
            to_markdown(table, floatfmt=".3g"),
        ]
    else:
        sections += [missing(drivers_csv, steps, "drivers"), ""]

    analyze_svd = folder / "analyze_svd.md"
    sections += ["## Analysis with the exact SVD (`analyze_scale.py --methods svd,rsvd,nystrom,ldu`)", ""]
    if analyze_svd.is_file():
        sections += [demote(analyze_svd.read_text()).strip(), ""]
    else:
        sections += [missing(analyze_svd, steps, "analyze_svd"), ""]

    tests = read_pytest(folder)
    lines += ["", "## `pytest -m gpu`", ""]
    if tests is None:
        lines += [missing(folder / "pytest.xml", steps, "pytest"), ""]
    else:
        lines += [
            f"{tests['tests']} tests: {tests['passed']} passed, {tests['failed']} failed, "
            f"{tests['errors']} errors, {tests['skipped']} skipped.",
            "",
        ]
        lines += [f"- {tag} `{name}`: {msg}" for name, tag, msg in tests["problems"]]
        lines += [f"- skipped ×{k}: {reason}" for reason, k in tests["skips"].items()]
        lines.append("")
    steps_table = steps.rename(columns={"limit_s": "limit s"}).drop(columns=["command"], errors="ignore")
    lines += [
        "## Steps",
        "",
        "Each step ran under its own time limit inside the script's budget "
        f"({env.get('budget_s', '?')} s); the commands are in steps.tsv and every output in log.txt of the "
        "check's folder.",
        "",
        to_markdown(steps_table) if not steps_table.empty else "(no steps.tsv)\n",
        *sections,
    ]
    return "\n".join(lines).rstrip() + "\n"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/gpu_report.py",
        description=__doc__.split("\n\n")[0],
        epilog="example: python benchmarks/gpu_report.py /work/.device/out  # the files the device sent back",
    )
    p.add_argument("folder", type=Path, help="the $OUT folder of benchmarks/gpu_check.sh")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"report to write (default {_rel(MEASURED_OUT)}, or {_rel(DRYRUN_OUT)} for a CPU dry run)",
    )
    args = p.parse_args(argv)
    try:
        if not args.folder.is_dir():
            raise ReportError(f"{args.folder} is not a folder: pass the $OUT of benchmarks/gpu_check.sh")
        dry = read_env(args.folder)["device"] == "cpu"
        out = args.out or (DRYRUN_OUT if dry else MEASURED_OUT)
        if dry and out.name == MEASURED_OUT.name:
            raise ReportError(
                f"{args.folder} holds a CPU dry run, not a GPU measurement; write it to "
                f"{_rel(DRYRUN_OUT)} (--out), never to {out.name}"
            )
        text = build_report(args.folder, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except (ReportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {_rel(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
