"""Does one 300-step SST-2 run of MiniLM (batch 16, sequence length 64) fit in 4 minutes on the CPU?

Issue 7's budget. For each method the benchmark builds the run exactly as
``python -m lowrank_lab.finetune`` does (same loader, head, adapter injection, optimizer and
batches: the first steps of seed 0's data order), times training steps (median of ``--measure``
steps after 2 warm-up steps, :func:`lowrank_lab.utils.timing.time_call`) and one evaluation pass
over the dev set, then projects a run:

    projected = model load + adapter init + 300 × step + (1 + 300 / eval_every) × eval pass + save merged

Wall times on the shared 2-core machine depend on what else runs; the same projection from this
process's CPU seconds bounds the wall time the run would take on an idle machine (compute-bound
work keeps at least one thread busy, so wall ≤ CPU seconds), and both are reported. The bound is
loose when both threads are busy (CPU seconds ≈ 2 × wall), so the projection is checked by
``--whole-run``: real 300-step runs (:func:`lowrank_lab.training.loop.train_run`, as the CLI runs
them: seed 0, evaluations, merged weights saved), timed from model load to the last file written.

The peer measured in the same process is Hugging Face PEFT's LoRA on the same model, rank, targets
and batches (``peft.get_peft_model``), so the ratio shows what our adapter layer costs against the
reference implementation. Medians of separate 20-step blocks swung from 0.91× to 1.21× between two
runs ten minutes apart, so the ratio is *paired*: both models are built, each round times one step
of each (the order alternating between rounds), and the report gives the median over rounds of
our step time over PEFT's with its distribution-free 95% interval
(:func:`lowrank_lab.utils.timing.median_ci`, as ``benchmarks/factorizations.py``).

Examples
--------
    python benchmarks/finetune_step.py            # full measurement (20 steps per method)
    python benchmarks/finetune_step.py --small    # quick check: 3 steps, 64 eval examples (scaled)
    python benchmarks/finetune_step.py --whole-run lora,full   # and time two real 300-step runs
"""

from __future__ import annotations

import os

# As python -m lowrank_lab.finetune does: passive OpenMP waiting (must precede torch's import).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from lowrank_lab.training.batching import Encoder, batch_order, eval_subset  # noqa: E402
from lowrank_lab.training.config import RunConfig  # noqa: E402
from lowrank_lab.training.loop import Trainer, evaluate, train_run  # noqa: E402
from lowrank_lab.training.models import head_parameters, load_model, load_tokenizer  # noqa: E402
from lowrank_lab.training.tasks import default_data_dir, get_task, load_examples  # noqa: E402
from lowrank_lab.utils.provenance import git_commit  # noqa: E402
from lowrank_lab.utils.tables import to_markdown  # noqa: E402
from lowrank_lab.utils.timing import Stopwatch, median_ci, time_call  # noqa: E402

BUDGET_SECONDS = 240.0  # issue 7: ≤ 4 minutes for one 300-step run
REPO = Path(__file__).resolve().parents[1]


def _trainer(cfg: RunConfig, spec, train, model: torch.nn.Module | None = None) -> Trainer:
    """The harness's own :class:`~lowrank_lab.training.loop.Trainer`, set up and started without
    the step-0 evaluation: its :meth:`~Trainer.step` is exactly what a run executes per step (the
    divergence checks, clipping, AdamW, schedule, RNG and memory bookkeeping). ``model`` (PEFT's)
    replaces building and injecting ours, so both are trained by the same step."""
    trainer = Trainer(cfg, spec, train, train, lambda: load_model("minilm", spec), model=model).setup()
    trainer.start(evaluate=False)
    return trainer


def _peft_lora(spec, rank: int, seed: int):
    import peft

    torch.manual_seed(seed)
    model = load_model("minilm", spec)
    targets = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    cfg = peft.LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=targets,
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )
    return peft.get_peft_model(model, cfg)


def _config(method: str, spec, args) -> RunConfig:
    """The run the CLI would make of ``method`` with the benchmark's settings (seed 0)."""
    return RunConfig(
        task=spec.name,
        method=method,
        rank=args.rank,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        eval_every=args.eval_every,
    )


