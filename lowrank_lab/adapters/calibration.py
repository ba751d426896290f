"""Calibration for data-driven inits: stream task batches through the model and collect, per target,
what the init needs — gradients of the task loss (LoRA-SB, LoRA-GA, LoRA-One), statistics of the
layer's input activations (EVA, CorDA, LoRA-Null) or of its output activations (Astra).

The calibration API is one callable ``loss_fn(model) -> scalar tensor`` that runs the model on a
calibration batch and returns its loss, or an iterable of such callables (one per batch or sample).
The same callables serve both kinds:

* **gradients** (:func:`calibration_gradients`): ``Σ ∂loss/∂W`` over the callables (LoRA-SB, whose
  released code sums per-sample gradients over 50 samples and only keeps the sign), or their mean
  (LoRA-GA: PEFT's ``preprocess_loraga`` divides the accumulated ``.grad`` by the number of backward
  calls; LoRA-One uses the same G). Taken with :func:`torch.autograd.grad` on the target weights
  only, so no ``.grad`` of the model is touched and frozen parameters need no change.
* **activations** (:func:`activation_statistics`): forward passes only, under ``torch.no_grad``,
  with a forward hook on every target. Tokens whose ``attention_mask`` is 0 are dropped (EVA's
  ``prepare_layer_inputs_fn_language_modeling``); the mask is read from the model call's keyword
  arguments by a pre-hook on the model. Targets that receive the same input tensor (q, k, v of one
  block) are computed once and share the result, as EVA's hashing does.
* **outputs** (:func:`activation_statistics` with ``kind="outputs"``): the same pass, hooked on each
  target's output (bias included) instead of its input, scaled per call as CorDA's inputs are
  (Astra: PEFT ``preprocess_astra``'s hook).

:func:`calibrate` picks the kind from the method's registry row. :func:`batch_losses` turns an
iterable of training batches into the callables, for the fine-tuning harness.

Memory is bounded by the targets, not by the data: one float32 (m, n) gradient per target, or one
float64 (n, n) running sum per distinct input, however many batches stream through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .layer import is_conv1d

LossFn = Callable[[nn.Module], torch.Tensor]
Calibration = LossFn | Iterable[LossFn]

GRADIENT = "gradient"
ACTIVATIONS = "activations"
CORDA = "corda"
OUTPUTS = "outputs"
KINDS = (GRADIENT, ACTIVATIONS, CORDA, OUTPUTS)
#: Kinds whose rows are scaled per call by ``|max X|`` and summed as ``X̃ᵀX̃`` (CorDA's and Astra's hooks).
_PER_CALL_SCALED = (CORDA, OUTPUTS)


class CalibrationError(ValueError):
    """The calibration argument cannot give the gradients or statistics an init needs."""


def _who(method: str | None) -> str:
    return f"{method} calibration" if method else "calibration"


def _loss_fns(calibration: Calibration | None, method: str | None) -> list[LossFn]:
    if calibration is None:
        raise CalibrationError(
            f"{method or 'this method'} needs calibration=loss_fn, a callable taking the model and "
            "returning a "
            "scalar loss on a calibration batch of the task's training data, or a list of such callables"
        )
    fns = [calibration] if callable(calibration) else list(calibration)
    if not fns or not all(callable(f) for f in fns):
        raise CalibrationError(
            f"{_who(method)}: calibration must be a callable loss_fn(model) -> loss, "
            "or a non-empty list of them"
        )
    return fns


def batch_losses(batches: Iterable[Any], loss: Callable[[nn.Module, Any], torch.Tensor]) -> list[LossFn]:
    """One calibration callable per batch: ``lambda model: loss(model, batch)``.

    The fine-tuning harness passes its first training batches (never validation data) and its task
    loss, e.g. ``batch_losses(batches, lambda m, b: task_loss(spec, m(**inputs(b)).logits, b["target"]))``.
    """
    return [lambda model, b=b: loss(model, b) for b in batches]


def calibration_gradients(
    model: nn.Module,
    names: list[str],
    calibration: Calibration,
    *,
    reduce: str = "sum",
    method: str | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients of the calibration loss(es) w.r.t. the weights of ``names``, summed or averaged.

    Parameters
    ----------
    reduce : {"sum", "mean"}, default "sum"
        Over the callables: LoRA-SB sums (only the sign is used); LoRA-GA averages over backward
        calls, as PEFT's ``estimate_gradients`` (its B carries the gradient's singular values, so
        the scale matters).
    method : str, optional
        Named in error messages.

    The model's train/eval mode is left as the caller set it (eval mode makes the gradients
    deterministic). Returns ``{name: (out, in) float32 tensor}`` (Conv1D transposed).

    Raises
    ------
    CalibrationError
        A loss that is not a scalar attached to the graph (e.g. computed under ``no_grad``), a loss
        that does not depend on a target, or a gradient that is zero everywhere.
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    fns = _loss_fns(calibration, method)
    modules = [model.get_submodule(n) for n in names]
    weights = [m.weight for m in modules]
    saved = [w.requires_grad for w in weights]
    total: list[torch.Tensor | None] = [None] * len(weights)
    try:
        for w in weights:
            w.requires_grad_(True)
        for i, fn in enumerate(fns):
            with torch.enable_grad():
                loss = fn(model)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise CalibrationError(
                    f"{_who(method)}: loss #{i} must be a scalar tensor, got {type(loss).__name__} "
                    f"{tuple(getattr(loss, 'shape', ()))}"
                )
            if loss.grad_fn is None:
                raise CalibrationError(
                    f"{_who(method)}: loss #{i} yields no gradient: it was computed under torch.no_grad or "
                    "from frozen parameters only, not through the target weights"
                )
            grads = torch.autograd.grad(loss.reshape(()), weights, allow_unused=True)
            for k, (name, acc, g) in enumerate(zip(names, total, grads, strict=True)):
                if g is None:
                    raise CalibrationError(
                        f"{_who(method)}: the calibration loss does not depend on the target {name!r}; "
                        "it yields no gradient for it (leave it out of targets, "
                        "or use a loss of the model's output)"
                    )
                if acc is None:  # the first gradient becomes the accumulator (no zeros pass)
                    total[k] = g.float() if g.dtype != torch.float32 else g
                else:
                    acc.add_(g)
    finally:
        for w, flag in zip(weights, saved, strict=True):
            w.requires_grad_(flag)
    out = {}
    for name, module, g in zip(names, modules, total, strict=True):
        if not bool(g.any()):
            raise CalibrationError(
                f"{_who(method)}: the gradient of the calibration loss w.r.t. {name!r} is zero everywhere; "
                "the init needs a loss that depends on this layer"
            )
        if reduce == "mean":
            g.div_(len(fns))
        out[name] = g.T if is_conv1d(module) else g
    return out


@dataclass
class ActivationStats:
    """Running sums of one target's input rows x (n,) — output rows (m,) for ``"outputs"``: enough for a
    covariance or a PCA.

    Attributes
    ----------
    tokens : int
        Rows accumulated (unmasked tokens).
    calls : int
        Forward calls seen (CorDA divides by this).
    total : Tensor (n,)
        Σx (``centred`` statistics only).
    scatter : Tensor (n, n)
        ``centred``: Σ x xᵀ over tokens. ``corda``: Σ over calls of ``X̃ᵀ X̃`` with
        ``X̃ = X / |max(X)|`` per call (CorDA's hook, PEFT ``calib_cov_distribution``). ``outputs``:
        the same sum over the layer's output rows (Astra's hook, PEFT ``astra.calib_cov_distribution``).
    kind : {"activations", "corda", "outputs"}
    shared_with : str or None
        Another target whose input was the same tensor; its statistics are this one's.
    """

    kind: str
    tokens: int = 0
    calls: int = 0
    total: torch.Tensor | None = None
    scatter: torch.Tensor | None = None
    shared_with: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def centred_scatter(self) -> torch.Tensor:
        """``Σ (x − μ)(x − μ)ᵀ = Σ x xᵀ − N μ μᵀ`` (float64): EVA's mean-centred PCA works on this."""
        if self.kind != ACTIVATIONS:
            raise ValueError("centred_scatter needs statistics collected with kind='activations'")
        mu = self.total / max(self.tokens, 1)
        return self.scatter - self.tokens * torch.outer(mu, mu)

    def covariance(self) -> torch.Tensor:
        """CorDA's (or Astra's) C: the per-call scatter averaged over calls."""
        if self.kind not in _PER_CALL_SCALED:
            raise ValueError("covariance needs statistics collected with kind='corda' or 'outputs'")
        return self.scatter / max(self.calls, 1)


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # (B, T, n) with a (B, T) attention mask -> the unmasked rows (N, n); anything else flattened.
    if mask is not None and x.ndim == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
        return x[mask.to(torch.bool)]
    return x.reshape(-1, x.shape[-1])


