from __future__ import annotations

import json
import time

import pytest

from lowrank_lab.utils.provenance import run_metadata, write_run_json
from lowrank_lab.utils.timing import Stopwatch, median_ci, time_call


def test_time_call_reports_the_median_of_the_timed_repeats() -> None:
    calls = []

    def fn() -> int:
        calls.append(1)
        time.sleep(0.002 * len(calls))
        return len(calls)

    res = time_call(fn, repeats=3, warmup=2)
    assert len(calls) == 5 and res.result == 5 and len(res.times) == 3
    assert res.median == sorted(res.times)[1] and res.median >= 0.008
    with pytest.raises(ValueError, match="repeats"):
        time_call(fn, repeats=0)


def test_stopwatch_measures_its_block() -> None:
    with Stopwatch("cpu") as sw:
        time.sleep(0.01)
    assert sw.seconds >= 0.01


def test_run_json_records_how_the_file_was_made(tmp_path) -> None:
    meta = run_metadata(["-m", "lowrank_lab.analyze", "--seed", "3"], seed=3, device="cpu", extra={"k": 1})
    path = write_run_json(tmp_path / "run.json", meta, wall_seconds=1.23456)
    rec = json.loads(path.read_text())
    assert rec["command"].endswith("-m lowrank_lab.analyze --seed 3")
    assert rec["seed"] == 3 and rec["k"] == 1 and rec["wall_seconds"] == 1.235
    assert rec["versions"]["torch"] and rec["threads"] >= 1 and rec["device"].startswith("cpu")
    assert not list(tmp_path.glob("*.tmp"))


def test_cpu_model_names_the_cpu_and_its_vector_extension(tmp_path) -> None:
    from lowrank_lab.utils.provenance import cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx avx2 avx512f\n")
    assert cpu_model(info) == "Test CPU 9000 (avx512f)"
    info.write_text("model name\t: Older CPU\nflags\t\t: fpu sse2 avx avx2\n")
    assert cpu_model(info) == "Older CPU (avx2)"
    assert cpu_model(tmp_path / "absent")  # no /proc: platform's name, never an error
    assert run_metadata([])["cpu"] == cpu_model()


def test_median_ci_is_the_sign_test_interval():
    # n = 15: P(B(15, 1/2) <= 3) = 0.0176 <= 0.025 < P(B <= 4) = 0.059, so k = 4: [x_(4), x_(12)]
    xs = [float(i) for i in range(1, 16)]
    assert median_ci(xs[::-1]) == (8.0, 4.0, 12.0)
    # n = 5 is too few for any 95% interval: the whole range
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) == (3.0, 1.0, 5.0)
    med, lo, hi = median_ci([1.0] * 30)
    assert med == lo == hi == 1.0
