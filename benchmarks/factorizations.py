"""Time and error of every factorization in ``FACTORIZATIONS`` on weight-shaped matrices (issue 2).

Matrices: float32, Llama-2-7B shapes 4096 × 4096 (q/k/v/o) and 11008 × 4096 (gate/up, stored
(out, in)), with the spectrum of real weights, σ_k ∝ k^-0.4 (REFERENCE.md: log-log slope −0.3 to
−0.5), built by ``lowrank_lab.weights.synthetic.synthetic_matrix`` (Kronecker-structured orthogonal
factors, exact singular values known, so the Eckart–Young optimum needs no SVD; entries of
std 0.02 as in real weights). Ranks 8, 64 and 128.

Per (shape, rank, method): median wall time of ``method(W, rank, generator=seed)`` over
``--repeats`` runs (default 5) after one warm-up, relative Frobenius error and its ratio to the optimum
``sqrt(Σ_{i>r} σ_i²) / ‖W‖_F``, and the relative spectral error (Lanczos estimate, a lower
bound) beside σ_{r+1}/σ_1. Peers measured in the same run, on the same matrix:
``torch.svd_lowrank(W, q=r+10, niter=2)`` — the same sketch size as ``rsvd``'s defaults
(p = 10, q = 2), truncated to rank r — and the full ``torch.linalg.svd``.

Timing on a shared machine: at each (shape, rank) the methods run in interleaved rounds (one run of
each per round, the order reversed every other round so no method always follows the same one), so
load drift hits all of them alike. The ``rsvd / svd_lowrank`` ratio is paired: the median over
rounds of rsvd's time over svd_lowrank's in the same round, with a distribution-free 95% confidence
interval for that median (order statistics of the per-round ratios, binomial with p = 1/2). The two
methods make the same six passes over W at rank 8, so their ratio sits within a few percent of 1 and
only a paired ratio with its interval says which side of 1 it is on. The exact SVD (``svd`` and
``torch.linalg.svd``) and ``qr`` cost the same at every rank (one full factorization, then slicing),
so they are timed once per shape on ``max(ranks)`` and their factors sliced to each rank; the two
full SVDs take minutes at these shapes on 2 cores and are timed ``--svd-repeats`` times (default 1,
no warm-up on the CPU: at that length warm-up effects are far below the machine's noise; one
warm-up on CUDA, where the first call also creates cuSOLVER's handle and workspace).

Targets (issue 2), checked in the report: ``rsvd`` with its defaults ≤ 1.01 × the optimum and no
slower than ``torch.svd_lowrank`` (time ratio ≤ 1.0); sketched Nyström (``nystrom``) below
NLoRA-as-released (``nystrom-released``) at every rank; LDU of 4096 × 4096 ≤ 1 s.

``--device cuda`` builds each matrix on the CPU, moves it to the GPU and times every call
CUDA-synchronised (``lowrank_lab.utils.timing.time_call`` with the device: the clock starts and
stops on an idle stream); the CPU-time columns then count only the host's share and the verdicts
read the wall ratio. ``benchmarks/gpu_check.sh`` runs it so on a lent GPU (issue 19).

Writes ``reports/benchmarks/factorizations.md`` and a CSV of every row beside it (appended and
flushed as rows finish; ``--resume`` keeps them and skips what is done).
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads steal
# the cores the other process needs (lowrank_lab/analyze.py does the same). Applies to ours and the
# peers alike; must be set before torch loads; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lowrank_lab.linalg import (  # noqa: E402
    FACTORIZATIONS,
    Factorization,
    optimal_error,
    relative_errors,
    resolve_device,
)
from lowrank_lab.utils.provenance import device_description, run_metadata  # noqa: E402
from lowrank_lab.utils.tables import RowWriter, ensure_writable_dir, to_markdown  # noqa: E402
from lowrank_lab.utils.timing import median_ci, time_call  # noqa: E402
from lowrank_lab.weights.synthetic import power_law_spectrum, synthetic_matrix  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "reports" / "benchmarks" / "factorizations.md"
SMALL_OUT = REPO / "reports" / "benchmarks" / "factorizations-small.md"

FULL = {"shapes": [(4096, 4096), (11008, 4096)], "ranks": [8, 64, 128]}
# Same aspect ratios (11008/4096 ≈ 1376/512), a few seconds in all.
SMALL = {"shapes": [(512, 512), (1376, 512)], "ranks": [8, 32]}

# One full factorization whatever the rank (then slicing): timed once per shape.
RANK_INDEPENDENT = {"svd", "qr"}
SVD_LOWRANK = "torch.svd_lowrank"
FULL_SVD = "torch.linalg.svd"
COLUMNS = [
    "shape", "m", "n", "rank", "method", "kind", "median_s", "cpu_median_s", "times_s", "repeats",
    "rel_err_fro", "opt_rel_err_fro", "err_ratio", "rel_err_2", "opt_rel_err_2",
    "time_ratio_vs_svd_lowrank", "time_ratio_ci_lo", "time_ratio_ci_hi", "cpu_ratio_vs_svd_lowrank",
]  # fmt: skip

EPILOG = """\
examples:
  python benchmarks/factorizations.py --small
      quick check (512² and 1376×512, ranks 8 and 32), writes reports/benchmarks/factorizations-small.md
  python benchmarks/factorizations.py
      the full run of issue 2 (4096² and 11008×4096, ranks 8/64/128; ~15-25 min on 2 busy cores)
  python benchmarks/factorizations.py --methods rsvd,nystrom --ranks 64 --shapes 4096x4096
      a subset (the peers are always measured)
  python benchmarks/factorizations.py --resume
      continue an interrupted run from the rows already in the CSV beside --out
