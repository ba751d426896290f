"""Learning-rate selection (issue 15): on the validation split only, the head's rate first, grids."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from lowrank_lab.finetune import main as finetune_main
from lowrank_lab.training.batching import default_validation_size, validation_split
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.record import RunRecord
from lowrank_lab.training.selection import GridError, choose, default_grid, grid_for, parse_grid, select_rates
from lowrank_lab.training.tasks import get_task

from .test_study import _run


def test_validation_split_is_fixed_disjoint_and_seed_free():
    train, val = validation_split(100, 10)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert sorted(train + val) == list(range(100))
    assert validation_split(100, 10) == (train, val)  # no dependence on a run's seed or on state
    assert validation_split(100, 0) == (list(range(100)), [])
    with pytest.raises(ValueError, match="leaves none of the 5 training examples"):
        validation_split(5, 5)
    assert [default_validation_size(n) for n in (67349, 5749, 2490, 10)] == [1000, 574, 249, 5]


def test_default_grid_spans_100x_around_the_paper_rate_and_contains_it():
    assert default_grid(5e-4) == [5e-05, 0.00015, 0.0005, 0.0015, 0.005]
    assert grid_for("lora", "sst2", "classification", {}) == default_grid(5e-4)  # LoRA Table 9, SST-2
    assert grid_for("pissa", "stsb", "regression", {}) == default_grid(4e-4)
    assert grid_for("full", "sst2", "classification", {}) == default_grid(2e-5)
    assert grid_for("inttune", "sst2", "classification", {}) == default_grid(4e-3)  # core family
    assert grid_for("head", "sst2", "classification", {})[0] == 1e-4
    g = {"lora": [1e-4, 2e-4], "pissa": [3e-4]}
    assert grid_for("milora", "sst2", "classification", g) == [1e-4, 2e-4]  # the family's entry
    assert grid_for("pissa", "sst2", "classification", g) == [3e-4]  # the method's own entry wins


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lora=1e-4,0", "learning rate '0' must be positive"),
        ("lora=-1e-3", "learning rate '-1e-3' must be positive"),
        ("full=nan", "learning rate 'nan' must be positive, finite"),
        ("full=inf", "learning rate 'inf' must be positive, finite"),
        ("lora=fast", "'fast' is not a number"),
        ("lora", "expected GROUP=RATE,RATE"),
    ],
)
def test_bad_grid_values_are_named(value, message):
    with pytest.raises(GridError, match=message):
        parse_grid([value])


def test_bad_grid_value_exits_2_naming_it(capsys, tmp_path):
    code = finetune_main(["--task", "sst2", "--lr-grid", "lora=1e-4,-2", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "learning rate '-2' must be positive" in capsys.readouterr().err
    assert finetune_main(["--task", "sst2", "--lr-grid", "--lr", "1e-4", "--out", str(tmp_path / "o")]) == 2
    assert "--lr sets one rate for every method, --lr-grid selects one" in capsys.readouterr().err


def _rec(lr, val, status="finished", collapsed=False):
    """(rate, the selection run's record at that rate)."""
    cfg = RunConfig(task="sst2", method="lora", seed=100, lr=lr)
    return lr, RunRecord(config=cfg, status=status, val_metric=val, val_collapsed=collapsed)


def _choose(method, trials, **kw):
    return choose(method, [lr for lr, _ in trials], [rec for _, rec in trials], **kw)


def test_choose_takes_the_best_usable_rate_and_says_when_it_is_at_the_edge():
    recs = [_rec(1e-4, 0.80), _rec(1e-3, 0.86), _rec(1e-2, 0.90, collapsed=True), _rec(3e-2, 0.5, "diverged")]
    c = _choose("lora", recs, higher_is_better=True)
    assert c.lr == 1e-3 and c.val_metric == 0.86 and "2 usable rates" in c.reason
    edge = _choose("lora", [_rec(1e-4, 0.9), _rec(1e-3, 0.8)], higher_is_better=True)
    assert edge.lr == 1e-4 and "edge of the grid" in edge.reason
    assert _choose("x", [_rec(1e-4, 3.0), _rec(1e-3, 2.5)], higher_is_better=False).lr == 1e-3  # a loss
    assert _choose("x", [_rec(1e-4, 0.7), _rec(1e-3, 0.7)], higher_is_better=True).lr == 1e-4  # tie: smaller
    nan_first = [_rec(1e-4, math.nan), _rec(1e-3, 0.6)]
    assert _choose("x", nan_first, higher_is_better=True).lr == 1e-3  # a non-finite metric is not eligible


def test_a_method_collapsed_at_every_rate_gets_no_rate():
    recs = [_rec(1e-4, 0.5, collapsed=True), _rec(1e-3, 0.5, "diverged")]
    c = _choose("nlora-pinv", recs, higher_is_better=True)
    assert c.lr is None and "no usable rate" in c.reason and "collapsed" in c.reason


def _scramble_dev(glue_dir):
    dev = glue_dir / "glue" / "sst2" / "dev.tsv"
    lines = dev.read_text().splitlines()
    flipped = [lines[0]] + [f"{t.rsplit(chr(9), 1)[0]}\t{1 - int(t.rsplit(chr(9), 1)[1])}" for t in lines[1:]]
    dev.write_text("\n".join(flipped) + "\n")


@pytest.mark.slow  # trains a selection, ~30 s
def test_selection_never_reads_the_dev_set(glue_dir, bert_tokenizer, tiny_pooled, tmp_path):
    grid = {"lora": [1e-3, 1e-2], "head": [3e-3, 1e-1]}
    base = {"steps": 12, "val_samples": 12, "eval_every": 4}
    first = _run(glue_dir, tmp_path / "a", bert_tokenizer, tiny_pooled(2), lr_grid=grid, base=base)
    _scramble_dev(glue_dir)  # every dev label flipped: a selection that looked at dev would change
    second = _run(glue_dir, tmp_path / "b", bert_tokenizer, tiny_pooled(2), lr_grid=grid, base=base)
    sel_a = pd.read_csv(tmp_path / "a" / "selection.csv")
    sel_b = pd.read_csv(tmp_path / "b" / "selection.csv")
    pd.testing.assert_frame_equal(sel_a, sel_b)
    rates = [{m: c.lr for m, c in res["selection"].items()} for res in (first, second)]
    assert rates[0] == rates[1]
    # selection runs never scored dev; the final runs did, and there the flipped labels show
    for path in (tmp_path / "a" / "select").glob("*/run.json"):
        assert "dev" not in json.loads(path.read_text())
    fa = {r.config.method: r.final_metric for r in first["records"]}
    fb = {r.config.method: r.final_metric for r in second["records"]}
    assert fa["lora"] == pytest.approx(1 - fb["lora"])


@pytest.mark.slow  # trains a selection, ~18 s
def test_selected_rates_are_in_run_json_selection_csv_and_the_figure(
    glue_dir, bert_tokenizer, tiny_pooled, tmp_path
):
    out = tmp_path / "s"
    res = _run(
        glue_dir,
        out,
        bert_tokenizer,
        tiny_pooled(2),
        seeds=(0, 1),
        lr_grid={"lora": [1e-3, 1e-2], "head": [3e-3, 1e-1]},
        base={"steps": 12, "val_samples": 12, "eval_every": 4},
    )
    chosen = res["selection"]
    sel = pd.read_csv(out / "selection.csv")
    assert len(sel) >= 4 and sel["chosen"].sum() == 2  # the grid, plus any step beyond an edge
    for rec in res["records"]:
        method = rec.config.method
        assert rec.head_lr == chosen["head"].lr
        if method == "lora":
            assert rec.lr == chosen["lora"].lr
        assert rec.config.seed in (0, 1)  # the verdict seeds, never the selection seed 100
    assert sorted(p.name for p in (out / "select").iterdir())[0] == "head-r2-seed100-lr0.003"
    assert res["selection"]["head"].lr is not None
    assert (out / "figures" / "lr_selection.png").stat().st_size > 0


@pytest.mark.slow  # trains a selection
def test_a_head_that_trains_at_no_rate_stops_the_study_with_its_table(
    glue_dir, bert_tokenizer, tiny_bert, tmp_path
):
    # the random pooler of tiny_bert gives a head-only probe nothing to separate: constant at every rate
    with pytest.raises(ValueError, match="no head learning rate trains the head-only control"):
        _run(glue_dir, tmp_path / "h", bert_tokenizer, tiny_bert(2), lr_grid={"head": [1e-3, 1e-2]},
             base={"steps": 4, "val_samples": 12})
    sel = pd.read_csv(tmp_path / "h" / "selection.csv")
    assert list(sel["collapsed"]) == [True, True] and not sel["chosen"].any()


def test_extension_steps_beyond_an_edge_that_strictly_holds_the_best_rate():
    from lowrank_lab.training.selection import extension

    up = {1e-4: 0.7, 3e-4: 0.8, 1e-3: 0.85}
    assert extension(up, 1e-3, higher_is_better=True) == pytest.approx(1e-3 * 1e-3 / 3e-4, rel=2e-3)
    down = {1e-4: 0.9, 3e-4: 0.8, 1e-3: None}
    assert extension(down, 1e-4, higher_is_better=True) == pytest.approx(1e-4 * 1e-4 / 3e-4, rel=2e-3)
    assert extension(up, 3e-4, higher_is_better=True) is None  # inside: the grid holds the optimum
    assert extension({1e-4: 0.7, 1e-3: 0.7}, 1e-4, higher_is_better=True) is None  # a plateau
    assert extension({1e-4: 2.0, 1e-3: 2.5}, 1e-4, higher_is_better=False) == pytest.approx(1e-5)  # a loss
    assert extension(up, None, higher_is_better=True) is None  # nothing usable: nothing to extend


@pytest.mark.slow  # trains a selection, ~10 s
def test_a_best_rate_at_the_grid_edge_extends_the_grid(glue_dir, bert_tokenizer, tiny_pooled, tmp_path):
    from lowrank_lab.training.selection import MAX_EXTENSIONS

    out = tmp_path / "e"
    # the head of the tiny pooled model trains at 0.1 and stays constant at 0.03 in 12 steps
    # (see test_selection_never_reads_the_dev_set): the best rate sits at the grid's top edge
    _run(glue_dir, out, bert_tokenizer, tiny_pooled(2), methods=("head",), lr_grid={"head": [3e-2, 1e-1]},
         base={"steps": 12, "val_samples": 12, "eval_every": 4})
    sel = pd.read_csv(out / "selection.csv")
    rates = sorted(sel["lr"])
    assert rates[:2] == [3e-2, 1e-1] and 2 < len(rates) <= 2 + MAX_EXTENSIONS
    assert rates[2] == pytest.approx(0.333)  # one grid step (x 10/3) beyond 0.1


@pytest.mark.slow  # trains a selection
def test_epochs_set_the_steps_from_the_training_split(glue_dir, bert_tokenizer, tiny_bert, tmp_path):
    # 60 SST-2 fixture rows, 12 held out for validation: 48 train; 1.5 epochs of batch 4 = 18 steps
    res = _run(glue_dir, tmp_path / "ep", bert_tokenizer, tiny_bert(2), methods=("lora",),
               base={"epochs": 1.5, "val_samples": 12, "eval_every": 0})
    rec = res["records"][0]
    assert rec.config.steps == 18 and rec.config.epochs == 1.5 and rec.steps_done == 18


def _add_selection_rows(out, method, n):
    from lowrank_lab.training.selection import Choice, write_selection

    for i in range(n):  # one read-merge-write per row: as many chances to collide as possible
        rows = [{"method": method, "rank": 8, "rate_of": "lr", "lr": 10.0 ** -(i + 1), "val_metric": 0.5,
                 "status": "finished", "collapsed": False, "steps_done": 1}]
        write_selection(out, rows, {method: Choice(method, None, None, "test")})


@pytest.mark.slow  # two processes
def test_two_processes_updating_selection_csv_keep_each_others_rows(tmp_path, monkeypatch):
    import multiprocessing

    from lowrank_lab.training import figures

    monkeypatch.setattr(figures, "lr_selection", lambda frame, path, **kw: path)  # the table, not the figure
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_selection_rows, args=(tmp_path, m, 15)) for m in ("pissa", "milora")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    sel = pd.read_csv(tmp_path / "selection.csv")
    assert sel.groupby("method").size().to_dict() == {"milora": 15, "pissa": 15}


