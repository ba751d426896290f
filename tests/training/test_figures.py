"""The study figures draw the reference predictors a method must beat (issue 15, point 6: GSM8K's
answer loss beside the unigram and bigram models), from baselines.json."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from lowrank_lab.training import figures
from lowrank_lab.training.claims import reference_levels
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.record import EvalPoint, RunRecord
from lowrank_lab.training.selection import redraw_selection_figure
from lowrank_lab.training.tasks import get_task

GSM8K = {"unigram": 4.41, "bigram": 2.78, "bigram_validation": 2.76, "bigram_lambda": 0.99, "dev_n": 256}


def test_reference_levels_per_split():
    assert reference_levels(GSM8K, "dev") == {"unigram": 4.41, "bigram": 2.78}
    assert reference_levels(GSM8K, "validation") == {"bigram": 2.76}
    assert reference_levels({"constant_predictor": 0.509}) == {"constant predictor": 0.509}
    assert reference_levels({"constant_predictor": 0.509}, "validation") == {}  # not scored there
    assert reference_levels({"unigram": math.nan, "bigram": "2.7"}) == {}  # nothing drawable
    with pytest.raises(ValueError, match="split must be 'dev' or 'validation', not 'test'"):
        reference_levels(GSM8K, "test")


@pytest.fixture
def drawn(monkeypatch):
    """The figure each call would save, kept open instead."""
    kept = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.append(fig) or path)
    return kept


def _lines(fig):
    return {line.get_label(): line for line in fig.axes[0].get_lines()}


def test_eval_curves_draw_the_bigram_as_a_horizontal_line(drawn, tmp_path):
    rec = RunRecord(
        config=RunConfig(task="gsm8k", method="lora"),
        evals=[EvalPoint(step=s, metric=m, loss=m) for s, m in ((0, 7.0), (60, 2.5), (120, 2.0))],
    )
    figures.eval_curves([rec], ["lora"], get_task("gsm8k"), tmp_path / "e.png", title="t",
                        references=reference_levels(GSM8K, "validation"))
    line = _lines(drawn[0])["bigram 2.76"]
    assert list(line.get_ydata()) == [2.76, 2.76] and line.get_linestyle() == "--"
    figures.eval_curves([rec], ["lora"], get_task("gsm8k"), tmp_path / "e.png", title="t")
    assert set(_lines(drawn[1])) == {"lora"}  # none asked, none drawn


def test_summary_only_redraws_the_selection_figure_with_the_validation_bigram(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(figures, "lr_selection", lambda frame, path, **kw: seen.update(n=len(frame), **kw))
    assert redraw_selection_figure(tmp_path) is None and not seen  # no selection.csv: nothing to draw
    pd.DataFrame({"method": ["lora", "lora"], "rank": [8, 8], "lr": [1e-3, 1e-2], "val_metric": [3.0, 2.5],
                  "status": ["finished"] * 2, "collapsed": [False] * 2, "chosen": [False, True]}).to_csv(
        tmp_path / "selection.csv", index=False)
    (tmp_path / "baselines.json").write_text(json.dumps(GSM8K))
    redraw_selection_figure(tmp_path)
    assert seen == {"n": 2, "references": {"bigram": 2.76}}
