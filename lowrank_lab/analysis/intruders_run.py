"""Intruder dimensions of a fine-tune relative to its base, over a whole model (``intruders``' library side).

Shuttleworth et al. 2024 ("LoRA vs Full Fine-tuning: An Illusion of Equivalence", arXiv 2410.21228):
a top-k singular vector of the fine-tuned weight whose best |cos| with every singular vector of the
base weight is below ε is an *intruder dimension*. :class:`IntrudersConfig` holds the options of
``python -m lowrank_lab.intruders``, each default written here only, with its reason. :func:`run`
composes the library (torchtune's recipe shape: set up, loop, write): it pairs the base and tuned
matrices (:mod:`lowrank_lab.analysis.tuned`), walks the pairs one at a time in a resumable
:class:`~lowrank_lab.utils.sweep.Sweep` (:class:`PairWork`; split across ranks by SVD cost under
torchrun), and writes intruders.csv, skipped.csv, summary.md, the figures and run.json; with
``mitigate`` the mitigated adapters and their tables (PEFT 0.22 ``reduce_intruder_dimension``), with
``update_spectra`` the spectra of each adapter update. One matrix's numerics are
:mod:`lowrank_lab.analysis.intruders`; the tables :mod:`lowrank_lab.analysis.intruder_tables`;
mitigation :mod:`lowrank_lab.analysis.mitigation`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lowrank_lab.analysis.intruders import DEFAULT_EPSILON, DEFAULT_TOP_K, SIDES, TUNED_SVD_METHODS
from lowrank_lab.utils import options
from lowrank_lab.utils.cli import MAX_SEED, positive, unit_interval
from lowrank_lab.utils.cli import seed as seed_type
from lowrank_lab.utils.files import read_text
from lowrank_lab.utils.options import option

if TYPE_CHECKING:
    from lowrank_lab.analysis.tuned import MatrixPair, TunedWeights

PROG = "python -m lowrank_lab.intruders"
#: Columns of skipped.csv: matrices that could not be compared, with the reason.
SKIPPED_COLUMNS = ("tensor", "layer", "module", "rows", "cols", "reason")

#: Why an option may differ on --resume (``resume=False``): the two kinds of such options.
_OUTPUTS_REWRITTEN = "its files are rewritten whole on every run: the rows --resume keeps do not depend on it"
_SELECTION = "a resumed run may widen the selection; rows it no longer selects are refused by the CSV check"


@dataclass(frozen=True)
class IntrudersConfig:
    """The options of ``python -m lowrank_lab.intruders``; each default is written here only.

    ``resume=False`` marks the options :func:`run`'s resume check lets differ from the stored run:
    those that change no row of intruders.csv (threads, figures, cache, the tables recomputed whole)
    and the matrix selection, whose narrowing the check of intruders.csv's rows refuses. A config
    names the fine-tuned weights through ``tuned`` or ``adapter``; :func:`run` refuses one with
    neither (a config of the base alone is a valid start for :func:`dataclasses.replace`).
    """

    base: str = option(
        help="the pre-trained weights: a registry name (minilm, stories260K, llama-7b...), an HF directory, "
        "a hub id in the local HF cache, or a llama2.c .bin. Example: --base minilm",
        why="no default: the base a fine-tune is compared with is the user's to name",
        metavar="NAME|PATH",
    )
    tuned: str | None = option(
        None,
        help="the fine-tuned weights: an HF directory or checkpoint file, a lowrank_lab.training run "
        "directory (its merged/ is read), or an adapter directory (same as --adapter). "
        "Example: --tuned runs/lora-r8",
        why="give it or --adapter",
        metavar="PATH",
    )
    adapter: str | None = option(
        None,
        help="an adapter merged onto --base (or onto --tuned when both are given): a PEFT LoRA directory "
        "(adapter_config.json + adapter_model.safetensors; ΔW = lora_alpha/r · B·A) or a lowrank_lab one "
        "(lowrank_adapter.json + lowrank_adapter.safetensors). Example: --adapter runs/lora-r8/peft",
        why="give it or --tuned",
        metavar="PATH",
    )
    epsilon: float = option(
        DEFAULT_EPSILON,
        help="a tuned vector whose best |cos| is below ε is an intruder. Example: --epsilon 0.4",
        why="the paper's (Shuttleworth et al. 2024) and PEFT's threshold_epsilon",
        type=unit_interval("--epsilon", "|cos| lies in [0, 1]"),
    )
    top_k: int = option(
        DEFAULT_TOP_K,
        help="tuned singular vectors examined per matrix. Example: --top-k 20",
        why="the paper's (Shuttleworth et al. 2024) and PEFT's top_k",
        type=positive(int),
    )
    sweep: bool = option(
        False,
        help="also tabulate the count for ε = 0.1, 0.2, ..., 0.9 (summary.md, sweep.csv); free: it reuses "
        "the similarities",
        why="the count at --epsilon is the measure; the sweep is the paper's figure",
        resume=False,
    )
    side: str = option(
        "left",
        help="left singular vectors (U), right ones (rows of Vᵀ), or both",
        why="the paper's definition uses U; " + _SELECTION,
        choices=("left", "right", "both"),
        resume=False,
    )
    targets: str | None = option(
        None,
        help="comma-separated module types, or all-linear. Example: --targets query,value  or  "
        "--targets q_proj,v_proj",
        why="every matrix a fine-tune may change; " + _SELECTION,
        shown="every target of the family",
        metavar="MODULES",
        resume=False,
    )
    layers: str | None = option(
        None,
        help="layers to analyse, e.g. 0-3,7",
        why="the whole model; " + _SELECTION,
        shown="all",
        metavar="SPEC",
        resume=False,
    )
    experts: str | None = option(
        None,
        help="mixture-of-experts models: all (each expert is one matrix, its index in the expert column), "
        "none, or indices such as 0-3",
        why="every expert is a matrix a fine-tune changes; " + _SELECTION,
        shown="all",
        metavar="SPEC",
        resume=False,
    )
    split_fused: bool = option(
        False,
        help="also compare the parts of fused projections (Phi-3 qkv_proj as q, k, v; gate_up_proj as "
        "gate, up)",
        why="a fused matrix is the one the checkpoint holds; " + _SELECTION,
        resume=False,
    )
    out: str = option(
        "intruders_out",
        help="output directory",
        why="a folder in the current directory named after the command; the folder resumed is this one",
        metavar="DIR",
        resume=False,
    )
    cache_dir: str | None = option(
        None,
        help="where base SVDs are cached. Example: --cache-dir /scratch/svd",
        why="one cache per user, shared by every fine-tune of a base; keyed by content: it changes no result",
        shown="$LOWRANK_LAB_CACHE/svd or ~/.cache/lowrank_lab/svd",
        metavar="DIR",
        resume=False,
    )
    no_cache: bool = option(
        False,
        help="neither read nor write the base-SVD cache",
        why="the base SVD is the costly part and the same for every fine-tune of one base",
        resume=False,
    )
    tuned_svd: str = option(
        "full",
        help="tuned top-k from the full SVD or a randomized SVD (Halko et al. 2011; sketch k+1+max(40, 2k), "
        "12 power iterations) whose similarities carry error bounds: a matrix where a bound straddles ε "
        "is redone with the full SVD, so the counts at --epsilon equal the full SVD's",
        why="the full SVD is the definition",
        choices=TUNED_SVD_METHODS,
    )
    seed: int = option(
        0,
        help="seed of the randomized SVD's test matrix, 0 to 2**63-1",
        why="a fixed seed makes a randomized run repeatable; the full SVD draws nothing",
        type=seed_type,
    )
    device: str = option(
        "cpu",
        help="where SVDs run: cpu, cuda, or auto. Example: --device cuda",
        why="runs anywhere; the SVD of one matrix at a time fits a CPU",
    )
    no_figures: bool = option(
        False,
        help="skip the PNG figures (the CSV and summary hold the same numbers)",
        why="figures take ~1-3 s and are what a reader looks at first",
        resume=False,
    )
    threads: int | None = option(
        None,
        help="torch intra-op threads. On a shared machine --threads 1 avoids oversubscription, which can "
        "make SVDs 10-20x slower",
        why="torch picks one per core",
        shown="torch's choice",
        type=positive(int),
        metavar="N",
        resume=False,
    )
    resume: bool = option(
        False,
        help="keep the rows already in --out/intruders.csv and compute only the missing matrices",
        why="a fresh run computes everything",
        resume=False,
    )
    mitigate: str | None = option(
        None,
        help="intruder mitigation (Shuttleworth et al. 2024; PEFT 0.22 reduce_intruder_dimension) at each "
        "lambda in [0, 1], a comma list: the intruder components of W + dW are scaled by lambda and the "
        "update is re-factored at the adapter's rank (--top-k and --epsilon detect them; PEFT's defaults "
        "10 and 0.5). Writes a PEFT adapter per lambda; a fine-tuning run (--tuned runs/NAME) is also "
        "scored at each lambda (task metric, forgetting). Example: --mitigate 0,0.25,0.5,0.75",
        why="counting is the measure; mitigation rescores a model per lambda; " + _OUTPUTS_REWRITTEN,
        metavar="LAMBDAS",
        resume=False,
    )
    update_spectra: bool = option(
        False,
        help="also write update_spectra.csv: the spectrum of each adapter update dW and of W + dW "
        "(stable rank, alpha, ... as analyze's spectra.csv), as WeightWatcher's PEFT mode analyses them",
        why="an extra full SVD per matrix; " + _OUTPUTS_REWRITTEN,
        resume=False,
    )
    data_dir: str | None = option(
        None,
        help="task data for --mitigate's scores (GLUE layout, with stsb for forgetting)",
        why="where README's Install puts the real task data",
        shown="$LOWRANK_LAB_SHARED_DATA or ../shared/data",
        metavar="DIR",
        resume=False,
    )
    no_eval: bool = option(
        False,
        help="with --mitigate, write the mitigated adapters and tables without scoring a run",
        why="a fine-tuning run is scored at each lambda, as the paper's trade-off needs",
        resume=False,
    )
    retry_skipped: bool = option(
        False,
        help="with --resume, compute again the matrices listed in skipped.csv (NaN/Inf weights, ...)",
        why="a matrix skipped once is skipped for a reason that a rerun rarely changes",
        resume=False,
    )

    def __post_init__(self) -> None:
        if self.retry_skipped and not self.resume:
            raise ValueError(
                "--retry-skipped only makes sense with --resume (a fresh run computes everything)"
            )
        if self.mitigate is None and self.no_eval:
            raise ValueError("--no-eval only makes sense with --mitigate")
        if self.mitigate is not None:
            from lowrank_lab.analysis.mitigation import parse_lambdas

            parse_lambdas(self.mitigate)  # a bad λ is refused here, named
        if not 0.0 < self.epsilon <= 1.0:  # also refuses NaN
            raise ValueError(f"--epsilon must be in (0, 1] (|cos| lies in [0, 1]), got {self.epsilon}")
        for name in ("top_k", "threads"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer > 0, got {value!r}")
        if self.side not in (*SIDES, "both"):
            raise ValueError(f"--side must be left, right or both, got {self.side!r}")
        if self.tuned_svd not in TUNED_SVD_METHODS:
            methods = ", ".join(TUNED_SVD_METHODS)
            raise ValueError(f"--tuned-svd must be one of {methods}, got {self.tuned_svd!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"--seed must be in 0 .. 2**63-1, got {self.seed!r}")

    @property
    def lambdas(self) -> list[float]:
        """The λ of ``mitigate`` (distinct, in [0, 1], in the order given); [] without it."""
        if self.mitigate is None:
            return []
        from lowrank_lab.analysis.mitigation import parse_lambdas

        return parse_lambdas(self.mitigate)

    @property
    def sides(self) -> tuple[str, ...]:
        """``side`` as the tuple of sides compared."""
        return SIDES if self.side == "both" else (self.side,)


@dataclass(frozen=True, eq=False)
class IntrudersResult:
    """What :func:`run` made: the folder, its tables as DataFrames and the paths of its files.

    ``record`` is what run.json holds (``record["intruders"]``: the count per side at ε,
    ``record["config"]``: the config). Under torchrun only rank 0 writes and reads the tables: the
    result of another rank holds its ``rank`` and ``out`` only.
    """

    out: Path
    rank: int = 0
    #: intruders.csv: one row per (matrix, side, tuned rank)
    intruders: pd.DataFrame | None = None
    #: per matrix and side: intruder count and the lowest best-match similarity
    per_matrix: pd.DataFrame | None = None
    #: intruders per module type at ε
    module_totals: pd.DataFrame | None = None
    #: the count against ε = 0.1 ... 0.9 per side and module type (module "all": the totals)
    sweep: pd.DataFrame | None = None
    skipped: pd.DataFrame | None = None
    #: mitigation.csv and mitigation_matrices.csv (``mitigate``), update_spectra.csv (``update_spectra``)
    mitigation: pd.DataFrame | None = None
    mitigation_matrices: pd.DataFrame | None = None
    update_spectra: pd.DataFrame | None = None
    #: output name (as run.json's ``outputs`` lists it) -> path
    paths: dict[str, Path] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# The work of one matrix pair
# --------------------------------------------------------------------------------------------------


class PairWork:
    """The per-matrix function of an intruder sweep: one (base, tuned) pair -> its intruders.csv rows.

    A pair whose weights no SVD can take (:func:`lowrank_lab.linalg.unfactorizable_reason`, or
    :class:`~lowrank_lab.analysis.intruders.IntruderInputError`) raises
    :class:`~lowrank_lab.utils.sweep.SkipItem`. Keeps the run's worst matrix (for its figure) and the
    SVD times.
    """

    def __init__(self, base, tuned, sweep, *, sides, k_of, device, kw) -> None:
        self.base, self.tuned, self.sweep = base, tuned, sweep
        self.sides, self.k_of, self.device, self.kw = sides, k_of, device, kw
        self.best = None  # ((count, -min similarity), pair, side, record)
        self.base_seconds = self.tuned_seconds = 0.0
        self.computed = 0

    def finished(self, pair) -> bool:
        t = pair.base.tensor
        if self.sweep.done("skipped", (t,)):
            return True
        return all(self.sweep.done("intruders", (t, s, r))
                   for s in self.sides for r in range(1, self.k_of[t] + 1))

    def skip_rows(self, pair, reason: str):
        info = pair.base
        yield "skipped", {"tensor": info.tensor, "layer": "" if info.layer is None else int(info.layer),
                          "module": info.module, "rows": int(info.shape[0]), "cols": int(info.shape[1]),
                          "reason": reason}

    def __call__(self, pair):
        from lowrank_lab.analysis.intruder_tables import record_rows
        from lowrank_lab.analysis.intruders import IntruderInputError, find_intruders
        from lowrank_lab.linalg import unfactorizable_reason
        from lowrank_lab.utils.sweep import SkipItem

        W0 = self.base.load(pair.base).weight
        W = self.tuned.weight(pair.tuned)
        for label, M in (("base", W0), ("tuned", W)):
            reason = unfactorizable_reason(M)
            if reason is not None:
                raise SkipItem(f"{label} weight: {reason}")
        if self.device is not None:
            W0, W = W0.to(self.device), W.to(self.device)
        try:
            recs = find_intruders(W0, W, name=pair.base.tensor, **self.kw)
        except IntruderInputError as exc:
            raise SkipItem(str(exc)) from None
        for side, rec in recs.items():
            yield from (("intruders", row) for row in record_rows(pair.base, rec))
            key = (rec.count, -float(rec.similarities.min()))
            if self.best is None or key > self.best[0]:
                self.best = (key, pair, side, rec)
            self.base_seconds += rec.base_seconds
            self.tuned_seconds += rec.tuned_seconds
        self.computed += 1


def pair_cost(shape, top_k: int, tuned_svd: str, *, cache) -> float:
    """Relative work of one matrix pair, for balancing the ranks of a distributed run (issue 9).

    The base SVD is a full thin SVD, O(m·n·min(m, n)); the tuned top-k is the same with
    ``--tuned-svd full``, or about 2·(q+1)·m·n·ℓ with the randomized SVD (q = 12 power iterations,
    sketch ℓ = k + 1 + max(40, 2k): :func:`lowrank_lab.analysis.intruders.top_bases`). Whether a
    base SVD is cached is only known after reading the tensor (the cache is keyed by content), so
    with a cache every base SVD is counted as a miss: the split is by shape either way.
    """
    from lowrank_lab.analysis.intruders import RANDOMIZED_N_ITER, RANDOMIZED_OVERSAMPLE

    m, n = (int(d) for d in shape)
    svd = m * n * min(m, n)
    if tuned_svd == "full":
        tuned = svd
    else:
        sketch = min(top_k + 1 + max(RANDOMIZED_OVERSAMPLE, 2 * top_k), min(m, n))
        tuned = 2 * (RANDOMIZED_N_ITER + 1) * m * n * sketch
    return float(svd + tuned)


# --------------------------------------------------------------------------------------------------
# Setting up: the weights, the output folder, the resume check
# --------------------------------------------------------------------------------------------------


def open_pairs(config: IntrudersConfig, *, say: bool) -> tuple[TunedWeights, list[MatrixPair]]:
    """The tuned weights (with their base in the same layout) and the (base, tuned) matrix pairs
    that ``targets``/``layers`` select. Headers only: every mismatch between the two checkpoints
    is reported before the first SVD. ``say``: print the sources' notes and warnings (rank 0)."""
    from dataclasses import replace

    from lowrank_lab.analysis.tuned import open_tuned, pair_targets
    from lowrank_lab.weights import WeightSelection, open_source

    selection = WeightSelection(experts=config.experts, split_fused=config.split_fused)
    source_options = {"selection": selection}
    opened = open_source(config.base, **source_options)
    if say:
        for note in getattr(opened, "notes", []):  # e.g. generic discovery of a model type without a table
            print(f"{PROG}: note: {note}", file=sys.stderr)
    tuned = open_tuned(
        config.tuned, base=config.base, base_source=opened, adapter=config.adapter,
        source_options=source_options,
    )
    pairs = pair_targets(
        tuned.base.targets(),
        tuned.targets(),
        base_name=f"base {config.base!r}",
        tuned_name=f"tuned {tuned.description.get('tuned', config.tuned)!r}",
        base_family=tuned.base.family,
        tuned_family=tuned.family,
    )
    if config.targets is not None or config.layers is not None:
        narrowed = replace(selection, targets=config.targets, layers=config.layers)
        chosen = open_source(config.base, selection=narrowed)
        keep = {(i.layer, i.module, i.expert) for i in chosen.targets()}
        pairs = [p for p in pairs if (p.base.layer, p.base.module, getattr(p.base, "expert", None)) in keep]
    if not pairs:
        raise ValueError(
            f"no target matrices selected in {config.base!r} "
            f"(--targets {config.targets}, --layers {config.layers})"
        )
    if say and "warning" in tuned.description:
        print(f"warning: {tuned.description['warning']}", file=sys.stderr)
    return tuned, pairs


