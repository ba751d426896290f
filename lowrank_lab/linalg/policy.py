"""The one dtype and device policy of lowrank_lab.

Every factorization goes through :func:`prepare` on the way in and casts its factors to the output
dtype on the way out (through :func:`to_output` where a quotient could overflow float16):

* QR, SVD, LU and pseudo-inverses are never run in bf16/fp16 — LAPACK/cuSOLVER have no such
  kernels (``torch.linalg.svd`` refuses them) and their rounding (2^-8 for bf16) would swamp the
  error being measured. Half-precision inputs are upcast to float32.
* ``reference=True`` computes in float64: the mode the tests use as ground truth.
* Results come back in the input dtype unless ``out_dtype`` says otherwise, so a bf16 model gets
  bf16 adapter factors. A factor that would overflow its output dtype (float16 quotients) is an
  error, never a silent inf.
* Nothing moves between devices: a CUDA tensor is factored on its GPU, a CPU tensor on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Precision:
    """Dtypes of one factorization call: what came in, what is computed in, what goes out."""

    input: torch.dtype
    compute: torch.dtype
    output: torch.dtype

    @property
    def eps(self) -> float:
        """Relative resolution of the returned factors: machine epsilon of the coarser of the compute
        and output dtypes (float16's 2^-10 for float16 factors computed in float32).

        Cut-offs for tiny pivots and small singular values use it: a value below ``eps`` relative to
        the largest is lost to the output rounding anyway, and its reciprocal can overflow float16.
        """
        return max(torch.finfo(self.compute).eps, torch.finfo(self.output).eps)

    @property
    def tiny(self) -> float:
        """Smallest normal number representable in both the compute and the output dtype."""
        return max(torch.finfo(self.compute).tiny, torch.finfo(self.output).tiny)


def compute_dtype(dtype: torch.dtype, *, reference: bool = False) -> torch.dtype:
    """The dtype in which QR/SVD/LU/pinv run for an input of ``dtype``."""
    if reference:
        return torch.float64
    if dtype in _HALF:
        return torch.float32
    return dtype


def validate_matrix(W: torch.Tensor, name: str = "W", *, check_finite: bool = True) -> None:
    """Reject what no factorization here can take, with the reason and the count.

    ``check_finite=False`` skips the one pass over the entries that proves them finite, for a
    caller that detects NaN/Inf in a cheaper derived quantity and then calls this again (see
    :func:`~lowrank_lab.linalg.rsvd.randomized_svd`).

    Raises
    ------
    TypeError
        ``W`` is not a tensor, or has an integer, boolean or complex dtype.
    ValueError
        ``W`` is not 2-D, is empty, or holds NaN or Inf entries (the message says how many).
    """
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dtype.is_complex or not W.dtype.is_floating_point:
        raise TypeError(
            f"{name} has dtype {W.dtype}; lowrank_lab factors real floating-point matrices "
            "(float16, bfloat16, float32, float64). Cast it first, e.g. W.float()."
        )
    if W.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(W.shape)} ({W.ndim}-D)")
    if W.numel() == 0:
        raise ValueError(f"{name} is empty, shape {tuple(W.shape)}")
    if not check_finite:
        return
    # Fast path: any NaN or ±Inf entry makes the sum non-finite (NaN and Inf propagate, Inf − Inf is
    # NaN), so a finite sum proves every entry finite. One reduction costs ~5 ms on an 11008×4096
    # float32 matrix where ``isfinite(W).any()`` allocates an (m, n) mask and took ~200 ms — as much as
    # a whole rank-8 randomized SVD. A sum that overflows only sends us to the exact count below.
    acc = torch.float64 if W.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(W.sum(dtype=acc))):
        return
    bad = ~torch.isfinite(W)
    if bool(bad.any()):
        n_nan = int(torch.isnan(W).sum())
        n_inf = int(bad.sum()) - n_nan
        raise ValueError(
            f"{name} has {n_nan} NaN and {n_inf} Inf entries out of {W.numel()}; "
            "factorizations need finite entries"
        )


def unfactorizable_reason(W: torch.Tensor, *, reference: bool = False) -> str | None:
    """Why no factorization of ``W`` would mean anything, or None when it can be factored.

    The checks a weight sweep needs before spending an SVD on a matrix: NaN or Inf entries (as
    :func:`validate_matrix` counts them), an all-zero matrix (no spectrum: every relative error is
    0/0), and a Frobenius norm whose square over- or underflows the compute dtype (float32 for
    float32 and half-precision input: ``‖W‖_F² > finfo.max`` overflows, ``‖W‖_F² < finfo.tiny``
    leaves only subnormal arithmetic), where SVD drivers return Inf/NaN or lose every digit.
    The norm is taken in float64, so it is exact enough to judge float32.
    """
    try:
        validate_matrix(W, "the matrix")
    except (TypeError, ValueError) as exc:
        return str(exc)
    norm = float(torch.linalg.vector_norm(W.detach().to(torch.float64)))
    if norm == 0.0:
        return "all entries are zero (no spectrum to approximate)"
    cdt = compute_dtype(W.dtype, reference=reference)
    info = torch.finfo(cdt)
    if norm > info.max ** 0.5:
        return f"its Frobenius norm {norm:.3g} overflows {cdt} when squared (> {info.max ** 0.5:.3g})"
    if norm < info.tiny ** 0.5:
        return f"its Frobenius norm {norm:.3g} underflows {cdt} when squared (< {info.tiny ** 0.5:.3g})"
    return None


def validate_rank(rank: int, shape: tuple[int, int] | torch.Size, name: str = "rank") -> int:
    """Check ``1 <= rank <= min(m, n)`` and return it as an int; the error names both numbers."""
    if isinstance(rank, bool):  # an int subclass: rank=True would silently mean rank 1
        raise TypeError(f"{name} must be an integer, got {rank!r}")
    if not isinstance(rank, int):
        try:
            as_int = int(rank)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an integer, got {rank!r}") from None
        if as_int != rank:
            raise TypeError(f"{name} must be an integer, got {rank!r}")
        rank = as_int
    m, n = int(shape[0]), int(shape[1])
    if rank < 1 or rank > min(m, n):
        raise ValueError(
            f"{name}={rank} is out of range for a {m}x{n} matrix: need 1 <= {name} <= {min(m, n)}"
        )
    return rank


def prepare(
    W: torch.Tensor,
    *,
    reference: bool = False,
    out_dtype: torch.dtype | None = None,
    check_finite: bool = True,
) -> tuple[torch.Tensor, Precision]:
    """Validate ``W`` and return it in its compute dtype, with the dtypes of the call."""
    validate_matrix(W, check_finite=check_finite)
    cdt = compute_dtype(W.dtype, reference=reference)
    precision = Precision(input=W.dtype, compute=cdt, output=out_dtype or W.dtype)
    return W.to(cdt), precision


def tall_view(W: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(W, False)`` for a tall or square matrix, ``(Wᵀ, True)`` (a view, no copy) for a wide one.

    Exact SVDs are taken in the tall orientation and their factors swapped back: ``W = U S Vh`` of a
    wide ``W`` is ``(Vh')ᵀ S (U')ᵀ`` of ``Wᵀ = U' S Vh'``, with the same singular values. LAPACK's
    ``gesdd`` as torch calls it is markedly slower on the wide side (issue 31: 384×1536 takes 1.63×
    [1.63, 1.66] the CPU of 1536×384; 4096×11008 takes 47.3 s against 21.7 s transposed), and a
    row-major ``W`` handed over as ``Wᵀ`` is already in the column-major layout LAPACK reads, so the
    swap costs no copy. ``benchmarks/svd_drivers.py --transpose`` measures the difference.
    """
    if W.ndim == 2 and W.shape[0] < W.shape[1]:
        return W.mT, True
    return W, False


def to_output(t: torch.Tensor, prec: Precision, *, method: str, factor: str) -> torch.Tensor:
    """Cast one computed factor to the output dtype, refusing to hand back an overflow.

    Quotients (a pseudo-inverse core, ``1/s_k``, ``U / d``) of a small-valued weight can exceed
    float16's largest value (65504) even when nothing is degenerate; a silent ``inf`` would only
    surface as NaN losses later. Raises ValueError naming the method, the factor and the fix.
    """
    out = t.to(prec.output)
    if prec.output != prec.compute and out.numel() and not bool(torch.isfinite(out).all()):
        big = float(t.abs().max())
        raise ValueError(
            f"{method}: the {factor} factor has entries up to {big:.3g}, beyond the largest finite "
            f"{prec.output} ({torch.finfo(prec.output).max:.3g}); ask for wider factors with "
            f"out_dtype=torch.float32 (they were computed in {prec.compute})"
        )
    return out


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) means CUDA when available, else the CPU; ``cpu``, ``cuda`` and ``cuda:N``
    are taken as they are. Anything else raises ValueError (one line naming the valid spellings)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not one of auto, cpu, cuda, cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but torch sees no CUDA device; use --device cpu"
        )
    return dev


def make_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A ``torch.Generator`` for random test matrices.

    ``None`` gives a generator seeded with 0 — factorizations are reproducible by default, as in
    scikit-learn's ``random_state=0`` examples; pass your own generator (or an int seed) to vary it.
    The generator may live on another device than the matrix: :func:`gaussian` draws on the
    generator's device and moves the sample.
    """
    if isinstance(generator, torch.Generator):
        return generator
    seed = 0 if generator is None else int(generator)
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def gaussian(
    shape: tuple[int, ...], *, generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Standard normal sample drawn with ``generator`` and placed on ``device`` in ``dtype``.

    Drawn in float32 on the generator's device, so a seed gives the same sketch on CPU and CUDA
    inputs and in every compute dtype.
    """
    sample = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return sample.to(device=device, dtype=dtype)
