"""Intruder-dimension mitigation: scale the intruder components of a fine-tuned weight by λ.

Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (arXiv 2410.21228,
§6 and Figure 8), as PEFT 0.22 ships it (``peft.tuners.lora.intruders.reduce_intruder_dimension``,
read for its arithmetic, not copied). For one adapted matrix with base ``W`` and update ``ΔW`` of an
adapter of rank r and scaling s:

1. the intruders of ``W + ΔW`` against ``W`` (:func:`lowrank_lab.analysis.intruders.find_intruders`'s
   definition: a top-k left singular vector of ``W + ΔW`` whose best |cos| with all left singular
   vectors of ``W`` is below ε);
2. ``W_mit = (W + ΔW) + (λ − 1) · Σ_{i ∈ intruders} σ_i u_i v_iᵀ`` (σ, u, v the triplets of ``W + ΔW``);
3. ``ΔW_mit = (W_mit − W) / s`` re-factored at rank r by SVD, ``B = U_r √S_r``, ``A = √S_r V_rᵀ``
   (the rank-r truncation of ΔW_mit, √S split between the factors as PEFT does). The model then
   computes ``W + s·B·A``.

A matrix without intruders keeps its update unchanged (PEFT copies the factors). λ = 1 leaves every
matrix as tuned; λ = 0 removes the intruder components. Defaults (k = 10, ε = 0.5, λ = 0.75) are
PEFT's ``reduce_intruder_dimension(top_k=10, threshold_epsilon=0.5, mitigation_lambda=0.75)``.

Numerics: SVDs run in float32 (float64 with ``reference=True``; half-precision inputs are upcast, as
PEFT does). PEFT forms ``W_mit − W`` by subtraction; here ``ΔW + (λ − 1)·Σ σ u vᵀ`` is formed
directly, which is the same quantity without the cancellation of subtracting the large ``W``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lowrank_lab.analysis.intruders import (
    DEFAULT_EPSILON,
    DEFAULT_TOP_K,
    IntruderInputError,
    base_bases,
    record_from_bases,
    top_bases,
)
from lowrank_lab.linalg import truncated_svd
from lowrank_lab.linalg.policy import compute_dtype

__all__ = [
    "DEFAULT_LAMBDA", "MitigationInputError", "MitigatedUpdate", "check_lambda", "mitigate_update",
    "parse_lambdas",
]

#: λ = 0.75: PEFT's ``mitigation_lambda`` default (the paper's Figure 8 sweeps it over [0, 1]).
DEFAULT_LAMBDA = 0.75


class MitigationInputError(IntruderInputError):
    """A λ outside [0, 1], or an update that does not fit its base (the message names it)."""


def check_lambda(lam: float, *, option: str = "lambda") -> float:
    """``lam`` as a float in [0, 1]: 1 keeps the intruder components, 0 removes them."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise MitigationInputError(f"{option} must be a number in [0, 1], got {lam!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise MitigationInputError(
            f"{option} must be in [0, 1] (the fraction of each intruder component kept), got {lam!r}"
        )
    return value


def parse_lambdas(text: str, *, option: str = "--mitigate") -> list[float]:
    """``"0,0.5,0.75"`` → ``[0.0, 0.5, 0.75]``: distinct values in [0, 1], in the order given."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise MitigationInputError(f"{option} takes a comma list of λ in [0, 1], e.g. 0.25,0.5,0.75")
    return list(dict.fromkeys(check_lambda(t, option=option) for t in items))


@dataclass(frozen=True)
class MitigatedUpdate:
    """The mitigated LoRA factors of one matrix, in ``nn.Linear`` (out, in) layout.

    Attributes
    ----------
    B : Tensor, shape (m, r)
    A : Tensor, shape (r, n)
    scaling : float
        s: the model computes ``W + s·B·A``.
    lam : float
    intruder_ranks : list of int
        1-based ranks (in the spectrum of ``W + ΔW``) of the intruders that were scaled by λ.
    similarities : Tensor, shape (k,)
        Best-match |cos| of the top-k vectors of ``W + ΔW`` (float64, CPU).
    changed : bool
        False when the update was returned as given (no intruder, or λ = 1).
    """

    B: torch.Tensor
    A: torch.Tensor
    scaling: float
    lam: float
    intruder_ranks: list[int]
    similarities: torch.Tensor
    changed: bool

    @property
    def count(self) -> int:
        return len(self.intruder_ranks)

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``s · B · A``, shape (m, n)."""
        return self.scaling * (self.B.to(dtype) @ self.A.to(dtype))


def _split_factors(D: torch.Tensor, rank: int, *, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``B = U_r √S_r``, ``A = √S_r V_rᵀ`` from the SVD of D (PEFT's even split of S)."""
    f = truncated_svd(D, rank, reference=reference, out_dtype=compute_dtype(D.dtype, reference=reference))
    root = f.core.clamp_min(0).sqrt()
    return f.left * root, root[:, None] * f.right


def mitigate_update(
    W0: torch.Tensor,
    delta: torch.Tensor,
    *,
    rank: int,
    scaling: float = 1.0,
    lam: float = DEFAULT_LAMBDA,
    top_k: int = DEFAULT_TOP_K,
    epsilon: float = DEFAULT_EPSILON,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
    base: dict | None = None,
    cache=None,
    reference: bool = False,
    name: str = "W",
) -> MitigatedUpdate:
    """Mitigate the intruder dimensions of one adapted matrix (see the module docstring).

    Parameters
    ----------
    W0 : Tensor, shape (m, n)
        The base weight, (out, in) layout.
    delta : Tensor, shape (m, n)
        The update the model applies, ``ΔW = s·B·A`` (or ``W_tuned − W0`` for merged weights).
    rank : int
        r, the adapter's rank: the mitigated update is re-factored at this rank (PEFT: ``layer.r``).
    scaling : float, default 1.0
        s; ``(W_mit − W0)/s`` is factored, so that ``s·B·A`` is the mitigated update. It only sets
        how the factors are scaled, not the update they make.
    lam : float in [0, 1], default 0.75
        Fraction of each intruder component kept (PEFT's ``mitigation_lambda``).
    top_k, epsilon : int, float
        Intruder detection (PEFT's ``top_k=10``, ``threshold_epsilon=0.5``).
    factors : (B, A), optional
        The adapter's own factors: returned unchanged when nothing is mitigated (as PEFT copies
        them). Without them an unchanged update is factored at ``rank`` by SVD.
    base : dict, optional
        ``{"left": SingularBasis}`` of W0 already computed (one base SVD serves every λ).
    cache : SVDCache, optional
        Where the base SVD is cached (see :mod:`lowrank_lab.analysis.svd_cache`).
    reference : bool
        Compute in float64.

    Returns
    -------
    MitigatedUpdate

    Raises
    ------
    MitigationInputError
        λ outside [0, 1], a non-positive rank or scaling, or ``delta`` of another shape than ``W0``.
    """
    lam = check_lambda(lam)
    if tuple(delta.shape) != tuple(W0.shape):
        raise MitigationInputError(
            f"{name}: the update is {tuple(delta.shape)} but the base weight is {tuple(W0.shape)}; "
            "was the adapter trained on this base?"
        )
    if int(rank) < 1:
        raise MitigationInputError(f"{name}: the adapter rank must be >= 1, got {rank}")
    if not float(scaling) > 0:
        raise MitigationInputError(f"{name}: the adapter scaling must be > 0, got {scaling}")
    if int(top_k) < 1:
        raise MitigationInputError(f"top_k must be >= 1, got {top_k}")
    if not 0.0 < float(epsilon) <= 1.0:
        raise MitigationInputError(f"epsilon must be in (0, 1] (|cos| lies in [0, 1]), got {epsilon}")
    cdt = compute_dtype(torch.promote_types(W0.dtype, delta.dtype), reference=reference)
    W0c, D = W0.to(cdt), delta.to(device=W0.device, dtype=cdt)
    merged = W0c + D
    if base is None:
        base, _ = base_bases(W0c, ("left",), cache=cache, reference=reference, name=name)
    tuned, _ = top_bases(merged, top_k, ("left", "right"), method="full", reference=reference)
    rec = record_from_bases(tuned["left"], base["left"], epsilon=epsilon, epsilons=())
    ranks = rec.intruder_ranks
    r = min(int(rank), min(W0.shape))
    if not ranks or lam == 1.0:
        if factors is not None:
            B, A = factors
            return MitigatedUpdate(B, A, float(scaling), lam, ranks, rec.similarities, False)
        B, A = _split_factors(D / float(scaling), r, reference=reference)
        return MitigatedUpdate(B, A, float(scaling), lam, ranks, rec.similarities, False)
    idx = torch.as_tensor([i - 1 for i in ranks], device=merged.device)
    U = tuned["left"].vectors[:, idx]  # (m, q)
    S = tuned["left"].singular_values[idx]  # (q,)
    V = tuned["right"].vectors[:, idx]  # (n, q)
    mitigated = D + (lam - 1.0) * ((U * S) @ V.T)  # W_mit − W0
    B, A = _split_factors(mitigated / float(scaling), r, reference=reference)
    return MitigatedUpdate(B, A, float(scaling), lam, ranks, rec.similarities, True)


def lambdas_with_reference(lams: Sequence[float]) -> list[float]:
    """The λ list with 1.0 (the tuned weights, unmitigated) first: every table carries its reference."""
    return [1.0, *[float(x) for x in lams if float(x) != 1.0]]


# --------------------------------------------------------------------------------------------------
# The updates of a tuned model, one matrix at a time
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterUpdate:
    """One adapted matrix: its base weight, the update the model applies, and the adapter's shape.

    ``module`` is the name the mitigated PEFT adapter gives the matrix (the adapter's own module
    path, or the tensor name without ``.weight`` for merged weights); ``factors`` are (B, A) when
    the adapter's own factors are known (a PEFT adapter), else None.
    """

    pair: object  # MatrixPair
    module: str
    W0: torch.Tensor
    delta: torch.Tensor
    rank: int | None
    scaling: float
    factors: tuple[torch.Tensor, torch.Tensor] | None


def run_adapter_rank(run_json: dict) -> int:
    """The rank of a fine-tuning run's update ``W_tuned − W`` from its run.json config.

    An adapter method of rank r changes W by ``s·B·[M]·A``: rank r; a residual method (PiSSA,
    MiLoRA, ...) changes it by ``s·(B·M·A − B₀·M₀·A₀)``: rank 2r, as
    :func:`lowrank_lab.adapters.export_peft` writes it. Full fine-tuning and the head-only control
    have no low-rank update to mitigate.
    """
    from lowrank_lab.adapters import get_adapter

    cfg = run_json.get("config") or {}
    method, rank = cfg.get("method"), cfg.get("rank")
    if method in ("full", "head") or method is None or rank is None:
        raise MitigationInputError(
            f"run of method {method!r} has no low-rank adapter update to mitigate (PEFT's "
            "reduce_intruder_dimension takes LoRA adapters); give a LoRA-family run or a PEFT adapter"
        )
    try:
        residual = bool(get_adapter(method).residual)
    except ValueError:
        residual = False
    return int(rank) * (2 if residual else 1)


def iter_updates(tuned, pairs: Sequence, *, run_json: dict | None = None, need_rank: bool = True):
    """Yield an :class:`AdapterUpdate` per matrix pair of ``tuned`` (a :class:`TunedWeights`).

    A PEFT adapter gives each matrix its factors, rank and scaling (``lora_alpha/r``, rsLoRA
    ``lora_alpha/√r``) from :func:`lowrank_lab.adapters.io.read_peft_lora`; matrices the adapter does
    not touch are left out. A fine-tuning run (``run_json`` its record) gives ``ΔW = W_tuned − W``
    at :func:`run_adapter_rank` with s = 1 (the written adapter's ``lora_alpha = r``), every matrix.
    Other tuned weights (a checkpoint) have no known rank: an error, or with ``need_rank=False``
    (spectra need no rank) updates of rank None, as also for a full fine-tuning run.
    """
    from lowrank_lab.adapters.io import match_modules, read_peft_lora

    desc = getattr(tuned, "description", {}) or {}
    if desc.get("adapter_format") == "peft":
        deltas, _ = read_peft_lora(desc["adapter"])
        tensors = [p.tuned.tensor for p in pairs]
        matched = match_modules(list(deltas), tensors, what="PEFT adapter")
        by_tensor = {t: deltas[m] for m, t in matched.items()}
        for pair in pairs:
            d = by_tensor.get(pair.tuned.tensor)
            if d is None:
                continue
            W0 = tuned.base.load(pair.base).weight
            if tuple(W0.shape) != d.shape:
                raise MitigationInputError(
                    f"PEFT module {d.module!r} gives a {d.shape} update but base tensor "
                    f"{pair.base.tensor!r} is {tuple(W0.shape)}; was the adapter trained on this base?"
                )
            yield AdapterUpdate(pair, d.module, W0, d.delta(torch.promote_types(W0.dtype, torch.float32)),
                                d.rank, float(d.scale), (d.B, d.A))
        return
    if run_json is None and need_rank:
        raise MitigationInputError(
            "the adapter rank of these tuned weights is unknown: give a PEFT adapter (--adapter) or a "
            "fine-tuning run folder (--tuned runs/NAME, whose run.json names method and rank)"
        )
    rank = None
    if run_json is not None:
        try:
            rank = run_adapter_rank(run_json)
        except MitigationInputError:
            if need_rank:
                raise
    for pair in pairs:
        W0 = tuned.base.load(pair.base).weight
        W = tuned.weight(pair.tuned)
        cdt = torch.promote_types(torch.promote_types(W0.dtype, W.dtype), torch.float32)
        delta = W.to(cdt) - W0.to(cdt)
        yield AdapterUpdate(pair, pair.tuned.tensor.removesuffix(".weight"), W0, delta, rank, 1.0, None)


def write_peft_adapter(
    out_dir, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], *, rank: int, scaling: float,
    config: dict | None = None,
):
    """Write ``{module: (B, A)}`` as a PEFT LoRA adapter directory (``adapter_config.json`` +
    ``adapter_model.safetensors``, keys ``base_model.model.<module>.lora_{A,B}.weight``).

    ``config`` (a PEFT adapter's own) is kept as it is but for ``target_modules``; without it a plain
    LoRA config of rank r and ``lora_alpha = s·r`` is written.
    """
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from lowrank_lab.utils.files import atomic_path, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (B, A) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = A.detach().float().contiguous().cpu()
        tensors[f"base_model.model.{module}.lora_B.weight"] = B.detach().float().contiguous().cpu()
    alpha = float(scaling) * int(rank)
    cfg = dict(config) if config is not None else {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "r": int(rank),
        "lora_alpha": int(alpha) if alpha.is_integer() else alpha, "lora_dropout": 0.0,
        "fan_in_fan_out": False, "bias": "none", "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
        "inference_mode": True,
    }
    cfg["target_modules"] = sorted(factors)
    with atomic_path(out / "adapter_model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out / "adapter_config.json", json.dumps(cfg, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------------------------------
# Task metric and forgetting of a fine-tuning run with mitigated weights
# --------------------------------------------------------------------------------------------------


class RunEvaluator:
    """A fine-tuning run's model (its ``merged/`` weights and task head), scored as the run was.

    :meth:`measure` gives the task metric on the run's dev examples (the ``eval_subset`` the run's
    ``final_metric`` was computed on: :func:`lowrank_lab.training.loop.evaluate`) and, for an encoder,
    the forgetting of :mod:`lowrank_lab.training.forgetting` (the drop of the STS-B dev Spearman
    correlation of the mean-pooled encoder, base minus this model). :meth:`set_weights` replaces
    target matrices by tensor name (mitigated weights); :meth:`restore` puts the tuned ones back.

    Parameters
    ----------
    run_dir : path
        The run folder (``run.json`` and ``merged/``).
    data_dir : path
        The task data in GLUE/GSM8K layout (``../shared/data``), for the task and STS-B.
    device : str
    """

    def __init__(self, run_dir, *, data_dir, device="cpu") -> None:
        from pathlib import Path

        from lowrank_lab.adapters.io import match_modules
        from lowrank_lab.training.batching import Encoder, eval_subset
        from lowrank_lab.training.forgetting import sts_spearman
        from lowrank_lab.training.models import load_tokenizer
        from lowrank_lab.training.record import RunRecord
        from lowrank_lab.training.tasks import get_task, load_examples, load_scored
        from lowrank_lab.weights import load_hf_model

        run_dir = Path(run_dir)
        rec = RunRecord.read(run_dir)
        if rec is None:
            raise MitigationInputError(f"{run_dir} holds no fine-tuning run.json to evaluate")
        self.record, cfg = rec, rec.config
        self.spec = spec = get_task(cfg.task)
        self.device = torch.device(device)
        self.model = _load_run_model(run_dir / "merged", cfg, spec).to(self.device)
        tok = load_tokenizer(cfg.model, spec)
        max_len = cfg.max_length or spec.default_max_length
        self.dev = Encoder(spec, tok, max_len, load_scored(spec, data_dir, cfg.eval_set))  # as the run scored
        n_eval = spec.default_eval_samples if cfg.eval_samples is None else cfg.eval_samples
        self.dev_idx = eval_subset(len(self.dev), n_eval)
        self.batch_size = cfg.eval_batch_size
        self.sts = None
        self.base_spearman = float("nan")
        if spec.kind != "causal-lm":  # forgetting is defined for sentence encoders (training/forgetting.py)
            self.sts = (load_tokenizer(cfg.model, get_task("stsb")), load_examples("stsb", data_dir, "eval"))
            base = load_hf_model(cfg.model, head="base").float()
            self.base_spearman = sts_spearman(base, *self.sts)
        linears = [n for n, m in self.model.named_modules() if isinstance(m, torch.nn.Linear)]
        self._modules = dict(self.model.named_modules())
        self._match = lambda tensors: match_modules(linears, tensors, what="fine-tuned model")
        self._saved: dict[str, torch.Tensor] = {}

    def encoder(self):
        """The model's encoder (what forgetting measures): a pooled head's backbone, or the base model."""
        return getattr(self.model, "backbone", None) or self.model.base_model

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Replace the weights of the Linear modules named by tensor (``...query.weight``)."""
        matched = {t: m for m, t in self._match(list(weights)).items()}
        missing = sorted(set(weights) - set(matched))
        if missing:
            raise MitigationInputError(f"the fine-tuned model has no linear module for tensor {missing[0]!r}")
        with torch.no_grad():
            for tensor, W in weights.items():
                lin = self._modules[matched[tensor]]
                if tensor not in self._saved:
                    self._saved[tensor] = lin.weight.detach().clone()
                lin.weight.copy_(W.to(lin.weight.dtype).reshape(lin.weight.shape))

    def restore(self) -> None:
        """Put back every weight :meth:`set_weights` replaced."""
        self.set_weights(dict(self._saved))
        self._saved.clear()

    def measure(self) -> dict[str, float]:
        """``task_metric``, ``task_loss``, ``tuned_spearman`` and ``forgetting`` of the model as it is now."""
        from lowrank_lab.training.forgetting import sts_spearman
        from lowrank_lab.training.loop import evaluate

        res = evaluate(self.model, self.spec, self.dev, self.dev_idx, batch_size=self.batch_size,
                       device=self.device)
        out = {"task_metric": float(res["metric"]), "task_loss": float(res["loss"])}
        tuned = float("nan") if self.sts is None else sts_spearman(self.encoder(), *self.sts)
        out.update(tuned_spearman=tuned, forgetting=self.base_spearman - tuned)
        return out


def _load_run_model(merged, cfg, spec):
    """The run's task model from its ``merged/`` folder, in float32 and eval mode: a causal LM, a
    pooled-sentence classifier (the backbone plus ``classifier.safetensors``), or the architecture's
    own sequence-classification head, as :func:`lowrank_lab.training.models.load_model` built it."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    from lowrank_lab.training.models import PooledClassifier, resolve_pooling

    if not merged.is_dir():
        raise MitigationInputError(
            f"{merged} does not exist: the run's merged weights are not kept in git; rebuild them with "
            "python -m lowrank_lab.finetune --out STUDY --rebuild-merged"
        )
    path = str(merged)
    if spec.kind == "causal-lm":
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    elif (mode := resolve_pooling(cfg.model, cfg.pooling)) is not None:
        encoder = AutoModel.from_pretrained(path, local_files_only=True)
        model = PooledClassifier(encoder, spec.num_labels, mode)
        model.classifier.load_state_dict(load_file(str(merged / "classifier.safetensors")))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, num_labels=spec.num_labels
        )
    if spec.kind == "regression":
        model.config.problem_type = "regression"
    return model.float().eval()
