"""params, diagnose, claims and analyze on lowrank_lab.utils.options (issue 29): each command's options are
its config dataclass; the parser is generated from it, so flags, defaults, help and checks agree."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shlex
from pathlib import Path

import pytest

from lowrank_lab import analyze, claims, diagnose, finetune, intruders, params
from lowrank_lab.analysis.analyze_run import AnalyzeConfig
from lowrank_lab.analysis.diagnose import DiagnoseConfig
from lowrank_lab.analysis.intruders_run import IntrudersConfig
from lowrank_lab.analysis.params import ParamsConfig, parameter_table
from lowrank_lab.training.claims_report import ClaimsConfig
from lowrank_lab.training.config import RunConfig
from lowrank_lab.training.finetune_run import FinetuneConfig
from lowrank_lab.utils import options

# Per command: each field's flag tokens and the value they must give (every field, required ones first).
SAMPLES = {
    "params": (params, ParamsConfig, {
        "model": (["--model", "minilm"], "minilm"),
        "rank": (["--rank", "8,16"], (8, 16)),
        "targets": (["--targets", "q,v"], "q,v"),
        "methods": (["--methods", "lora, pissa"], ("lora", "pissa")),
        "csv": (["--csv"], True),
        "out": (["--out", "t.md"], Path("t.md")),
    }),
    "diagnose": (diagnose, DiagnoseConfig, {
        "task": (["--task", "rte"], "rte"),
        "out": (["--out", "d"], "d"),
        "model": (["--model", "minilm"], "minilm"),
        "data_dir": (["--data-dir", "data"], "data"),
        "methods": (["--methods", "lora,eva"], ("lora", "eva")),
        "rank": (["--rank", "4"], 4),
        "alpha": (["--alpha", "16"], 16.0),
        "scaling": (["--scaling", "rslora"], "rslora"),
        "targets": (["--targets", "query"], "query"),
        "seed": (["--seed", "3"], 3),
        "batch_size": (["--batch-size", "8"], 8),
        "max_length": (["--max-length", "32"], 32),
        "calibration_samples": (["--calibration-samples", "64"], 64),
        "optimizer": (["--optimizer", "sgd"], "sgd"),
        "lr": (["--lr", "0.001"], 0.001),
        "study": (["--study", "none"], "none"),
        "summary_only": (["--summary-only"], True),
        "threads": (["--threads", "2"], 2),
    }),
    "claims": (claims, ClaimsConfig, {
        "studies": (["--studies", "a", "b"], ("a", "b")),
        "out": (["--out", "r"], "r"),
        "data_dir": (["--data-dir", "data"], "data"),
        "readme": (["--readme", "R.md"], "R.md"),
    }),
    "analyze": (analyze, AnalyzeConfig, {
        "model": (["--model", "llama-7b"], "llama-7b"),
        "synthetic": (["--synthetic"], True),
        "ranks": (["--ranks", "8,64,8"], (8, 64)),
        "methods": (["--methods", "svd, rsvd"], ("svd", "rsvd")),
        "targets": (["--targets", "q_proj"], "q_proj"),
        "experts": (["--experts", "0-1"], "0-1"),
        "split_fused": (["--split-fused"], True),
        "layers": (["--layers", "0-3"], "0-3"),
        "device": (["--device", "cpu"], "cpu"),
        "dtype": (["--dtype", "bfloat16"], "bfloat16"),
        "seed": (["--seed", "3"], 3),
        "out": (["--out", "o"], "o"),
        "figures": ([], None),  # --figures contradicts --no-figures; test_analyze.py gives it alone
        "no_figures": (["--no-figures"], True),
        "resume": (["--resume"], True),
        "retry_skipped": (["--retry-skipped"], True),
        "repeats": (["--repeats", "5"], 5),
        "threads": (["--threads", "2"], 2),
        "warmup": (["--warmup", "0"], 0),
        "plan": (["--plan"], True),
        "quant": (["--quant", "nf4"], "nf4"),
    }),
    "intruders": (intruders, IntrudersConfig, {
        "base": (["--base", "minilm"], "minilm"),
        "tuned": (["--tuned", "runs/a"], "runs/a"),
        "adapter": (["--adapter", "peft"], "peft"),
        "epsilon": (["--epsilon", "0.4"], 0.4),
        "top_k": (["--top-k", "20"], 20),
        "sweep": (["--sweep"], True),
        "side": (["--side", "both"], "both"),
        "targets": (["--targets", "query,value"], "query,value"),
        "layers": (["--layers", "0-2"], "0-2"),
        "experts": (["--experts", "none"], "none"),
        "split_fused": (["--split-fused"], True),
        "out": (["--out", "o"], "o"),
        "cache_dir": (["--cache-dir", "c"], "c"),
        "no_cache": (["--no-cache"], True),
        "tuned_svd": (["--tuned-svd", "randomized"], "randomized"),
        "seed": (["--seed", "3"], 3),
        "device": (["--device", "cuda"], "cuda"),
        "no_figures": (["--no-figures"], True),
        "threads": (["--threads", "2"], 2),
        "resume": (["--resume"], True),
        "mitigate": (["--mitigate", "0,0.5"], "0,0.5"),
        "update_spectra": (["--update-spectra"], True),
        "data_dir": (["--data-dir", "data"], "data"),
        "no_eval": (["--no-eval"], True),
        "retry_skipped": (["--retry-skipped"], True),
    }),
    "finetune": (finetune, FinetuneConfig, {
        "task": (["--task", "gsm8k"], "gsm8k"),
        "model": (["--model", "minilm"], "minilm"),
        "methods": (["--methods", "lora,head"], ("lora", "head")),
        "rank": (["--rank", "4"], 4),
        "alpha": (["--alpha", "16"], 16.0),
        "targets": (["--targets", "q,v"], "q,v"),
        "steps": (["--steps", "20"], 20),
        "epochs": (["--epochs", "1.5"], 1.5),
        "patience": (["--patience", "3"], 3),
        "min_delta": (["--min-delta", "0.002"], 0.002),
        "pooling": (["--pooling", "cls"], "cls"),
        "eval_mode": (["--eval", "generate"], "generate"),
        "dtype": (["--dtype", "bfloat16"], "bfloat16"),
        "gradient_checkpointing": (["--gradient-checkpointing"], True),
        "eval_set": (["--eval-set", "dev+test"], "dev+test"),
        "val_samples": (["--val-samples", "0"], 0),
        "lr_grid": (["--lr-grid", "--lr-grid", "full=1e-5,3e-5"], ("default", "full=1e-5,3e-5")),
        "select_only": (["--select-only"], True),
        "selection_seed": (["--selection-seed", "100,101"], (100, 101)),
        "seeds": (["--seeds", "0,1,2"], (0, 1, 2)),
        "batch_size": (["--batch-size", "8"], 8),
        "max_length": (["--max-length", "32"], 32),
        "eval_every": (["--eval-every", "5"], 5),
        "eval_samples": (["--eval-samples", "64"], 64),
        "lr": (["--lr", "3e-4"], 3e-4),
        "head_lr": (["--head-lr", "1e-3"], 1e-3),
        "warmup_ratio": (["--warmup-ratio", "0.1"], 0.1),
        "weight_decay": (["--weight-decay", "0.01"], 0.01),
        "max_grad_norm": (["--max-grad-norm", "0.5"], 0.5),
        "explode_factor": (["--explode-factor", "5"], 5.0),
        "loss_threshold": (["--loss-threshold", "0.7"], 0.7),
        "adapter_option": (["--adapter-option", "n_iter=2", "--adapter-option", "x=y"],
                           ("n_iter=2", "x=y")),
        "data_dir": (["--data-dir", "data"], "data"),
        "dataset": (["--dataset", "nyu-mll/glue:rte"], "nyu-mll/glue:rte"),
        "scaling": (["--scaling", "rslora"], "rslora"),
        "dora": (["--dora"], True),
        "calibration_samples": (["--calibration-samples", "64"], 64),
        "out": (["--out", "s"], "s"),
        "resume": (["--resume"], True),
        "checkpoint_every": (["--checkpoint-every", "0"], 0),
        "device": (["--device", "auto"], "auto"),
        "no_save_merged": (["--no-save-merged"], True),
        "rebuild_merged": (["--rebuild-merged"], ""),
        "replace_different": (["--replace-different"], True),
        "forgetting": (["--forgetting"], "stsb"),
        "summary_only": (["--summary-only"], True),
        "status": (["--status"], True),
        "threads": (["--threads", "2"], 2),
        "no_progress": (["--no-progress"], True),
    }),
}  # fmt: skip
COMMANDS = list(SAMPLES)
# Options that exclude another (argparse's mutually exclusive groups): each is checked apart, on top of
# the required options, instead of in the one command line that gives every other option.
APART = {"finetune": ("epochs", "dataset")}


def _required(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_round_trips_into_the_config(command):
    module, cls, sample = SAMPLES[command]
    assert list(sample) == [f.name for f in dataclasses.fields(cls)]  # a new option needs its sample here
    apart = APART.get(command, ())
    required = [token for name in _required(cls) for token in sample[name][0]]
    lines = [[token for name, (tokens, _) in sample.items() if name not in apart for token in tokens]]
    lines += [[*required, *sample[name][0]] for name in apart]
    checked = [[n for n in sample if n not in apart], *([n] for n in apart)]
    for argv, names in zip(lines, checked, strict=True):
        config = options.from_args(cls, module.build_parser().parse_args(argv))
        for name in names:
            assert getattr(config, name) == sample[name][1], name
        assert options.from_args(cls, module.build_parser().parse_args(options.to_argv(config))) == config


@pytest.mark.parametrize("command", COMMANDS)
def test_the_parser_defaults_are_the_config_defaults(command):
    module, cls, sample = SAMPLES[command]
    by_dest = {a.dest: a for a in module.build_parser()._actions}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING:
            assert by_dest[f.name].required, f.name
        else:
            assert by_dest[f.name].default == f.default, f.name
    required = {name: sample[name][1] for name in _required(cls)}
    argv = [token for name in required for token in sample[name][0]]
    assert options.from_args(cls, module.build_parser().parse_args(argv)) == cls(**required)
    # the command module writes no default of its own: the parser's come from the config only
    assert "default=" not in inspect.getsource(module)


def test_defaults_shared_with_finetune_and_the_library_are_read_not_repeated():
    assert DiagnoseConfig.rank is RunConfig.rank and DiagnoseConfig.seed is RunConfig.seed
    assert DiagnoseConfig.batch_size is RunConfig.batch_size
    signature = inspect.signature(parameter_table).parameters
    assert signature["model"].default == ParamsConfig.model
    assert signature["ranks"].default == ParamsConfig.rank


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_each_options_default_and_reason(command, capsys, monkeypatch):
    module, cls, _ = SAMPLES[command]
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the terminal's width; here it does not
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    fields = dataclasses.fields(cls)
    for f in fields:
        shown = f"{options.flag(f)} " in text or f"{options.flag(f)}\n" in text  # a long flag: help below
        assert shown and f"; {f.metadata['why']})" in text, f.name
    assert text.count("(default: ") + text.count("(required; ") == len(fields)
    assert "examples:" in text


@pytest.mark.parametrize(("command", "name", "value"),
                         [("params", "rank", (8,)), ("diagnose", "rank", 16), ("claims", "out", "elsewhere"),
                          ("analyze", "seed", 1),
                          ("intruders", "seed", 1),
                          ("finetune", "steps", 600)])
def test_differences_name_a_changed_option(command, name, value):
    _, cls, sample = SAMPLES[command]
    config = cls(**{n: sample[n][1] for n in _required(cls)})
    stored = options.to_dict(config)
    assert options.differences(config, stored) == {}
    changed = options.differences(dataclasses.replace(config, **{name: value}), stored)
    assert list(changed) == [name]
    flag = "--" + name.replace("_", "-")
    assert options.describe_differences(changed, cls).startswith(f"{flag} ")


def _status(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [
        ("params", ["--rank", "0"], "argument --rank: --rank values must"),
        ("params", ["--csv", "--rank", "8,x"], "argument --rank: --rank takes"),
        ("diagnose", ["--task", "sst2", "--out", "OUT", "--rank", "0"],
         "argument --rank: must be > 0"),
        ("diagnose", ["--task", "sst2", "--out", "OUT", "--methods", ","],
         "--methods is empty"),
        ("diagnose", ["--task", "sst2", "--out", "OUT", "--optimizer", "lion"],
         "argument --optimizer: invalid choice: 'lion'"),
        ("claims", ["--studies", "a", "--out", ""], "--out must name a folder"),
        ("claims", ["--out", "r"], "the following arguments are required: --studies"),
        ("analyze", ["--ranks", "8,0", "--out", "OUT"], "--ranks '8,0': expected comma-separated positive"),
        ("analyze", ["--methods", "svd,pissa", "--out", "OUT"], "--methods: unknown factorization method"),
        ("analyze", ["--retry-skipped", "--out", "OUT"], "--retry-skipped only makes sense with --resume"),
        ("analyze", ["--repeats", "0", "--out", "OUT"], "argument --repeats: must be > 0"),
        ("intruders", ["--base", "b", "--tuned", "t", "--out", "OUT", "--mitigate", "0.5,2"],
         "--mitigate must be in [0, 1]"),
        ("intruders", ["--base", "b", "--tuned", "t", "--out", "OUT", "--retry-skipped"],
         "--retry-skipped only makes sense with --resume"),
        ("finetune", ["--task", "sst2", "--out", "OUT", "--methods", ","], "--methods is empty"),
        ("finetune", ["--task", "sst2", "--out", "OUT", "--patience", "2", "--eval-every", "0"],
         "--patience needs evaluations during training"),
        ("finetune", ["--task", "sst2", "--out", "OUT", "--min-delta", "nan"],
         "argument --min-delta: must be"),
    ],
)  # fmt: skip
def test_a_bad_value_exits_2_with_one_line_naming_the_option(command, argv, message, capsys, tmp_path):
    module = SAMPLES[command][0]
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert _status(module.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m lowrank_lab.{command}: error: {message}"), err
    assert err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_the_library_entry_point_runs_without_the_command_line(tmp_path):
    from lowrank_lab.analysis.params import run

    config = ParamsConfig(model="minilm", rank=(8,), methods=("lora",), csv=True)
    result = run(config)
    assert result.path is None
    assert result.table.trainable.item() == 6 * 8 * (4 * (384 + 384) + 2 * (1536 + 384))
    written = run(config, out=tmp_path / "p.csv")
    assert written.path == tmp_path / "p.csv" and written.path.read_text() == result.text
    with pytest.raises(ValueError, match="--rank values must be positive integers"):
        ParamsConfig(rank=(0,))


def test_analyze_runs_from_a_notebook_through_the_library(tmp_path):
    # issue 29, point 6: a notebook calls run(config) and gets the tables and paths back; run.json holds
    # the config as options.to_dict writes it, and the resume check reads it back through differences.
    from lowrank_lab.analysis.analyze_run import run

    config = AnalyzeConfig(layers="0", targets="query", ranks="4,8", methods=("svd", "rsvd"), device="cpu",
                           repeats=1, warmup=0, no_figures=True)
    assert config.ranks == (4, 8)
    result = run(config, tmp_path / "a")
    assert result.out == tmp_path / "a" and result.figures is None and result.is_main
    assert result.methods == ("svd", "rsvd") and result.ranks == (4, 8) and result.matrices == 1
    fact = result.factorization
    assert len(fact) == 4 and list(fact["method"]) == ["svd", "svd", "rsvd", "rsvd"]
    assert list(fact["rank"]) == [4, 8, 4, 8] and (fact["err_ratio"] >= 1 - 1e-4).all()
    assert len(result.spectra) == 1 and result.skipped.empty and result.quantization.empty
    tensor = fact["tensor"].iloc[0]
    assert result.singular_values(tensor).shape == (384,)
    stored = json.loads((tmp_path / "a" / "run.json").read_text())
    assert stored["config"] == options.to_dict(dataclasses.replace(config, out=str(tmp_path / "a")))
    assert stored["resolved"]["methods"] == ["svd", "rsvd"] and stored["resolved"]["ranks"] == [4, 8]
    # no argv given: the command recorded is the one that makes the config (--out included)
    recorded = shlex.split(stored["command"])[3:]
    assert recorded == options.to_argv(dataclasses.replace(config, out=str(result.out)))
    resumed = dataclasses.replace(config, resume=True, methods=("svd",), threads=1)  # resume=False options
    assert run(resumed, tmp_path / "a").rows_written["factorization"] == 0
    with pytest.raises(ValueError, match=r"differ from the stored run \(--ranks \[4\] \(stored \[4, 8\]\)\)"):
        run(dataclasses.replace(resumed, ranks=(4,)), tmp_path / "a")
    with pytest.raises(ValueError, match="--figures and --no-figures contradict"):
        AnalyzeConfig(figures="f", no_figures=True)

