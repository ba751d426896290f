"""What a user or an attacker can do to ``--out`` and the inputs of analyze and intruders (issue 18).

Two runs on one folder, symbolic links planted in it, NaN weights, damaged adapters, a full disk,
bad option values: every case ends with the rows intact and either exit 0 (bad matrices are
skipped and named) or exit 2 with one line that names the true cause, never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.tiny_models import tiny_bert

from lowrank_lab import analyze, intruders, params
from lowrank_lab.analysis import analyze_run
from lowrank_lab.utils.lock import LOCK_NAME, OutputLock

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ANALYZE = "python -m lowrank_lab.analyze"
FAST = ["--methods", "svd", "--ranks", "4", "--device", "cpu", "--repeats", "1", "--warmup", "0"]


def _bert_dir(path: Path, *, nan_in: str | None = None, scale: float | None = None) -> Path:
    """A 2-layer, hidden-48 BERT saved with save_pretrained; one weight poisoned when asked."""
    from safetensors.torch import load_file, save_file

    tiny_bert(0).save_pretrained(path)
    if nan_in is not None:
        file = path / "model.safetensors"
        state = load_file(str(file))
        key = next(k for k in state if nan_in in k and k.endswith(".weight"))
        state[key] = state[key].clone()
        if scale is None:
            state[key][3, 5] = float("nan")
        else:
            state[key] = state[key] * scale
        save_file(state, str(file), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return _bert_dir(tmp_path_factory.mktemp("bert") / "clean")


def _one_line(err: str, prog: str = ANALYZE) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def _analyze(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "lowrank_lab.analyze", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lock(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / LOCK_NAME).exists() and (out / "factorization.csv").exists():
            return
        time.sleep(0.02)
    pytest.fail(f"the first run never took the lock (exit {proc.poll()})")


# -- the lock -----------------------------------------------------------------------------------------


@pytest.mark.slow  # three analyze processes, 15-60 s by load
def test_a_second_run_on_a_busy_out_is_refused_and_no_row_is_lost_or_doubled(tmp_path):
    out = tmp_path / "out"
    # Work enough that the first run is still going when the others have started Python and torch:
    # since analyze factors svd once per matrix, --repeats 3 finished first under load (issue 31).
    argv = ["--layers", "0-5", "--methods", "svd,rsvd", "--ranks", "4,8", "--device", "cpu",
            "--repeats", "10", "--warmup", "0", "--threads", "1", "--out", str(out), "--no-figures"]
    first = _analyze([*argv, "--resume"])
    others = []
    try:
        _wait_for_lock(out, first)
        # resuming it, and starting afresh over it: both at once, so one start-up, not two, is waited for
        others = [_analyze([*argv, *extra]) for extra in (["--resume"], [])]
        outcomes = [other.communicate(timeout=120) for other in others]
        assert first.poll() is None, "the first run finished before the others started; give it more work"
    finally:
        _, err = first.communicate(timeout=600)
    for other, (_, other_err) in zip(others, outcomes, strict=True):
        assert other.returncode == 2
        line = _one_line(other_err)
        assert f"in use by pid {first.pid} on " in line and "started" in line
    assert first.returncode == 0, err
    fact = pd.read_csv(out / "factorization.csv")
    assert len(fact) == 36 * 2 * 2 and not fact.duplicated(["tensor", "method", "rank"]).any()
    assert not (out / LOCK_NAME).exists()  # released at the end


@pytest.mark.slow  # a subprocess
def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys, bert):
    out = tmp_path / "out"
    out.mkdir()
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)

    (out / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                             "started": "2026-01-01T00:00:00"}))
    args = ["--model", str(bert), *FAST, "--out", str(out), "--no-figures"]
    assert analyze.main(args) == 0
    err = capsys.readouterr().err
    assert f"took over the lock of {out} left by pid {int(dead.stdout)}" in err
    assert not (out / LOCK_NAME).exists()


def test_a_held_lock_refuses_intruders_too(tmp_path, capsys, bert):
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out, command="holder"):
        code = intruders.main(["--base", str(bert), "--tuned", str(bert), "--out", str(out), "--no-cache"])
    assert code == 2
    line = _one_line(capsys.readouterr().err, "python -m lowrank_lab.intruders")
    assert f"in use by pid {os.getpid()}" in line and "(holder)" in line


def test_a_waiting_lock_is_taken_as_soon_as_its_holder_lets_go(tmp_path):
    import threading

    first = OutputLock(tmp_path, command="first").acquire()
    second = OutputLock(tmp_path, command="second")
    assert second.holder()["command"] == "first" and second.holder()["pid"] == os.getpid()
    timer = threading.Timer(0.3, first.release)
    timer.start()
    t0 = time.monotonic()
    assert second.acquire(wait=True, poll=0.02) is second and second.held
    assert 0.25 < time.monotonic() - t0 < 5
    assert second.holder()["command"] == "second"
    with second:  # already held: 'with' keeps it (no second flock on the file) and lets go at the end
        assert second.held
    assert not second.held
    second.release()
    assert second.holder() == {} and not (tmp_path / LOCK_NAME).exists()


# -- symbolic links ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["summary.md", "run.json", "factorization.csv", "singular_values"])
def test_a_planted_symlink_in_out_is_refused_and_its_target_untouched(tmp_path, capsys, bert, name):
    out = tmp_path / "out"
    args = ["--model", str(bert), *FAST, "--out", str(out), "--no-figures"]
    assert analyze.main(args) == 0
    capsys.readouterr()
    victim = tmp_path / "victim"
    victim.mkdir() if name == "singular_values" else victim.write_text("precious\n")
    target = out / name
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    else:
        target.unlink()
    target.symlink_to(victim)
    assert analyze.main([*args, "--resume"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "symbolic link" in line and name in line
    if name == "singular_values":
        assert list(victim.iterdir()) == []
    else:
        assert victim.read_text() == "precious\n"


def test_resume_checks_a_csv_header_before_changing_the_file(tmp_path, capsys, bert):
    out = tmp_path / "out"
    args = ["--model", str(bert), *FAST, "--out", str(out), "--no-figures"]
    assert analyze.main(args) == 0
    capsys.readouterr()
    foreign = b"a,b,c\r\n1,2,3\r\n4,5"  # another file's layout, with a torn last line
    (out / "factorization.csv").write_bytes(foreign)
    assert analyze.main([*args, "--resume"]) == 2
    assert "columns" in _one_line(capsys.readouterr().err)
    assert (out / "factorization.csv").read_bytes() == foreign  # not cut at its last newline


# -- bad matrices -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "reason"), [(None, "1 NaN and 0 Inf"), (0.0, "all entries are zero"),
                                                 (1e30, "overflows torch.float32"),
                                                 (1e-25, "underflows torch.float32")])
def test_a_bad_matrix_is_skipped_with_its_reason_and_the_run_goes_on(
    tmp_path, capsys, monkeypatch, scale, reason
):
    model = _bert_dir(tmp_path / "bad", nan_in="layer.1.attention.self.key", scale=scale)
    out = tmp_path / "out"
    args = ["--model", str(model), *FAST, "--out", str(out), "--no-figures"]
    assert analyze.main(args) == 0
    err = capsys.readouterr().err
    assert "warning: 1 matrices could not be factored" in err and reason in err
    skipped = pd.read_csv(out / "skipped.csv")
    bad = skipped[skipped["tensor"].str.contains("layer.1.attention.self.key")]
    assert len(bad) == 1 and reason in bad["reason"].iloc[0] and pd.isna(bad["rank"].iloc[0])
    fact = pd.read_csv(out / "factorization.csv")
    assert fact["tensor"].nunique() == 11 and fact["err_ratio"].notna().all()
    assert "layer.1.attention.self.key" in (out / "summary.md").read_text()
    # --resume leaves it skipped (the weights are read for nothing else); --retry-skipped tries again.
    loads = []
    real = analyze_run.open_source

    def spy(*a, **k):
        src = real(*a, **k)
        load = src.load
        src.load = lambda info: loads.append(info.tensor) or load(info)
        return src

    monkeypatch.setattr(analyze_run, "open_source", spy)
    assert analyze.main([*args, "--resume"]) == 0
    assert loads == []
    assert analyze.main([*args, "--resume", "--retry-skipped"]) == 0
    assert len(loads) == 1 and "layer.1.attention.self.key" in loads[0]
    assert len(pd.read_csv(out / "skipped.csv")) == 1


def test_intruders_skips_a_nan_matrix_and_counts_the_rest(tmp_path, capsys, bert):
    tuned = _bert_dir(tmp_path / "tuned", nan_in="layer.0.attention.self.query")
    out = tmp_path / "out"
    code = intruders.main(["--base", str(bert), "--tuned", str(tuned), "--out", str(out), "--no-cache",
                           "--no-figures"])
    assert code == 0
    assert "warning: 1 matrices could not be compared" in capsys.readouterr().err
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["tensor"].tolist() == ["encoder.layer.0.attention.self.query.weight"]
    assert skipped["reason"].iloc[0].startswith("tuned weight: the matrix has 1 NaN")
    rows = pd.read_csv(out / "intruders.csv")
    assert rows["tensor"].nunique() == 11 and "query" in (out / "summary.md").read_text()


# -- one-line errors ---------------------------------------------------------------------------------


def _peft_dir(path: Path) -> Path:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    return path


def test_truncated_adapter_is_a_one_line_error(tmp_path, capsys, bert):
    from safetensors.torch import save_file

    adapter = _peft_dir(tmp_path / "adapter")
    save_file({"base_model.model.encoder.layer.0.attention.self.query.lora_A.weight": torch.zeros(2, 48),
               "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight": torch.zeros(48, 2)},
              str(adapter / "adapter_model.safetensors"))
    data = (adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    assert intruders.main(["--base", str(bert), "--adapter", str(adapter), "--out", str(tmp_path / "o")]) == 2
    line = _one_line(capsys.readouterr().err, "python -m lowrank_lab.intruders")
    assert "adapter_model.safetensors is not a readable safetensors file" in line and "truncated" in line


def test_pickle_bearing_adapter_is_refused_not_run(tmp_path, capsys, bert):
    import pickle

    adapter = _peft_dir(tmp_path / "adapter")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (adapter / "adapter_model.bin").write_bytes(pickle.dumps({"x": Payload()}))
    assert intruders.main(["--base", str(bert), "--adapter", str(adapter), "--out", str(tmp_path / "o")]) == 2
    line = _one_line(capsys.readouterr().err, "python -m lowrank_lab.intruders")
    assert "adapter_model.bin cannot be loaded safely" in line
    assert not marker.exists()


def test_a_full_disk_is_a_one_line_error_naming_the_file(tmp_path, capsys, monkeypatch, bert):
    from lowrank_lab.utils.tables import RowWriter

    def full(self, row, *, sync=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(RowWriter, "write", full)
    out = tmp_path / "out"
    args = ["--model", str(bert), *FAST, "--out", str(out), "--no-figures"]
    assert analyze.main(args) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{out}/spectra.csv: No space left on device; free some space" in line
    assert not (out / LOCK_NAME).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_singular_values_folder_is_a_one_line_error(tmp_path, capsys, bert):
    out = tmp_path / "out"
    args = ["--model", str(bert), *FAST, "--out", str(out), "--no-figures"]
    assert analyze.main(args) == 0
    (out / "singular_values").chmod(0o555)
    try:
        assert analyze.main(args) == 2
    finally:
        (out / "singular_values").chmod(0o755)
    assert "singular_values" in _one_line(capsys.readouterr().err)


def test_a_singular_values_folder_that_refuses_writes_is_a_one_line_error(
    tmp_path, capsys, monkeypatch, bert
):
    # What a read-only singular_values/ gives a non-root user, simulated so that root sees it too.
    import tempfile

    real = tempfile.mkstemp

    def refuse(*a, dir=None, **k):
        if dir is not None and Path(dir).name == "singular_values":
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "out"
    args = ["--model", str(bert), *FAST, "--out", str(out), "--no-figures"]
    assert analyze.main(args) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--out '{out}/singular_values' is not a writable directory (Permission denied)" in line
    assert not (out / LOCK_NAME).exists()


def test_an_unreadable_checkpoint_is_a_one_line_error(tmp_path, capsys, bert):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bert, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    assert analyze.main(["--model", str(broken), *FAST, "--out", str(tmp_path / "o"),
                         "--figures", str(tmp_path / "f")]) == 2
    assert "model.safetensors" in _one_line(capsys.readouterr().err)


def test_an_unreadable_config_is_not_called_invalid_json(tmp_path, capsys, monkeypatch, bert):
    real = Path.read_text

    def denied(self, *a, **k):  # what a chmod 000 gives a non-root user
        if self.name == "config.json" and self.parent == bert:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)
    assert analyze.main(["--model", str(bert), *FAST, "--out", str(tmp_path / "o"),
                         "--figures", str(tmp_path / "f")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"cannot read {bert}/config.json: Permission denied" in line and "not valid JSON" not in line


def test_an_unreadable_shard_is_not_called_missing(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    sharded = _bert_dir(tmp_path / "sharded")
    state = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    keys = sorted(state)
    half = len(keys) // 2
    for name, part in (("a.safetensors", keys[:half]), ("b.safetensors", keys[half:])):
        save_file({k: state[k] for k in part}, str(sharded / name), metadata={"format": "pt"})
    index = {"weight_map": {k: "a.safetensors" if i < half else "b.safetensors" for i, k in enumerate(keys)}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    (sharded / "b.safetensors").unlink()
    (sharded / "b.safetensors").mkdir()  # there, but not a file that can be read
    capsys.readouterr()
    assert analyze.main(["--model", str(sharded), *FAST, "--out", str(tmp_path / "o"),
                         "--figures", str(tmp_path / "f")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "names shard b.safetensors, which cannot be read (not a regular file)" in line
    assert "not in" not in line  # not reported as missing


@pytest.mark.parametrize(
    ("main", "argv", "prog", "message"),
    [
        (analyze.main, ["--device", "tpu"], ANALYZE, "device 'tpu' is not one of auto, cpu, cuda, cuda:N"),
        (intruders.main, ["--base", "minilm", "--tuned", "minilm", "--device", "tpu"],
         "python -m lowrank_lab.intruders", "device 'tpu' is not one of"),
    ],
)
def test_an_unknown_device_is_a_one_line_error(tmp_path, capsys, main, argv, prog, message):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert message in _one_line(capsys.readouterr().err, prog)


@pytest.mark.parametrize("cli", [analyze, intruders])
@pytest.mark.parametrize("value", ["18446744073709551616", "-1"])
def test_seed_out_of_range_is_refused(cli, value, capsys):
    base = ["--base", "minilm", "--tuned", "minilm"] if cli is intruders else []
    with pytest.raises(SystemExit) as exc:
        cli.main([*base, "--seed", value])
    assert exc.value.code == 2
    assert "argument --seed: must be in 0 .. 2**63-1" in capsys.readouterr().err


def test_params_rank_above_the_smallest_target_dimension_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        params.main(["--model", "llama-7b", "--rank", "8,100000"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--rank 100000" in err and "4096" in err and "Traceback" not in err
    assert params.main(["--model", "llama-7b", "--rank", "4096"]) == 0