def check_resume(config: IntrudersConfig, out: Path, expected_k: dict[str, int]) -> None:
    """Refuse to mix rows of other settings, other weights or other matrices in one folder.

    First the rows of ``out/intruders.csv`` (parsed whole; columns, ε, tuned SVD, the matrices and
    sides selected now, the top-k each matrix had), then the options against ``out/run.json``'s
    config record (:func:`lowrank_lab.utils.options.check_resume`: the weights compared, the seed,
    the device; the options marked ``resume=False`` may differ). ``expected_k``: tensor -> its k now.
    A run.json written before it held the config (the committed runs of reports/) is checked as it
    was then: the weights compared, by its ``base``, ``tuned`` and ``adapter`` entries.
    """
    _check_rows(config, out / "intruders.csv", expected_k)
    legacy = _legacy_run_json(out / "run.json")
    if legacy is None:
        options.check_resume(config, out / "run.json")
        return
    for key in ("base", "tuned", "adapter"):
        if key in legacy and legacy[key] != getattr(config, key):
            raise ValueError(
                f"cannot resume {out}: it was made with --{key} {legacy[key]!r}, "
                f"not {getattr(config, key)!r}; use a new --out"
            )


def _legacy_run_json(path: Path) -> dict | None:
    """The record of a run.json with no ``config`` entry (written before issue 29), else None (no
    file, a current one, or one that cannot be read: :func:`options.check_resume` names that)."""
    import json

    from lowrank_lab.utils.files import read_text_nofollow

    if not path.is_file():
        return None
    try:
        record = json.loads(read_text_nofollow(path))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "config" not in record else None


