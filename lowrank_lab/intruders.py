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
from pathlib import Path

from lowrank_lab.utils.cli import positive, sigterm_as_interrupt, unit_interval

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
  count_vs_epsilon.png, similarity_<tensor>.png (the matrix with most intruders)
  run.json        command, versions, device, git commit, cache hits, timings

Exit status 2 with a one-line message for bad input (no traceback).
"""


def build_parser() -> argparse.ArgumentParser:
    from lowrank_lab.analysis.intruders import DEFAULT_EPSILON, DEFAULT_TOP_K

    p = argparse.ArgumentParser(
        prog="python -m lowrank_lab.intruders",
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
    p.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD's test matrix (default 0)")
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
        type=int,
        metavar="N",
        help="torch intra-op threads (default: torch's choice). On a shared machine --threads 1 avoids "
        "oversubscription, which can make SVDs 10-20x slower",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in --out/intruders.csv and compute only the missing matrices",
    )
    return p


def _check_resume(out: Path, args, columns, expected_k: dict[str, int], sides: tuple[str, ...]) -> None:
    """Refuse to mix rows of other settings, other weights or other matrices in one CSV."""
    import io
    import json

    import pandas as pd

    csv = out / "intruders.csv"
    prev = out / "run.json"
    if prev.exists():
        meta = json.loads(prev.read_text())
        for key in ("base", "tuned", "adapter"):
            if key in meta and meta[key] != getattr(args, key):
                raise ValueError(
                    f"cannot resume {out}: it was made with --{key} {meta[key]!r}, "
                    f"not {getattr(args, key)!r}; use a new --out"
                )
    if not csv.exists() or csv.stat().st_size == 0:
        return
    text = csv.read_text()
    text = text if text.endswith("\n") else text[: text.rfind("\n") + 1]  # a torn last row is redone
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


def run(args: argparse.Namespace) -> dict:
    import pandas as pd
    from tqdm.auto import tqdm

    from lowrank_lab.analysis import intruders as ix
    from lowrank_lab.linalg.policy import resolve_device
    from lowrank_lab.utils.distributed import balanced_partition, init_from_env, part_path
    from lowrank_lab.utils.provenance import run_metadata, write_run_json
    from lowrank_lab.utils.tables import RowWriter, ensure_writable_dir, read_keys, to_markdown
    from lowrank_lab.weights import open_source

    t_start = time.perf_counter()
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.tuned is None and args.adapter is None:
        raise ValueError("give the fine-tuned weights: --tuned PATH, or --adapter PATH (merged onto --base)")
    device = resolve_device(args.device)
    ctx = init_from_env(device)  # a process group under torchrun, else a one-process context
    device = ctx.device(device)
    sides = ix.parse_side(args.side)
    # One rank probes the directories: ensure_writable_dir's fixed probe file races between ranks
    # (one rank's unlink removes the other's). The others use them after the barrier below.
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

    # Headers only so far: every mismatch is reported before the first SVD.
    source_options = {"experts": args.experts, "split_fused": args.split_fused}
    opened = open_source(args.base, **source_options)
    for note in getattr(opened, "notes", []):
        print(f"note: {note}", file=sys.stderr)
    tuned = ix.open_tuned(
        args.tuned, base=args.base, base_source=opened, adapter=args.adapter, source_options=source_options
    )
    base_all = tuned.base  # the base in the tuned weights' layout (llama2.c may be seen as HF Llama)
    pairs = ix.pair_targets(
        base_all.targets(),
        tuned.targets(),
        base_name=f"base {args.base!r}",
        tuned_name=f"tuned {tuned.description.get('tuned', args.tuned)!r}",
        base_family=base_all.family,
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
    if "warning" in tuned.description:
        print(f"warning: {tuned.description['warning']}", file=sys.stderr)

    k_of = {p.base.tensor: min(args.top_k, *p.base.shape) for p in pairs}
    csv_path = out / "intruders.csv"
    if ctx.is_main:
        # A resumed run first folds in the part files an interrupted distributed run left (so
        # they are checked and counted like any other rows); a fresh one removes them.
        _prepare_rows(csv_path, pairs, sides, resume=args.resume)
    ctx.barrier()  # every rank sees the same finished rows before anyone writes
    if args.resume:
        _check_resume(out, args, ix.ROW_COLUMNS, k_of, sides)

    kw = dict(
        top_k=args.top_k,
        epsilon=args.epsilon,
        side=sides,
        cache=cache,
        tuned_svd=args.tuned_svd,
        generator=args.seed,
        keep_matrix=True,
    )
    best = None  # ((count, -min similarity), pair, side, record) of the worst matrix seen in this run
    base_seconds = tuned_seconds = 0.0
    computed = 0
    if ctx.enabled:
        # Each rank appends to its own part file; the rows of earlier runs are read-only.
        finished = read_keys(csv_path, ix.ROW_KEY) if args.resume else set()
        part_path(csv_path, ctx.rank).parent.mkdir(exist_ok=True)
        writer = RowWriter(part_path(csv_path, ctx.rank), ix.ROW_COLUMNS, ix.ROW_KEY)
    else:
        finished = set()
        writer = RowWriter(csv_path, ix.ROW_COLUMNS, ix.ROW_KEY, resume=args.resume)

    def done(pair) -> bool:
        k = k_of[pair.base.tensor]
        return all(
            writer.done((pair.base.tensor, s, r)) or (pair.base.tensor, s, str(r)) in finished
            for s in sides
            for r in range(1, k + 1)
        )

    my_pairs = pairs
    if ctx.enabled:
        # Split only what is left, balanced by cost; each rank reads only its own tensors.
        todo = [p for p in pairs if not done(p)]
        costs = [pair_cost(p.base.shape, k_of[p.base.tensor], args.tuned_svd, cache=cache) for p in todo]
        my_pairs = [todo[j] for j in balanced_partition(costs, ctx.world_size)[ctx.rank]]

    try:
        desc = f"intruders [rank {ctx.rank}/{ctx.world_size}]" if ctx.enabled else "intruders"
        bar = tqdm(total=len(my_pairs), desc=desc, unit="matrix", disable=None, position=ctx.rank)
        bar.update(sum(done(p) for p in my_pairs))
        for pair, recs in ix.iter_records(base_all, tuned, my_pairs, skip=done, device=device, **kw):
            for side, rec in recs.items():
                for row in ix.record_rows(pair.base, rec):
                    if not writer.done(row):
                        writer.write(row)
                key = (rec.count, -float(rec.similarities.min()))
                if best is None or key > best[0]:
                    best = (key, pair, side, rec)
                base_seconds += rec.base_seconds
                tuned_seconds += rec.tuned_seconds
            computed += 1
            bar.update(1)
            bar.set_postfix_str(f"{pair.base.tensor.rsplit('.weight', 1)[0][-28:]}: {recs[sides[0]].count}")
        bar.close()
    finally:
        writer.close()

    ctx.barrier()  # every part file is complete
    # Counters of the whole run (seconds as microseconds: the all-reduce sums integers).
    hits, misses = (cache.hits, cache.misses) if cache is not None else (0, 0)
    computed, hits, misses, base_us, tuned_us = ctx.sum(
        [computed, hits, misses, round(base_seconds * 1e6), round(tuned_seconds * 1e6)]
    )
    if cache is not None:
        cache.hits, cache.misses = hits, misses
    base_seconds, tuned_seconds = base_us / 1e6, tuned_us / 1e6
    if ctx.enabled and best is not None and not args.no_figures:
        # The run's worst matrix is some rank's local worst: each rank draws its own, rank 0 keeps
        # the one the merged rows pick (no matrix is read twice).
        _, pair, side, rec = best
        safe = pair.base.tensor.removesuffix(".weight").replace("/", "_")
        ix.plot_similarity_matrix(
            rec, out / "parts" / f"similarity_{safe}.{side}.png", tensor=pair.base.tensor
        )
    ctx.barrier()  # every rank's figure is drawn
    if not ctx.is_main:
        ctx.shutdown()
        return {"rank": ctx.rank}
    drawn = None
    if ctx.enabled:
        _fold_parts(csv_path, pairs, sides)
        best = None
        drawn = out / "parts"

    df = pd.read_csv(out / "intruders.csv")
    pm = ix.per_matrix(df)
    totals = ix.module_totals(df)
    sweep = ix.sweep_table(df)
    figures = []
    pick = _pick_best(pm)
    if not args.no_figures:
        title = f"{args.base} → {tuned.description.get('tuned', args.tuned)}"
        figures.append(ix.plot_count_vs_epsilon(sweep, out / "count_vs_epsilon.png", title=title))
    if pick is not None and not args.no_figures:
        tensor, side = pick
        safe = tensor.removesuffix(".weight").replace("/", "_")
        other = None if drawn is None else drawn / f"similarity_{safe}.{side}.png"
        if other is not None and other.exists():  # drawn by the rank that computed it
            os.replace(other, out / f"similarity_{safe}.png")
            figures.append(out / f"similarity_{safe}.png")
        else:
            if best is not None and best[1].base.tensor == tensor and best[2] == side:
                rec = best[3]
            else:  # found in rows of an earlier run (--resume): recompute that one matrix
                pair = next(p for p in pairs if p.base.tensor == tensor)
                _, recs = next(
                    ix.iter_records(base_all, tuned, [pair], device=device, **{**kw, "side": (side,)})
                )
                rec = recs[side]
            figures.append(ix.plot_similarity_matrix(rec, out / f"similarity_{safe}.png", tensor=tensor))
    if drawn is not None:
        _remove_parts_dir(drawn)

    lines = [
        "# Intruder dimensions",
        "",
        f"- base: `{args.base}`",
        f"- tuned: `{tuned.description.get('tuned', args.tuned)}`",
        f"- definition: Shuttleworth et al. 2024 (arXiv 2410.21228) — a top-{args.top_k} {'/'.join(sides)} "
        f"singular vector of the tuned matrix whose best |cos| with all base singular vectors "
        f"is < ε = {args.epsilon}",
        f"- matrices: {pm.tensor.nunique()}, tuned SVD: {args.tuned_svd}, base SVD cache: "
        + (
            "off"
            if cache is None
            else f"`{cache.directory}` ({cache.hits} hits, {cache.misses} misses this run)"
        ),
        f"- command: `{meta['command']}`",
        "",
        f"## Totals per module type (ε = {args.epsilon})",
        "",
        to_markdown(totals),
    ]
    if args.sweep:
        wide = sweep.pivot_table(index="epsilon", columns=["side", "module"], values="count", sort=False)
        wide.columns = [m if len(sides) == 1 else f"{s}:{m}" for s, m in wide.columns]
        lines += ["## Count against ε", "", to_markdown(wide.reset_index())]
        sweep[sweep.module != "all"].to_csv(out / "sweep.csv", index=False)
    if pick is not None:
        see = f": see `{figures[-1].name}`" if figures else ""
        lines += ["## Matrix with most intruders", "", f"`{pick[0]}` ({pick[1]}){see}", ""]
    lines += [
        "## Files",
        "",
        "- `intruders.csv` (long format; columns in `python -m lowrank_lab.intruders --help`)",
    ]
    lines += [f"- `{f.name}`" for f in figures]
    if args.sweep:
        lines.append("- `sweep.csv`")
    (out / "summary.md").write_text("\n".join(lines) + "\n")

    result = {
        "matrices": int(pm.tensor.nunique()),
        "computed": computed,
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
            "summary.md",
            *([] if not args.sweep else ["sweep.csv"]),
            *[f.name for f in figures],
        ],
    }
    meta.update(result)
    write_run_json(out / "run.json", meta, time.perf_counter() - t_start)
    ctx.shutdown()
    return result


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
        keyed = df.assign(_t=df["tensor"].map(t_idx), _s=df["side"].map(s_idx), _r=df["rank"].astype(int))
        return keyed.sort_values(["_t", "_s", "_r"], kind="stable").drop(columns=["_t", "_s", "_r"])

    return order


def _fold_parts(csv_path: Path, pairs, sides) -> None:
    """Merge every rank's part file into intruders.csv in single-process row order, then remove them."""
    from lowrank_lab.analysis.intruders import ROW_KEY
    from lowrank_lab.utils.distributed import existing_parts, merge_csv_parts

    parts = existing_parts(csv_path)
    if not parts:
        return
    merge_csv_parts(csv_path, parts, order=_row_order(pairs, sides), key=ROW_KEY)
    for p in parts:
        p.unlink()


