"""``python -m lowrank_lab.intruders``: intruder dimensions of a fine-tune relative to its base.

Shuttleworth et al. 2024 ("LoRA vs Full Fine-tuning: An Illusion of Equivalence", arXiv 2410.21228):
a top-k singular vector of the fine-tuned weight whose best |cos| with every singular vector of the
base weight is below ε is an *intruder dimension*. The numerics live in
:mod:`lowrank_lab.analysis.intruders`; this module reads the options, walks the matrices one at a
time, and writes the CSV, the summary, the figures and ``run.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lowrank_lab.utils.cli import guarded_main, positive, seed, unit_interval
from lowrank_lab.utils.files import read_text

if TYPE_CHECKING:  # the analysis modules load torch: imported where used, so --help stays fast
    from lowrank_lab.analysis.tuned import MatrixPair, TunedWeights

PROG = "python -m lowrank_lab.intruders"
#: Columns of skipped.csv: matrices that could not be compared, with the reason.
SKIPPED_COLUMNS = ("tensor", "layer", "module", "rows", "cols", "reason")

EPILOG = """\
examples:
  # a full fine-tune saved as a Hugging Face directory, against the registry's MiniLM
  python -m lowrank_lab.intruders --base minilm --tuned runs/full-ft/merged --out out/full

  # a fine-tuning run directory of lowrank_lab.training (its merged/ is read)
  python -m lowrank_lab.intruders --base minilm --tuned runs/lora-r8 --sweep --out out/lora-r8

  # the base plus a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors), merged on the fly
  python -m lowrank_lab.intruders --base minilm --adapter runs/lora-r8/peft --epsilon 0.5 --top-k 10

  # a lowrank_lab adapter (save_adapter), right singular vectors too, query/value of layers 0-2 only
  python -m lowrank_lab.intruders --base minilm --adapter runs/pissa/adapter --side both \\
      --targets query,value --layers 0-2 --out out/pissa

  # large models: randomized SVD for the tuned top-k, base SVDs cached in a shared directory
  python -m lowrank_lab.intruders --base llama-7b --tuned ckpt/ --tuned-svd randomized \\
      --cache-dir /scratch/svd-cache --resume --out out/llama

  # the same on the 8 GPUs of one node: matrices split across ranks by SVD cost, rank 0 writes the
  # files one process would (add --nnodes/--rdzv-* for several nodes; --out on a shared file system)
  torchrun --standalone --nproc-per-node 8 -m lowrank_lab.intruders --base llama-7b --tuned ckpt/ \\
      --device cuda --cache-dir /scratch/svd-cache --resume --out out/llama

  # intruder mitigation (PEFT 0.22 reduce_intruder_dimension, top 10, eps 0.5) at several lambda; for a
  # fine-tuning run also its task metric and forgetting at each lambda (mitigation.csv, figure)
  python -m lowrank_lab.intruders --base minilm --tuned reports/study/sst2/runs/lora-r8-seed0 \
      --mitigate 0,0.25,0.5,0.75 --data-dir ../shared/data --out out/lora-r8-seed0

  # spectra of each adapter update dW and of W + dW (WeightWatcher's PEFT mode, whole spectra)
  python -m lowrank_lab.intruders --base minilm --adapter runs/lora-r8/peft --update-spectra