def _check_rows(config: IntrudersConfig, csv: Path, expected_k: dict[str, int]) -> None:
    import io

    from lowrank_lab.analysis.intruder_tables import ROW_COLUMNS
    from lowrank_lab.utils.files import read_text_nofollow
    from lowrank_lab.utils.tables import complete_rows

    if not csv.exists() or csv.stat().st_size == 0:
        return
    text = read_text_nofollow(csv)
    text = text if text.endswith("\n") else text[: text.rfind("\n") + 1]  # a torn last row is redone
    complete_rows(text, path=csv)  # a row that cannot be parsed stops here, named by its line
    try:
        old = pd.read_csv(io.StringIO(text))
    except Exception as exc:  # noqa: BLE001 - a damaged file
        raise ValueError(f"cannot resume from {csv}: {exc}; use a new --out") from None
    if list(old.columns) != list(ROW_COLUMNS):
        raise ValueError(f"cannot resume {csv}: its columns differ from this version's; use a new --out")
    if old.empty:
        return
    method = old["tuned_svd"].astype(str).str.replace("-fallback", "", regex=False)
    for flag, have, want in (
        ("--epsilon", set(old["epsilon"]), config.epsilon),
        ("--tuned-svd", set(method), config.tuned_svd),
    ):
        if have != {want}:
            raise ValueError(
                f"cannot resume {csv}: it was made with {flag} {sorted(have)[0]}, not {want}; use a new --out"
            )
    stray = sorted(set(old.tensor) - set(expected_k))
    if stray:
        raise ValueError(
            f"cannot resume {csv}: it holds {stray[0]!r}, which --targets/--layers do not select now; "
            "use a new --out"
        )
    other_side = sorted(set(old.side) - set(config.sides))
    if other_side:
        raise ValueError(
            f"cannot resume {csv}: it holds {other_side[0]} rows but --side is {config.side}; use a new --out"
        )
    bad_k = old[old.top_k != old.tensor.map(expected_k)]
    if not bad_k.empty:
        row = bad_k.iloc[0]
        raise ValueError(
            f"cannot resume {csv}: it was made with --top-k {row.top_k}, not {config.top_k}; use a new --out"
        )