@pytest.mark.slow  # trains a selection and seeds, ~30 s
def test_selection_alone_then_the_seeds_reuse_its_runs(glue_dir, bert_tokenizer, tiny_pooled, tmp_path):
    out = tmp_path / "s"
    kw = {"lr_grid": {"lora": [1e-3, 1e-2], "head": [3e-3, 1e-1]},
          "base": {"steps": 12, "val_samples": 12, "eval_every": 4}}
    alone = _run(glue_dir, out, bert_tokenizer, tiny_pooled(2), seeds=(), **kw)  # finetune --select-only
    assert alone["records"] == [] and alone["summary"] is None and not (out / "runs").exists()
    sel = pd.read_csv(out / "selection.csv")
    assert set(sel["method"]) == {"head", "lora"} and sel["chosen"].sum() == 2
    made = {p: p.stat().st_mtime_ns for p in (out / "select").glob("*/run.json")}
    assert len(made) >= 4  # two head rates, two LoRA rates (and an extension past an edge, if one)

    seeds = _run(glue_dir, out, bert_tokenizer, tiny_pooled(2), seeds=(0,), resume=True, **kw)
    assert {p: p.stat().st_mtime_ns for p in made} == made  # the selection runs were not redone
    chosen = {m: c.lr for m, c in alone["selection"].items()}
    assert {m: c.lr for m, c in seeds["selection"].items()} == chosen
    assert [r.method for r in seeds["records"]] == ["lora", "head"] and seeds["summary"].is_file()
    runs_csv = (out / "runs.csv").read_text()
    again = _run(glue_dir, out, bert_tokenizer, tiny_pooled(2), seeds=(), **kw)  # --select-only, no --resume
    assert again["records"] == [] and (out / "runs.csv").read_text() == runs_csv  # the seeds' rows stay


