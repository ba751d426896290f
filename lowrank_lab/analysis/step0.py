"""Step-0 diagnostics: what each initialisation makes the first optimiser step do, before training.

The convergence claims of PiSSA, LoRA-GA, LoRA-One, EVA and CorDA are claims about the first steps:
the adapter's parametrisation maps the task gradient G = ∂L/∂W into a weight update ΔW that is
(or is not) aligned with what full fine-tuning would do. Here, per method and matrix:

* ``alignment`` — the fraction of ΔW's Frobenius norm inside the top-r singular subspaces of the full
  fine-tuning gradient G (computed at the pre-trained weights): ``‖U_rᵀ ΔW V_r‖_F / ‖ΔW‖_F`` ∈ [0, 1].
  LoRA-GA's Theorem 3.1 and LoRA-One's analysis argue an init is good when this is large.
* ``cos_neg_grad`` — cosine between ΔW and −G (is the step downhill at all?).
* ``update_norm`` — ‖ΔW‖_F of one step at the method's learning rate; ``grad_norm`` — ‖G‖_F.
* ``weight_change`` — ‖W_eff(init) − W‖_F / ‖W‖_F: how far the init moved the effective weight
  (0 for LoRA and residual inits; LoRA-One, NLoRA and LoftQ move it).
* principal angles between the methods' initial input-side subspaces (row spaces of A).

ΔW is measured, not derived: the effective weight ``W_base + s·B·[M]·A`` (or W for full
fine-tuning) before and after one step of the trainable adapter parameters, formed in float64. The
step is Adam's first (``−lr·g/(|g| + ε)``, bias-corrected, what AdamW does at step 1 with no weight
decay) or plain SGD (``−lr·g``). Pure functions of models and tensors; the CLI is
:mod:`lowrank_lab.diagnose`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from lowrank_lab.adapters import lowrank_modules
from lowrank_lab.adapters.inject import FULL_TARGETS_ATTR
from lowrank_lab.adapters.layer import is_conv1d, weight_matrix
from lowrank_lab.linalg import exact_svd

ADAM_EPS = 1e-8  # torch.optim.AdamW's default, as the fine-tuning loop uses


def effective_weights(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``W_base + s·B·[M]·A`` of every adapted target (float32, detached); the weight itself for
    targets that are not wrapped (full fine-tuning)."""
    layers = lowrank_modules(model)
    out = {}
    with torch.no_grad():
        for n in names:
            if n in layers:
                layer = layers[n]
                out[n] = weight_matrix(layer.base).float() + layer.delta_weight(torch.float32)
            else:
                out[n] = weight_matrix(model.get_submodule(n)).detach().float().clone()
    return out


def _product(B: torch.Tensor, M: torch.Tensor | None, A: torch.Tensor) -> torch.Tensor:
    if M is not None:
        B = B * M if M.ndim == 1 else B @ M
    return B @ A


def first_update(
    model: nn.Module,
    names: Sequence[str],
    loss_fn: Callable[[nn.Module], torch.Tensor],
    *,
    lr: float,
    optimizer: str = "adam",
) -> dict[str, torch.Tensor]:
    """ΔW of each target after one optimiser step on ``loss_fn``, through the adapter's parametrisation.

    The step ``δp = −lr·u`` (``u = g/(|g| + ε)`` for Adam's first step, ``g`` for SGD) is applied to
    the trainable factors in float64 outside the model, and ``ΔW = s·[(B+δB)(M+δM)(A+δA) − B·M·A]``
    (full fine-tuning: ``δW``) is formed in float64: a step of 1e-9 relative to W would vanish if it
    were written into float32 parameters and read back. The model is not changed.
    Returns ``{name: (m, n) float64}``.
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    layers = lowrank_modules(model)
    params: list[torch.Tensor] = []
    for n in names:
        if n in layers:
            params += [
                p for p in (layers[n].A, layers[n].M, layers[n].B) if p is not None and p.requires_grad
            ]
        elif model.get_submodule(n).weight.requires_grad:
            params.append(model.get_submodule(n).weight)
    if not params:
        raise ValueError("no trainable adapter parameter: inject an adapter (or full fine-tuning) first")
    grads = torch.autograd.grad(loss_fn(model), params, allow_unused=True)
    step: dict[int, torch.Tensor] = {}
    for p, g in zip(params, grads, strict=True):
        g = torch.zeros_like(p, dtype=torch.float64) if g is None else g.double()
        step[id(p)] = -lr * (g / (g.abs() + ADAM_EPS) if optimizer == "adam" else g)

    def moved(p: torch.Tensor | None) -> torch.Tensor | None:
        if p is None:
            return None
        return p.detach().double() + step.get(id(p), 0.0)

    out = {}
    for n in names:
        if n in layers:
            layer = layers[n]
            before = _product(
                layer.B.detach().double(),
                None if layer.M is None else layer.M.detach().double(),
                layer.A.detach().double(),
            )
            after = _product(moved(layer.B), moved(layer.M), moved(layer.A))
            d = layer.scaling * (after - before)
        else:
            module = model.get_submodule(n)
            d = step.get(id(module.weight), torch.zeros_like(module.weight, dtype=torch.float64))
            d = d.T if is_conv1d(module) else d  # Conv1D stores (in, out)
        out[n] = d
    return out


def top_subspaces(G: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``U_r`` (m, r) and ``V_r`` (n, r): the top-r left and right singular vectors of G (float64)."""
    U, _, Vh = exact_svd(G.double())  # a wide G through its transpose (issue 31)
    return U[:, :rank], Vh[:rank].T


def alignment(dW: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> float:
    """``‖Uᵀ ΔW V‖_F / ‖ΔW‖_F``: the share of ΔW inside the subspace pair (1 = entirely; NaN if ΔW = 0)."""
    d = dW.double()
    norm = float(d.norm())
    if norm == 0:
        return float("nan")
    return float((U.T @ d @ V).norm()) / norm


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frobenius cosine of two matrices (NaN when either is zero)."""
    a, b = a.double(), b.double()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den else float("nan")


def principal_cosines(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the row spaces of ``A1`` (r1, n) and ``A2`` (r2, n),
    descending (Björck & Golub 1973: singular values of Q1ᵀQ2 for orthonormal bases)."""
    Q1 = torch.linalg.qr(A1.double().T).Q
    Q2 = torch.linalg.qr(A2.double().T).Q
    return torch.linalg.svdvals(Q1.T @ Q2).clamp(0.0, 1.0)


def input_subspaces(model: nn.Module) -> dict[str, torch.Tensor]:
    """Row space of each adapter's A (r, n): the input directions the adapter reads at init."""
    return {n: layer.A.detach().float().clone() for n, layer in lowrank_modules(model).items()}


def is_full(model: nn.Module) -> bool:
    """The model was injected with ``full`` (its targets train, nothing is wrapped)."""
    return bool(getattr(model, FULL_TARGETS_ATTR, None))