@dataclass
class _Setup:
    """What every step of a run shares: where it runs and writes, the cache, the run.json record."""

    config: IntrudersConfig
    ctx: Any  # lowrank_lab.utils.distributed.DistContext
    device: Any
    out: Path
    cache: Any  # SVDCache | None
    meta: dict[str, Any]
    t_start: float


def _set_up(config: IntrudersConfig, argv: Sequence[str], t_start: float) -> _Setup:
    """Threads, device, process group, output folder and cache (rank 0 probes them), provenance."""
    from lowrank_lab.analysis import intruders as ix
    from lowrank_lab.linalg.policy import resolve_device
    from lowrank_lab.utils.distributed import init_from_env
    from lowrank_lab.utils.files import ensure_writable_dir
    from lowrank_lab.utils.provenance import run_metadata

    if config.tuned is None and config.adapter is None:
        raise ValueError("give the fine-tuned weights: --tuned PATH, or --adapter PATH (merged onto --base)")
    device = resolve_device(config.device)
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    ctx = init_from_env(device)  # a process group under torchrun, else a one-process context
    device = ctx.device(device)
    if ctx.enabled and (config.lambdas or config.update_spectra):
        raise ValueError("--mitigate and --update-spectra run in one process; start them without torchrun")
    # One rank probes the directories (the others use them once rank 0 holds the lock).
    out = ensure_writable_dir(config.out, option="--out") if ctx.is_main else Path(config.out)
    cache = None
    if not config.no_cache:
        cache_dir = Path(config.cache_dir) if config.cache_dir else ix.default_cache_dir()
        if ctx.is_main:
            ensure_writable_dir(cache_dir, option="--cache-dir")
        cache = ix.SVDCache(cache_dir)
    extra = {"base": config.base, "tuned": config.tuned, "adapter": config.adapter,
             "world_size": ctx.world_size, "config": options.to_dict(config)}
    meta = run_metadata(["-m", "lowrank_lab.intruders", *argv], seed=config.seed, device=device, extra=extra)
    return _Setup(config, ctx, device, out, cache, meta, t_start)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def run(
    config: IntrudersConfig, out: str | Path | None = None, *, argv: Sequence[str] | None = None
) -> IntrudersResult:
    """Count the intruder dimensions of every selected matrix of ``config.tuned`` (or ``config.base``
    plus ``config.adapter``) into ``out`` (default ``config.out``); returns the tables and paths.

    ``argv`` is the command recorded in summary.md and run.json (default: the flags that make
    ``config``, :func:`lowrank_lab.utils.options.to_argv`). Under torchrun every rank calls this;
    the matrices are split by SVD cost and rank 0 writes what one process would.

    Raises ValueError for options that cannot go together, weights that cannot be compared (the
    message names the tensor), a resume into a folder of other settings (naming the option), and
    OSError for missing or unwritable files.
    """
    t_start = time.perf_counter()
    argv = options.to_argv(config) if argv is None else list(argv)
    if out is not None:
        config = dataclasses.replace(config, out=str(out))
    env = _set_up(config, argv, t_start)
    tuned, pairs = open_pairs(config, say=env.ctx.is_main)
    result = _sweep(env, tuned, pairs)
    env.ctx.shutdown()
    return result


