"""Hub ids resolved from huggingface_hub's cache layout, wherever the environment puts the cache."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import torch

from lowrank_lab.weights import MODELS, NotInCacheError, model_dir, open_source
from lowrank_lab.weights.hub import cached_snapshot, hub_cache_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(cache, repo_id, source, commit=COMMIT, ref=True):
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    if ref:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_id_from_hf_hub_cache(tiny_llama, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = _fake_cache(cache, "acme/tiny-llama", tiny_llama[0])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    src = open_source("acme/tiny-llama", layers="0")
    assert src.name == "acme/tiny-llama" and src.origin == str(snapshot)
    wm = next(iter(src))
    assert torch.equal(wm.weight, tiny_llama[1][wm.tensor])
    assert model_dir("acme/tiny-llama") == snapshot


def test_hf_home_is_honoured(tiny_llama, tmp_path, monkeypatch):
    home = tmp_path / "home"
    snapshot = _fake_cache(home / "hub", "acme/tiny-llama", tiny_llama[0])
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(home))
    assert hub_cache_dir() == home / "hub"
    assert model_dir("acme/tiny-llama") == snapshot


def test_snapshot_without_refs_uses_newest(tiny_llama, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    old = _fake_cache(cache, "acme/tiny-llama", tiny_llama[0], commit="a" * 40, ref=False)
    new = _fake_cache(cache, "acme/tiny-llama", tiny_llama[0], commit="b" * 40, ref=False)
    past = time.time() - 3600
    os.utime(old, (past, past))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert cached_snapshot("acme/tiny-llama") == new


def test_registry_name_resolves_through_its_hub_id(tiny_llama, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = _fake_cache(cache, "acme/tiny-llama", tiny_llama[0])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    spec = open_source(tiny_llama[0]).spec
    from dataclasses import replace

    monkeypatch.setitem(MODELS, "tiny-llama", replace(spec, name="tiny-llama", hub_id="acme/tiny-llama"))
    src = open_source("tiny-llama")
    assert src.name == "tiny-llama" and src.spec.hub_id == "acme/tiny-llama" and src.origin == str(snapshot)
    assert len(src) == 77


def test_snapshot_without_weights_is_an_error(tiny_llama, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = _fake_cache(cache, "acme/tiny-llama", tiny_llama[0])
    for f in snapshot.glob("*.safetensors*"):
        f.unlink()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(NotInCacheError, match="without weights"):
        open_source("acme/tiny-llama")


def test_download_false_never_tries(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(NotInCacheError, match="download=False"):
        open_source("acme/not-there", download=False)
