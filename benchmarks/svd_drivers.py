"""Full SVD with each cuSOLVER driver of ``torch.linalg.svd``: time, and error against float64 (issue 19).

On CUDA, ``torch.linalg.svd(W, driver=...)`` takes ``"gesvdj"`` (Jacobi, torch's default; REFERENCE.md:
"may lose accuracy above 2048²"), ``"gesvda"`` (approximate, for tall or wide matrices) or ``"gesvd"``
(Householder bidiagonalisation and QR iteration, the most accurate). PiSSA's initialisation is one
such SVD per matrix, so which driver to use is a question of time against accuracy at weight shapes.

Matrix: float32 ``W`` with σ_k ∝ k^-0.4 built by ``lowrank_lab.weights.synthetic.synthetic_matrix``,
as in ``benchmarks/factorizations.py`` (same seed, same shapes). Reference: the singular values of
that same float32 matrix computed in float64 (``torch.linalg.svdvals`` of ``W.double()``; driver
gesvd on CUDA, LAPACK on the CPU); ``ref_vs_known`` checks the reference against the exact synthetic
spectrum (they differ by the float32 rounding of W, ~1e-7 of σ_1).

Per driver: median wall time of ``--repeats`` calls after one warm-up (``utils.timing.time_call``,
CUDA-synchronised), and, in float64 from the float32 factors,

* ``sv_err`` = max_i |σ̂_i − σ_i^ref| / σ_1^ref,
* ``recon_err`` = ‖W − Û diag(σ̂) V̂ᵀ‖_F / ‖W‖_F,
* ``orth_err`` = max(‖ÛᵀÛ − I‖_max, ‖V̂ V̂ᵀ − I‖_max) (``V̂`` here as returned, ``Vh``).

On the CPU ``driver=`` does not exist (LAPACK's gesdd runs for every row): the rows say so in
``driver_used``; that is ``benchmarks/gpu_check.sh --device cpu``'s dry run, not a measurement of
the drivers. Writes one CSV (``--out``) and prints its table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/factorizations.py: shared-CPU spinning

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from lowrank_lab.linalg import resolve_device  # noqa: E402
from lowrank_lab.utils.tables import OutputDirError, RowWriter, ensure_writable_dir, to_markdown  # noqa: E402
from lowrank_lab.utils.timing import time_call  # noqa: E402
from lowrank_lab.weights.synthetic import power_law_spectrum, synthetic_matrix  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from factorizations import parse_shapes  # noqa: E402  (one shape syntax for every benchmark)

DRIVERS = ("gesvdj", "gesvda", "gesvd")
COLUMNS = [
    "shape", "m", "n", "driver", "driver_used", "device", "median_s", "times_s", "repeats",
    "sv_err", "recon_err", "orth_err", "ref_vs_known", "status",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/svd_drivers.py",
        description=__doc__.split("\n\n")[0],
        epilog="example (on a GPU):\n  python benchmarks/svd_drivers.py --device cuda --out /tmp/drivers.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run: LAPACK for all)")
    p.add_argument(
        "--shapes", type=parse_shapes, default=[(4096, 4096)], help="matrix shapes (default 4096x4096)"
    )
    p.add_argument(
        "--drivers", default=",".join(DRIVERS), help=f"comma-separated (default {','.join(DRIVERS)})"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up (default 3)")
    p.add_argument("--slope", type=float, default=-0.4, help="log-log slope of the spectrum (default -0.4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the matrix (default 0, as factorizations.py)")
    p.add_argument("--out", type=Path, required=True, help="CSV file to write")
    return p


def reference_singular_values(W: torch.Tensor) -> torch.Tensor:
    """σ(W) in float64 on W's device: cuSOLVER's gesvd there (the accurate driver), LAPACK on the CPU."""
    kwargs = {"driver": "gesvd"} if W.is_cuda else {}
    return torch.linalg.svdvals(W.double(), **kwargs)


def accuracy(W: torch.Tensor, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, ref: torch.Tensor) -> dict:
    """``sv_err``, ``recon_err`` and ``orth_err`` (see the module docstring), computed in float64."""
    W64, U64, S64, Vh64 = W.double(), U.double(), S.double(), Vh.double()
    k = S64.shape[0]
    eye = torch.eye(k, dtype=torch.float64, device=W.device)
    recon = torch.linalg.matrix_norm(W64 - (U64 * S64) @ Vh64) / torch.linalg.matrix_norm(W64)
    orth = torch.maximum((U64.T @ U64 - eye).abs().max(), (Vh64 @ Vh64.T - eye).abs().max())
    return {
        "sv_err": float((S64 - ref).abs().max() / ref[0]),
        "recon_err": float(recon),
        "orth_err": float(orth),
    }


def run(args: argparse.Namespace, writer: RowWriter, drivers: list[str]) -> None:
    device = args.device
    on_cuda = device.type == "cuda"
    for m, n in args.shapes:
        shape = f"{m}x{n}"
        sigma = power_law_spectrum(min(m, n), args.slope, shape=(m, n))
        W = synthetic_matrix((m, n), sigma, torch.Generator().manual_seed(args.seed), dtype=torch.float32)
        W = W.to(device)
        ref = reference_singular_values(W)
        ref_vs_known = float((ref.cpu() - sigma).abs().max() / sigma[0])
        print(f"{shape}: float64 reference within {ref_vs_known:.2e} of the exact spectrum", flush=True)
        for driver in drivers:
            kwargs = {"driver": driver} if on_cuda else {}
            row = {"shape": shape, "m": m, "n": n, "driver": driver, "device": str(device),
                   "driver_used": driver if on_cuda else "lapack gesdd (cpu has no driver=)",
                   "ref_vs_known": ref_vs_known}  # fmt: skip
            try:
                t = time_call(
                    lambda W=W, kwargs=kwargs: torch.linalg.svd(W, full_matrices=False, **kwargs),
                    device=device, repeats=args.repeats, warmup=1,
                )  # fmt: skip
                row.update(
                    median_s=t.median,
                    times_s=";".join(f"{x:.4f}" for x in t.times),
                    repeats=len(t.times),
                    status="ok",
                    **accuracy(W, *t.result, ref),
                )
            except RuntimeError as exc:  # a driver that fails (or runs out of memory) is a result too
                row.update(status=f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            writer.write(row)
            nan = float("nan")
            print(
                f"  {driver:<7} {row.get('median_s', nan):8.3f} s  sv_err {row.get('sv_err', nan):.2e}  "
                f"recon {row.get('recon_err', nan):.2e}  orth {row.get('orth_err', nan):.2e}  "
                f"{row['status']}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    unknown = [d for d in drivers if d not in DRIVERS]
    if not drivers or unknown:
        print(f"error: --drivers: unknown {unknown or drivers}; valid: {', '.join(DRIVERS)}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        args.device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        print(f"error: --device: {exc}", file=sys.stderr)
        return 2
    try:
        ensure_writable_dir(args.out.parent, "--out")
    except OutputDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with RowWriter(args.out, COLUMNS, ["shape", "driver"]) as writer:
        run(args, writer, drivers)
    print(to_markdown(pd.read_csv(args.out), floatfmt=".3g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
