"""Deterministic data order, tokenisation and padding for the fine-tuning loop.

The order of training examples depends on the seed only — never on the method — so every method
of a study sees the same batches in the same order (issue 7: "same data order, seed and schedule
for all"). Batches are padded to their longest member (dynamic padding, as Hugging Face's
``DataCollatorWithPadding``), which keeps SST-2 steps short without changing any result: the
attention mask hides the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .tasks import Example, TaskSpec, gsm8k_prompt

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding), as torch's cross_entropy


def batch_order(n_examples: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the examples of every step, shape (steps, batch_size).

    Epochs are fresh permutations drawn from one ``torch.Generator`` seeded with ``seed``, so the
    order is a function of (n_examples, seed) alone; a batch never straddles two epochs' repeats
    of an example because batches are cut from the concatenated permutations.
    """
    if n_examples < 1:
        raise ValueError("no training examples")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps ({steps}) and batch_size ({batch_size}) must be >= 1")
    gen = torch.Generator().manual_seed(int(seed))
    need = steps * batch_size
    chunks, have = [], 0
    while have < need:
        chunks.append(torch.randperm(n_examples, generator=gen))
        have += n_examples
    return torch.cat(chunks)[:need].view(steps, batch_size)


def eval_subset(n_examples: int, eval_samples: int) -> list[int]:
    """The eval examples scored: all (``eval_samples`` 0 or ≥ n) or a fixed random subset drawn with
    seed 0 — the same for every run and seed, so metrics compare across methods."""
    if eval_samples <= 0 or eval_samples >= n_examples:
        return list(range(n_examples))
    gen = torch.Generator().manual_seed(0)
    return sorted(torch.randperm(n_examples, generator=gen)[:eval_samples].tolist())


#: Seed of the validation split carved from the training data: one constant, so the split is the same
#: for every run, method and seed of a study (and never depends on the run's own seed).
VALIDATION_SEED = 1729