def test_select_only_needs_a_grid(capsys, tmp_path):
    assert finetune_main(["--task", "sst2", "--select-only", "--out", str(tmp_path / "o")]) == 2
    assert "--select-only runs the learning-rate selection: add --lr-grid" in capsys.readouterr().err


def test_summary_line_names_each_choice_with_its_number_of_rates_and_the_methods_without_one(tmp_path):
    from lowrank_lab.training.selection import SELECTION_COLUMNS, selection_line

    def rows(method, rank, rates, chosen):
        return [[method, rank, "lr", r, 0.8, "finished", False, 10, r == chosen, "100", None] for r in rates]

    table = (rows("lora", 8, [5e-5, 1.5e-4, 5e-4, 1.5e-3, 5e-3], 1.5e-3)
             + rows("pissa", 8, [5e-4, 1.5e-3], 5e-4)
             + rows("lora", 1, [1.5e-4, 5e-4, 1.5e-3], 5e-4)
             + rows("nlora-pinv", 8, [5e-4, 1.5e-3], None))
    pd.DataFrame(table, columns=SELECTION_COLUMNS).to_csv(tmp_path / "selection.csv", index=False)
    line = selection_line(tmp_path)
    assert "lora 0.0015 (of 5), pissa 0.0005 (of 2), lora@1 0.0005 (of 3)" in line
    assert line.endswith("; no usable rate: nlora-pinv")
    assert selection_line(tmp_path / "none") is None


