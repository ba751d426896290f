"""Quantisation-aware residuals: how much NF4 error each residual init leaves, against QLoRA's.

QLoRA quantises W itself: the model computes with ``deq(nf4(W))`` and the adapter starts at zero.
A residual init (PiSSA, MiLoRA, OLoRA, LoLDU) quantises the residual ``W_res = W − s·B·A`` and keeps
``B·A`` in full precision, so the model computes with ``deq(nf4(W_res)) + s·B·A``; PiSSA's claim
(QPiSSA, Meng et al. 2024, Sec. 4.4 and ``calculate_quantization_error.py``) is that this loses less
than QLoRA because the large singular directions, which set the NF4 block scales, are taken out
first. LoftQ (Li et al. 2023) goes further and alternates quantisation and SVD so that the adapter
fits the quantisation error itself.

Per matrix, rank and method: ``err_fro`` = ‖W − Ŵ‖_F / ‖W‖_F and ``err_nuc`` = ‖W − Ŵ‖_* (nuclear
norm, PiSSA's script's measure) for the model's effective weight Ŵ at init, and
``reduction`` = 1 − ‖W − Ŵ‖_* / ‖W − deq(nf4(W))‖_* (PiSSA's "quantization error reduction ratio":
QLoRA scores 0; the paper reports 19.4 % for PiSSA and 14.6 % for LoftQ on Llama-2-7B at r = 128).
As in that script, s = 1 and no double quantisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import pandas as pd

from lowrank_lab.adapters import ADAPTERS, get_adapter, initialize
from lowrank_lab.adapters.layer import low_rank_product
from lowrank_lab.linalg.policy import tall_view
from lowrank_lab.linalg.quant import nf4_roundtrip

#: Inits whose frozen base is a deterministic function of W alone, read from the adapter registry
#: (:attr:`~lowrank_lab.adapters.AdapterMethod.base_from_weight_alone`: residual or base-replacing, a
#: non-randomized factorization, no calibration data, no random draws; issue 29, point 5).
QUANT_METHODS = tuple(name for name, am in ADAPTERS.items() if am.base_from_weight_alone)
QUANT_COLUMNS = [
    "tensor", "layer", "module", "m", "n", "quant", "method", "rank", "err_fro", "err_nuc",
    "qlora_err_fro", "qlora_err_nuc", "reduction",
]  # fmt: skip
QUANT_KEY = ["tensor", "method", "rank"]


def _nuclear(E: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(tall_view(E.double())[0]).sum())  # wide: transposed, same values


def quantized_weight(
    method: str, W: torch.Tensor, rank: int, *, seed: int = 0, **options: Any
) -> torch.Tensor:
    """The weight a 4-bit model initialised by ``method`` computes with at init (float32, s = 1).

    ``"qlora"``: ``deq(nf4(W))``. A residual init: ``deq(nf4(W − B·[M]·A)) + B·[M]·A``. LoftQ: its own
    dequantised base plus ``B·A``.
    """
    Wf = W.detach().float()
    if method == "qlora":
        return nf4_roundtrip(Wf)
    am = get_adapter(method)
    if not (am.residual or am.replaces_base):
        raise ValueError(
            f"{method!r} is not a residual init; quantisation error is defined for {QUANT_METHODS}"
        )
    fac = initialize(am, Wf, rank, scaling=1.0, generator=seed, **options)
    adapter = low_rank_product(fac.B, fac.M, fac.A, scaling=1.0, dtype=torch.float32)
    base = fac.base.float() if fac.base is not None else nf4_roundtrip(Wf - adapter)
    return base + adapter


def quantization_rows(
    W: torch.Tensor,
    ranks: Sequence[int],
    *,
    ident: dict[str, Any],
    methods: Sequence[str] = QUANT_METHODS,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """One row per (method, rank) of ``W`` (m, n): NF4 error of each residual init against QLoRA's."""
    Wf = W.detach().float()
    m, n = Wf.shape
    norm = float(Wf.double().norm())
    q_err = Wf - nf4_roundtrip(Wf)
    q_fro, q_nuc = float(q_err.double().norm()) / norm, _nuclear(q_err)
    for method in methods:
        for rank in ranks:
            if rank > min(m, n):
                continue
            E = Wf - quantized_weight(method, Wf, rank, seed=seed)
            nuc = _nuclear(E)
            yield {
                **ident, "m": m, "n": n, "quant": "nf4", "method": method, "rank": rank,
                "err_fro": float(E.double().norm()) / norm, "err_nuc": nuc,
                "qlora_err_fro": q_fro, "qlora_err_nuc": q_nuc,
                "reduction": 1.0 - nuc / q_nuc if q_nuc > 0 else float("nan"),
            }  # fmt: skip


def quantization_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over matrices of ``err_fro`` and ``reduction`` per method and rank, QLoRA as the first row."""
    import pandas as pd

    rows = [{"method": "qlora", "rank": "-", "err_fro": df.groupby("tensor").qlora_err_fro.first().mean(),
             "reduction": 0.0, "matrices": df.tensor.nunique()}]  # fmt: skip
    for (method, rank), g in df.groupby(["method", "rank"], sort=False):
        rows.append({"method": method, "rank": rank, "err_fro": g.err_fro.mean(),
                     "reduction": g.reduction.mean(), "matrices": len(g)})  # fmt: skip
    return pd.DataFrame(rows)


def append_quantization_summary(out: Path) -> None:
    """Add the NF4 table of ``out/quantization.csv`` to ``out/summary.md``."""
    import pandas as pd

    from lowrank_lab.utils.tables import to_markdown

    df = pd.read_csv(out / "quantization.csv")
    text = [
        "",
        "## NF4 quantisation error at init (`--quant nf4`)",
        "",
        "Mean over matrices. `err_fro` = ‖W − Ŵ‖_F/‖W‖_F of the weight the 4-bit model computes with "
        "at init "
        "(QLoRA: deq(nf4(W)); residual inits: deq(nf4(W − BA)) + BA; LoftQ: its alternation, 1 iteration); "
        "`reduction` = 1 − ‖W − Ŵ‖_*/‖W − deq(nf4(W))‖_* (PiSSA's calculate_quantization_error.py; s = 1, "
        "blocks of 64, no double quantisation).",
        "",
        to_markdown(quantization_table(df)),
        "",
    ]
    with open(out / "summary.md", "a") as fh:
        fh.write("\n".join(text))
