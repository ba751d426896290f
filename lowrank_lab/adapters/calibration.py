"""Calibration gradients for data-driven inits (LoRA-SB): ``Σ ∂loss/∂W`` for each target weight.

The calibration API is a callable ``loss_fn(model) -> scalar tensor`` that runs the model on a
calibration batch and returns its loss, or an iterable of such callables (one per micro-batch or
sample) whose gradients are summed — LoRA-SB sums per-sample gradients over 50 samples
(``estimate_and_process_grads_torch`` in RaghavSinghal10/lora-sb) and only the sign of the sum is
used, so the normalisation of each loss does not matter.

Memory: one float32 gradient per target is held until every init is done — as much memory as the
target weights in float32 (26 GB for all projections of a 7B model, as in LoRA-SB's own code,
which keeps them on the CPU); restrict ``targets`` for large models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .layer import is_conv1d

LossFn = Callable[[nn.Module], torch.Tensor]
Calibration = LossFn | Iterable[LossFn]


class CalibrationError(ValueError):
    """The calibration argument cannot give the gradients an init needs."""


def calibration_gradients(
    model: nn.Module, names: list[str], calibration: Calibration
) -> dict[str, torch.Tensor]:
    """Sum of the gradients of the calibration loss(es) w.r.t. the weights of ``names``.

    Gradients are taken with :func:`torch.autograd.grad` on the target weights only: no ``.grad``
    of the model is touched and no other parameter needs a gradient. The model's train/eval mode
    is left as the caller set it (LoRA-SB's code calls ``model.train()``; eval mode makes the
    gradients deterministic). Returns ``{name: (out, in) float32 tensor}`` (Conv1D transposed).
    """
    if calibration is None:
        raise CalibrationError(
            "this method needs calibration=loss_fn, a callable taking the model and returning a scalar loss "
            "on a calibration batch (LoRA-SB uses 50 samples), or a list of such callables"
        )
    fns = [calibration] if callable(calibration) else list(calibration)
    if not fns or not all(callable(f) for f in fns):
        raise CalibrationError(
            "calibration must be a callable loss_fn(model) -> loss, or a non-empty list of them"
        )
    modules = [model.get_submodule(n) for n in names]
    weights = [m.weight for m in modules]
    saved = [w.requires_grad for w in weights]
    total = [torch.zeros(w.shape, dtype=torch.float32, device=w.device) for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        for i, fn in enumerate(fns):
            loss = fn(model)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or loss.grad_fn is None:
                raise CalibrationError(
                    f"calibration loss #{i} must be a scalar tensor that depends on the model's weights, "
                    f"got {type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}"
                )
            grads = torch.autograd.grad(loss.reshape(()), weights, allow_unused=True)
            for name, acc, g in zip(names, total, grads, strict=True):
                if g is None:
                    raise CalibrationError(f"the calibration loss does not depend on the target {name!r}")
                acc.add_(g.float())
    finally:
        for w, flag in zip(weights, saved, strict=True):
            w.requires_grad_(flag)
    out = {}
    for name, module, g in zip(names, modules, total, strict=True):
        out[name] = g.T if is_conv1d(module) else g
    return out
