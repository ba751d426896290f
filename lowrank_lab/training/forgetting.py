"""Forgetting without extra data: how much of its own skill a sentence encoder loses (issue 15).

all-MiniLM-L6-v2 was trained so that the cosine similarity of mean-pooled embeddings tracks
semantic similarity. Its skill on the STS-B dev pairs, the Spearman correlation between those
cosines and the gold scores, is measured for the pre-trained encoder and again for the encoder of a
fine-tuned run (its ``merged/`` weights); the drop is the forgetting (Shuttleworth et al. 2024 relate
intruder dimensions to forgetting of the pre-training distribution; ../shared/REFERENCE.md "Study
protocol" proposes this measure). No task head and no training is involved: only the encoder.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowrank_lab.utils.tables import update_table

from .metrics import spearman
from .models import load_tokenizer, resolve_model
from .record import study_records
from .tasks import Example, TaskSpec, get_task, load_examples

#: Token budget per sentence when embedding STS-B (its sentences are short: the longest dev pair
#: member is well under 128 MiniLM tokens).
MAX_LENGTH = 128


@torch.no_grad()
def embed(
    encoder: nn.Module, tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 64
) -> torch.Tensor:
    """Mean-pooled last hidden states (N, H) of ``sentences``, in their order."""
    encoder.eval()
    out = []
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # less padding per batch
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        texts = [sentences[i] for i in idx]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        hidden = encoder(**enc).last_hidden_state  # (B, T, H)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0), idx))
    emb = torch.empty(len(sentences), out[0][0].shape[1]) if out else torch.empty(0, 0)
    for vectors, idx in out:
        emb[idx] = vectors.float()
    return emb


def sts_spearman(encoder: nn.Module, tokenizer: Any, pairs: Sequence[Example]) -> float:
    """Spearman correlation between the cosine similarity of each pair's embeddings and its score."""
    a = embed(encoder, tokenizer, [p.text_a for p in pairs])
    b = embed(encoder, tokenizer, [p.text_b or "" for p in pairs])
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return float(spearman(cos, torch.tensor([float(p.label) for p in pairs])))


def load_encoder(path: str | Path) -> nn.Module:
    """The encoder of a run's ``merged/`` folder (or any checkpoint folder), without a task head."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path), local_files_only=True).float()


def measure_forgetting(
    out: str | Path,
    spec: TaskSpec,
    *,
    data_dir: str | Path | Any,
    runs: Sequence[str] = (),
    say: Callable[[str], None] | None = None,
) -> Path:
    """Add to ``out/forgetting.csv`` the STS-B forgetting (:mod:`.forgetting`) of every finished run
    with ``merged/`` weights not measured yet (or of ``runs``); returns the file's path.

    Columns: run, method, rank, seed, base_spearman (the pre-trained encoder's), tuned_spearman,
    drop (= base − tuned: positive means the run forgot part of the encoder's own skill).
    """
    import pandas as pd

    say = say or (lambda msg: tqdm.write(msg, file=sys.stderr))
    out = Path(out)
    path = out / FORGETTING_CSV
    done = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=FORGETTING_COLUMNS)
    records = {r.run_name: r for r in study_records(out)}
    unknown = sorted(set(runs) - set(records))
    if unknown:
        raise ValueError(f"--forgetting: no run {', '.join(unknown)} under {out / 'runs'}")
    todo = [
        n
        for n in (runs or sorted(records))
        if records[n].finished
        and (out / "runs" / n / "merged").is_dir()
        and n not in set(done["run"].astype(str))
    ]
    if not todo:
        say(f"forgetting: nothing to measure in {out} (finished runs with merged/ all done)")
        return path
    pairs = load_examples("stsb", data_dir, "eval")
    model = resolve_model(records[todo[0]].config.model)  # once, for the tokenizer and the encoder
    from lowrank_lab.weights import load_hf_model

    tok = load_tokenizer(model, get_task("stsb"))
    base = sts_spearman(load_hf_model(model.location, head="base").float(), tok, pairs)
    rows = []
    for name in tqdm(todo, desc="forgetting (STS-B)", unit="run", file=sys.stderr):
        tuned = sts_spearman(load_encoder(out / "runs" / name / "merged"), tok, pairs)
        rec = records[name]
        row = {
            "run": name,
            "method": rec.method,
            "rank": rec.rank,
            "seed": rec.seed,
            "base_spearman": base,
            "tuned_spearman": tuned,
            "drop": base - tuned,
        }
        rows.append(row)
        # each run as it is measured: an interruption keeps what was done; a run measured again
        # replaces its row, and rows another process added meanwhile stay
        update_table(path, pd.DataFrame([row], columns=FORGETTING_COLUMNS), ["run"])
    say(f"forgetting: base encoder {base:.4f}; measured {len(rows)} runs into {path}")
    return path


FORGETTING_COLUMNS = ["run", "method", "rank", "seed", "base_spearman", "tuned_spearman", "drop"]


FORGETTING_CSV = "forgetting.csv"


def read_forgetting(out: Path) -> dict[str, float]:
    """Run name -> forgetting (the drop of the STS-B dev Spearman correlation of the encoder's
    mean-pooled cosine similarities, base minus tuned) from ``out/forgetting.csv``."""
    import pandas as pd

    path = Path(out) / FORGETTING_CSV
    if not path.is_file():
        return {}
    frame = pd.read_csv(path)
    return {str(r.run): float(r.drop) for r in frame.itertuples() if pd.notna(r.drop)}