@pytest.mark.slow  # trains a selection
def test_every_method_of_a_selection_round_is_one_batch_and_extensions_go_in_rounds(tmp_path):
    # Validation accuracy peaks at 1e-3 for lora (inside its grid), above the grid for pissa (two
    # extensions up: 9e-2 is at the edge until 2.7e-1 is tried) and just below it for full (one down,
    # after which 1e-4 is inside): the batches are the rounds, each method's choice what it is alone.
    peak = {"lora": 1e-3, "pissa": 9e-2, "full": 8e-5}

    class Runner:
        spec = get_task("sst2")
        batches: list[list[tuple[str, float]]] = []

        def run(self, configs, dir_of, desc, score_dev=True):
            self.batches.append([(c.method, c.lr) for c in configs])
            def record(c):
                score = 1 - abs(math.log10(c.lr / peak[c.method])) / 10
                return RunRecord(config=c, status="finished", val_metric=score)

            return [record(c) for c in configs], 0

    runner = Runner()
    grid = {"lora": [3e-4, 1e-3, 3e-3], "pissa": [3e-3, 1e-2, 3e-2], "full": [1e-4, 3e-4, 1e-3], "milora": []}
    base = RunConfig(task="sst2", method="lora", head_lr=1e-2)
    choices, head_lr = select_rates(runner, base, ["lora", "pissa", "full", "milora"], grid, 100, tmp_path)
    assert choices["milora"].lr is None and choices["milora"].reason == "no usable rate (no runs)"
    assert head_lr == 1e-2
    assert [len(b) for b in runner.batches] == [9, 2, 1]  # the grids; pissa up + full down; pissa up
    assert sorted(runner.batches[1]) == [("full", pytest.approx(3.33e-5, rel=0.01)), ("pissa", 9e-2)]
    assert runner.batches[2] == [("pissa", pytest.approx(2.7e-1))]
    assert choices["lora"].lr == 1e-3 and choices["pissa"].lr == pytest.approx(9e-2)
    assert choices["full"].lr == 1e-4
    rows = pd.read_csv(tmp_path / "selection.csv")
    assert list(dict.fromkeys(rows["method"])) == ["lora", "pissa", "full"]  # rows grouped by method
    assert rows.groupby("method").size().to_dict() == {"lora": 3, "pissa": 5, "full": 4}


