"""The llama2.c tokenizer on GSM8K: our heap-ordered BPE merges against run.c's rescanning loop.

``Llama2cTokenizer.encode`` follows run.c's ``encode``: one token per UTF-8 code point, then merge
the adjacent pair whose concatenation is the best-scoring vocabulary entry until none merges. run.c
finds each merge by rescanning every pair, O(n^2) in the text's length; ``Llama2cTokenizer._merge``
keeps the candidate pairs in a heap, O(n log n). The peer here is that rescanning loop itself (the
one this package used until the sixth session), run on the same pre-merge tokens.

Texts: ``--texts`` questions and answers drawn at random (seed 0) from GSM8K's train and test files
(what ``finetune --task gsm8k`` tokenises at every start), tokenizer ``tok512.bin`` of stories260K.
Per text both merges run back to back, so machine noise hits both alike; the report gives the total
seconds of each, their ratio, and checks that every text gives the same tokens (it exits 1 if one
does not). Writes ``reports/benchmarks/tokenizer.md``.

    python benchmarks/tokenizer.py --texts 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

from lowrank_lab.utils.data import shared_data_dir
from lowrank_lab.utils.files import atomic_write_text
from lowrank_lab.utils.provenance import git_commit
from lowrank_lab.weights.llama2c import Llama2cTokenizer


def rescanning_merge(tok: Llama2cTokenizer, body: list[int]) -> list[int]:
    """run.c's loop: for every merge, scan all adjacent pairs for the best score (leftmost wins).
    The peer timed here, and the specification tests/weights/test_llama2c.py checks the heap against."""
    body = list(body)
    while True:
        best, best_idx, best_id = -1e10, -1, -1
        for i in range(len(body) - 1):
            tid = tok._lookup.get(tok.vocab[body[i]] + tok.vocab[body[i + 1]])
            if tid is not None and tok.scores[tid] > best:
                best, best_idx, best_id = tok.scores[tid], i, tid
        if best_idx < 0:
            return body
        body[best_idx : best_idx + 2] = [best_id]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=300, help="GSM8K texts drawn at random (default 300)")
    p.add_argument("--data-dir", default=None, help="folder holding gsm8k/ and models/stories260K/")
    p.add_argument("--out", default="reports/benchmarks/tokenizer.md", help="markdown report path")
    args = p.parse_args(argv)
    data = Path(args.data_dir) if args.data_dir else shared_data_dir()
    tok_path = data / "models" / "stories260K" / "tok512.bin"
    if not tok_path.is_file():
        print(f"benchmarks/tokenizer.py: error: {tok_path} not found; pass --data-dir", file=sys.stderr)
        return 2
    tok = Llama2cTokenizer.from_file(tok_path, vocab_size=512)
    texts = []
    for split in ("train", "test"):
        for line in (data / "gsm8k" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            texts += [row["question"], row["answer"]]
    random.Random(0).shuffle(texts)
    texts = texts[: args.texts]

    ours = peer = 0.0
    chars = tokens = 0
    load_before = os.getloadavg()[0]
    for text in texts:
        body = tok._pieces(text)
        t0 = time.perf_counter()
        a = tok._merge(body)
        t1 = time.perf_counter()
        b = rescanning_merge(tok, body)
        t2 = time.perf_counter()
        if a != b:
            print(f"benchmarks/tokenizer.py: error: the merges differ on {text[:60]!r}", file=sys.stderr)
            return 1
        ours, peer = ours + (t1 - t0), peer + (t2 - t1)
        chars, tokens = chars + len(text), tokens + len(a)
    load_after = os.getloadavg()[0]
    lines = [
        "# llama2.c tokenizer: heap-ordered merges against run.c's rescanning loop",
        "",
        f"- Command: `python benchmarks/tokenizer.py --texts {args.texts}`",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}; commit {git_commit()}",
        f"- Machine: {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}; "
        f"load average before/after {load_before:.1f}/{load_after:.1f} (both merges of a text run back "
        "to back, so the load inflates both alike)",
        f"- Texts: {len(texts)} GSM8K questions and answers (random, seed 0; {chars:,} characters, "
        f"{tokens:,} tokens after merging), tokenizer `tok512.bin` of stories260K, both merges on the "
        "same pre-merge tokens",
        "",
        "| merges | seconds | per text (ms) |",
        "|---|---|---|",
        f"| heap (`Llama2cTokenizer._merge`) | {ours:.2f} | {1e3 * ours / len(texts):.2f} |",
        f"| rescanning loop (run.c's `encode`) | {peer:.2f} | {1e3 * peer / len(texts):.2f} |",
        "",
        f"Speed-up: **{peer / ours:.1f}x**; the tokens are identical for every text.",
        "",
    ]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
