"""The GPU check of issue 19 without a GPU: its report from the committed CPU dry run, the same report
for a (doctored) measured folder, the SVD-driver benchmark on the CPU, and the shell script's budget
and refusals.

``gpu_check_dryrun/`` is the ``$OUT`` of ``bash benchmarks/gpu_check.sh --device cpu`` (see
reports/README.md), kept unchanged so the report is tested on what the script really writes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DRYRUN = Path(__file__).resolve().parent / "gpu_check_dryrun"
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


@pytest.fixture
def report(benchmark_script):
    return benchmark_script("gpu_report")


def _steps(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "steps.tsv", sep="\t", dtype=str, keep_default_na=False)


def test_dry_run_folder_is_what_the_device_brings_back():
    files = sorted(p.name for p in DRYRUN.iterdir())
    # the device tool returns at most 8 files: the script must not write more
    assert files == sorted(
        ["env.txt", "steps.tsv", "log.txt", "pytest.xml", "analyze.md", "analyze_svd.md", "rsvd.csv",
         "svd_drivers.csv"]
    )  # fmt: skip
    steps = _steps(DRYRUN)
    assert list(steps["step"]) == ["env", "pytest", "analyze", "rsvd", "drivers", "analyze_svd"]
    assert set(steps["status"]) == {"ok"}


def test_report_of_the_dry_run_is_labelled_and_complete(report, tmp_path, capsys):
    out = tmp_path / "gpu-dryrun.md"
    assert report.main([str(DRYRUN), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# GPU check: CPU DRY RUN (nothing here is a GPU measurement)\n")
    assert "measured on" not in text
    # every gpu test was collected and skipped on the CPU, and the report counts them
    assert "20 tests: 0 passed, 0 failed, 0 errors, 20 skipped." in text
    # one target row per (shape, rank) of the paired rsvd run, with the ratio factorizations.py wrote
    rsvd = pd.read_csv(DRYRUN / "rsvd.csv")
    pairs = rsvd[rsvd["method"] == "rsvd"]
    assert text.count("| rsvd / torch.svd_lowrank ≤ 1x, paired,") == len(pairs) == 4
    for row in pairs.itertuples():
        ci = f"[{row.time_ratio_ci_lo:.3f}, {row.time_ratio_ci_hi:.3f}]"
        assert f"{row.shape} rank {row.rank} | {row.time_ratio_vs_svd_lowrank:.3f} {ci} |" in text
    # each driver once, and the dry run says it was LAPACK, not cuSOLVER
    assert text.count("| lapack gesdd (cpu has no driver=) |") == 3
    for step in ("env", "pytest", "analyze", "rsvd", "drivers", "analyze_svd"):
        assert f"| {step} | ok |" in text
    target = re.search(r"extrapolated from the slice: ≤ 60 s \| (\d+) s \| (met|\*\*MISSED\*\*) \|", text)
    seconds, ok = target.groups()
    assert (ok == "met") == (int(seconds) <= 60)


def test_dry_run_is_never_written_as_gpu_md(report, tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert report.main([str(DRYRUN), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds a CPU dry run" in err and "gpu-dryrun.md" in err
    assert err.count("\n") == 1 and not out.exists()


def test_bad_folder_is_one_line_and_status_2(report, tmp_path, capsys):
    assert report.main([str(tmp_path / "absent")]) == 2
    assert "is not a folder: pass the $OUT of benchmarks/gpu_check.sh" in capsys.readouterr().err
    assert report.main([str(tmp_path)]) == 2  # a folder without env.txt
    assert "env.txt not found" in capsys.readouterr().err


FAILED_CASE = (
    '<testcase classname="tests.linalg.test_gpu" name="test_cuda_agrees_with_cpu[dtype1-rsvd]" time="0.1">'
    '<failure message="AssertionError: Tensor-likes are not close!&#10;Mismatched elements: 3 / 8">'
    "trace</failure></testcase>"
)


def test_measured_folder_reports_failures_timeouts_and_missed_targets(report, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(DRYRUN, folder)
    env = (folder / "env.txt").read_text().replace("device: cpu", "device: cuda")
    (folder / "env.txt").write_text(env + "gpu: NVIDIA H200, compute capability 9.0, 140 GiB, 132 SMs\n")
    xml = (folder / "pytest.xml").read_text()
    (folder / "pytest.xml").write_text(xml.replace("</testsuite>", FAILED_CASE + "</testsuite>"))
    analyze = (folder / "analyze.md").read_text()
    analyze = re.sub(r"all \d+ matrices \| \d+ s", "all 224 matrices | 75 s", analyze)
    (folder / "analyze.md").write_text(analyze)
    steps = _steps(folder)
    steps.loc[steps["step"] == "analyze_svd", "status"] = "timed out"
    steps.to_csv(folder / "steps.tsv", sep="\t", index=False)
    (folder / "analyze_svd.md").unlink()
    out = tmp_path / "gpu.md"
    assert report.main([str(folder), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# GPU check: measured on NVIDIA H200, compute capability 9.0")
    assert "DRY RUN" not in text
    assert "21 tests: 0 passed, 1 failed, 0 errors, 20 skipped." in text
    assert (
        "- failure `tests.linalg.test_gpu::test_cuda_agrees_with_cpu[dtype1-rsvd]`: "
        "AssertionError: Tensor-likes are not close!\n"
    ) in text
    assert "224 matrices (spectra; rsvd, nystrom, ldu at rank 128)" in text
    assert "≤ 60 s | 75 s | **MISSED** |" in text
    assert "No analyze_svd.md: step timed out." in text and "| analyze_svd | timed out |" in text


def test_svd_drivers_on_the_cpu_are_labelled_and_accurate(benchmark_script, tmp_path):
    bench = benchmark_script("svd_drivers")
    out = tmp_path / "d.csv"
    argv = ["--device", "cpu", "--shapes", "96x64,64x96", "--repeats", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    df = pd.read_csv(out)
    assert len(df) == 2 * 3 and set(df["driver"]) == {"gesvdj", "gesvda", "gesvd"}
    assert (df["status"] == "ok").all() and df["driver_used"].str.startswith("lapack").all()
    # float32 LAPACK on a 96 × 64 matrix: backward stable, so errors of a few units of 2^-24 (6e-8)
    assert (df["sv_err"] < 1e-5).all() and (df["recon_err"] < 1e-5).all() and (df["orth_err"] < 1e-5).all()
    # the float64 reference holds the exact spectrum up to the float32 rounding of W
    assert (df["ref_vs_known"] < 1e-6).all()
    assert bench.main(["--device", "cpu", "--drivers", "gesdd", "--out", str(out)]) == 2


def _run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=120)


@pytest.mark.slow  # a subprocess
def test_script_skips_every_step_past_its_budget_and_the_report_says_so(report, tmp_path):
    out = tmp_path / "out"
    proc = _run_script("--device", "cpu", env={"OUT": str(out), "GPU_CHECK_BUDGET": "0"})
    assert proc.returncode == 0, proc.stderr
    steps = _steps(out)
    assert list(steps["step"]) == ["env", "pytest", "analyze", "rsvd", "drivers", "analyze_svd"]
    assert list(steps["status"]) == ["ok"] + ["skipped (budget)"] * 5
    assert "device: cpu" in (out / "env.txt").read_text()
    assert report.main([str(out), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "No pytest.xml: step skipped (budget)." in text and "No rsvd.csv: step skipped (budget)." in text


@pytest.mark.slow  # subprocesses
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, --device cuda would run the whole check")
def test_script_refuses_cuda_without_a_gpu_and_unknown_options(tmp_path):
    proc = _run_script("--device", "cuda", env={"OUT": str(tmp_path / "o")})
    assert proc.returncode == 2 and "torch sees no CUDA device here" in proc.stderr
    proc = _run_script("--device", "tpu", env={"OUT": str(tmp_path / "o")})
    assert proc.returncode == 2 and "--device 'tpu'" in proc.stderr
    proc = _run_script("--device", env={"OUT": str(tmp_path / "o")})  # no value: an error, not a hang
    assert proc.returncode == 2 and "--device needs a value" in proc.stderr