def activation_statistics(
    model: nn.Module,
    names: list[str],
    calibration: Calibration,
    *,
    kind: str = ACTIVATIONS,
    method: str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, ActivationStats]:
    """Stream the calibration callables through ``model`` and accumulate each target's input statistics.

    Parameters
    ----------
    kind : {"activations", "corda", "outputs"}
        ``"activations"``: Σx and Σxxᵀ over unmasked tokens (EVA's mean-centred PCA).
        ``"corda"``: Σ over calls of ``X̃ᵀX̃``, ``X̃ = X/|max X|`` (CorDA; PEFT assumes batch size 1
        and keeps pad tokens — here pad tokens are dropped, which matters only for padded batches).
        ``"outputs"``: as ``"corda"`` on the layer's output ``Y`` (bias included) instead of its input
        (Astra, PEFT ``preprocess_astra``; pad tokens dropped likewise).
    dtype : torch.dtype, optional
        Accumulator dtype. Default float64 for ``"activations"`` (the centred scatter ``Σxxᵀ − Nμμᵀ``
        cancels: float64 keeps it exact to ~1e-12 relative where float32 loses digits over
        thousands of tokens) and float32 for ``"corda"``/``"outputs"`` (no centring; PEFT's own precision).

    Raises
    ------
    CalibrationError
        NaN or Inf in a target's input (names the layer), or a target that saw no token.
    """
    if kind not in (ACTIVATIONS, CORDA, OUTPUTS):
        raise ValueError(f"kind must be {ACTIVATIONS!r}, {CORDA!r} or {OUTPUTS!r}, got {kind!r}")
    fns = _loss_fns(calibration, method)
    if dtype is None:
        dtype = torch.float64 if kind == ACTIVATIONS else torch.float32
    stats = {n: ActivationStats(kind=kind) for n in names}
    state: dict[str, Any] = {"mask": None, "seen": {}}

    def pre_hook(module, args, kwargs):
        state["mask"] = kwargs.get("attention_mask")
        state["seen"] = {}

    def make_hook(name: str):
        def hook(module, inputs, output):
            if kind == OUTPUTS:  # Astra: the layer's output (a tuple's first element, as PEFT's hook)
                x = (output[0] if isinstance(output, (tuple, list)) else output).detach()
            else:
                x = inputs[0].detach()
            key = (x.data_ptr(), tuple(x.shape), x.dtype)
            first = state["seen"].get(key, (None,))[0]
            st = stats[name]
            if first is not None:
                # Same input tensor as an earlier target of this forward (q/k/v): share its sums.
                if st.calls == 0 or st.shared_with == first:
                    st.shared_with = first
                    return
            # Keeping x referenced until the next forward stops its memory being reused by a later
            # input of the same shape, which would then look shared.
            state["seen"][key] = (name, x)
            if st.shared_with is not None:
                raise CalibrationError(
                    f"{_who(method)}: {name!r} shared its input with {st.shared_with!r} "
                    "in the first batch but "
                    "not in a later one"
                )
            rows = _rows(x, state["mask"])
            # A finite float64 sum proves every entry finite (one reduction, no mask); only a
            # non-finite sum pays for the elementwise check.
            if not bool(torch.isfinite(rows.sum(dtype=torch.float64))) and not bool(
                torch.isfinite(rows).all()
            ):
                raise CalibrationError(
                    f"{_who(method)}: NaN or Inf activations at the "
                    f"{'output' if kind == OUTPUTS else 'input'} of {name!r} "
                    f"(batch {state['batch']}); "
                    "check the model's weights and the calibration batch"
                )
            if rows.shape[0] == 0:
                return
            X = rows.to(dtype)  # (N, n)
            st.calls += 1
            st.tokens += X.shape[0]
            if kind in _PER_CALL_SCALED:
                # CorDA's (and Astra's) hook scales by |max X| (not max |X|), as PEFT; guarded against
                # max X = 0.
                X = X / X.max().abs().clamp_min(torch.finfo(X.dtype).tiny)
            else:
                s = X.sum(0)
                st.total = s if st.total is None else st.total.add_(s)
            if kind in _PER_CALL_SCALED:  # float32 sums in PEFT's order, one call at a time
                st.scatter = X.T @ X if st.scatter is None else st.scatter.addmm_(X.T, X)
                return
            if X.data_ptr() == x.data_ptr():  # an alias of the activation: the model may reuse it
                X = X.clone()
            rows_of = pending.setdefault(name, [])
            rows_of.append(X)
            # One float64 GEMM over many calls' rows instead of a rank-T update per call (T ~ 10-60
            # tokens): the n x n accumulator is read and written once per flush, not once per call
            # (issue 32: per forward it cost EVA as much as the forward itself; the sums came out
            # bit-equal on MiniLM/SST-2). Pending rows are capped at max(256, n/4), at most a quarter
            # of the accumulator's own size for n >= 1024.
            if sum(r.shape[0] for r in rows_of) >= max(256, X.shape[1] // 4):
                flush(name)

        return hook

    pending: dict[str, list[torch.Tensor]] = {}

    def flush(name: str) -> None:
        rows_of = pending.pop(name, None)
        if not rows_of:
            return
        X = rows_of[0] if len(rows_of) == 1 else torch.cat(rows_of)  # (N, n)
        st = stats[name]
        st.scatter = X.T @ X if st.scatter is None else st.scatter.addmm_(X.T, X)

    handles = [model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    handles += [model.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]
    try:
        with torch.no_grad():
            for i, fn in enumerate(fns):
                state["batch"] = i
                fn(model)
            for name in list(pending):
                flush(name)
    finally:
        for h in handles:
            h.remove()
    for name in names:
        st = stats[name]
        if st.shared_with is not None:
            src = stats[st.shared_with]
            # the source's sums and its very ``extra`` dict: one cache, so decompositions of a shared
            # input are computed once
            stats[name] = replace(src, kind=kind, shared_with=st.shared_with)
        elif st.tokens == 0:
            raise CalibrationError(
                f"{_who(method)}: the target {name!r} saw no token in the calibration batches "
                "(is it used by the model's forward? are all tokens masked?)"
            )
    return stats


def calibrate(
    model: nn.Module, names: list[str], calibration: Calibration, *, kind: str, method: str | None = None
) -> dict[str, Any]:
    """What ``method``'s init needs per target, by ``kind`` (the registry's ``calibration`` field).

    ``"gradient"``: the mean gradient of the task loss (:func:`calibration_gradients`, ``reduce="mean"``;
    LoRA-SB only uses its sign, so the mean serves it too). ``"activations"`` / ``"corda"`` / ``"outputs"``:
    :func:`activation_statistics`.
    """
    if kind == GRADIENT:
        return calibration_gradients(model, names, calibration, reduce="mean", method=method)
    if kind in (ACTIVATIONS, CORDA, OUTPUTS):
        return activation_statistics(model, names, calibration, kind=kind, method=method)
    raise ValueError(f"calibration kind must be one of {KINDS}, got {kind!r}")
