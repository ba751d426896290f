"""Mid-run checkpoints: an interrupted or crashed run resumes to the same loss curve."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from lowrank_lab.training.checkpoint import CHECKPOINT, CHECKPOINT_META, read_checkpoint_meta
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.loop import Interrupted, train_run
from lowrank_lab.training.study import StudyResumeError, run_dir_for
from lowrank_lab.utils.cli import sigterm_as_interrupt

from .test_loop import _encoders
from .test_study import _run


def _cfg(method="lora", **kw):
    # eval at 2, 4, 6; the tiny BERT has dropout 0.1, so the RNG state must come back too
    base = dict(task="sst2", method=method, steps=6, batch_size=4, eval_every=2, rank=2, save_merged=False)
    base.update(kw)
    return RunConfig(**base)


def _stop(k: int, exc: BaseException):
    def callback(step: int, loss: float) -> None:
        if step == k:
            raise exc

    return callback


def _ctrl_c_after(stop, cfg, spec, tr, ev, make, run_dir, **kw) -> Interrupted:
    """Run ``cfg`` until Ctrl-C arrives after step ``stop``; return the Interrupted it raised."""
    with pytest.raises(Interrupted) as caught:
        train_run(
            cfg, spec, tr, ev, make, run_dir=run_dir, step_callback=_stop(stop, KeyboardInterrupt()), **kw
        )
    return caught.value


def _same_run(a: dict, b: dict) -> None:
    assert a.status == b.status == "finished"
    assert a.train_loss == b.train_loss  # bit-identical
    assert [(e.step, e.metric, e.loss) for e in a.evals] == [
        (e.step, e.metric, e.loss) for e in b.evals
    ]


@pytest.mark.parametrize("method", ["lora", "pissa", "full"])
@pytest.mark.parametrize("stop", [3, 4])  # 4: Ctrl-C before that step's evaluation ran
def test_ctrl_c_then_resume_gives_the_uninterrupted_curve(
    method, stop, glue_dir, bert_tokenizer, tiny_bert, tmp_path
):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    whole = train_run(_cfg(method), spec, tr, ev, tiny_bert(2))
    exc = _ctrl_c_after(stop, _cfg(method), spec, tr, ev, tiny_bert(2), tmp_path)
    assert str(exc).startswith(f"{method} (seed 0) interrupted after step {stop} of 6; saved")
    meta = read_checkpoint_meta(tmp_path)
    assert meta is not None and meta["step"] == stop and meta["config"]["method"] == method
    assert meta["seconds"]["run"] >= meta["seconds"]["train"] > 0  # --status's pace of a run in progress
    resumed = train_run(_cfg(method), spec, tr, ev, tiny_bert(2), run_dir=tmp_path, resume=True)
    _same_run(resumed, whole)
    assert resumed.resumed_at == [stop] and whole.resumed_at == []
    assert resumed.train_seconds > 0 and resumed.steps_done == 6


def test_a_crash_resumes_from_the_last_periodic_checkpoint(glue_dir, bert_tokenizer, tiny_bert, tmp_path):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    whole = train_run(_cfg(), spec, tr, ev, tiny_bert(2))
    with pytest.raises(RuntimeError, match="power cut"):  # not an interrupt: nothing saved at the crash
        train_run(
            _cfg(),
            spec,
            tr,
            ev,
            tiny_bert(2),
            run_dir=tmp_path,
            step_callback=_stop(5, RuntimeError("power cut")),
            checkpoint_seconds=1e-9,  # after every step
        )
    assert read_checkpoint_meta(tmp_path)["step"] == 4  # step 5's save never happened
    resumed = train_run(_cfg(), spec, tr, ev, tiny_bert(2), run_dir=tmp_path, resume=True)
    _same_run(resumed, whole)
    assert resumed.resumed_at == [4]


def test_two_interruptions_add_up(glue_dir, bert_tokenizer, tiny_bert, tmp_path):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    whole = train_run(_cfg(), spec, tr, ev, tiny_bert(2))
    for stop, resume in ((2, False), (5, True)):
        _ctrl_c_after(stop, _cfg(), spec, tr, ev, tiny_bert(2), tmp_path, resume=resume)
    resumed = train_run(_cfg(), spec, tr, ev, tiny_bert(2), run_dir=tmp_path, resume=True)
    _same_run(resumed, whole)
    assert resumed.resumed_at == [2, 5]


def test_without_resume_a_checkpoint_is_ignored(glue_dir, bert_tokenizer, tiny_bert, tmp_path):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    _ctrl_c_after(3, _cfg(), spec, tr, ev, tiny_bert(2), tmp_path)
    rec = train_run(_cfg(), spec, tr, ev, tiny_bert(2), run_dir=tmp_path)
    assert rec.resumed_at == [] and rec.steps_done == 6


def test_interrupt_inside_an_update_saves_nothing_and_says_where_resume_starts(
    glue_dir, bert_tokenizer, tiny_bert, tmp_path, monkeypatch
):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(Interrupted, match=r"inside an optimizer update; --resume restarts from step 0"):
        train_run(_cfg(), spec, tr, ev, tiny_bert(2), run_dir=tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()


def test_an_unreadable_checkpoint_is_named(glue_dir, bert_tokenizer, tiny_bert, tmp_path):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    _ctrl_c_after(2, _cfg(), spec, tr, ev, tiny_bert(2), tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=rf"cannot read the checkpoint {tmp_path / CHECKPOINT}.*delete it"):
        train_run(_cfg(), spec, tr, ev, tiny_bert(2), run_dir=tmp_path, resume=True)


# --- through the study ----------------------------------------------------------------------------


def _study(glue_dir, out, tok, factory, resume, **base):
    return _run(glue_dir, out, tok, factory, methods=("lora",), resume=resume, base={"steps": 6, **base})


@pytest.mark.slow  # trains a study twice
def test_study_resume_continues_an_interrupted_run_and_cleans_up(
    glue_dir, bert_tokenizer, tiny_bert, tmp_path
):
    # val_samples=0: the study trains on the whole file, as the direct train_run that was interrupted
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer, max_length=64)  # the study's length
    out = tmp_path / "study"
    rdir = run_dir_for(out, _cfg(val_samples=0))
    _ctrl_c_after(3, _cfg(val_samples=0), spec, tr, ev, tiny_bert(2), rdir)
    fresh = _study(glue_dir, tmp_path / "fresh", bert_tokenizer, tiny_bert(2), resume=False, val_samples=0)
    rec = _study(glue_dir, out, bert_tokenizer, tiny_bert(2), resume=True, val_samples=0)["records"][0]
    fresh = fresh["records"][0]
    _same_run(rec, fresh)
    assert rec.resumed_at == [3]
    assert not (rdir / CHECKPOINT).exists() and not (rdir / CHECKPOINT_META).exists()
    assert json.loads((rdir / "run.json").read_text())["resumed_at"] == [3]


@pytest.mark.slow  # trains a study
def test_study_resume_refuses_a_checkpoint_with_other_settings(glue_dir, bert_tokenizer, tiny_bert, tmp_path):
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer, max_length=64)
    out = tmp_path / "study"
    rdir = run_dir_for(out, _cfg())
    _ctrl_c_after(2, _cfg(lr=1e-2, val_samples=0), spec, tr, ev, tiny_bert(2), rdir)
    with pytest.raises(StudyResumeError, match=r"checkpoint.json was made with other settings \(lr"):
        _study(glue_dir, out, bert_tokenizer, tiny_bert(2), resume=True)
    # without --resume the run starts over and the stale checkpoint goes
    rec = _study(glue_dir, out, bert_tokenizer, tiny_bert(2), resume=False)["records"][0]
    assert rec.resumed_at == [] and not (rdir / CHECKPOINT).exists()


# --- SIGTERM and the command line -----------------------------------------------------------------


def test_sigterm_becomes_a_keyboard_interrupt_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not interrupt")  # the handler runs before the next bytecode
    assert signal.getsignal(signal.SIGTERM) is before


def test_finetune_cli_exits_130_and_says_how_to_resume(monkeypatch, capsys, tmp_path):
    from lowrank_lab import finetune

    def interrupted(*a, **k):
        raise Interrupted("lora (seed 0) interrupted after step 7 of 300; saved X; rerun with --resume")

    monkeypatch.setattr("lowrank_lab.training.finetune_run.run_study", interrupted)
    rc = finetune.main(["--task", "sst2", "--methods", "lora", "--out", str(tmp_path / "s"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 130
    assert "python -m lowrank_lab.finetune: interrupted; lora (seed 0) interrupted after step 7 of 300" in err
    assert f"{tmp_path / 's'}/runs" in err and "--resume" in err


def test_finetune_cli_checkpoint_every_rejects_negative(capsys):
    from lowrank_lab import finetune

    with pytest.raises(SystemExit) as e:
        finetune.main(["--task", "sst2", "--checkpoint-every", "-1"])
    assert (
        e.value.code == 2 and "argument --checkpoint-every: must be >= 0, got '-1'" in capsys.readouterr().err
    )


@pytest.mark.gpu
def test_cuda_run_resumes_with_its_cuda_rng(glue_dir, bert_tokenizer, tiny_bert, tmp_path):
    # cuBLAS and atomics in some backward kernels are not bit-reproducible, so: the same curve to
    # float tolerance, and the CUDA generator state travels in the checkpoint.
    spec, tr, ev = _encoders("sst2", glue_dir, bert_tokenizer)
    whole = train_run(_cfg(device="cuda"), spec, tr, ev, tiny_bert(2))
    _ctrl_c_after(3, _cfg(device="cuda"), spec, tr, ev, tiny_bert(2), tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["rng"]["cuda"] is not None and state["params"]
    resumed = train_run(_cfg(device="cuda"), spec, tr, ev, tiny_bert(2), run_dir=tmp_path, resume=True)
    assert resumed.resumed_at == [3] and resumed.memory_kind == "cuda_max_allocated"
    assert resumed.train_loss == pytest.approx(whole.train_loss, rel=1e-4)