def _sweep(env: _Setup, tuned, pairs) -> IntrudersResult:
    """The resumable loop over the pairs; rank 0 then writes the tables, figures and run.json."""
    from lowrank_lab.analysis import intruder_tables as tables
    from lowrank_lab.analysis.figures import plot_similarity_matrix
    from lowrank_lab.utils.sweep import Sweep, Table
    from lowrank_lab.utils.tables import row_order

    config, ctx, out, cache = env.config, env.ctx, env.out, env.cache
    k_of = {p.base.tensor: min(config.top_k, *p.base.shape) for p in pairs}
    kw = dict(top_k=config.top_k, epsilon=config.epsilon, side=config.sides, cache=cache,
              tuned_svd=config.tuned_svd, generator=config.seed, keep_matrix=True)
    sweep = Sweep(
        out,
        {
            "intruders": Table(out / "intruders.csv", tables.ROW_COLUMNS, tables.ROW_KEY),
            "skipped": Table(out / "skipped.csv", SKIPPED_COLUMNS, ("tensor",)),
        },
        order=row_order(("tensor", [p.base.tensor for p in pairs]), ("side", config.sides), ("rank", None)),
        ctx=ctx,
        resume=config.resume,
        command=env.meta["command"] or PROG,
        retry_tables=("skipped",) if config.retry_skipped else (),
        check_resume=lambda: check_resume(config, out, k_of),
    )
    with sweep:
        work = PairWork(tuned.base, tuned, sweep, sides=config.sides, k_of=k_of, device=env.device, kw=kw)
        sweep.run(
            pairs, work, finished=work.finished, on_skip=work.skip_rows, desc="intruders",
            label=lambda p: p.base.tensor,
            cost=lambda p: pair_cost(p.base.shape, k_of[p.base.tensor], config.tuned_svd, cache=cache),
        )
        if ctx.enabled and work.best is not None and not config.no_figures:
            # The run's worst matrix is some rank's local worst: each rank draws its own, rank 0 keeps
            # the one the merged rows pick (no matrix is read twice).
            _, pair, side, rec = work.best
            safe = pair.base.tensor.removesuffix(".weight").replace("/", "_")
            where = sweep.parts_dir / f"similarity_{safe}.{side}.png"
            plot_similarity_matrix(rec, where, tensor=pair.base.tensor)
        # Counters of the whole run (seconds as microseconds: the all-reduce sums integers).
        hits, misses = (cache.hits, cache.misses) if cache is not None else (0, 0)
        counts, (computed, hits, misses, base_us, tuned_us) = sweep.finish(
            [work.computed, hits, misses, round(work.base_seconds * 1e6), round(work.tuned_seconds * 1e6)]
        )
        if not ctx.is_main:
            return IntrudersResult(out=out, rank=ctx.rank)
        if cache is not None:
            cache.hits, cache.misses = hits, misses
        counters = {"computed": computed, "skipped_new": counts["skipped_items"],
                    "skipped_examples": list(sweep.skipped[:1]), "base_svd_seconds": round(base_us / 1e6, 4),
                    "tuned_svd_seconds": round(tuned_us / 1e6, 4)}
        return _write_outputs(env, tuned, pairs, kw, counters, work=None if ctx.enabled else work,
                              drawn=sweep.parts_dir if ctx.enabled else None)


