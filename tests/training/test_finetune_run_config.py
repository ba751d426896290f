"""finetune's options as one config (issue 29): each default written once, the runs' settings unchanged."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from lowrank_lab.finetune import build_parser
from lowrank_lab.training.config import CHECKPOINT_SECONDS, SELECTION_SEED, RunConfig
from lowrank_lab.training.finetune_run import FinetuneConfig
from lowrank_lab.training.study import rebuild_merged, run_study
from lowrank_lab.utils import options


def test_the_options_a_run_shares_read_runconfigs_defaults():
    run_fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    shared = [f for f in dataclasses.fields(FinetuneConfig) if f.name in run_fields]
    assert len(shared) == 26  # task, model, rank, ..., device: every option that is a RunConfig field
    for f in shared:
        if f.name not in ("task", "model"):  # required; the task's model (RunConfig's is GLUE's minilm)
            assert f.default is run_fields[f.name].default, f.name  # read from RunConfig, not rewritten
    assert FinetuneConfig.seeds == (RunConfig.seed,)
    assert FinetuneConfig.checkpoint_every is CHECKPOINT_SECONDS
    assert FinetuneConfig.selection_seed == (SELECTION_SEED,)
    for fn in (run_study, rebuild_merged):
        assert inspect.signature(fn).parameters["checkpoint_seconds"].default is CHECKPOINT_SECONDS
    assert inspect.signature(run_study).parameters["selection_seed"].default is SELECTION_SEED


def test_the_run_config_is_what_the_command_built_before():
    argv = ["--task", "sst2", "--methods", "pissa,lora", "--rank", "4", "--steps", "50",
            "--scaling", "rslora", "--dora", "--calibration-samples", "64",
            "--adapter-option", "n_iter=2", "--adapter-option", "flag=true", "--no-save-merged",
            "--patience", "2", "--eval-every", "10"]  # fmt: skip
    config = options.from_args(FinetuneConfig, build_parser().parse_args(argv))
    run = config.run_config("sst2", "minilm", "cpu")
    expected = RunConfig(
        task="sst2", method="pissa", model="minilm", rank=4, steps=50, eval_every=10, patience=2,
        save_merged=False, extra={"n_iter": 2, "flag": True, "scaling_rule": "rslora", "dora": True,
                                  "calibration_samples": 64},
    )  # fmt: skip
    assert run.to_dict() == expected.to_dict()
    assert list(run.to_dict()) == [f.name for f in dataclasses.fields(RunConfig)]  # run.json's key order
    plain = options.from_args(FinetuneConfig, build_parser().parse_args(["--task", "rte"]))
    assert plain.run_config("rte", "minilm", "cpu") == RunConfig(task="rte", method="lora")


@pytest.mark.parametrize(
    ("kw", "named"),
    [({"methods": ()}, "--methods is empty"), ({"methods": ("lora", "lora")}, "--methods repeats"),
     ({"methods": ("lorra",)}, "unknown adapter method 'lorra'"), ({"patience": 0}, "--patience"),
     ({"min_delta": -1.0}, "--min-delta"), ({"patience": 2, "eval_every": 0}, "--eval-every")],
)  # fmt: skip
def test_library_callers_get_the_checks_too(kw, named):
    with pytest.raises(ValueError, match=named):
        FinetuneConfig(task="sst2", **kw)