outputs (in --out):
  intruders.csv   long format, one row per (tensor, side, rank) for the top-k tuned singular vectors:
                  tensor, layer, module, side, rows, cols, rank (1..k, tuned spectrum),
                  singular_value (tuned σ), similarity (best |cos| with any base vector),
                  similarity_bound (its error bound: 0 for the full SVD), base_rank /
                  base_singular_value (the best-matching base vector), intruder (0/1 at --epsilon),
                  count (intruders of that matrix and side), epsilon, top_k, tuned_svd (full,
                  randomized, or randomized-fallback: not certifiable, recomputed with the full SVD).
                  pandas: df = pd.read_csv(...); per matrix: df.groupby(["tensor","side"]).intruder.sum();
                  count at any ε: (df.similarity < eps).groupby(df.module).sum().
  summary.md      totals per module type; with --sweep the count for ε = 0.1 ... 0.9
  sweep.csv       (with --sweep) side, module, epsilon, count — long format, one row per module
                  type (no total rows: df.groupby("epsilon")["count"].sum() gives the totals)
  skipped.csv     matrices that could not be compared (NaN/Inf or all-zero weights, float32 overflow), with
                  the reason; the run goes on without them (--resume --retry-skipped tries them again)
  count_vs_epsilon.png, similarity_<tensor>.png (the matrix with most intruders)
  run.json        command, versions, device, git commit, cache hits, timings
  mitigation.csv  (--mitigate) one row per lambda, lambda = 1 the tuned weights: run, method, rank, seed,
                  task, metric, lambda, top_k, epsilon, matrices, mitigated_matrices, intruders,
                  task_metric (dev, as the run scored it), task_loss, recorded_metric (the run's own),
                  base_spearman, tuned_spearman, forgetting (STS-B Spearman drop), adapter
  mitigation_matrices.csv, mitigated/lambda-<l>/ (a PEFT LoRA adapter per lambda < 1),
  mitigation_tradeoff.png (task metric vs forgetting over lambda)
  update_spectra.csv  (--update-spectra) per matrix two rows, matrix = delta (dW) and tuned (W + dW),
                  with adapter_rank, scaling and the columns of analyze's spectra.csv

Exit status 2 with a one-line message for bad input (no traceback).
"""


def build_parser() -> argparse.ArgumentParser:
    from lowrank_lab.analysis.intruders import DEFAULT_EPSILON, DEFAULT_TOP_K

    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Count intruder dimensions (Shuttleworth et al. 2024, arXiv 2410.21228) of fine-tuned weights: "
            "top-k singular vectors of each tuned matrix whose best |cos| with ALL singular vectors of the "
            "base matrix is below ε. Base SVDs are cached on disk by tensor content."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--base",
        required=True,
        metavar="NAME|PATH",
        help="the pre-trained weights: a registry name (minilm, stories260K, llama-7b...), an HF directory, "
        "a hub id in the local HF cache, or a llama2.c .bin. Example: --base minilm",
    )
    p.add_argument(
        "--tuned",
        metavar="PATH",
        help="the fine-tuned weights: an HF directory or checkpoint file, a lowrank_lab.training run "
        "directory (its merged/ is read), or an adapter directory (same as --adapter). "
        "Example: --tuned runs/lora-r8",
    )
    p.add_argument(
        "--adapter",
        metavar="PATH",
        help="an adapter merged onto --base (or onto --tuned when both are given): a PEFT LoRA directory "
        "(adapter_config.json + adapter_model.safetensors; ΔW = lora_alpha/r · B·A) or a lowrank_lab one "
        "(lowrank_adapter.json + lowrank_adapter.safetensors). Example: --adapter runs/lora-r8/peft",
    )
    p.add_argument(
        "--epsilon",
        type=unit_interval("--epsilon", "|cos| lies in [0, 1]"),
        default=DEFAULT_EPSILON,
        help=f"a tuned vector whose best |cos| is below ε is an intruder (default {DEFAULT_EPSILON}, the "
        "paper's and PEFT's). Example: --epsilon 0.4",
    )
    p.add_argument(
        "--top-k",
        type=positive(int),
        default=DEFAULT_TOP_K,
        help=f"tuned singular vectors examined per matrix (default {DEFAULT_TOP_K}, the paper's and PEFT's). "
        "Example: --top-k 20",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also tabulate the count for ε = 0.1, 0.2, ..., 0.9 (summary.md, sweep.csv); free: it reuses "
        "the similarities",
    )
    p.add_argument(
        "--side",
        choices=("left", "right", "both"),
        default="left",
        help="left singular vectors (U, the paper's definition; default), right ones (rows of Vᵀ), or both",
    )
    p.add_argument(
        "--targets",
        metavar="MODULES",
        help="comma-separated module types, or all-linear (default: every target of the family). "
        "Example: --targets query,value  or  --targets q_proj,v_proj",
    )
    p.add_argument("--layers", metavar="SPEC", help="layers to analyse, e.g. 0-3,7 (default all)")
    p.add_argument(
        "--experts",
        metavar="SPEC",
        help="mixture-of-experts models: all (default; each expert is one matrix, its index in the expert "
        "column), none, or indices such as 0-3",
    )
    p.add_argument(
        "--split-fused",
        action="store_true",
        help="also compare the parts of fused projections (Phi-3 qkv_proj as q, k, v; gate_up_proj as "
        "gate, up)",
    )
    p.add_argument(
        "--out", default="intruders_out", metavar="DIR", help="output directory (default intruders_out)"
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where base SVDs are cached (default $LOWRANK_LAB_CACHE/svd or ~/.cache/lowrank_lab/svd). "
        "Example: --cache-dir /scratch/svd",
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the base-SVD cache")
    p.add_argument(
        "--tuned-svd",
        choices=("full", "randomized"),
        default="full",
        help="tuned top-k from the full SVD (default: the definition) or a randomized SVD "
        "(Halko et al. 2011; sketch k+1+max(40, 2k), 12 power iterations) whose similarities carry "
        "error bounds: a matrix where a bound straddles ε is redone with the full SVD, so the counts "
        "at --epsilon equal the full SVD's",
    )
    p.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="seed of the randomized SVD's test matrix, 0 to 2**63-1 (default 0)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where SVDs run: cpu (default), cuda, or auto. Example: --device cuda",
    )
    p.add_argument(
        "--no-figures",
        action="store_true",
        help="skip the PNG figures (they take ~1-3 s; the CSV and summary hold the same numbers)",
    )
    p.add_argument(
        "--threads",
        type=positive(int),
        metavar="N",
        help="torch intra-op threads (default: torch's choice). On a shared machine --threads 1 avoids "
        "oversubscription, which can make SVDs 10-20x slower",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in --out/intruders.csv and compute only the missing matrices",
    )
    p.add_argument(
        "--mitigate",
        metavar="LAMBDAS",
        help="intruder mitigation (Shuttleworth et al. 2024; PEFT 0.22 reduce_intruder_dimension) at each "
        "lambda in [0, 1], a comma list: the intruder components of W + dW are scaled by lambda and the "
        "update is re-factored at the adapter's rank (--top-k and --epsilon detect them; PEFT's defaults "
        "10 and 0.5). Writes a PEFT adapter per lambda; a fine-tuning run (--tuned runs/NAME) is also "
        "scored at each lambda (task metric, forgetting). Example: --mitigate 0,0.25,0.5,0.75",
    )
    p.add_argument(
        "--update-spectra",
        action="store_true",
        help="also write update_spectra.csv: the spectrum of each adapter update dW and of W + dW "
        "(stable rank, alpha, ... as analyze's spectra.csv), as WeightWatcher's PEFT mode analyses them",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="task data for --mitigate's scores (GLUE layout, with stsb for forgetting; default "
        "$LOWRANK_LAB_SHARED_DATA or ../shared/data)",
    )
    p.add_argument(
        "--no-eval",
        action="store_true",
        help="with --mitigate, write the mitigated adapters and tables without scoring a run",
    )
    p.add_argument(
        "--retry-skipped",
        action="store_true",
        help="with --resume, compute again the matrices listed in skipped.csv (NaN/Inf weights, ...); "
        "by default a resumed run leaves them skipped",
    )
    return p


def _check_resume(out: Path, args, columns, expected_k: dict[str, int], sides: tuple[str, ...]) -> None:
    """Refuse to mix rows of other settings, other weights or other matrices in one CSV."""
    import io
    import json

    import pandas as pd

    from lowrank_lab.utils.files import read_text_nofollow
    from lowrank_lab.utils.tables import complete_rows

    csv = out / "intruders.csv"
    prev = out / "run.json"
    if prev.exists():
        try:
            meta = json.loads(read_text_nofollow(prev))
        except json.JSONDecodeError:
            meta = {}
        for key in ("base", "tuned", "adapter"):
            if key in meta and meta[key] != getattr(args, key):
                raise ValueError(
                    f"cannot resume {out}: it was made with --{key} {meta[key]!r}, "
                    f"not {getattr(args, key)!r}; use a new --out"
                )
    if not csv.exists() or csv.stat().st_size == 0:
        return
    text = read_text_nofollow(csv)
    text = text if text.endswith("\n") else text[: text.rfind("\n") + 1]  # a torn last row is redone
    complete_rows(text, path=csv)  # a row that cannot be parsed stops here, named by its line
    try:
        old = pd.read_csv(io.StringIO(text))
    except Exception as exc:  # noqa: BLE001 - a damaged file
        raise ValueError(f"cannot resume from {csv}: {exc}; use a new --out") from None
    if list(old.columns) != list(columns):
        raise ValueError(f"cannot resume {csv}: its columns differ from this version's; use a new --out")
    if old.empty:
        return
    method = old["tuned_svd"].astype(str).str.replace("-fallback", "", regex=False)
    for flag, have, want in (
        ("--epsilon", set(old["epsilon"]), args.epsilon),
        ("--tuned-svd", set(method), args.tuned_svd),
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
    other_side = sorted(set(old.side) - set(sides))
    if other_side:
        raise ValueError(
            f"cannot resume {csv}: it holds {other_side[0]} rows but --side is {args.side}; use a new --out"
        )
    bad_k = old[old.top_k != old.tensor.map(expected_k)]
    if not bad_k.empty:
        row = bad_k.iloc[0]
        raise ValueError(
            f"cannot resume {csv}: it was made with --top-k {row.top_k}, not {args.top_k}; use a new --out"
        )


def _pick_best(pm):
    """The (tensor, side) with most intruders; ties broken by the lowest best-match similarity."""
    if pm.empty:
        return None
    top = pm.sort_values(["count", "min_similarity"], ascending=[False, True]).iloc[0]
    return str(top.tensor), str(top.side)


def main(argv: Sequence[str] | None = None) -> int:
    """The command: ``argv`` (default ``sys.argv[1:]``) -> exit status (0, 2 for user errors, 130)."""
    args = build_parser().parse_args(argv)
    return guarded_main(
        PROG,
        lambda: _report(args, run(args)),
        interrupted=f"the rows written so far are in {args.out}/intruders.csv; rerun with --resume",
    )


def _report(args: argparse.Namespace, result: dict) -> int:
    if "rank" in result:  # a rank other than 0 of a torchrun job: rank 0 reports
        return 0
    counts = ", ".join(f"{s}: {n}" for s, n in result["intruders"].items())
    print(f"{result['matrices']} matrices, intruders at ε={args.epsilon} ({counts}); wrote {args.out}/")
    from lowrank_lab.utils.sweep import warn_skipped

    warn_skipped(PROG, Path(args.out), result["skipped_new"], result["skipped_examples"], verb="compared")
    return 0


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


def run(args: argparse.Namespace) -> dict:
    import pandas as pd

    from lowrank_lab.analysis import intruder_tables as tables
    from lowrank_lab.analysis import intruders as ix
    from lowrank_lab.analysis.figures import plot_count_vs_epsilon, plot_similarity_matrix
    from lowrank_lab.linalg.policy import resolve_device
    from lowrank_lab.utils.distributed import init_from_env
    from lowrank_lab.utils.files import atomic_path, atomic_write_text, ensure_writable_dir
    from lowrank_lab.utils.provenance import run_metadata, write_run_json
    from lowrank_lab.utils.sweep import Sweep, Table

    t_start = time.perf_counter()
    if args.tuned is None and args.adapter is None:
        raise ValueError("give the fine-tuned weights: --tuned PATH, or --adapter PATH (merged onto --base)")
    if args.retry_skipped and not args.resume:
        raise ValueError("--retry-skipped only makes sense with --resume (a fresh run computes everything)")
    lambdas = _mitigation_options(args)
    device = resolve_device(args.device)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    ctx = init_from_env(device)  # a process group under torchrun, else a one-process context
    device = ctx.device(device)
    if ctx.enabled and (lambdas or getattr(args, "update_spectra", False)):
        raise ValueError("--mitigate and --update-spectra run in one process; start them without torchrun")
    sides = ix.parse_side(args.side)
    # One rank probes the directories (the others use them once rank 0 holds the lock).
    out = ensure_writable_dir(args.out, option="--out") if ctx.is_main else Path(args.out)
    cache = None
    if not args.no_cache:
        cache_dir = Path(args.cache_dir) if args.cache_dir else ix.default_cache_dir()
        if ctx.is_main:
            ensure_writable_dir(cache_dir, option="--cache-dir")
        cache = ix.SVDCache(cache_dir)
    meta = run_metadata(
        seed=args.seed,
        device=device,
        extra={"base": args.base, "tuned": args.tuned, "adapter": args.adapter, "world_size": ctx.world_size},
    )

    tuned, pairs = _open_pairs(args, say=ctx.is_main)
    base_all = tuned.base  # the base in the tuned weights' layout (llama2.c may be seen as HF Llama)

    k_of = {p.base.tensor: min(args.top_k, *p.base.shape) for p in pairs}
    csv_path = out / "intruders.csv"
    kw = dict(
        top_k=args.top_k,
        epsilon=args.epsilon,
        side=sides,
        cache=cache,
        tuned_svd=args.tuned_svd,
        generator=args.seed,
        keep_matrix=True,
    )
    sweep = Sweep(
        out,
        {
            "intruders": Table(csv_path, tables.ROW_COLUMNS, tables.ROW_KEY),
            "skipped": Table(out / "skipped.csv", SKIPPED_COLUMNS, ("tensor",)),
        },
        order=_row_order(pairs, sides),
        ctx=ctx,
        resume=args.resume,
        command=meta["command"] or PROG,
        retry_tables=("skipped",) if args.retry_skipped else (),
        check_resume=lambda: _check_resume(out, args, tables.ROW_COLUMNS, k_of, sides),
    )
    with sweep:
        work = PairWork(base_all, tuned, sweep, sides=sides, k_of=k_of, device=device, kw=kw)
        sweep.run(
            pairs, work, finished=work.finished, on_skip=work.skip_rows, desc="intruders",
            label=lambda p: p.base.tensor,
            cost=lambda p: pair_cost(p.base.shape, k_of[p.base.tensor], args.tuned_svd, cache=cache),
        )
        if ctx.enabled and work.best is not None and not args.no_figures:
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
            ctx.shutdown()
            return {"rank": ctx.rank}
        if cache is not None:
            cache.hits, cache.misses = hits, misses
        base_seconds, tuned_seconds = base_us / 1e6, tuned_us / 1e6
        best = None if ctx.enabled else work.best
        drawn = sweep.parts_dir if ctx.enabled else None

        df = pd.read_csv(csv_path)
        pm = tables.per_matrix(df)
        totals = tables.module_totals(df)
        sweep_df = tables.sweep_table(df)
        skipped = pd.read_csv(out / "skipped.csv")
        figures = []
        pick = _pick_best(pm)
        if not args.no_figures and not df.empty:
            title = f"{args.base} → {tuned.description.get('tuned', args.tuned)}"
            figures.append(plot_count_vs_epsilon(sweep_df, out / "count_vs_epsilon.png", title=title))
        if pick is not None and not args.no_figures:
            figures.append(_similarity_figure(pick, out, drawn, best, pairs, tuned, device=device, kw=kw))
        if drawn is not None and drawn.is_dir():
            for f in drawn.glob("similarity_*.png"):
                f.unlink()

        text = tables.summary_markdown(
            totals=totals, sweep=sweep_df, per_matrix=pm, skipped=skipped, base=args.base,
            tuned=tuned.description.get("tuned", args.tuned), sides=sides, top_k=args.top_k,
            epsilon=args.epsilon, tuned_svd=args.tuned_svd, command=meta["command"],
            cache=None if cache is None else (cache.directory, cache.hits, cache.misses),
            pick=pick, figures=[f.name for f in figures], with_sweep=args.sweep,
        )
        if args.sweep:
            with atomic_path(out / "sweep.csv") as tmp:
                sweep_df[sweep_df.module != "all"].to_csv(tmp, index=False)
        atomic_write_text(out / "summary.md", text)
        extra_outputs = _update_and_mitigate(args, tuned, pairs, out, lambdas, cache=cache, device=device)

        result = {
            "matrices": int(pm.tensor.nunique()),
            "computed": computed,
            "skipped": int(len(skipped)),
            "skipped_new": counts["skipped_items"],
            "skipped_examples": list(sweep.skipped[:1]),
            "intruders": {s: int(pm[pm.side == s]["count"].sum()) for s in sides},
            "cache": None
            if cache is None
            else {"dir": str(cache.directory), "hits": cache.hits, "misses": cache.misses},
            "base_svd_seconds": round(base_seconds, 4),
            "tuned_svd_seconds": round(tuned_seconds, 4),
            "tuned_svd": args.tuned_svd,
            "epsilon": args.epsilon,
            "top_k": args.top_k,
            "side": args.side,
            "targets": args.targets,
            "layers": args.layers,
            "tuned_weights": tuned.description,
            "outputs": [
                "intruders.csv",
                "skipped.csv",
                "summary.md",
                *([] if not args.sweep else ["sweep.csv"]),
                *[f.name for f in figures],
                *extra_outputs,
            ],
        }
        meta.update(result)
        write_run_json(out / "run.json", meta, time.perf_counter() - t_start)
    ctx.shutdown()
    return result


def _open_pairs(args: argparse.Namespace, *, say: bool) -> tuple[TunedWeights, list[MatrixPair]]:
    """The tuned weights (with their base in the same layout) and the (base, tuned) matrix pairs
    that ``--targets``/``--layers`` select. Headers only: every mismatch between the two checkpoints
    is reported before the first SVD. ``say``: print the sources' notes and warnings (rank 0)."""
    from lowrank_lab.analysis.tuned import open_tuned, pair_targets
    from lowrank_lab.weights import open_source

    source_options = {"experts": args.experts, "split_fused": args.split_fused}
    opened = open_source(args.base, **source_options)
    if say:
        for note in getattr(opened, "notes", []):  # e.g. generic discovery of a model type without a table
            print(f"{PROG}: note: {note}", file=sys.stderr)
    tuned = open_tuned(
        args.tuned, base=args.base, base_source=opened, adapter=args.adapter, source_options=source_options
    )
    pairs = pair_targets(
        tuned.base.targets(),
        tuned.targets(),
        base_name=f"base {args.base!r}",
        tuned_name=f"tuned {tuned.description.get('tuned', args.tuned)!r}",
        base_family=tuned.base.family,
        tuned_family=tuned.family,
    )
    if args.targets is not None or args.layers is not None:
        chosen = open_source(args.base, targets=args.targets, layers=args.layers, **source_options).targets()
        keep = {(i.layer, i.module, i.expert) for i in chosen}
        pairs = [p for p in pairs if (p.base.layer, p.base.module, getattr(p.base, "expert", None)) in keep]
    if not pairs:
        raise ValueError(
            f"no target matrices selected in {args.base!r} (--targets {args.targets}, --layers {args.layers})"
        )
    if say and "warning" in tuned.description:
        print(f"warning: {tuned.description['warning']}", file=sys.stderr)
    return tuned, pairs


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


def _mitigation_options(args: argparse.Namespace) -> list[float]:
    """The λ of --mitigate (checked: one line naming a λ outside [0, 1]); [] without it."""
    if getattr(args, "mitigate", None) is None:
        if getattr(args, "no_eval", False):
            raise ValueError("--no-eval only makes sense with --mitigate")
        return []
    from lowrank_lab.analysis.mitigation import parse_lambdas

    return parse_lambdas(args.mitigate)


def _run_json(tuned) -> tuple[Path | None, dict | None]:
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


def _update_and_mitigate(args, tuned, pairs, out: Path, lambdas, *, cache, device) -> list[str]:
    """--update-spectra and --mitigate: their files in ``out``; returns their names."""
    if not lambdas and not getattr(args, "update_spectra", False):
        return []
    run_dir, run_json = _run_json(tuned)
    written: list[str] = []
    if args.update_spectra:
        written += _write_update_spectra(tuned, pairs, out, run_json, device=device)
    if lambdas:
        written += _write_mitigation(args, tuned, pairs, out, lambdas, run_dir, run_json, cache=cache,
                                     device=device)
    return written


def _write_update_spectra(tuned, pairs, out: Path, run_json, *, device) -> list[str]:
    import pandas as pd

    from lowrank_lab.analysis.mitigation import iter_updates
    from lowrank_lab.analysis.update_spectra import UPDATE_SPECTRA_COLUMNS, update_spectra_rows
    from lowrank_lab.utils.files import write_frame

    rows = []
    for u in iter_updates(tuned, pairs, run_json=run_json, need_rank=False):
        W0, delta = u.W0.to(device), u.delta.to(device)
        rows += update_spectra_rows(u.pair.base, W0, delta, rank=u.rank, scaling=u.scaling, factors=u.factors)
    write_frame(pd.DataFrame(rows, columns=UPDATE_SPECTRA_COLUMNS), out / "update_spectra.csv")
    return ["update_spectra.csv"]


def _write_mitigation(
    args, tuned, pairs, out: Path, lambdas, run_dir, run_json, *, cache, device
) -> list[str]:
    """Mitigate every adapted matrix at each λ, write the adapters and tables, score a run."""
    import pandas as pd

    from lowrank_lab.analysis import intruder_tables as tables
    from lowrank_lab.analysis import mitigation as mg
    from lowrank_lab.analysis.intruders import base_bases
    from lowrank_lab.utils.files import write_frame

    lams = mg.lambdas_with_reference(lambdas)
    peft_config = None
    if tuned.description.get("adapter_format") == "peft":
        from lowrank_lab.adapters.io import read_peft_lora

        peft_config = read_peft_lora(tuned.description["adapter"])[1]
    factors = {lam: {} for lam in lams if lam != 1.0}
    weights = {lam: {} for lam in lams if lam != 1.0}  # tensor -> mitigated weight, changed ones only
    matrix_rows, rank, scaling = [], None, 1.0
    for u in mg.iter_updates(tuned, pairs, run_json=run_json):
        W0, delta = u.W0.to(device), u.delta.to(device)
        base, _ = base_bases(W0, ("left",), cache=cache, name=u.pair.base.tensor)
        rank, scaling = u.rank, u.scaling
        for lam in lams:
            m = mg.mitigate_update(
                W0, delta, rank=u.rank, scaling=u.scaling, lam=lam, top_k=args.top_k, epsilon=args.epsilon,
                factors=u.factors, base=base, name=u.pair.base.tensor,
            )
            info = u.pair.base
            matrix_rows.append({
                "lambda": lam, "tensor": info.tensor, "layer": "" if info.layer is None else int(info.layer),
                "module": info.module, "rows": int(W0.shape[0]), "cols": int(W0.shape[1]),
                "adapter_rank": u.rank, "scaling": u.scaling, "intruders": m.count,
                "intruder_ranks": " ".join(map(str, m.intruder_ranks)), "changed": int(m.changed),
                "delta_fro": float(delta.float().norm()), "mitigated_delta_fro": float(m.delta().norm()),
            })
            if lam == 1.0:
                continue
            factors[lam][u.module] = (m.B, m.A)
            if m.changed:
                weights[lam][u.pair.tuned.tensor] = (W0.float() + m.delta().to(W0.device)).cpu()
    if rank is None:
        raise ValueError("--mitigate: no adapted matrix among the selected targets")
    written = ["mitigation_matrices.csv", "mitigation.csv"]
    frame_m = pd.DataFrame(matrix_rows, columns=tables.MITIGATION_MATRIX_COLUMNS)
    write_frame(frame_m, out / "mitigation_matrices.csv")
    for lam, f in factors.items():
        where = out / "mitigated" / f"lambda-{lam:g}"
        mg.write_peft_adapter(where, f, rank=rank, scaling=scaling, config=peft_config)
    cfg = (run_json or {}).get("config") or {}
    evaluator = None
    if run_dir is not None and run_json is not None and not args.no_eval:
        from lowrank_lab.training.tasks import default_data_dir

        evaluator = mg.RunEvaluator(run_dir, data_dir=args.data_dir or default_data_dir(), device=device)
    rows, reference = [], None
    for lam in lams:
        per = frame_m[frame_m["lambda"] == lam]
        row = {
            "run": run_dir.name if run_dir is not None else str(tuned.description.get("tuned", args.tuned)),
            "method": cfg.get("method", ""), "rank": rank, "seed": cfg.get("seed", ""),
            "task": cfg.get("task", ""), "metric": "", "lambda": lam, "top_k": args.top_k,
            "epsilon": args.epsilon, "matrices": len(per), "mitigated_matrices": int(per["changed"].sum()),
            "intruders": int(per["intruders"].sum()),
            "adapter": "" if lam == 1.0 else f"mitigated/lambda-{lam:g}",
        }
        if evaluator is not None:
            if lam == 1.0 or not weights[lam]:  # nothing mitigated: the tuned model's scores
                reference = scores = reference or evaluator.measure()
            else:
                evaluator.set_weights(weights[lam])
                scores = evaluator.measure()
                evaluator.restore()
            row.update(scores, metric=evaluator.spec.metric, recorded_metric=evaluator.record.final_metric,
                       base_spearman=evaluator.base_spearman)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=tables.MITIGATION_COLUMNS)
    write_frame(frame, out / "mitigation.csv")
    if evaluator is not None and not args.no_figures:
        tables.plot_mitigation_tradeoff(frame, out / "mitigation_tradeoff.png",
                                        title=f"{frame['run'].iloc[0]}: intruder mitigation over λ")
        written.append("mitigation_tradeoff.png")
    written += [f"mitigated/lambda-{lam:g}" for lam in factors]
    return written


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


def _row_order(pairs, sides):
    """Sort key of a single-process run's rows: matrix (model) order, then side, then rank 1..k."""
    t_idx = {p.base.tensor: i for i, p in enumerate(pairs)}
    s_idx = {s: i for i, s in enumerate(sides)}

    def order(df):
        cols = {"_t": df["tensor"].map(t_idx)}
        if "side" in df:  # intruders.csv; skipped.csv has one row per matrix
            cols.update(_s=df["side"].map(s_idx), _r=df["rank"].astype(int))
        keyed = df.assign(**cols)
        return keyed.sort_values(list(cols), kind="stable").drop(columns=list(cols))

    return order


if __name__ == "__main__":
    sys.exit(main())