def _pick_best(pm):
    """The (tensor, side) with most intruders; ties broken by the lowest best-match similarity."""
    if pm.empty:
        return None
    top = pm.sort_values(["count", "min_similarity"], ascending=[False, True]).iloc[0]
    return str(top.tensor), str(top.side)


def _write_outputs(env: _Setup, tuned, pairs, kw, counters, *, work, drawn) -> IntrudersResult:
    """Rank 0, the rows all written: summary.md, sweep.csv, the figures, the mitigation and
    update-spectra files, run.json. ``counters``: the whole run's (matrices computed, skipped, SVD
    seconds); ``work``: this process's :class:`PairWork` (single process), ``drawn``: where the
    ranks drew their worst matrix (torchrun)."""
    from lowrank_lab.analysis import intruder_tables as tables
    from lowrank_lab.analysis.figures import plot_count_vs_epsilon
    from lowrank_lab.utils.files import atomic_path, atomic_write_text
    from lowrank_lab.utils.provenance import write_run_json

    config, out, cache, meta = env.config, env.out, env.cache, env.meta
    df = pd.read_csv(out / "intruders.csv")
    pm, totals, sweep_df = tables.per_matrix(df), tables.module_totals(df), tables.sweep_table(df)
    skipped = pd.read_csv(out / "skipped.csv")
    tuned_name = tuned.description.get("tuned", config.tuned)
    figures, pick = [], _pick_best(pm)
    if not config.no_figures and not df.empty:
        title = f"{config.base} → {tuned_name}"
        figures.append(plot_count_vs_epsilon(sweep_df, out / "count_vs_epsilon.png", title=title))
    if pick is not None and not config.no_figures:
        best = None if work is None else work.best
        figures.append(_similarity_figure(pick, out, drawn, best, pairs, tuned, device=env.device, kw=kw))
    if drawn is not None and drawn.is_dir():
        for f in drawn.glob("similarity_*.png"):
            f.unlink()
    text = tables.summary_markdown(
        totals=totals, sweep=sweep_df, per_matrix=pm, skipped=skipped, base=config.base, tuned=tuned_name,
        sides=config.sides, top_k=config.top_k, epsilon=config.epsilon, tuned_svd=config.tuned_svd,
        command=meta["command"], cache=None if cache is None else (cache.directory, cache.hits, cache.misses),
        pick=pick, figures=[f.name for f in figures], with_sweep=config.sweep,
    )
    if config.sweep:
        with atomic_path(out / "sweep.csv") as tmp:
            sweep_df[sweep_df.module != "all"].to_csv(tmp, index=False)
    atomic_write_text(out / "summary.md", text)
    extra, frames = _update_and_mitigate(config, tuned, pairs, out, cache=cache, device=env.device)
    outputs = ["intruders.csv", "skipped.csv", "summary.md", *(["sweep.csv"] if config.sweep else []),
               *[f.name for f in figures], *extra]
    meta.update(_record(config, counters, pm, skipped, cache, tuned, outputs))
    write_run_json(out / "run.json", meta, time.perf_counter() - env.t_start)
    return IntrudersResult(
        out=out, intruders=df, per_matrix=pm, module_totals=totals, sweep=sweep_df, skipped=skipped,
        mitigation=frames.get("mitigation"), mitigation_matrices=frames.get("mitigation_matrices"),
        update_spectra=frames.get("update_spectra"), paths={name: out / name for name in outputs},
        record=meta,
    )


