"""Peak memory of iterating every target matrix of a sharded safetensors checkpoint.

Issue 3's bound: iterating all target matrices keeps peak RSS below ``3 × largest tensor + 500 MB``.
This script writes a sharded safetensors checkpoint with llama-7b shapes and random weights
(``--layers 2`` by default: every layer has the same shapes and matrices are read one at a time,
so two layers show the bound as well as 32) to a temporary directory, then measures, each in a fresh
subprocess so that its peak RSS (``VmHWM``) is its own:

* ours: ``for wm in open_source(dir)`` in the stored dtype, and again with ``dtype="float32"``
  (what the analyses compute in);
* peers, same run: ``transformers.AutoModelForCausalLM.from_pretrained(dir)`` then a loop over the
  same matrices (the usual way), and ``safetensors.torch.load_file`` of each shard in turn.

The checkpoint is written by a streaming safetensors writer (header first, then one tensor at a
time), so writing it needs one tensor of memory, not one shard.
Writes ``reports/benchmarks/weights_memory.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lowrank_lab.weights import ModelSpec, get_spec

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "reports" / "benchmarks" / "weights_memory.md"
MiB = 2**20
_ST_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# -- checkpoint ----------------------------------------------------------------------------------
def checkpoint_tensors(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of a ``LlamaForCausalLM`` with ``spec``'s shapes, in ``state_dict`` order."""
    h, V = spec.hidden_size, spec.vocab_size
    shapes = spec.target_shapes()
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (V, h))]
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        for m in spec.modules:
            out.append((spec.hf_tensor_name(layer, m), shapes[m]))
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    out.append(("model.norm.weight", (h,)))
    if not spec.tied_embeddings:
        out.append(("lm_head.weight", (V, h)))
    return out


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


