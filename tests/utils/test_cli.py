"""The argument types every command-line entry point shares (lowrank_lab.utils.cli)."""

from __future__ import annotations

import argparse
import math

import pytest

from lowrank_lab import analyze, finetune, intruders
from lowrank_lab.utils.cli import csv_list, guarded_main, nonnegative_int, positive, unit_interval


def test_csv_list_drops_blanks_and_spaces():
    assert csv_list(" lora, pissa,,full ,") == ["lora", "pissa", "full"]
    assert csv_list("") == []


@pytest.mark.parametrize(("kind", "text", "value"), [(int, "3", 3), (float, "2.5e-4", 2.5e-4)])
def test_positive_accepts_numbers_above_zero(kind, text, value):
    assert positive(kind)(text) == value


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (int, "0", "must be > 0, got '0'"),
        (int, "-2", "must be > 0"),
        (int, "1.5", "expected a int, got '1.5'"),
        (float, "nan", "must be > 0"),
        (float, "abc", "expected a float"),
    ],
)
def test_positive_rejects_with_what_was_given(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        positive(kind)(text)


def test_nonnegative_int_allows_zero_only_from_below():
    assert nonnegative_int("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="must be >= 0, got '-1'"):
        nonnegative_int("-1")


def test_unit_interval_is_half_open_and_names_the_option():
    parse = unit_interval("--epsilon", "|cos| lies in [0, 1]")
    assert parse("1") == 1.0 and parse("0.5") == 0.5
    for bad in ("0", "1.01", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"--epsilon must be in \(0, 1\] \(\|cos\|"):
            parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="must be a number"):
        parse("half")
    assert math.isclose(unit_interval("--x")("0.25"), 0.25)


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (analyze.main, ["--repeats", "0"], "argument --repeats: must be > 0"),
        (analyze.main, ["--threads", "-1"], "argument --threads: must be > 0"),
        (analyze.main, ["--warmup", "-1"], "argument --warmup: must be >= 0"),
        (intruders.main, ["--base", "minilm", "--top-k", "0"], "argument --top-k: must be > 0"),
        (finetune.main, ["--task", "sst2", "--steps", "0"], "argument --steps: must be > 0"),
        (finetune.main, ["--task", "sst2", "--eval-every", "-1"], "argument --eval-every: must be >= 0"),
    ],
)
def test_every_cli_rejects_a_bad_number_with_status_2_naming_the_option(main, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _raise(exc: BaseException):
    def body() -> int:
        raise exc

    return body


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (ValueError("bad --rank:\n  give one > 0"), "prog: error: bad --rank: give one > 0"),
        (PermissionError(13, "Permission denied", "/ro/out.csv"), "/ro/out.csv"),
    ],
)
def test_guarded_main_turns_user_errors_into_one_line_and_exit_2(capsys, exc, line):
    assert guarded_main("prog", _raise(exc)) == 2
    err = capsys.readouterr().err
    assert line in err and err.count("\n") == 1 and "Traceback" not in err


def test_guarded_main_stops_quietly_when_the_reader_of_stdout_leaves():
    import subprocess
    import sys

    code = ("import sys; from lowrank_lab.utils.cli import guarded_main\n"
            "def body():\n    for _ in range(10**6): print('row ' * 20)\n    return 0\n"
            "sys.exit(guarded_main('prog', body))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"row ")  # `| head -1`: read one line, then leave
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""  # no "error: Broken pipe", no traceback


def test_guarded_main_interrupt_message_is_a_string_or_a_function_of_the_interrupt(capsys):
    assert guarded_main("prog", _raise(KeyboardInterrupt()), interrupted="rerun with --resume") == 130
    assert capsys.readouterr().err.strip() == "prog: interrupted; rerun with --resume"
    said = guarded_main("prog", _raise(KeyboardInterrupt("at step 7")), interrupted=lambda e: f"stopped {e}")
    assert said == 130 and capsys.readouterr().err.strip() == "prog: interrupted; stopped at step 7"


def test_guarded_main_keeps_the_traceback_of_a_bug():
    with pytest.raises(ZeroDivisionError):
        guarded_main("prog", lambda: 1 // 0)
    assert guarded_main("prog", lambda: 0) == 0
