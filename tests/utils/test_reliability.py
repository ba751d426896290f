"""Issue 31, point 8: damaged inputs and failing disks give one line naming the file (and line).

Library-level regression tests; the command-level ones are in tests/cli/test_bad_input_31.py.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lowrank_lab.utils import files
from lowrank_lab.utils.cli import user_error_message
from lowrank_lab.utils.files import (
    TextDecodeError,
    atomic_write_text,
    decode_text,
    open_append,
    read_text_nofollow,
)
from lowrank_lab.utils.tables import RowWriter, complete_rows, read_keys

COLUMNS = ["tensor", "rank", "value"]
GOOD = "tensor,rank,value\r\na,4,0.5\r\nb,4,0.25\r\n"


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# -- case 1: a CSV that cannot be parsed is refused, naming file and line, before anything changes --------
@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        # an unclosed quote swallowed every later row into one field: resume then read no keys after it
        ('tensor,rank,value\r\na,4,0.5\r\n"b,4,0.25\r\nc,4,0.1\r\n', 3, "cannot be parsed as CSV"),
        ("tensor,rank,value\r\na,4,0.5\r\nb,4\r\nc,4,0.1\r\n", 3, "has 2 fields where the header has 3"),
        ("tensor,rank,value\r\na,4,0.5,9\r\n", 2, "has 4 fields where the header has 3"),
        ('tensor,rank,value\r\na,4,0.5\r\n"b"x,4,0.25\r\n', 3, "cannot be parsed as CSV"),
    ],
)
def test_resume_refuses_an_unparseable_row_naming_file_and_line(tmp_path, text, line, problem):
    path = _write(tmp_path / "factorization.csv", text)
    with pytest.raises(ValueError, match=f"line {line} {problem}") as info:
        read_keys(path, ["tensor", "rank"], columns=COLUMNS)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=f"line {line} "):
        RowWriter(path, COLUMNS, ["tensor", "rank"], resume=True)
    assert path.read_bytes() == text.encode()  # nothing appended, nothing rewritten


def test_complete_rows_keeps_good_files_as_they_were(tmp_path):
    # a torn last line (a kill mid-write) is still dropped, blank lines are skipped, and a quoted comma
    # or a quoted newline is one field
    text = 'tensor,rank,value\r\n"a,b",4,0.5\r\n\r\n"multi\nline",8,1\r\nc,4,0.'
    header, rows = complete_rows(text, columns=COLUMNS, path="f.csv")
    assert header == COLUMNS
    assert rows == [(2, ["a,b", "4", "0.5"]), (4, ["multi\nline", "8", "1"])]
    path = _write(tmp_path / "t.csv", text)
    with RowWriter(path, COLUMNS, ["tensor", "rank"], resume=True) as w:
        assert w.n_done == 2 and w.done(("a,b", 4)) and w.done(("multi\nline", 8))
    assert path.read_bytes().endswith(b"8,1\r\n")  # the torn row was cut off


def test_a_header_of_another_layout_is_still_refused(tmp_path):
    path = _write(tmp_path / "t.csv", "tensor,value\r\na,1\r\n")
    with pytest.raises(ValueError, match="its columns .* differ"):
        read_keys(path, ["tensor"], columns=COLUMNS)


def test_a_utf8_byte_order_mark_does_not_hide_the_header(tmp_path):
    path = _write(tmp_path / "t.csv", b"\xef\xbb\xbf" + GOOD.encode())
    assert read_keys(path, ["tensor"], columns=COLUMNS) == {("a",), ("b",)}


# -- case 8: undecodable bytes name the file and the line ---------------------------------------------
def test_undecodable_bytes_on_resume_name_file_and_line(tmp_path):
    raw = GOOD.encode() + b"c\xff\xfe,4,0.1\r\n"
    path = _write(tmp_path / "factorization.csv", raw)
    with pytest.raises(TextDecodeError) as info:
        read_keys(path, ["tensor"], columns=COLUMNS)
    message = str(info.value)
    assert message.startswith(f"{path}: line 4 is not UTF-8 text (byte 0xff)")
    assert "\n" not in message
    with pytest.raises(TextDecodeError, match="line 4 "):
        RowWriter(path, COLUMNS, ["tensor"], resume=True)
    assert path.read_bytes() == raw
    with pytest.raises(TextDecodeError, match="line 1 "):
        read_text_nofollow(_write(tmp_path / "run.json", b'{"a": "\xc3"}'))


def test_decode_text_drops_one_byte_order_mark_and_keeps_line_endings():
    assert decode_text(b"\xef\xbb\xbfa\r\nb\n", "x") == "a\r\nb\n"
    assert decode_text(b"a\r\n", "x") == "a\r\n"


# -- case 7: a full disk names the file being written -------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_in_an_atomic_write_names_the_destination(tmp_path, monkeypatch):
    dest = tmp_path / "summary.md"
    monkeypatch.setattr(Path, "write_text", _enospc)
    with pytest.raises(OSError) as info:
        atomic_write_text(dest, "text")
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(dest)
    assert user_error_message(info.value) == (
        f"{dest}: No space left on device; free some space or pass another --out"
    )
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone, nothing took the name


def test_full_disk_while_fsyncing_an_atomic_write_names_the_destination(tmp_path, monkeypatch):
    dest = tmp_path / "run.json"
    monkeypatch.setattr(files.os, "fsync", _enospc)
    with pytest.raises(OSError) as info:
        atomic_write_text(dest, "{}")
    assert info.value.filename == str(dest)
    assert not dest.exists()


def test_full_disk_in_an_appended_row_names_the_table(tmp_path, monkeypatch):
    path = tmp_path / "factorization.csv"
    writer = RowWriter(path, COLUMNS, ["tensor"])
    monkeypatch.setattr(files.os, "fsync", _enospc)
    with pytest.raises(OSError) as info:
        writer.write({"tensor": "a", "rank": 4, "value": 0.5})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert user_error_message(info.value).startswith(f"{path}: No space left on device")
    monkeypatch.undo()
    writer.close()


def test_full_disk_in_a_plain_append_names_the_file(tmp_path):
    path = tmp_path / "log.csv"
    fh = open_append(path)

    class Full:
        def write(self, text):
            _enospc()

        def flush(self):
            _enospc()

        def close(self):
            pass

    real, fh._fh = fh._fh, Full()
    for call in (lambda: fh.write("x"), fh.flush, fh.sync):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.filename == str(path)
    real.close()


def test_an_error_that_names_its_own_file_keeps_it(tmp_path):
    other = tmp_path / "elsewhere"
    with pytest.raises(OSError) as info, files.naming_path(tmp_path / "meant"):
        raise OSError(errno.EACCES, "Permission denied", str(other))
    assert info.value.filename == str(other)


# -- case 2: the base-SVD cache is checked against its source matrix before it is trusted ---------------
def _cache_entries(cache) -> list[Path]:
    return sorted(cache.directory.rglob("*.safetensors"))


def test_a_rewritten_svd_cache_entry_is_recomputed_with_a_note(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from lowrank_lab.analysis.intruders import base_bases
    from lowrank_lab.analysis.svd_cache import SVDCache

    W = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    cache = SVDCache(tmp_path / "svd")
    fresh, hit = base_bases(W, ("left",), cache=cache)
    assert not hit
    (entry,) = _cache_entries(cache)
    # valid safetensors of the right shapes, all zeros: read as-is it gave wrong counts with exit 0
    save_file({"vectors": torch.zeros(12, 8), "singular_values": torch.zeros(8)}, str(entry))
    capsys.readouterr()
    again, hit = base_bases(W, ("left",), cache=cache)
    assert not hit and cache.rejected == 1
    assert f"note: base-SVD cache entry {entry} does not match its source matrix" in capsys.readouterr().err
    torch.testing.assert_close(again["left"].singular_values, fresh["left"].singular_values)
    torch.testing.assert_close(again["left"].vectors.abs(), fresh["left"].vectors.abs())
    third, hit = base_bases(W, ("left",), cache=cache)  # the entry was rewritten: a hit again, silently
    assert hit and cache.rejected == 1 and capsys.readouterr().err == ""


@pytest.mark.parametrize("tamper", ["payload", "moved"])
def test_an_svd_cache_entry_of_another_matrix_or_changed_payload_is_not_trusted(tmp_path, capsys, tamper):
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lowrank_lab.analysis.svd_cache import SVDCache

    W = torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
    V = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    cache = SVDCache(tmp_path / "svd")
    key_w, key_v = cache.key(W, "left"), cache.key(V, "left")
    U, S, _ = torch.linalg.svd(W)
    U = U.contiguous()
    cache.store(key_w, U, S, side="left")
    assert cache.load(key_w, (6, 6)) is not None
    if tamper == "payload":  # the metadata kept, one number changed
        with safe_open(str(cache.path(key_w)), framework="pt") as fh:
            meta = fh.metadata()
        save_file({"vectors": U, "singular_values": S * 2}, str(cache.path(key_w)), metadata=meta)
        key, why = key_w, "its contents changed after it was written"
    else:  # W's entry under V's name
        cache.path(key_v).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cache.path(key_w), cache.path(key_v))
        key, why = key_v, "it was made from another matrix"
    capsys.readouterr()
    assert cache.load(key, (6, 6)) is None
    assert f"({why}); recomputing it" in capsys.readouterr().err


# -- case 5: a GLUE TSV that starts with a UTF-8 byte-order mark (as the official MRPC files do) ----------
MRPC = ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t1\t2\tThe cat sat.\tA cat was sitting.\n"
        "0\t3\t4\tIt rained \"all\" day.\tThe sun shone.\n")


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "bom"])
def test_glue_tsv_with_a_byte_order_mark_is_read(tmp_path, bom):
    from lowrank_lab.training.tasks import load_examples

    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_bytes(bom + MRPC.encode())
    examples = load_examples("mrpc", tmp_path, "train")
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("The cat sat.", "A cat was sitting.", 1), ('It rained "all" day.', "The sun shone.", 0)
    ]


def test_glue_tsv_with_undecodable_bytes_names_file_and_line(tmp_path):
    from lowrank_lab.training.tasks import TaskFormatError, load_examples

    (tmp_path / "train.tsv").write_bytes(MRPC.encode() + b"1\t5\t6\tbad \xff\tbyte\n")
    (tmp_path / "dev.tsv").write_bytes(MRPC.encode())
    with pytest.raises(TaskFormatError, match=r"train.tsv: line 4 is not UTF-8 text \(byte 0xff\)"):
        load_examples("mrpc", tmp_path, "train")


def test_gsm8k_jsonl_with_a_byte_order_mark_is_read(tmp_path):
    from lowrank_lab.training.tasks import load_examples

    line = '{"question": "1+1?", "answer": "#### 2"}\n'
    (tmp_path / "gsm8k").mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / "gsm8k" / name).write_bytes(b"\xef\xbb\xbf" + (line * 2).encode())
    examples = load_examples("gsm8k", tmp_path, "train")
    assert [(e.text_a, e.text_b) for e in examples] == [("1+1?", "#### 2")] * 2


# -- cosmetic: commands are recorded shell-quoted, as python -m lowrank_lab.<command> -------------------
def test_command_line_quotes_and_names_the_module(monkeypatch):
    import shlex
    import sys

    import lowrank_lab
    from lowrank_lab.utils.provenance import command_argv, command_line

    script = str(Path(lowrank_lab.__file__).parent / "intruders.py")
    assert command_argv([script, "--out", "a b"]) == ["-m", "lowrank_lab.intruders", "--out", "a b"]
    main = str(Path(lowrank_lab.__file__).parent / "__main__.py")
    assert command_argv([main, "-x"])[:2] == ["-m", "lowrank_lab"]
    assert command_argv(["/elsewhere/tool.py", "x"]) == ["/elsewhere/tool.py", "x"]
    line = command_line(["-m", "lowrank_lab.analyze", "--out", "my runs/a", "--targets", "q;rm"])
    assert shlex.split(line)[1:] == ["-m", "lowrank_lab.analyze", "--out", "my runs/a", "--targets", "q;rm"]
    monkeypatch.setattr(sys, "argv", [script, "--out", "x y"])
    assert shlex.split(command_line())[1:] == ["-m", "lowrank_lab.intruders", "--out", "x y"]


def test_the_lock_holder_is_recorded_as_the_module_command(tmp_path, monkeypatch):
    import sys

    import lowrank_lab
    from lowrank_lab.utils.lock import OutputLock

    script = str(Path(lowrank_lab.__file__).parent / "intruders.py")
    monkeypatch.setattr(sys, "argv", [script, "--out", "o p"])
    with OutputLock(tmp_path) as lock:
        assert lock.holder()["command"].split(" ", 1)[1] == "-m lowrank_lab.intruders --out 'o p'"


def test_remove_created_dirs_removes_only_empty_folders_it_made(tmp_path):
    from lowrank_lab.utils.files import created_dirs_mark, ensure_writable_dir, remove_created_dirs

    mark = created_dirs_mark()
    ensure_writable_dir(tmp_path / "a" / "b")
    ensure_writable_dir(tmp_path / "c")
    (tmp_path / "c" / "row.csv").write_text("x\n")
    ensure_writable_dir(tmp_path)  # existed: never removed
    assert remove_created_dirs(mark) == [tmp_path / "a" / "b", tmp_path / "a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    mark = created_dirs_mark()
    ensure_writable_dir(tmp_path / "d")
    assert remove_created_dirs(mark, keep=True) == [] and (tmp_path / "d").is_dir()
    assert remove_created_dirs(mark) == []  # forgotten once handled


# -- cosmetic: a rank waiting at a barrier says what for, and gives up after a bounded time -------------
class _Work:
    """A collective's handle (``async_op=True``) that completes after ``polls`` checks, or never."""

    def __init__(self, polls: float = float("inf"), error: Exception | None = None) -> None:
        self.polls, self.error = polls, error

    def is_completed(self) -> bool:
        self.polls -= 1
        return self.polls < 0

    def wait(self) -> None:
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(("text", "seconds"), [(None, 3600.0), ("", 3600.0), ("90", 90.0), ("0.5", 0.5)])
def test_barrier_timeout_comes_from_the_environment(monkeypatch, text, seconds):
    from lowrank_lab.utils import distributed

    if text is None:
        monkeypatch.delenv(distributed.BARRIER_TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(distributed.BARRIER_TIMEOUT_ENV, text)
    assert distributed.barrier_timeout().total_seconds() == seconds


@pytest.mark.parametrize("text", ["soon", "0", "-5", "inf", "nan"])
def test_a_bad_barrier_timeout_is_named(monkeypatch, text):
    from lowrank_lab.utils import distributed

    monkeypatch.setenv(distributed.BARRIER_TIMEOUT_ENV, text)
    message = rf"\$LOWRANK_LAB_BARRIER_TIMEOUT must be a number of seconds > 0, got '{text}'"
    with pytest.raises(ValueError, match=message):
        distributed.barrier_timeout()


def test_a_barrier_that_never_completes_notes_what_it_waits_for_and_times_out(monkeypatch, capsys):
    import time

    from lowrank_lab.utils import distributed

    monkeypatch.setenv(distributed.BARRIER_TIMEOUT_ENV, "0.4")
    monkeypatch.setattr(distributed, "WAIT_NOTE_SECONDS", 0.1)
    monkeypatch.setattr(distributed.dist, "barrier", lambda async_op: _Work())
    ctx = distributed.DistContext(rank=1, world_size=3)
    start = time.monotonic()
    with pytest.raises(distributed.BarrierTimeoutError) as info:
        ctx.barrier()
    assert 0.4 <= time.monotonic() - start < 5
    message = user_error_message(info.value)
    assert message.startswith("rank 1 of 3 waited 0 s for every rank to finish its share and gives up")
    assert "$LOWRANK_LAB_BARRIER_TIMEOUT sets the wait in seconds" in message and "\n" not in message
    notes = capsys.readouterr().err.splitlines()
    assert 1 <= len(notes) <= 4
    assert notes[0].startswith("rank 1 of 3: waiting for every rank to finish its share (0 s so far; gives")


def test_a_quick_barrier_and_count_exchange_say_nothing(monkeypatch, capsys):
    from lowrank_lab.utils import distributed

    monkeypatch.setattr(distributed.dist, "barrier", lambda async_op: _Work(polls=2))

    def all_reduce(t, async_op):
        t.mul_(2)  # as two ranks holding the same values
        return _Work(polls=1)

    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    ctx = distributed.DistContext(rank=0, world_size=2)
    ctx.barrier()
    assert ctx.sum([1, 2], "whether rank 0 holds --out") == [2, 4]
    assert capsys.readouterr().err == ""


def test_a_rank_that_died_during_a_barrier_is_one_line(monkeypatch):
    from lowrank_lab.utils import distributed

    lost = RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:60629.\nThis is typically...")
    monkeypatch.setattr(distributed.dist, "barrier", lambda async_op: _Work(polls=0, error=lost))
    with pytest.raises(distributed.PeerLostError) as info:
        distributed.DistContext(rank=0, world_size=2).barrier("every part file")
    message = user_error_message(info.value)
    assert message.startswith("rank 0 of 2: another rank left while this one waited for every part file (")
    assert "Connection closed by peer" in message and "\n" not in message


_BARRIER_SCRIPT = """
import sys, time
from lowrank_lab.utils import distributed
distributed.WAIT_NOTE_SECONDS = 1.0
ctx = distributed.init_from_env()
if ctx.rank == 1:
    time.sleep(30)  # a stopped peer: alive, never at the barrier
    sys.exit(0)
try:
    ctx.barrier()
except distributed.BarrierTimeoutError as exc:
    print("gave up:", exc)
"""


@pytest.mark.slow
def test_a_stopped_peer_holds_rank_0_only_as_long_as_the_timeout(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "barrier.py"
    script.write_text(_BARRIER_SCRIPT)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "LOWRANK_LAB_BARRIER_TIMEOUT": "3", "OMP_NUM_THREADS": "1"}
    peer = subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start = time.monotonic()
        rank0 = subprocess.run([sys.executable, str(script)], env={**env, "RANK": "0"},
                               capture_output=True, text=True, timeout=120)
        waited = time.monotonic() - start
    finally:
        peer.kill()
        peer.wait()
    assert "gave up: rank 0 of 2 waited 3 s for every rank to finish its share" in rank0.stdout, rank0.stderr
    assert "rank 0 of 2: waiting for every rank to finish its share" in rank0.stderr
    assert waited < 60


# -- the offline advice names the hf command the installed huggingface_hub ships -------------------------
def test_offline_advice_names_hf_auth_login_not_huggingface_cli():
    from lowrank_lab.weights import open_source
    from lowrank_lab.weights.errors import NotInCacheError

    with pytest.raises(NotInCacheError) as info:
        open_source("acme/gated-not-there")
    message = str(info.value)
    assert "gated models need `hf auth login` first" in message
    assert "hf download acme/gated-not-there" in message and "huggingface-cli" not in message


def test_json_files_written_with_a_byte_order_mark_are_read(tmp_path):
    # issue 31, 8.5: every JSON reader drops a leading byte-order mark, as the TSV and config readers do
    import codecs
    import json

    from lowrank_lab.training.config import RunConfig
    from lowrank_lab.training.record import RunRecord

    rec = RunRecord(config=RunConfig(task="sst2", method="lora"), status="finished", final_metric=0.8)
    path = tmp_path / "run.json"
    path.write_bytes(codecs.BOM_UTF8 + json.dumps(rec.to_dict()).encode())
    back = RunRecord.read(path)
    assert back is not None and back.final_metric == 0.8 and back.config.method == "lora"