def default_validation_size(n_train: int) -> int:
    """Examples carved from the training data for learning-rate selection and early curves when
    ``--val-samples`` is not given: 10% of the training set, at least 100 and at most 1000 (SST-2:
    1,000 of 67,349; STS-B: 574 of 5,749; RTE: 249 of 2,490)."""
    return max(0, min(1000, max(100, n_train // 10), n_train // 2))


def validation_split(n_examples: int, n_val: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) of a training set of ``n_examples``: ``n_val`` examples
    drawn with :data:`VALIDATION_SEED`, both lists in file order.

    Hyper-parameters are selected on this split, never on the dev/test set the claims are judged on
    (issue 15); the remaining examples are what every run trains on.
    """
    if not 0 <= n_val < n_examples:
        raise ValueError(
            f"a validation split of {n_val} examples leaves none of the {n_examples} training examples "
            "to train on; lower --val-samples"
        )
    if n_val == 0:
        return list(range(n_examples)), []
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    held = torch.randperm(n_examples, generator=gen)[:n_val]
    mask = torch.zeros(n_examples, dtype=torch.bool)
    mask[held] = True
    return torch.nonzero(~mask).flatten().tolist(), torch.nonzero(mask).flatten().tolist()


@dataclass
class Feature:
    """One tokenised example: ``input_ids`` (and ``token_type_ids`` for BERT pairs) plus its target:
    a class id, a float score, or per-token labels (``IGNORE_INDEX`` where no loss is taken)."""

    input_ids: list[int]
    target: Any
    token_type_ids: list[int] | None = None


class Encoder:
    """Tokenise examples of one task for one tokenizer, caching by example index.

    GLUE: ``tokenizer(text_a, text_b, truncation=True, max_length=...)`` (a Hugging Face tokenizer;
    pairs are truncated longest-first, HF's default). GSM8K: ``bos + enc(prompt) + enc(" " + answer)
    + eos``, truncated to ``max_length`` from the right after the question has been shortened
    from the left so that at least ``min(len(answer) + 1, max_length // 2)`` answer tokens remain;
    loss only on the answer and eos tokens (the PiSSA/NLoRA
    training scripts mask the prompt the same way). Prompt and answer are tokenised separately, so
    the prompt/answer boundary is exact whatever the tokenizer merges.
    """

    def __init__(self, spec: TaskSpec, tokenizer: Any, max_length: int, examples: Sequence[Example]) -> None:
        if max_length < 2:
            raise ValueError(f"--max-length must be >= 2, got {max_length}")
        self.spec = spec
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.examples = examples
        self._cache: dict[int, Feature] = {}
        self.pad_id = _pad_id(tokenizer)

    def __len__(self) -> int:
        return len(self.examples)

    def feature(self, i: int) -> Feature:
        f = self._cache.get(i)
        if f is None:
            f = self._encode(self.examples[i])
            self._cache[i] = f
        return f

    def _encode(self, ex: Example) -> Feature:
        if self.spec.kind == "causal-lm":
            return self._encode_causal(ex)
        enc = self.tokenizer(ex.text_a, ex.text_b, truncation=True, max_length=self.max_length)
        target = float(ex.label) if self.spec.kind == "regression" else int(ex.label)
        return Feature(
            list(enc["input_ids"]), target, list(enc["token_type_ids"]) if "token_type_ids" in enc else None
        )

    def _encode_causal(self, ex: Example) -> Feature:
        tok = self.tokenizer
        prompt = _encode_text(tok, gsm8k_prompt(ex.text_a), continuation=False)
        answer = _encode_text(tok, (ex.text_b or "").strip(), continuation=True)
        bos, eos = _special_id(tok, "bos"), _special_id(tok, "eos")
        # Keep at least min(answer + eos, half the budget) answer tokens: a long question loses its
        # beginning rather than its answer, so no example (and no batch) is left without a target.
        budget = self.max_length - 1 - min(len(answer) + 1, self.max_length // 2)
        if len(prompt) > budget:
            prompt = prompt[len(prompt) - budget :] if budget > 0 else []
        ids = [bos, *prompt, *answer, eos]
        labels = [IGNORE_INDEX] * (1 + len(prompt)) + [*answer, eos]
        return Feature(ids[: self.max_length], labels[: self.max_length])

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Pad the features of ``indices`` to their longest; returns model inputs plus ``target``."""
        feats = [self.feature(int(i)) for i in indices]
        T = max(len(f.input_ids) for f in feats)
        B = len(feats)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((B, T), dtype=torch.long)
        for b, f in enumerate(feats):
            ids[b, : len(f.input_ids)] = torch.tensor(f.input_ids)
            mask[b, : len(f.input_ids)] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if feats[0].token_type_ids is not None:
            tt = torch.zeros((B, T), dtype=torch.long)
            for b, f in enumerate(feats):
                tt[b, : len(f.token_type_ids)] = torch.tensor(f.token_type_ids)
            out["token_type_ids"] = tt
        if self.spec.kind == "causal-lm":
            lab = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
            for b, f in enumerate(feats):
                lab[b, : len(f.target)] = torch.tensor(f.target)
            out["target"] = lab
        elif self.spec.kind == "regression":
            out["target"] = torch.tensor([f.target for f in feats], dtype=torch.float32)
        else:
            out["target"] = torch.tensor([f.target for f in feats], dtype=torch.long)
        return out

    def prepare(self, indices: Sequence[int], *, desc: str = "tokenize", disable: bool | None = None) -> None:
        """Tokenise ``indices`` now (cached), so that no run's step time includes tokenisation."""
        from tqdm.auto import tqdm

        todo = sorted({int(i) for i in indices} - self._cache.keys())
        for i in tqdm(todo, desc=desc, unit="ex", disable=disable if todo else True, leave=False):
            self.feature(i)

    def length(self, i: int) -> int:
        return len(self.feature(i).input_ids)


def _encode_text(tok: Any, text: str, *, continuation: bool) -> list[int]:
    """Token ids of ``text`` without BOS/EOS. ``continuation``: the text follows other text after
    one space. A llama2.c tokenizer (``encode(text, bos=, eos=)``) prepends SentencePiece's dummy
    prefix space to every text, which is that space; a Hugging Face tokenizer gets it written."""
    try:
        return list(tok.encode(text, bos=False, eos=False))
    except TypeError:  # not the llama2.c signature
        pass
    if continuation:
        text = " " + text
    try:
        return list(tok.encode(text, add_special_tokens=False))
    except TypeError:  # a plain encode(text) without the HF keyword
        return list(tok.encode(text))


def _special_id(tok: Any, which: str) -> int:
    value = getattr(tok, f"{which}_token_id", None)
    if value is None:
        value = getattr(tok, f"{which}_id", None)
    if value is None:
        raise ValueError(f"tokenizer {type(tok).__name__} defines no {which} token id")
    return int(value)


def _pad_id(tok: Any) -> int:
    for name in ("pad_token_id", "pad_id", "eos_token_id", "eos_id"):
        value = getattr(tok, name, None)
        if value is not None and int(value) >= 0:
            return int(value)
    return 0