def measure(method: str, spec, train, eval_, eval_idx, args, device) -> dict:
    cfg = _config("lora" if method == "peft-lora" else method, spec, args)
    with Stopwatch(device) as load_sw:
        if method == "peft-lora":
            trainer = _trainer(cfg, spec, train, _peft_lora(spec, args.rank, 0))
            init_s = float("nan")
        else:
            trainer = _trainer(cfg, spec, train)
            init_s = trainer.record.init_seconds
    model, step = trainer.model, trainer.step
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for _, p in head_parameters(model))
    step()
    step()  # warm-up: first calls allocate optimizer state and caches
    cpu0 = time.process_time()
    timing = time_call(step, device=device, repeats=args.measure, warmup=0)
    cpu_step = (time.process_time() - cpu0) / args.measure
    cpu0 = time.process_time()
    with Stopwatch(device) as ev_sw:
        evaluate(model, spec, eval_, eval_idx, batch_size=64, device=device)
    # --small times a subset: scale by tokens (eval batches are length-sorted, so padding is small)
    tokens = sum(eval_.length(i) for i in eval_idx)
    scale = sum(eval_.length(i) for i in range(len(eval_))) / tokens
    eval_full = ev_sw.seconds * scale
    eval_cpu = (time.process_time() - cpu0) * scale
    save_s = 0.0
    if method != "peft-lora":
        import tempfile

        from lowrank_lab.adapters import merge

        with tempfile.TemporaryDirectory() as tmp, Stopwatch(device) as sv:
            merge(model).save_pretrained(tmp)
        save_s = sv.seconds
    n_evals = 1 + (args.steps // args.eval_every if args.eval_every else 1)
    projected = load_sw.seconds + args.steps * timing.median + n_evals * eval_full + save_s
    # CPU seconds of the same work: what the run's wall time cannot exceed on an otherwise idle
    # machine (compute-bound work keeps at least one thread busy), whatever the current load.
    projected_cpu = load_sw.seconds + args.steps * cpu_step + n_evals * eval_cpu + save_s
    return {
        "method": method,
        "trainable params": trainable,
        "head params": head if method != "peft-lora" else "– (inside PEFT's wrapper)",
        "load + init s": load_sw.seconds,
        "adapter init s": init_s,
        "step s (median)": timing.median,
        "step s (min..max)": f"{min(timing.times):.3f}..{max(timing.times):.3f}",
        "step CPU s": cpu_step,
        "steps timed": len(timing.times),
        "eval pass s (872 dev)": eval_full,
        "eval pass CPU s": eval_cpu,
        "evals per run": n_evals,
        "save merged s": save_s,
        "projected 300-step run s (wall, at this load)": projected,
        "projected s from CPU time (idle bound)": projected_cpu,
        "≤ 240 s (wall / idle bound)": f"{'yes' if projected <= BUDGET_SECONDS else 'NO'} / "
        f"{'yes' if projected_cpu <= BUDGET_SECONDS else 'NO'}",
    }


def paired_lora_ratio(spec, train, args, device) -> dict:
    """Our LoRA step time over PEFT's, paired: one step of each per round, order alternating."""
    cfg = _config("lora", spec, args)
    steps = {
        "ours": _trainer(cfg, spec, train).step,
        "peft": _trainer(cfg, spec, train, _peft_lora(spec, args.rank, 0)).step,
    }
    for step in steps.values():
        step()
        step()  # warm-up, as measure()
    ratios = []
    for i in range(args.measure):
        times = {}
        for name in (("ours", "peft") if i % 2 == 0 else ("peft", "ours")):
            times[name] = time_call(steps[name], device=device, repeats=1, warmup=0).median
        ratios.append(times["ours"] / times["peft"])
    med, lo, hi = median_ci(ratios)
    return {"rounds": len(ratios), "median": med, "lo": lo, "hi": hi}


def whole_run(method: str, spec, train, eval_, args, device) -> dict:
    """One real run of ``args.steps`` steps, timed end to end (load, init, steps, evals, save)."""
    import tempfile

    cfg = _config(method, spec, args)
    cpu0, t0 = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rec = train_run(cfg, spec, train, eval_, lambda: load_model("minilm", spec), run_dir=tmp)
        wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "method": method,
        "steps": rec.steps_done,
        "status": rec.status,
        "run wall s (load to merged saved)": wall,
        "run CPU s": cpu,
        "train s": rec.train_seconds,
        "eval s": rec.eval_seconds,
        "s / step": rec.seconds_per_step,
        "final accuracy": rec.final_metric,
        f"≤ {BUDGET_SECONDS:.0f} s": "yes" if wall <= BUDGET_SECONDS else "NO",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Time one 300-step SST-2 fine-tuning run of MiniLM (lora and full; PEFT LoRA as the "
        "peer) against issue 7's 4-minute CPU budget; writes reports/benchmarks/finetune_step.md.",
        epilog="example: python benchmarks/finetune_step.py --small",
    )
    p.add_argument(
        "--small",
        action="store_true",
        help="quick check: 3 timed steps, 64 eval examples (scaled by token count)",
    )
    p.add_argument("--measure", type=int, default=20, help="training steps timed per method (default 20)")
    p.add_argument(
        "--methods", default="lora,full,peft-lora", help="methods to time (default lora,full,peft-lora)"
    )
    p.add_argument("--steps", type=int, default=300, help="run length projected (default 300)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per example (default 64)")
    p.add_argument(
        "--eval-every",
        type=int,
        default=100,
        help="eval interval of the projected run (default 100, as the CLI)",
    )
    p.add_argument("--rank", type=int, default=8, help="adapter rank (default 8)")
    p.add_argument(
        "--whole-run",
        default=None,
        metavar="METHODS",
        help="methods also trained for real, --steps steps each, timed end to end (default lora; "
        "none with --small; '' for none), e.g. --whole-run lora,full",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--data-dir", default=None, help="folder holding glue/sst2 (default ../shared/data)")
    p.add_argument(
        "--out",
        default=None,
        help="markdown report path (default reports/benchmarks/finetune_step.md; "
        "finetune_step-small.md with --small)",
    )
    args = p.parse_args(argv)
    if args.small:
        args.measure = 3
    device = torch.device("cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_task("sst2")
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    tok = load_tokenizer("minilm", spec)
    train = Encoder(spec, tok, args.max_length, load_examples(spec, data_dir, "train"))
    eval_ = Encoder(spec, tok, args.max_length, load_examples(spec, data_dir, "eval"))
    # tokenise the timed batches (seed 0's first steps, what every trainer takes) outside the timing
    train.prepare(batch_order(len(train), 2 * args.measure + 4, args.batch_size, seed=0).flatten().tolist())
    eval_idx = eval_subset(len(eval_), 64 if args.small else 0)
    load_before = os.getloadavg()
    rows = []
    t0 = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        print(f"timing {m} ...", file=sys.stderr)
        rows.append(measure(m, spec, train, eval_, eval_idx, args, device))
    paired = None
    if {"lora", "peft-lora"} <= set(methods):
        print("pairing lora and peft-lora steps ...", file=sys.stderr)
        paired = paired_lora_ratio(spec, train, args, device)
    whole = [m.strip() for m in (args.whole_run if args.whole_run is not None else
             ("" if args.small else "lora")).split(",") if m.strip()]
    runs = []
    for m in whole:
        print(f"a whole {args.steps}-step {m} run ...", file=sys.stderr)
        runs.append(whole_run(m, spec, train, eval_, args, device))
    total = time.perf_counter() - t0
    load_after = os.getloadavg()

    import pandas as pd

    df = pd.DataFrame(rows)
    by = {r["method"]: r for r in rows}
    ratios = []
    if paired is not None:
        ratios.append(
            f"- step time lowrank_lab LoRA / PEFT LoRA, paired: {paired['median']:.3f}× "
            f"[95% CI {paired['lo']:.3f}, {paired['hi']:.3f}] (median over {paired['rounds']} rounds of one "
            f"step each, order alternating; the separate medians above give "
            f"{by['lora']['step s (median)'] / by['peft-lora']['step s (median)']:.2f}×)"
        )
    if "lora" in by and "full" in by:
        ratios.append(
            f"- step time full fine-tuning / LoRA: "
            f"{by['full']['step s (median)'] / by['lora']['step s (median)']:.2f}×"
        )
    command = shlex.join(["python", "benchmarks/finetune_step.py", *(sys.argv[1:] if argv is None else argv)])
    text = "\n".join(
        [
            "# Fine-tuning step time: one 300-step SST-2 run of MiniLM on the CPU",
            "",
            f"- Command: `{command.strip()}`",
            f"- Date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}; commit {git_commit()}",
            f"- Machine: {os.cpu_count()} cores ({platform.machine()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
            "load average before/after "
            f"{load_before[0]:.1f}/{load_after[0]:.1f} (the machine is shared: a load above ~2 means other "
            "jobs took CPU time and every wall time here is inflated; 'step CPU s' is this process's CPU "
            "time per step, less sensitive to that)",
            f"- Setting: batch {args.batch_size}, max length {args.max_length} (dynamic padding), rank "
            f"{args.rank}, all six linear maps of each layer, eval every {args.eval_every} steps on the 872 "
            "dev examples" + (" (--small: 64 examples timed, scaled to 872)" if args.small else ""),
            f"- Budget: {BUDGET_SECONDS:.0f} s per run (issue 7); projected = load + init + {args.steps} × "
            "median step + evals × eval pass + save merged",
            f"- Benchmark wall time: {total:.1f} s",
            "",
            to_markdown(df, floatfmt=".3f"),
            *ratios,
            "",
        ]
        + (
            [
                f"## Whole runs: {args.steps} steps each, timed from model load to merged weights saved",
                "",
                to_markdown(pd.DataFrame(runs), floatfmt=".3f"),
                "",
            ]
            if runs
            else []
        )
    )
    name = "finetune_step-small.md" if args.small else "finetune_step.md"
    out = Path(args.out) if args.out else REPO / "reports" / "benchmarks" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