def write_checkpoint(
    directory: Path, spec: ModelSpec, dtype: torch.dtype, max_shard_bytes: int, seed: int = 0
) -> dict:
    """Shards, index and config.json; random N(0, 0.02²) weights, one tensor in memory at a time."""
    tensors = checkpoint_tensors(spec)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:  # greedy packing in order, as transformers' save_pretrained shards
        nb = _nbytes(shape, dtype)
        if shards[-1] and size + nb > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nb
    g = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in shard:
            nb = _nbytes(shape, dtype)
            header[name] = {
                "dtype": _ST_DTYPE[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nb],
            }
            offset += nb
            weight_map[name] = file
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # safetensors aligns the data start to 8 bytes
        with open(directory / file, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, shape in shard:
                t = (
                    torch.ones(shape)
                    if name.endswith("norm.weight")
                    else torch.randn(shape, generator=g) * 0.02
                )
                f.write(t.to(dtype).contiguous().view(torch.uint8).numpy().tobytes())
                del t
        total += offset
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    cfg = spec.hf_config_dict()
    cfg["torch_dtype"] = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[
        dtype
    ]
    (directory / "config.json").write_text(json.dumps(cfg, indent=1))
    largest = max(tensors, key=lambda t: _nbytes(t[1], dtype))
    shapes = spec.target_shapes()
    largest_target = max(shapes.values(), key=lambda s: s[0] * s[1])
    return {
        "shards": len(shards),
        "bytes": total,
        "tensors": len(tensors),
        "largest_name": largest[0],
        "largest_bytes": _nbytes(largest[1], dtype),
        "largest_target_shape": largest_target,
        "largest_target_bytes": _nbytes(largest_target, dtype),
    }


# -- children: each measurement in its own interpreter ----------------------------------------------
def _status(field: str) -> int:
    """``VmRSS``/``VmHWM`` of this process in bytes. ``VmHWM`` is the high-water mark of this process's
    own address space; ``ru_maxrss`` is not usable here, because Linux carries the parent's peak over
    ``exec`` into the child's ``ru_maxrss``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(mode: str, directory: str) -> None:
    import torch  # noqa: F401  (imports count in the baseline, not in the loop)

    if mode.startswith("ours"):
        from lowrank_lab.weights import open_source
    elif mode == "transformers":
        import transformers
    else:
        from safetensors.torch import load_file
    baseline = _status("VmRSS")
    peak_base = _status("VmHWM")
    t0 = time.perf_counter()
    n, checksum = 0, 0.0
    if mode.startswith("ours"):
        src = open_source(directory, dtype="float32" if mode == "ours-fp32" else None)
        for wm in src:
            checksum += float(wm.weight.sum())  # touch every entry, as an analysis does
            n += 1
            del wm
    elif mode == "transformers":
        from lowrank_lab.weights import canonical_module

        model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype="auto")
        for name, p in model.named_parameters():
            if canonical_module(name, "llama") is not None:
                checksum += float(p.detach().sum())
                n += 1
    else:  # one shard at a time, whole shard in memory
        from lowrank_lab.weights import canonical_module

        for shard in sorted(Path(directory).glob("model-*.safetensors")):
            state = load_file(str(shard))
            for name, t in state.items():
                if canonical_module(name, "llama") is not None:
                    checksum += float(t.sum())
                    n += 1
            del state
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    print(
        json.dumps(
            {
                "mode": mode,
                "matrices": n,
                "seconds": seconds,
                "baseline": baseline,
                "peak_before_loop": peak_base,
                "peak": peak,
                "checksum": checksum,
            }
        )
    )


def measure(mode: str, directory: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--dir", str(directory)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Peak RSS of iterating every target matrix of a sharded safetensors checkpoint with "
        "llama-7b shapes, against issue 3's bound (3 x largest tensor + 500 MB) and two peers.",
        epilog="examples:\n"
        "  python benchmarks/weights_memory.py                 # llama-7b shapes, 2 layers, bf16 (1.3 GB)\n"
        "  python benchmarks/weights_memory.py --small         # shapes / 8, a few seconds\n"
        "  python benchmarks/weights_memory.py --dtype fp32 --layers 3 --workdir /data/tmp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="llama-7b",
        help="registry model whose shapes to use (default llama-7b); "
        "llama/mistral families only. Example: --model mistral-7b",
    )
    p.add_argument(
        "--layers",
        type=int,
        default=2,
        help="layers written (default 2: enough to show the bound, "
        "since matrices are read one at a time). Example: --layers 4",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(_DTYPES),
        default="bf16",
        help="stored dtype (default bf16, as released Llama checkpoints). Example: --dtype fp32",
    )
    p.add_argument(
        "--max-shard-mb",
        type=int,
        default=400,
        help="shard size limit in MiB (default 400, giving 4 shards at the default size). "
        "Example: --max-shard-mb 1000",
    )
    p.add_argument("--small", action="store_true", help="quick check: hidden/intermediate/vocab divided by 8")
    p.add_argument("--no-peer", action="store_true", help="skip the transformers and load_file peers")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the temporary checkpoint goes "
        "(default: the system temp dir). Example: --workdir /mnt/scratch",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown report (default {DEFAULT_OUT})")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.dir)
        return 0

    spec = get_spec(args.model)
    if spec.family not in ("llama", "mistral"):
        p.error(
            f"--model {args.model}: this benchmark writes Llama-layout checkpoints; use a llama/mistral model"
        )
    spec = spec.with_layers(args.layers)
    if args.small:
        spec = dataclasses.replace(
            spec,
            name=spec.name + "/8",
            hidden_size=spec.hidden_size // 8,
            intermediate_size=spec.intermediate_size // 8,
            vocab_size=spec.vocab_size // 8,
            num_heads=max(1, spec.num_heads // 8),
            num_kv_heads=max(1, spec.num_kv_heads // 8),
        )
    dtype = _DTYPES[args.dtype]
    shard_mb = args.max_shard_mb // 8 if args.small else args.max_shard_mb
    command = " ".join(["python", "benchmarks/weights_memory.py", *(sys.argv[1:] if argv is None else argv)])
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="weights_memory_", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        info = write_checkpoint(tmp, spec, dtype, shard_mb * MiB)
        write_seconds = time.perf_counter() - t0
        print(
            f"wrote {info['bytes'] / MiB:.0f} MiB in {info['shards']} shards to {tmp} "
            f"({write_seconds:.1f} s)",
            flush=True,
        )
        modes = ["ours", "ours-fp32"] + ([] if args.no_peer else ["transformers", "load_file"])
        results = {}
        for mode in modes:
            results[mode] = measure(mode, tmp)
            r = results[mode]
            print(
                f"{mode}: peak {r['peak'] / MiB:.0f} MiB, {r['matrices']} matrices, {r['seconds']:.1f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    n_targets = spec.num_layers * len(spec.modules)
    bound = 3 * info["largest_bytes"] + 500 * MiB
    strict = 3 * info["largest_target_bytes"] + 500 * MiB
    labels = {
        "ours": f"`open_source(dir)`, stored {args.dtype}",
        "ours-fp32": '`open_source(dir, dtype="float32")`',
        "transformers": "peer: `AutoModelForCausalLM.from_pretrained(dir)` + loop",
        "load_file": "peer: `safetensors.torch.load_file` shard by shard",
    }
    rows = []
    for mode, r in results.items():
        ok = "yes" if r["peak"] <= bound else "**no**"
        rows.append(
            f"| {labels[mode]} | {r['matrices']} | {r['peak'] / MiB:.0f} | {r['baseline'] / MiB:.0f} | "
            f"{(r['peak'] - r['baseline']) / MiB:.0f} | {ok} | {r['seconds']:.1f} |"
        )
    ours = results["ours"]

    def increase(r: dict) -> int:
        return max(1, r["peak"] - r["baseline"])

    ratio_lines = []
    for peer in ("transformers", "load_file"):
        if peer in results:
            ratio_lines.append(
                f"- ours / {peer}: peak RSS {ours['peak'] / results[peer]['peak']:.2f}, increase over the "
                f"post-import baseline {(ours['peak'] - ours['baseline']) / increase(results[peer]):.2f}"
            )
    tgt = info["largest_target_shape"]
    lines = [
        f"# Peak memory of iterating a sharded checkpoint: {spec.name} shapes, {spec.num_layers} layers, "
        f"{args.dtype}",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}  ",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), torch {torch.__version__}, Python "
        f"{platform.python_version()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        "(shared machine: times are upper bounds; memory is not affected)",
        "",
        f"Checkpoint (temporary, random N(0, 0.02²) weights): {info['tensors']} tensors, "
        f"{info['bytes'] / MiB:.0f} MiB "
        f"in {info['shards']} safetensors shards of ≤ {shard_mb} MiB with `model.safetensors.index.json`; "
        f"largest tensor `{info['largest_name']}` = {info['largest_bytes'] / MiB:.0f} MiB; "
        "largest target matrix "
        f"{tgt[0]}×{tgt[1]} = {info['largest_target_bytes'] / MiB:.0f} MiB; {n_targets} target matrices. "
        f"Written in {write_seconds:.1f} s.",
        "",
        f"Bound (issue 3): 3 × largest tensor + 500 MiB = **{bound / MiB:.0f} MiB**. "
        f"Stricter reading with the largest *target* matrix: {strict / MiB:.0f} MiB.",
        "",
        "| reader | matrices | peak RSS (MiB) | after imports (MiB) | increase (MiB) | within bound "
        "| seconds |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *ratio_lines,
        "",
        "Peak RSS is `VmHWM` of a fresh subprocess per reader (imports of torch, transformers and "
        "safetensors included, hence the baseline column); 'increase' is peak minus the RSS right after the "
        "imports. `open_source` opens each shard with `safe_open` for one tensor and closes it, so the "
        "memory "
        "map never holds more than the tensor being read.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ours["peak"] <= bound and results["ours-fp32"]["peak"] <= bound else 1


if __name__ == "__main__":
    sys.exit(main())