"""


def parse_shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(x) for x in s.lower().split("x")) for s in text.split(",") if s.strip()]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"--shapes {text!r}: expected e.g. 4096x4096,11008x4096")
    return shapes  # type: ignore[return-value]


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 8,64,128")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/factorizations.py",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--small", action="store_true", help="quick check: 512x512 and 1376x512 at ranks 8,32")
    p.add_argument("--shapes", type=parse_shapes, help="matrix shapes (out x in), e.g. 4096x4096,11008x4096")
    p.add_argument("--ranks", type=parse_ints, help="ranks, e.g. 8,64,128 (default: 8,64,128; --small: 8,32)")
    p.add_argument(
        "--methods",
        default="all",
        help=f"registry methods to time, comma-separated, or 'all' (default): {', '.join(FACTORIZATIONS)}",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed runs per method after one warm-up (default 5; medians of 5 resist a shared machine)",
    )
    p.add_argument(
        "--svd-repeats",
        type=int,
        default=1,
        help="timed runs of the two full SVDs per shape (default 1, no warm-up)",
    )
    p.add_argument("--slope", type=float, default=-0.4, help="log-log slope of the spectrum (default -0.4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the matrices and of every sketch (default 0)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"markdown report (default {DEFAULT_OUT.relative_to(REPO)}; --small: {SMALL_OUT.name}); "
        "the CSV goes beside it",
    )
    p.add_argument("--resume", action="store_true", help="keep rows already in the CSV and skip them")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda: where the matrices live and the factorizations run; CUDA timings "
        "are synchronised",
    )
    return p


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn: Callable[[], object], device: torch.device | None = None) -> tuple[float, float, object]:
    """Wall seconds (``utils.timing.time_call``, synchronised on a CUDA ``device``), CPU seconds of
    this process, and the result."""
    c0 = time.process_time()
    t = time_call(fn, device=device, repeats=1, warmup=0)
    return t.median, time.process_time() - c0, t.result


def measure_rounds(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device | None = None
) -> dict[str, tuple[list[float], list[float], object]]:
    """One warm-up each, then ``repeats`` rounds running every function once (interleaved), in the
    given order in even rounds and reversed in odd ones. Lists are in round order (for pairing)."""
    results: dict[str, object] = {name: fn() for name, fn in fns.items()}
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            fn = fns[name]
            w, c, results[name] = timed(fn, device)
            wall[name].append(w)
            cpu[name].append(c)
    return {name: (wall[name], cpu[name], results[name]) for name in fns}


def slice_factorization(f: Factorization, r: int) -> Factorization:
    core = None if f.core is None else (f.core[:r] if f.core.ndim == 1 else f.core[:r, :r])
    return Factorization(left=f.left[:, :r], right=f.right[:r], core=core, method=f.method, info=f.info)


def error_row(W: torch.Tensor, f: Factorization, sigma: torch.Tensor, r: int) -> dict[str, float]:
    # ‖W‖_F and ‖W‖₂ from the known spectrum (the float32 matrix holds it to ~1e-6): no Lanczos run on W.
    fro, spec = relative_errors(W, f, spectral=True, norms=(float(sigma.norm()), float(sigma[0])))
    opt_fro, opt_spec = optimal_error(sigma, r)
    return {
        "rel_err_fro": fro,
        "opt_rel_err_fro": opt_fro,
        "err_ratio": fro / opt_fro if opt_fro > 0 else float("nan"),
        "rel_err_2": spec,
        "opt_rel_err_2": opt_spec,
    }


def run(args: argparse.Namespace, writer: RowWriter, methods: list[str]) -> None:
    preset = SMALL if args.small else FULL
    for m, n in args.shapes or preset["shapes"]:
        bench_shape(args, writer, methods, m, n, [r for r in args.ranks or preset["ranks"] if r <= min(m, n)])


def bench_shape(
    args: argparse.Namespace, writer: RowWriter, methods: list[str], m: int, n: int, ranks: list[int]
) -> None:
    """Every row of one shape: the rank-independent factorizations once, then interleaved rounds per rank."""
    shape = f"{m}x{n}"
    names = [*methods, SVD_LOWRANK, FULL_SVD]
    if not ranks or all(writer.done((shape, r, name)) for r in ranks for name in names):
        print(f"{shape}: nothing to do (rows already in {writer.path} or no rank <= {min(m, n)})", flush=True)
        return
    t0 = time.perf_counter()
    sigma = power_law_spectrum(min(m, n), args.slope, shape=(m, n))
    W = synthetic_matrix((m, n), sigma, torch.Generator().manual_seed(args.seed), dtype=torch.float32)
    W = W.to(args.device)
    print(f"{shape}: built in {time.perf_counter() - t0:.1f} s", flush=True)
    r_max = max(ranks)

    def base(name: str, r: int) -> dict:
        kind = "peer" if name in (SVD_LOWRANK, FULL_SVD) else "ours"
        return {"shape": shape, "m": m, "n": n, "rank": r, "method": name, "kind": kind}

    def registry_call(name: str, r: int) -> Callable[[], Factorization]:
        return lambda: FACTORIZATIONS[name](W, r, generator=args.seed)

    def full_svd() -> Factorization:
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        return Factorization(left=U[:, :r_max], core=S[:r_max], right=Vh[:r_max], method=FULL_SVD)

    def svd_lowrank(r: int) -> Callable[[], Factorization]:
        def call() -> Factorization:
            torch.manual_seed(args.seed)
            U, S, V = torch.svd_lowrank(W, q=min(r + 10, min(m, n)), niter=2)
            return Factorization(left=U[:, :r], core=S[:r], right=V[:, :r].T, method=SVD_LOWRANK)

        return call

    # Rank-independent: one full factorization per shape, sliced to every rank.
    once = [(name, registry_call(name, r_max)) for name in methods if name in RANK_INDEPENDENT]
    once.append((FULL_SVD, full_svd))
    for name, fn in once:
        if all(writer.done((shape, r, name)) for r in ranks):
            continue
        full_svds = name in ("svd", FULL_SVD)
        reps = args.svd_repeats if full_svds else args.repeats
        if not full_svds or args.device.type == "cuda":
            fn()  # warm-up; on CUDA also for the full SVDs, whose first call creates cuSOLVER's handle
        runs = [timed(fn, args.device) for _ in range(reps)]
        result = runs[-1][2]
        med = statistics.median(w for w, _, _ in runs)
        print(f"  {name:<18} {med:8.3f} s (once per shape, {reps} run(s))", flush=True)
        for r in ranks:
            writer.write(
                {
                    **base(name, r),
                    "median_s": med,
                    "cpu_median_s": statistics.median(c for _, c, _ in runs),
                    "times_s": ";".join(f"{w:.4f}" for w, _, _ in runs),
                    "repeats": reps,
                    **error_row(W, slice_factorization(result, r), sigma, r),
                }
            )

    # Rank-dependent methods and svd_lowrank: interleaved rounds at each rank.
    for r in ranks:
        fns: dict[str, Callable[[], object]] = {
            name: registry_call(name, r)
            for name in methods
            if name not in RANK_INDEPENDENT and not writer.done((shape, r, name))
        }
        if "rsvd" in fns or not writer.done((shape, r, SVD_LOWRANK)):
            # always beside rsvd, and right after it: the paired ratio compares runs seconds apart
            peer = {SVD_LOWRANK: svd_lowrank(r)}
            fns = {"rsvd": fns.pop("rsvd"), **peer, **fns} if "rsvd" in fns else {**fns, **peer}
        if not fns:
            continue
        measured = measure_rounds(fns, args.repeats, args.device)
        peer_wall, peer_cpu = measured[SVD_LOWRANK][0], measured[SVD_LOWRANK][1]
        for name, (wall, cpu, f) in measured.items():
            med, cpu_med = statistics.median(wall), statistics.median(cpu)
            paired = name == "rsvd" and len(wall) == len(peer_wall)
            nan3 = (float("nan"),) * 3
            tr, lo, hi = median_ci([a / b for a, b in zip(wall, peer_wall, strict=True)]) if paired else nan3
            cr = median_ci([a / b for a, b in zip(cpu, peer_cpu, strict=True)])[0] if paired else float("nan")
            row = {
                **base(name, r),
                "median_s": med,
                "cpu_median_s": cpu_med,
                "times_s": ";".join(f"{x:.4f}" for x in wall),
                "repeats": len(wall),
                **error_row(W, f, sigma, r),  # type: ignore[arg-type]
                "time_ratio_vs_svd_lowrank": tr,
                "time_ratio_ci_lo": lo,
                "time_ratio_ci_hi": hi,
                "cpu_ratio_vs_svd_lowrank": cr,
            }
            if not writer.done(row):
                writer.write(row)
            ratio = ""
            if paired:
                ratio = f"  vs svd_lowrank {tr:.3f} [{lo:.3f}, {hi:.3f}] (cpu {cr:.3f})"
            print(f"  r={r:<4} {name:<18} {med:8.3f} s  err/opt {row['err_ratio']:.4f}{ratio}", flush=True)


def targets(df: pd.DataFrame) -> list[str]:
    lines = ["| target | shape | rank | value | verdict |", "|---|---|---|---|---|"]

    def add(target: str, shape: str, rank: int, value: str, ok: bool) -> None:
        lines.append(f"| {target} | {shape} | {rank} | {value} | {'met' if ok else '**MISSED**'} |")

    for (shape, rank), g in df.groupby(["shape", "rank"], sort=False):
        by = g.set_index("method")
        if "rsvd" in by.index:
            ratio = float(by.loc["rsvd", "err_ratio"])
            add("rsvd error ≤ 1.01 × optimum", shape, rank, f"{ratio:.4f}", ratio <= 1.01)
            tr = float(by.loc["rsvd", "time_ratio_vs_svd_lowrank"])
            lo, hi = float(by.loc["rsvd", "time_ratio_ci_lo"]), float(by.loc["rsvd", "time_ratio_ci_hi"])
            cr = float(by.loc["rsvd", "cpu_ratio_vs_svd_lowrank"])
            add(
                "rsvd time / torch.svd_lowrank(q=r+10) ≤ 1.0 (paired wall ratio [95% CI]; CPU time)",
                shape, rank, f"{tr:.3f} [{lo:.3f}, {hi:.3f}] ({cr:.3f})", tr <= 1.0,
            )  # fmt: skip
        if {"nystrom", "nystrom-released"} <= set(by.index):
            a, b = float(by.loc["nystrom", "rel_err_fro"]), float(by.loc["nystrom-released", "rel_err_fro"])
            add("nystrom error < nystrom-released error", shape, rank, f"{a:.4f} < {b:.4f}", a < b)
        if "ldu" in by.index and shape == "4096x4096":
            t = float(by.loc["ldu", "median_s"])
            add("ldu time ≤ 1 s (4096×4096)", shape, rank, f"{t:.3f} s", t <= 1.0)
    return lines


def write_report(
    out: Path, csv_path: Path, meta: dict, args: argparse.Namespace, load: tuple, wall: float
) -> None:
    df = pd.read_csv(csv_path)
    order = {name: i for i, name in enumerate([*FACTORIZATIONS, SVD_LOWRANK, FULL_SVD])}
    df["_o"] = df["method"].map(order)
    df = df.sort_values(["m", "n", "rank", "_o"], kind="stable").drop(columns="_o")
    shape_order = list(dict.fromkeys(df["shape"]))
    end_load = os.getloadavg()
    lines = [
        "# Factorizations: time and error against the Eckart–Young optimum",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Date: {meta['started']} (wall {wall / 60:.1f} min). Git commit: {meta['git_commit']}.",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), "
        f"Python {platform.python_version()}. Load average {load[0]:.1f} at the start and "
        f"{end_load[0]:.1f} at the end (1 min): the machine is shared with other jobs, so times are upper "
        "bounds and only ratios measured in the same interleaved rounds are comparable.",
        "",
        f"Device: {device_description(args.device)}"
        + (
            f", CUDA {torch.version.cuda}; every time CUDA-synchronised, the CPU-time columns count the "
            "host's share only."
            if args.device.type == "cuda"
            else "."
        ),
        "",
        f"Matrices: float32, σ_k ∝ k^{args.slope} (`lowrank_lab.weights.synthetic.synthetic_matrix`, exact "
        f"spectrum, entries of std 0.02, seed {args.seed}). `opt` is the Eckart–Young optimum "
        "‖W − W_r‖_F / ‖W‖_F from the known spectrum; `err/opt` the ratio to it; `rel err 2` a "
        "Golub–Kahan–Lanczos estimate (20 steps, a lower bound) of ‖W − Ŵ‖₂/‖W‖₂ beside σ_{r+1}/σ_1. Every "
        "method is called "
        f"with its registry defaults and `generator={args.seed}`. `torch.svd_lowrank` runs with q = r + 10, "
        "niter = 2 (rsvd's sketch size) and is truncated to r; `vs svd_lowrank` is the median over rounds "
        "of rsvd's time over torch.svd_lowrank's in the same round, `95% CI` a distribution-free interval "
        "for that median (the rounds alternate their order; wall; `(CPU)` the same for the CPU time of "
        "this process, "
        "which on an oversubscribed machine measures the work done rather than the share of the cores "
        "won). `svd`, `qr` and `torch.linalg.svd` are timed once per "
        "shape (their cost does not depend on r) and sliced to each rank; the full SVDs "
        f"{args.svd_repeats} run(s) {'after a' if args.device.type == 'cuda' else 'without'} warm-up, "
        f"everything else the median of {args.repeats} runs "
        "after a warm-up.",
        "",
        "## Targets (issue 2)",
        "",
        *targets(df),
        "",
    ]
    for shape in shape_order:
        g = df[df["shape"] == shape]
        table = pd.DataFrame(
            {
                "rank": g["rank"],
                "method": g["method"],
                "median s": g["median_s"],
                "CPU s": g["cpu_median_s"],
                "runs": g["repeats"],
                "rel err F": g["rel_err_fro"],
                "opt": g["opt_rel_err_fro"],
                "err/opt": g["err_ratio"],
                "rel err 2": g["rel_err_2"],
                "σ_{r+1}/σ_1": g["opt_rel_err_2"],
                "vs svd_lowrank": g["time_ratio_vs_svd_lowrank"],
                "95% CI": [
                    f"[{a:.3f}, {b:.3f}]" if a == a else "–"
                    for a, b in zip(g["time_ratio_ci_lo"], g["time_ratio_ci_hi"], strict=True)
                ],
                "(CPU)": g["cpu_ratio_vs_svd_lowrank"],
            }
        )
        lines += [f"## {shape.replace('x', ' × ')}", "", to_markdown(table, floatfmt=".4g")]
    lines += [
        "Reading the table: `nystrom-released` is NLoRA's initialisation as its code releases it "
        "(raw core block, no pseudo-inverse): its product scales like ‖W‖³, so at weight scale it is "
        "≈ 0 and its error ≈ ‖W‖ (ratio ≈ 1/opt). `ldu` and `qr` are not rank-revealing (error far above "
        "the optimum); `rlu` keeps the first r columns of the sketch's partially pivoted LU, so its "
        "oversampling does little. `torch.svd_lowrank` re-orthonormalises with Householder QR after every "
        "product; with 2 threads and OMP_WAIT_POLICY=PASSIVE (set here, as the CLIs do) a QR of an "
        "11008 × 74 panel took 50–300 ms against ~10 ms single-threaded, which is most of its deficit at "
        "r = 64 and 128: with the default policy the two are at parity there (micro-benchmarks, same "
        "machine). At r = 8 both make the same six passes over W at the same sketch width; rsvd's three "
        "Wᵀ-side passes run as (Yᵀ W)ᵀ, which BLAS does 10–20% faster than Wᵀ·Y, and it ends with a QR "
        "of the (n, l) panel and an l × l SVD instead of an SVD of the wide l × n matrix "
        "(`lowrank_lab.linalg.tall_svd`). On this shared machine the whole-table run is noisy at r = 8 "
        "(runs of ~65 ms): `python benchmarks/factorizations.py --methods rsvd --repeats 61 --out "
        "reports/benchmarks/factorizations_rsvd.md` pairs rsvd with torch.svd_lowrank alone, 61 rounds.",
        "",
    ]
    out.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        print(f"error: --device: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    methods = (
        list(FACTORIZATIONS) if args.methods == "all" else [x.strip() for x in args.methods.split(",") if x]
    )
    unknown = [x for x in methods if x not in FACTORIZATIONS]
    if unknown:
        print(f"error: --methods: unknown {unknown}; valid: {', '.join(FACTORIZATIONS)}", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.svd_repeats < 1:
        print("error: --repeats and --svd-repeats must be >= 1", file=sys.stderr)
        return 2
    out = args.out or (SMALL_OUT if args.small else DEFAULT_OUT)
    ensure_writable_dir(out.parent, "--out")
    csv_path = out.with_suffix(".csv")
    argv_used = sys.argv if argv is None else [sys.argv[0], *argv]
    meta = run_metadata(argv_used, seed=args.seed)
    meta["command"] = "python " + " ".join(shlex.quote(a) for a in [_rel(argv_used[0]), *argv_used[1:]])
    load = os.getloadavg()
    t0 = time.perf_counter()
    with RowWriter(csv_path, COLUMNS, ["shape", "rank", "method"], resume=args.resume) as writer:
        run(args, writer, methods)
    write_report(out, csv_path, meta, args, load, time.perf_counter() - t0)
    print(f"wrote {_rel(out)} and {_rel(csv_path)}")
    return 0


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
