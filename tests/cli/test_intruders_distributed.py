"""torchrun with 2 CPU processes (gloo) writes the same intruders files as one process (issue 9)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lowrank_lab.utils.distributed import launch_command

# torchrun with 2 processes: ~25-60 s a test, ~190 s the two files (issue 31: slow, run by CI).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH"),
]

ARGS = ["--side", "both", "--top-k", "6", "--sweep", "--threads", "1"]
N_MATRICES = 12  # 2 layers x 6 BERT target modules


def _save_bert(path: Path, seed: int, perturb: float = 0.0) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    model = BertModel(cfg).eval()
    if perturb:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 2 and "encoder.layer" in name:
                    # a rank-2 update of random size per matrix: intruder counts differ across matrices
                    u, v = torch.randn(p.shape[0], 2, generator=g), torch.randn(2, p.shape[1], generator=g)
                    p.add_(perturb * torch.rand(1, generator=g) * u @ v)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bert")
    _save_bert(root / "base", 0)
    _save_bert(root / "tuned", 1, perturb=0.3)
    return root / "base", root / "tuned"


def _run(cmd: list[str], weights, out: Path, *extra: str) -> subprocess.CompletedProcess:
    base, tuned = weights
    # torchrun leaves torchelastic_* folders in TMPDIR: in the test's own folder, they go with it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TMPDIR": str(out.parent)}
    proc = subprocess.run(
        [
            *cmd,
            "--base",
            str(base),
            "--tuned",
            str(tuned),
            *ARGS,
            "--out",
            str(out),
            "--cache-dir",
            str(out.parent / f"{out.name}-cache"),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _torchrun(weights, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(launch_command("lowrank_lab.intruders", 2), weights, out, *extra)


def _text(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def single(weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    _run([sys.executable, "-m", "lowrank_lab.intruders"], weights, out)
    return out


def test_two_processes_write_the_single_process_rows_row_for_row(weights, single, tmp_path) -> None:
    out = tmp_path / "dist"
    proc = _torchrun(weights, out)
    # intruders.csv and sweep.csv carry no timing column: every cell is identical, as text (line
    # endings aside: RowWriter ends rows with \r\n, merge_csv_parts with \n)
    for name in ("intruders.csv", "sweep.csv"):
        pd.testing.assert_frame_equal(_text(out / name), _text(single / name))
    assert not (out / "parts").exists()  # folded into intruders.csv
    figs = sorted(p.name for p in out.glob("*.png"))
    assert figs == sorted(p.name for p in single.glob("*.png"))
    assert len(figs) == 2  # count_vs_epsilon + the similarity heatmap drawn by the rank that owned it
    meta = json.loads((out / "run.json").read_text())
    assert meta["world_size"] == 2 and meta["computed"] == N_MATRICES == meta["matrices"]
    assert meta["cache"]["misses"] == 2 * N_MATRICES  # one per matrix and side, summed over ranks
    assert proc.stdout.count("matrices, intruders") == 1  # only rank 0 reports


def test_resume_after_an_interrupted_distributed_run_computes_only_missing_matrices(
    weights, single, tmp_path
) -> None:
    # What an interrupted 2-rank run leaves: 3 matrices merged, rank 1's next 4 still in its part
    # file, the other 5 never computed.
    out = tmp_path / "dist"
    shutil.copytree(single, out)
    rows = _text(out / "intruders.csv")
    per_matrix = 2 * 6  # both sides x top-6
    (out / "parts").mkdir()
    rows.iloc[: 3 * per_matrix].to_csv(out / "intruders.csv", index=False)
    rows.iloc[3 * per_matrix : 7 * per_matrix].to_csv(out / "parts" / "intruders.rank1.csv", index=False)
    _torchrun(weights, out, "--resume")
    pd.testing.assert_frame_equal(_text(out / "intruders.csv"), _text(single / "intruders.csv"))
    assert _text(out / "sweep.csv").equals(_text(single / "sweep.csv"))
    assert json.loads((out / "run.json").read_text())["computed"] == 5
    assert not (out / "parts").exists()