def _record(config: IntrudersConfig, counters, pm, skipped, cache, tuned, outputs) -> dict[str, Any]:
    """run.json's summary of the run, in the order (and with the keys) it has always had."""
    return {
        "matrices": int(pm.tensor.nunique()),
        "computed": counters["computed"],
        "skipped": int(len(skipped)),
        "skipped_new": counters["skipped_new"],
        "skipped_examples": counters["skipped_examples"],
        "intruders": {s: int(pm[pm.side == s]["count"].sum()) for s in config.sides},
        "cache": None
        if cache is None
        else {"dir": str(cache.directory), "hits": cache.hits, "misses": cache.misses},
        "base_svd_seconds": counters["base_svd_seconds"],
        "tuned_svd_seconds": counters["tuned_svd_seconds"],
        "tuned_svd": config.tuned_svd,
        "epsilon": config.epsilon,
        "top_k": config.top_k,
        "side": config.side,
        "targets": config.targets,
        "layers": config.layers,
        "tuned_weights": tuned.description,
        "outputs": outputs,
    }


def _similarity_figure(pick, out: Path, drawn: Path | None, best, pairs, tuned, *, device, kw) -> Path:
    """``out/similarity_<tensor>.png`` for the matrix with the most intruders (``pick``: tensor,
    side). Under torchrun the rank that computed it drew it into ``drawn``: moved here. Else the
    record in hand (``best``) draws it, or, when the rows came from an earlier run (--resume),
    that one matrix is computed again."""
    from lowrank_lab.analysis.figures import plot_similarity_matrix
    from lowrank_lab.analysis.tuned import iter_records

    tensor, side = pick
    safe = tensor.removesuffix(".weight").replace("/", "_")
    target = out / f"similarity_{safe}.png"
    other = None if drawn is None else drawn / f"similarity_{safe}.{side}.png"
    if other is not None and other.exists():
        os.replace(other, target)
        return target
    if best is not None and best[1].base.tensor == tensor and best[2] == side:
        rec = best[3]
    else:
        pair = next(p for p in pairs if p.base.tensor == tensor)
        _, recs = next(iter_records(tuned.base, tuned, [pair], device=device, **{**kw, "side": (side,)}))
        rec = recs[side]
    return plot_similarity_matrix(rec, target, tensor=tensor)


# --------------------------------------------------------------------------------------------------
# --update-spectra and --mitigate
# --------------------------------------------------------------------------------------------------


def _fine_tuning_run(tuned) -> tuple[Path | None, dict | None]:
    """The fine-tuning run folder and its run.json when --tuned is a run (its merged/ was read)."""
    import json

    if tuned.description.get("tuned_kind") != "run":
        return None, None
    run_dir = Path(tuned.description["tuned"]).parent
    path = run_dir / "run.json"
    if not path.is_file():
        return run_dir, None
    try:
        return run_dir, json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); is this a fine-tuning run folder?") from None


def _update_and_mitigate(
    config: IntrudersConfig, tuned, pairs, out: Path, *, cache, device
) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """--update-spectra and --mitigate: their files in ``out``; returns their names and tables."""
    written: list[str] = []
    frames: dict[str, pd.DataFrame] = {}
    lambdas = config.lambdas
    if not lambdas and not config.update_spectra:
        return written, frames
    run_dir, run_json = _fine_tuning_run(tuned)
    if config.update_spectra:
        frames["update_spectra"] = _write_update_spectra(tuned, pairs, out, run_json, device=device)
        written.append("update_spectra.csv")
    if lambdas:
        names, tables = _write_mitigation(config, tuned, pairs, out, lambdas, run_dir, run_json, cache=cache,
                                          device=device)
        written += names
        frames.update(tables)
    return written, frames


def _write_update_spectra(tuned, pairs, out: Path, run_json, *, device) -> pd.DataFrame:
    from lowrank_lab.analysis.mitigation import iter_updates
    from lowrank_lab.analysis.update_spectra import UPDATE_SPECTRA_COLUMNS, update_spectra_rows
    from lowrank_lab.utils.files import write_frame

    rows = []
    for u in iter_updates(tuned, pairs, run_json=run_json, need_rank=False):
        W0, delta = u.W0.to(device), u.delta.to(device)
        rows += update_spectra_rows(u.pair.base, W0, delta, rank=u.rank, scaling=u.scaling, factors=u.factors)
    frame = pd.DataFrame(rows, columns=UPDATE_SPECTRA_COLUMNS)
    write_frame(frame, out / "update_spectra.csv")
    return frame


@dataclass
class _Mitigated:
    """Every adapted matrix mitigated at each λ: the per-matrix rows, the factors of each λ's PEFT
    adapter, the changed weights of each λ (tensor -> weight), the adapter's rank and scaling."""

    rows: list[dict[str, Any]]
    factors: dict[float, dict[str, tuple[Any, Any]]]
    weights: dict[float, dict[str, Any]]
    rank: int | None = None
    scaling: float = 1.0