def _prepare_rows(csv_path: Path, pairs, sides, *, resume: bool) -> None:
    """Rank 0 before any rank starts: fold leftover parts into the CSV (``--resume``) or drop them."""
    from lowrank_lab.utils.distributed import existing_parts

    if resume:
        _fold_parts(csv_path, pairs, sides)
    else:
        for p in existing_parts(csv_path):
            p.unlink()
        csv_path.unlink(missing_ok=True)  # parts are merged into it: no rows of an earlier run
    _remove_parts_dir(csv_path.parent / "parts")


def _remove_parts_dir(folder: Path) -> None:
    """Drop the per-rank figures and the folder once no part file is left in it."""
    if not folder.exists():
        return
    for f in folder.glob("similarity_*.png"):
        f.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_as_interrupt():  # a scheduler's SIGTERM keeps the finished rows, as Ctrl-C does
            result = run(args)
    except KeyboardInterrupt:
        print(
            f"interrupted: the rows written so far are in {args.out}/intruders.csv; rerun with --resume",
            file=sys.stderr,
        )
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        msg = " ".join(str(exc).split())
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if "rank" in result:  # a rank other than 0 of a torchrun job: rank 0 reports
        return 0
    counts = ", ".join(f"{s}: {n}" for s, n in result["intruders"].items())
    print(f"{result['matrices']} matrices, intruders at ε={args.epsilon} ({counts}); wrote {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
