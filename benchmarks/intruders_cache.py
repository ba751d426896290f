"""Time ``python -m lowrank_lab.intruders`` on MiniLM with a cold and a warm base-SVD cache.

Issue 6: the base model's SVDs are cached on disk keyed by tensor content, so comparing many
fine-tunes against one base pays for them once. This script

1. writes a fine-tuned stand-in of all-MiniLM-L6-v2 to a temporary HF directory: every one of the
   36 target matrices gets a rank-8 update (strength 0.2–1.5 × its spectral norm, as a LoRA that
   moved) plus dense noise at 1 % of its RMS (as full fine-tuning), seed 0;
2. runs the CLI as a user would, each in a fresh subprocess, ``--repeats`` times per setting:
   cold cache (a new empty ``--cache-dir`` each time), warm cache, warm cache with
   ``--tuned-svd randomized``;
3. times, in a fresh subprocess on the same matrices, the peer: the detection of the paper's code
   (``find_number_of_intruder_dimensions`` in reeceshuttle/intruder-dimensions) and of PEFT's
   ``reduce_intruder_dimension`` — two full ``torch.linalg.svd`` per matrix, no cache — and checks
   that its total count equals ours.

Reported: the subprocess wall time (interpreter start and imports included), the run's own
``wall_seconds`` and its base/tuned SVD seconds from ``run.json``, medians over the repeats, and
the ratios to the cold run. Writes ``reports/benchmarks/intruders_cache.md`` (``--small``:
``intruders_cache-small.md``, layer 0 only, one repeat).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; see lowrank_lab/intruders.py

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "reports" / "benchmarks"


def make_tuned(base_dir: Path, out_dir: Path, seed: int = 0) -> int:
    """Copy the MiniLM directory to ``out_dir`` with every target matrix perturbed; returns the count."""
    from safetensors.torch import load_file, save_file

    from lowrank_lab.weights import open_source

    shutil.copytree(base_dir, out_dir)
    state = load_file(str(base_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    targets = open_source(str(base_dir)).targets()
    for info in targets:
        W = state[info.tensor].double()
        m, n = W.shape
        dW = torch.randn(m, 8, generator=g, dtype=torch.float64) @ torch.randn(
            8, n, generator=g, dtype=torch.float64
        )
        strength = 0.2 + 1.3 * float(torch.rand(1, generator=g))
        dW *= strength * torch.linalg.matrix_norm(W, 2) / torch.linalg.matrix_norm(dW, 2)
        noise = 0.01 * W.pow(2).mean().sqrt() * torch.randn(m, n, generator=g, dtype=torch.float64)
        state[info.tensor] = (W + dW + noise).to(state[info.tensor].dtype).contiguous()
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return len(targets)


def run_cli(argv: list[str], threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "lowrank_lab.intruders", *argv]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"intruders CLI failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    out = Path(argv[argv.index("--out") + 1])
    meta = json.loads((out / "run.json").read_text())
    return {"process": wall, **meta}


def peer_detection(
    base_dir: Path, tuned_dir: Path, layers: list[int] | None, k: int = 10, eps: float = 0.5
) -> dict:
    """The paper's / PEFT's detection: two full SVDs per matrix, |cos| of U_tunedᵀ U_base, max, < ε.

    Reads the same matrices through ``open_source``; returns the count and the seconds spent in the
    loop (reading + SVDs) and in the SVDs alone.
    """
    from lowrank_lab.weights import open_source

    t0 = time.perf_counter()
    base = open_source(str(base_dir), layers=layers)
    tuned = open_source(str(tuned_dir), layers=layers)
    total, svd_seconds = 0, 0.0
    for info in base.targets():
        W0 = base.load(info).weight.float()
        W = tuned.load(info).weight.float()
        t1 = time.perf_counter()
        U_base, _, _ = torch.linalg.svd(W0, full_matrices=False)
        U_tuned, _, _ = torch.linalg.svd(W, full_matrices=False)
        best = (U_tuned.T @ U_base).abs().max(dim=1).values
        svd_seconds += time.perf_counter() - t1
        total += int((best[:k] < eps).sum())
    return {"count": total, "run": time.perf_counter() - t0, "svd": svd_seconds}


def run_peer(base_dir: Path, tuned_dir: Path, layers: list[int] | None, threads: int | None) -> dict:
    """:func:`peer_detection` in a fresh subprocess, like the CLI runs."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", str(base_dir), str(tuned_dir)]
    if layers:
        cmd += ["--peer-layers", ",".join(map(str, layers))]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"peer failed: {proc.stderr.strip()[-2000:]}")
    return {"process": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python benchmarks/intruders_cache.py --threads 1   |   quick check: --small",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--small", action="store_true", help="layer 0 only (6 matrices), one repeat")
    p.add_argument(
        "--repeats", type=int, default=3, help="runs per setting; the median is reported (default 3)"
    )
    p.add_argument(
        "--threads", type=int, help="torch threads for the CLI and the peer (default: torch's choice)"
    )
    p.add_argument(
        "--out", type=Path, help="markdown file (default reports/benchmarks/intruders_cache[-small].md)"
    )
    p.add_argument("--peer", nargs=2, metavar=("BASE", "TUNED"), help=argparse.SUPPRESS)
    p.add_argument("--peer-layers", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.peer:  # the child process of run_peer
        layers = [int(x) for x in args.peer_layers.split(",")] if args.peer_layers else None
        print(json.dumps(peer_detection(Path(args.peer[0]), Path(args.peer[1]), layers)))
        return 0
    repeats = 1 if args.small else args.repeats
    layers = [0] if args.small else None
    out_md = args.out or REPORTS / ("intruders_cache-small.md" if args.small else "intruders_cache.md")

    from lowrank_lab.utils.provenance import git_commit, package_versions
    from lowrank_lab.weights import model_dir

    load_before = os.getloadavg()[0]
    base_dir = Path(model_dir("minilm"))
    tmp = Path(tempfile.mkdtemp(prefix="intruders_cache_"))
    try:
        n_matrices = make_tuned(base_dir, tmp / "tuned")
        layer_args = ["--layers", "0"] if layers else []
        common = ["--base", "minilm", "--tuned", str(tmp / "tuned"), *layer_args]
        results: dict[str, list[dict]] = {"cold": [], "warm": [], "warm+randomized": []}
        for i in range(repeats):
            cache = tmp / f"cache{i}"
            results["cold"].append(
                run_cli([*common, "--cache-dir", str(cache), "--out", str(tmp / f"cold{i}")], args.threads)
            )
            results["warm"].append(
                run_cli([*common, "--cache-dir", str(cache), "--out", str(tmp / f"warm{i}")], args.threads)
            )
            results["warm+randomized"].append(
                run_cli(
                    [
                        *common,
                        "--cache-dir",
                        str(cache),
                        "--tuned-svd",
                        "randomized",
                        "--out",
                        str(tmp / f"rand{i}"),
                    ],
                    args.threads,
                )
            )
        peers = [run_peer(base_dir, tmp / "tuned", layers, args.threads) for _ in range(repeats)]
        fallbacks = (
            sum(
                1
                for line in (tmp / "rand0" / "intruders.csv").read_text().splitlines()[1:]
                if "randomized-fallback" in line
            )
            // 10
        )
    finally:
        load_after = os.getloadavg()[0]
        cache_bytes = (
            sum(f.stat().st_size for f in (tmp / "cache0").rglob("*.safetensors"))
            if (tmp / "cache0").exists()
            else 0
        )
        shutil.rmtree(tmp, ignore_errors=True)

    def med(setting: str, key: str) -> float:
        return statistics.median(r[key] for r in results[setting])

    counts = {s: results[s][0]["intruders"]["left"] for s in results}
    matrices = results["cold"][0]["matrices"]
    cold_svd = med("cold", "base_svd_seconds") + med("cold", "tuned_svd_seconds")
    rows = []
    for s, label in (
        ("cold", "ours, cold cache (empty --cache-dir)"),
        ("warm", "ours, warm cache"),
        ("warm+randomized", "ours, warm cache, --tuned-svd randomized"),
    ):
        base_s, tuned_s = med(s, "base_svd_seconds"), med(s, "tuned_svd_seconds")
        cache = results[s][0]["cache"]
        cells = [label, matrices, counts[s], f"{med(s, 'process'):.2f}", f"{med(s, 'wall_seconds'):.2f}"]
        cells += [f"{base_s:.3f}", f"{tuned_s:.3f}", f"{(base_s + tuned_s) / cold_svd:.2f}"]
        cells += [f"{cache['hits']}/{cache['misses']}"]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    peer_svd = statistics.median(p["svd"] for p in peers)
    cells = ["peer: paper / PEFT detection, 2 full SVDs per matrix, no cache", matrices, peers[0]["count"]]
    cells += [
        f"{statistics.median(p['process'] for p in peers):.2f}",
        f"{statistics.median(p['run'] for p in peers):.2f}",
    ]
    cells += [f"{peer_svd:.3f} (both)", "–", f"{peer_svd / cold_svd:.2f}", "–"]
    rows.append("| " + " | ".join(map(str, cells)) + " |")

    threads = args.threads or torch.get_num_threads()
    cmd = " ".join(["python benchmarks/intruders_cache.py", *(argv if argv is not None else sys.argv[1:])])
    machine = (
        f"{os.cpu_count()} cores ({platform.machine()}), torch {torch.__version__}, "
        f"{threads} torch thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"Python {platform.python_version()}; load average {load_before:.1f} before, "
        f"{load_after:.1f} after (shared machine: times are upper bounds)"
    )
    warm_cold = med("warm", "wall_seconds") / med("cold", "wall_seconds")
    base_ratio = med("warm", "base_svd_seconds") / max(med("cold", "base_svd_seconds"), 1e-9)
    same = counts["warm+randomized"] == counts["warm"]
    columns = ["setting", "matrices", "intruders", "process s", "run s", "base SVD s", "tuned SVD s"]
    columns += ["SVD s / cold", "cache hits/misses"]
    wrap = textwrap.fill
    lines = [
        "# Intruder dimensions on MiniLM: cold vs warm base-SVD cache",
        "",
        f"Command: `{cmd}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}  ",
        f"Machine: {machine}  ",
        f"Commit: {git_commit()}; peft {package_versions(('peft',))['peft']}",
        "",
        wrap(
            f"Base: all-MiniLM-L6-v2 (real weights), {matrices} of its {n_matrices} target matrices. "
            "Tuned: the same matrices plus a rank-8 update of 0.2–1.5 × ‖W‖₂ and 1 % dense noise "
            f"(seed 0), saved as an HF directory. k = 10, ε = 0.5, left singular vectors. Median of "
            f"{repeats} run(s) per setting; each run is a fresh `python -m lowrank_lab.intruders` "
            "subprocess; a cold run starts from an empty cache directory.",
            100,
        ),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *rows,
        "",
        wrap(
            f"- warm / cold run time: {warm_cold:.2f}; base SVD time warm / cold: {base_ratio:.3f} "
            f"(a warm run hashes each of the {matrices} base matrices and reads its cache entry "
            "instead of computing an SVD).",
            100,
            subsequent_indent="  ",
        ),
        wrap(
            f"- randomized tuned SVD: {fallbacks} of {matrices} matrices fell back to the full SVD "
            f"(a similarity within its error bound of ε); same count as the full SVD: {same}.",
            100,
            subsequent_indent="  ",
        ),
        f"- peer count equals ours: {peers[0]['count'] == counts['cold']}.",
        f"- cache size on disk: {cache_bytes / 2**20:.1f} MiB (float32 U and σ of every base matrix).",
        "",
        wrap(
            '"process s" includes starting Python and importing torch/transformers; "run s" is the '
            "`wall_seconds` of the run's `run.json` (reading weights, SVDs, CSV, figures — the "
            "peer's: reading and SVDs only); base/tuned SVD s are the sums over matrices that the "
            'run records (a warm run\'s "base SVD" is hashing the tensor and reading the cache '
            "entry; a cold one includes writing it). The peer runs in a fresh subprocess too.",
            100,
        ),
    ]
    text = "\n".join(lines) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
