"""lowrank_lab.utils.options: a frozen config dataclass as the single source of a command's options."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lowrank_lab.utils import options


def _positive(text: str) -> int:
    return int(text)  # the check is the config's, so a library caller gets it too


@dataclass(frozen=True)
class Toy:
    """A config with one field of every kind the commands use."""

    name: str = field(metadata={"help": "a required name", "why": "no default: the caller's"})
    rank: int = field(default=8, metadata={"help": "rank", "why": "LoRA's r", "type": _positive})
    ranks: tuple[int, ...] = field(
        default=(4, 8), metadata={"help": "ranks", "why": "two to compare", "type": int, "nargs": "+"}
    )
    tags: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "tags", "why": "all", "shown": "every tag",
                  "type": lambda t: tuple(t.split(","))},
    )  # fmt: skip
    mode: str = field(default="a", metadata={"help": "mode", "why": "the paper's", "choices": ["a", "b"]})
    share: float = field(default=0.5, metadata={"help": "share in %", "why": "half", "type": float})
    out: Path | None = field(default=None, metadata={"help": "file", "why": "stdout", "type": Path})
    dry: bool = field(default=False, metadata={"help": "do nothing", "why": "a run is wanted"})

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"--rank must be >= 1, got {self.rank}")


def _parser():
    return options.build_parser(Toy, "toy", "A toy command.", "examples: none")


def test_parser_defaults_are_the_dataclass_defaults():
    parser = _parser()
    by_dest = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(Toy):
        action = by_dest[f.name]
        if f.default is dataclasses.MISSING:
            assert action.required
        else:
            assert action.default is f.default or action.default == f.default
    assert options.from_args(Toy, parser.parse_args(["--name", "x"])) == Toy(name="x")


def test_every_flag_round_trips_into_the_config():
    argv = ["--name", "x", "--rank", "16", "--ranks", "1", "2", "3", "--tags", "p,q", "--mode", "b",
            "--share", "0.25", "--out", "t.md", "--dry"]  # fmt: skip
    config = options.parse_config(Toy, _parser(), argv)
    assert config == Toy(name="x", rank=16, ranks=(1, 2, 3), tags=("p", "q"), mode="b", share=0.25,
                         out=Path("t.md"), dry=True)  # fmt: skip
    assert isinstance(config.ranks, tuple)  # nargs gives a list; a frozen config holds a tuple
    assert options.parse_config(Toy, _parser(), options.to_argv(config)) == config
    assert options.to_argv(Toy(name="x")) == ["--name", "x"]  # defaults are not written


def test_help_shows_each_default_and_its_reason(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no wrapping inside the texts
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for line in ("rank (default: 8; LoRA's r)", "ranks (default: 4,8; two to compare)",
                 "tags (default: every tag; all)", "share in % (default: 0.5; half)",
                 "do nothing (default: off; a run is wanted)", "a required name (required; no default"):
        assert line in text  # fmt: skip


def test_an_option_without_its_reason_is_refused():
    @dataclass(frozen=True)
    class NoWhy:
        rank: int = field(default=8, metadata={"help": "rank"})

    with pytest.raises(TypeError, match="NoWhy.rank: an option needs metadata 'help' and 'why'"):
        options.build_parser(NoWhy, "x", "x")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "x", "--rank", "0"], "toy: error: --rank must be >= 1, got 0"),
        (["--name", "x", "--mode", "c"], "toy: error: argument --mode: invalid choice: 'c'"),
        (["--name", "x", "--share", "half"], "toy: error: argument --share: invalid float value"),
        (["--rank", "4"], "toy: error: the following arguments are required: --name"),
    ],
)
def test_a_bad_value_exits_2_with_one_line_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        options.parse_config(Toy, _parser(), argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "usage" not in err


def test_checks_run_for_library_callers_too():
    with pytest.raises(ValueError, match="--rank must be >= 1, got 0"):
        Toy(name="x", rank=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Toy(name="x").rank = 3  # type: ignore[misc]


def test_to_dict_is_json_and_from_dict_gives_the_config_back():
    config = Toy(name="x", ranks=(1, 2), tags=("p",), out=Path("o/t.md"), dry=True)
    record = json.loads(json.dumps(options.to_dict(config)))
    assert record["ranks"] == [1, 2] and record["out"] == "o/t.md"
    back = options.from_dict(Toy, record)
    assert back.ranks == (1, 2) and back.tags == ("p",) and back.dry is True
    # a record written before a field existed, or holding one since removed
    old = {k: v for k, v in record.items() if k not in ("mode", "share")} | {"gone": 1}
    assert options.from_dict(Toy, old).mode == "a"


def test_differences_name_the_changed_options():
    stored = options.to_dict(Toy(name="x"))
    assert options.differences(Toy(name="x"), stored) == {}
    changed = options.differences(Toy(name="x", rank=16, ranks=(4, 8, 16)), stored)
    assert changed == {"rank": (8, 16), "ranks": ([4, 8], [4, 8, 16])}
    described = options.describe_differences(changed, Toy)
    assert described == "--rank 16 (stored 8), --ranks [4, 8, 16] (stored [4, 8])"
    # a field the stored record lacks counts as its default
    lacking = {k: v for k, v in stored.items() if k != "mode"}
    assert options.differences(Toy(name="x"), lacking) == {}
    assert options.differences(Toy(name="x", mode="b"), lacking) == {"mode": ("a", "b")}


def test_option_writes_the_field_and_refuses_a_misspelt_key():
    @dataclass(frozen=True)
    class Short:
        rank: int = options.option(8, help="rank", why="LoRA's r", type=int)

    (f,) = dataclasses.fields(Short)
    assert f.default == 8 and dict(f.metadata) == {"help": "rank", "why": "LoRA's r", "type": int}
    with pytest.raises(TypeError, match="unknown metadata defualt"):
        options.option(8, help="rank", why="r", defualt=4)


@dataclass(frozen=True)
class Resumable:
    rank: int = options.option(8, help="rank", why="LoRA's")
    threads: int | None = options.option(None, help="threads", why="torch's", resume=False)


def test_check_resume_passes_without_run_json_and_with_same_options(tmp_path):
    options.check_resume(Resumable(), tmp_path / "run.json")  # nothing stored: nothing to refuse
    (tmp_path / "run.json").write_text(json.dumps({"config": options.to_dict(Resumable())}))
    options.check_resume(Resumable(threads=4), tmp_path / "run.json")  # threads do not change results


def test_check_resume_refuses_a_changed_option_naming_flag_and_values(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"config": options.to_dict(Resumable())}))
    with pytest.raises(ValueError, match=r"--rank 16 \(stored 8\)") as err:
        options.check_resume(Resumable(rank=16), tmp_path / "run.json")
    assert str(tmp_path) in str(err.value) and "new --out" in str(err.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"other": 1}'])
def test_check_resume_refuses_an_unreadable_record_naming_the_file(tmp_path, text):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(ValueError, match="run.json"):
        options.check_resume(Resumable(), tmp_path / "run.json")


@dataclass(frozen=True)
class Repeated:
    """finetune's kinds: an option given several times, a bare flag's value, excluding options, aliases."""

    grid: tuple[str, ...] | None = options.option(
        None, help="grid", why="off", action="append", nargs="?", const="default"
    )
    pairs: tuple[str, ...] = options.option((), help="KEY=VALUE", why="none", action="append")
    steps: int = options.option(3, help="steps", why="short", type=int, group="budget")
    epochs: float | None = options.option(None, help="epochs", why="steps", type=float, group="budget")
    seeds: str = options.option("1", help="seeds", why="one", flag="--seeds", aliases=("--seed",))


def test_append_const_aliases_and_excluding_groups(capsys):
    parser = options.build_parser(Repeated, "rep", "Repeated options.")
    assert options.parse_config(Repeated, parser, []) == Repeated()
    argv = ["--grid", "--grid", "a=1", "--pairs", "k=v", "--seed", "2"]
    config = options.parse_config(Repeated, parser, argv)
    assert config == Repeated(grid=("default", "a=1"), pairs=("k=v",), seeds="2")
    assert options.to_argv(config) == ["--grid", "--grid", "a=1", "--pairs", "k=v", "--seeds", "2"]
    assert options.parse_config(Repeated, parser, options.to_argv(config)) == config
    assert Repeated.pairs == () and parser.parse_args([]).pairs == ()  # the default is not mutated
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--steps", "2", "--epochs", "1"])
    assert exc.value.code == 2 and "not allowed with argument --steps" in capsys.readouterr().err
