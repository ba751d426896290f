"""Pure linear algebra on tensors: factorizations of a weight matrix and their errors.

Knows nothing of models. Every function takes ``(W, rank, *, generator=None, ...)`` and returns a
:class:`Factorization`; dtype and device handling lives in :mod:`lowrank_lab.linalg.policy`.
"""

from .ldu import ldu, randomized_ldu
from .nystrom import nystrom_pinv, nystrom_released, nystrom_sketch
from .policy import (
    compute_dtype,
    make_generator,
    resolve_device,
    unfactorizable_reason,
    validate_matrix,
    validate_rank,
)
from .qr import thin_qr
from .registry import FACTORIZATIONS, FactorizationMethod, factorize, get_factorization
from .result import Factorization
from .rsvd import randomized_range_finder, randomized_svd
from .svd import (
    exact_svd,
    optimal_error,
    relative_errors,
    singular_values,
    spectral_norm_estimate,
    svd_flip,
    tall_svd,
    truncated_svd,
)

__all__ = [
    "FACTORIZATIONS",
    "Factorization",
    "FactorizationMethod",
    "compute_dtype",
    "exact_svd",
    "factorize",
    "get_factorization",
    "ldu",
    "make_generator",
    "nystrom_pinv",
    "nystrom_released",
    "nystrom_sketch",
    "optimal_error",
    "randomized_ldu",
    "randomized_range_finder",
    "randomized_svd",
    "relative_errors",
    "resolve_device",
    "singular_values",
    "spectral_norm_estimate",
    "svd_flip",
    "tall_svd",
    "thin_qr",
    "truncated_svd",
    "unfactorizable_reason",
    "validate_matrix",
    "validate_rank",
]