def test_two_selection_seeds_score_each_rate_by_their_mean(tmp_path):
    # seed 100 alone prefers 1e-3 (0.90 against 0.88); seed 101 makes 3e-4 the better rate on average
    # (0.88 and 0.88 against 0.90 and 0.80): the mean of both chooses 3e-4.
    score = {(3e-4, 100): 0.88, (3e-4, 101): 0.88, (1e-3, 100): 0.90, (1e-3, 101): 0.80,
             (3e-3, 100): 0.70, (3e-3, 101): 0.70}  # any other rate (an extension): 0.75

    class Runner:
        spec = get_task("sst2")
        seen: list[tuple[float, int]] = []

        def run(self, configs, dir_of, desc, score_dev=True):
            self.seen += [(c.lr, c.seed) for c in configs]
            recs = [RunRecord(config=c, status="finished", val_metric=score.get((c.lr, c.seed), 0.75))
                    for c in configs]
            return recs, 0

    runner = Runner()
    base = RunConfig(task="sst2", method="lora", head_lr=1e-2)
    choices, _ = select_rates(runner, base, ["lora"], {"lora": [3e-4, 1e-3, 3e-3]}, [100, 101], tmp_path)
    assert choices["lora"].lr == 3e-4 and choices["lora"].val_metric == pytest.approx(0.88)
    low = min(lr for lr, _ in runner.seen)
    assert low < 3e-4 and {sd for lr, sd in runner.seen if lr == low} == {100, 101}  # extension: both
    rows = pd.read_csv(tmp_path / "selection.csv").set_index("lr")
    assert rows.loc[1e-3, "val_metric"] == pytest.approx(0.85) and rows.loc[1e-3, "seeds"] == "100,101"
    assert rows.loc[1e-3, "val_sd"] == pytest.approx(0.0707, abs=1e-4)
    # one seed alone would have chosen 1e-3
    (tmp_path / "one").mkdir()
    single, _ = select_rates(Runner(), base, ["lora"], {"lora": [3e-4, 1e-3, 3e-3]}, 100, tmp_path / "one")
    assert single["lora"].lr == 1e-3


def test_a_rate_is_usable_only_if_every_selection_seed_finished():
    from lowrank_lab.training.selection import pooled

    cfg = RunConfig(task="sst2", method="lora", lr=1e-3)
    ok = RunRecord(config=cfg, status="finished", val_metric=0.9)
    bad = RunRecord(config=RunConfig(task="sst2", method="lora", lr=1e-3, seed=1), status="diverged")
    both = pooled([ok, bad])
    assert both.status == "diverged" and both.val_metric is None
    assert pooled([ok]) is ok
