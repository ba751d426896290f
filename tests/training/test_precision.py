"""bf16 and gradient checkpointing (issue 30, point 10): the GPU path of a GSM8K study with a real
model, smoke-tested on the CPU with a tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch

from lowrank_lab.finetune import build_parser
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.loop import Trainer, train_run

from .test_loop import _encoders


def _cfg(**kw):
    base = dict(task="gsm8k", method="lora", steps=3, batch_size=2, eval_every=0, rank=2, lr=1e-2,
                save_merged=False, eval_samples=2)
    base.update(kw)
    return RunConfig(**base)


def test_bf16_keeps_the_base_in_bf16_and_trains_float32_adapters(glue_dir, char_tokenizer, tiny_llama):
    spec, tr, ev = _encoders("gsm8k", glue_dir, char_tokenizer, max_length=96)
    cfg = _cfg(dtype="bfloat16", gradient_checkpointing=True, eval_mode="generate")
    trainer = Trainer(cfg, spec, tr, ev, tiny_llama, dev=ev, validation=True)
    rec = trainer.fit()
    assert rec.status == "finished" and all(math.isfinite(v) for v in rec.train_loss)
    assert rec.dev is not None and 0.0 <= rec.dev.exact_match <= 1.0
    trained = {n: p.dtype for n, p in trainer.model.named_parameters() if p.requires_grad}
    frozen = {n: p.dtype for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32}
    assert set(frozen.values()) == {torch.bfloat16}
    assert trainer.model.model.gradient_checkpointing  # Hugging Face's flag on the decoder


def test_gradient_checkpointing_recomputes_the_same_losses(glue_dir, char_tokenizer, tiny_llama):
    spec, tr, ev = _encoders("gsm8k", glue_dir, char_tokenizer, max_length=96)
    plain = train_run(_cfg(), spec, tr, ev, tiny_llama)
    ckpt = train_run(_cfg(gradient_checkpointing=True), spec, tr, ev, tiny_llama)
    assert ckpt.train_loss == pytest.approx(plain.train_loss, rel=1e-5)


def test_bf16_losses_track_float32_ones(glue_dir, char_tokenizer, tiny_llama):
    spec, tr, ev = _encoders("gsm8k", glue_dir, char_tokenizer, max_length=96)
    fp32 = train_run(_cfg(steps=1), spec, tr, ev, tiny_llama)
    bf16 = train_run(_cfg(steps=1, dtype="bfloat16"), spec, tr, ev, tiny_llama)
    assert bf16.train_loss[0] == pytest.approx(fp32.train_loss[0], rel=2e-2)  # bf16 keeps ~3 digits


def test_the_command_carries_both_options_into_the_run_config():
    a = build_parser().parse_args(["--task", "gsm8k", "--dtype", "bfloat16", "--gradient-checkpointing"])
    assert (a.dtype, a.gradient_checkpointing) == ("bfloat16", True)
    with pytest.raises(ValueError, match="--dtype must be float32 or bfloat16"):
        RunConfig(task="gsm8k", method="lora", dtype="float16")


@pytest.mark.slow  # ~20 s: trains two steps of the real stories260K and generates for two problems
def test_the_gpu_recipe_runs_end_to_end_on_the_cpu(shared_data, stories260k, tmp_path):
    """Issue 30 point 10: the GSM8K study a GPU user runs (`--eval generate`, bf16, gradient
    checkpointing) goes through the command unchanged; here on the real llama2.c checkpoint."""
    import json

    from lowrank_lab.finetune import main

    out = tmp_path / "gsm"
    argv = ["--task", "gsm8k", "--model", "stories260K", "--methods", "lora", "--steps", "2",
            "--batch-size", "2", "--eval", "generate", "--eval-samples", "2", "--val-samples", "4",
            "--eval-every", "0", "--dtype", "bfloat16", "--gradient-checkpointing",
            "--data-dir", str(shared_data), "--out", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads((out / "runs" / "lora-r8-seed0" / "run.json").read_text())
    assert rec["status"] == "finished"
    assert (rec["config"]["dtype"], rec["config"]["gradient_checkpointing"], rec["config"]["eval_mode"]) == (
        "bfloat16", True, "generate")
    assert rec["dev"]["n"] == 2 and 0.0 <= rec["dev"]["exact_match"] <= 1.0