def _mitigate_matrices(config: IntrudersConfig, tuned, pairs, lams, run_json, *, cache, device) -> _Mitigated:
    from lowrank_lab.analysis import mitigation as mg
    from lowrank_lab.analysis.intruders import base_bases

    done = _Mitigated([], {lam: {} for lam in lams if lam != 1.0}, {lam: {} for lam in lams if lam != 1.0})
    for u in mg.iter_updates(tuned, pairs, run_json=run_json):
        W0, delta = u.W0.to(device), u.delta.to(device)
        base, _ = base_bases(W0, ("left",), cache=cache, name=u.pair.base.tensor)
        done.rank, done.scaling = u.rank, u.scaling
        for lam in lams:
            m = mg.mitigate_update(
                W0, delta, rank=u.rank, scaling=u.scaling, lam=lam, top_k=config.top_k,
                epsilon=config.epsilon, factors=u.factors, base=base, name=u.pair.base.tensor,
            )
            info = u.pair.base
            done.rows.append({
                "lambda": lam, "tensor": info.tensor, "layer": "" if info.layer is None else int(info.layer),
                "module": info.module, "rows": int(W0.shape[0]), "cols": int(W0.shape[1]),
                "adapter_rank": u.rank, "scaling": u.scaling, "intruders": m.count,
                "intruder_ranks": " ".join(map(str, m.intruder_ranks)), "changed": int(m.changed),
                "delta_fro": float(delta.float().norm()), "mitigated_delta_fro": float(m.delta().norm()),
            })
            if lam == 1.0:
                continue
            done.factors[lam][u.module] = (m.B, m.A)
            if m.changed:  # the weights of the changed matrices only
                done.weights[lam][u.pair.tuned.tensor] = (W0.float() + m.delta().to(W0.device)).cpu()
    if done.rank is None:
        raise ValueError("--mitigate: no adapted matrix among the selected targets")
    return done


def _write_mitigation(
    config: IntrudersConfig, tuned, pairs, out: Path, lambdas, run_dir, run_json, *, cache, device
) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """Mitigate every adapted matrix at each λ, write the adapters and tables, score a run; returns
    the names written and the two tables."""
    from lowrank_lab.analysis import intruder_tables as tables
    from lowrank_lab.analysis import mitigation as mg
    from lowrank_lab.utils.files import write_frame

    lams = mg.lambdas_with_reference(lambdas)
    peft_config = None
    if tuned.description.get("adapter_format") == "peft":
        from lowrank_lab.adapters.io import read_peft_lora

        peft_config = read_peft_lora(tuned.description["adapter"])[1]
    done = _mitigate_matrices(config, tuned, pairs, lams, run_json, cache=cache, device=device)
    written = ["mitigation_matrices.csv", "mitigation.csv"]
    frame_m = pd.DataFrame(done.rows, columns=tables.MITIGATION_MATRIX_COLUMNS)
    write_frame(frame_m, out / "mitigation_matrices.csv")
    for lam, f in done.factors.items():
        mg.write_peft_adapter(out / "mitigated" / f"lambda-{lam:g}", f, rank=done.rank, scaling=done.scaling,
                              config=peft_config)
    evaluator = None
    if run_dir is not None and run_json is not None and not config.no_eval:
        from lowrank_lab.training.tasks import default_data_dir

        evaluator = mg.RunEvaluator(run_dir, data_dir=config.data_dir or default_data_dir(), device=device)
    rows = _score_lambdas(config, tuned, lams, frame_m, done, run_dir, run_json, evaluator)
    frame = pd.DataFrame(rows, columns=tables.MITIGATION_COLUMNS)
    write_frame(frame, out / "mitigation.csv")
    if evaluator is not None and not config.no_figures:
        tables.plot_mitigation_tradeoff(frame, out / "mitigation_tradeoff.png",
                                        title=f"{frame['run'].iloc[0]}: intruder mitigation over λ")
        written.append("mitigation_tradeoff.png")
    written += [f"mitigated/lambda-{lam:g}" for lam in done.factors]
    return written, {"mitigation": frame, "mitigation_matrices": frame_m}


def _score_lambdas(
    config: IntrudersConfig, tuned, lams, frame_m, done: _Mitigated, run_dir, run_json, evaluator
) -> list[dict]:
    """mitigation.csv's rows: one per λ, with the run's task metric and forgetting when ``evaluator``
    scores it (λ = 1 and a λ that changed nothing: the tuned model's scores, measured once)."""
    cfg = (run_json or {}).get("config") or {}
    rows, reference = [], None
    for lam in lams:
        per = frame_m[frame_m["lambda"] == lam]
        row = {
            "run": run_dir.name if run_dir is not None else str(tuned.description.get("tuned", config.tuned)),
            "method": cfg.get("method", ""), "rank": done.rank, "seed": cfg.get("seed", ""),
            "task": cfg.get("task", ""), "metric": "", "lambda": lam, "top_k": config.top_k,
            "epsilon": config.epsilon, "matrices": len(per), "mitigated_matrices": int(per["changed"].sum()),
            "intruders": int(per["intruders"].sum()),
            "adapter": "" if lam == 1.0 else f"mitigated/lambda-{lam:g}",
        }
        if evaluator is not None:
            if lam == 1.0 or not done.weights[lam]:  # nothing mitigated: the tuned model's scores
                reference = scores = reference or evaluator.measure()
            else:
                evaluator.set_weights(done.weights[lam])
                scores = evaluator.measure()
                evaluator.restore()
            row.update(scores, metric=evaluator.spec.metric, recorded_metric=evaluator.record.final_metric,
                       base_spearman=evaluator.base_spearman)
        rows.append(row)
    return rows
