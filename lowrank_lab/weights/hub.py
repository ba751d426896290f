"""Hub ids resolved from the local Hugging Face cache, downloading only when allowed.

The cache layout is huggingface_hub's (``<cache>/models--<org>--<name>/refs/<revision>`` holds a
commit hash, ``snapshots/<hash>/`` holds the files), with the cache found as huggingface_hub
finds it: ``$HF_HUB_CACHE``, else ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``. The environment is read
at call time, so a test (or a user) can point it elsewhere without re-importing anything.

Downloading is allowed only when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are unset and the
caller did not pass ``download=False``; it fetches configs, safetensors and tokenizer files only.
When the snapshot is absent and cannot be fetched the error says where it looked and gives the
exact command.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import NotInCacheError

_TRUE = {"1", "true", "yes", "on"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` with hub-legal characters (``meta-llama/Llama-2-7b-hf``)."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache directory, from the environment as huggingface_hub reads it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` forbids network access."""
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def repo_cache_dir(repo_id: str, cache: Path | None = None) -> Path:
    """``<cache>/models--org--name`` for ``org/name``."""
    return (cache or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def _has_weights(snapshot: Path) -> bool:
    return (snapshot / "config.json").is_file() and (
        any((snapshot / w).is_file() for w in _WEIGHTS) or any(snapshot.glob("*.safetensors"))
    )


def cached_snapshot(repo_id: str, revision: str = "main", cache: Path | None = None) -> Path | None:
    """The snapshot directory of ``repo_id`` in the cache, or None.

    ``refs/<revision>`` names the commit; a revision that is itself a commit hash is used
    directly; with no ref, the most recently modified snapshot holding a ``config.json`` is used
    (a cache copied from another machine often lacks refs).
    """
    repo = repo_cache_dir(repo_id, cache)
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        if (snapshots / commit).is_dir():
            return snapshots / commit
    if (snapshots / revision).is_dir():
        return snapshots / revision
    candidates = [p for p in snapshots.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)


def fetch_command(repo_id: str) -> str:
    """The shell command that puts ``repo_id`` in the cache: ``hf``, the command line of the installed
    huggingface_hub, which ships no ``huggingface-cli`` any more."""
    return f"hf download {repo_id}"


def resolve_hub_id(
    repo_id: str, *, revision: str = "main", download: bool | None = None, synthetic_hint: str | None = None
) -> Path:
    """Local directory of ``repo_id``: the cached snapshot, or a fresh download when allowed.

    Parameters
    ----------
    repo_id : str
        ``org/name``.
    revision : str
        Branch, tag or commit (``"main"``).
    download : bool or None
        None or True: download when the environment allows it (``HF_HUB_OFFLINE`` and
        ``TRANSFORMERS_OFFLINE`` unset — a user who set them forbade the network, and that always
        wins); False: never.
    synthetic_hint : str, optional
        A registry name to suggest ``--synthetic`` with when the weights are absent.

    Raises
    ------
    NotInCacheError (a FileNotFoundError and ValueError)
        Saying where it looked, whether downloading was off or failed, and the command to run.
    """
    cache = hub_cache_dir()
    snapshot = cached_snapshot(repo_id, revision, cache)
    if snapshot is not None and _has_weights(snapshot):
        return snapshot
    offline = hub_offline()
    why = ""
    if download is not False and not offline:
        try:
            return _download(repo_id, revision, cache)
        except Exception as exc:  # network, auth (gated repos), missing repo: all reported below
            why = f" Downloading failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
    elif offline:
        why = " Downloading is off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)."
    else:
        why = " Downloading was not allowed (download=False)."
    state = "has no snapshot" if snapshot is None else f"has a snapshot without weights ({snapshot})"
    hint = (
        f" Or measure at its shapes without weights: --synthetic (open_source({synthetic_hint!r}, "
        "synthetic=True))."
        if synthetic_hint
        else ""
    )
    raise NotInCacheError(
        f"{repo_id} is not in the local Hugging Face cache: {repo_cache_dir(repo_id, cache)} {state} "
        f"(cache {cache}, from $HF_HUB_CACHE / $HF_HOME, default ~/.cache/huggingface/hub).{why} "
        f"Fetch it with:  {fetch_command(repo_id)}  (gated models need `hf auth login` first), "
        f"or pass a local checkpoint directory.{hint}"
    )


def _download(repo_id: str, revision: str, cache: Path) -> Path:
    """Fetch configs, safetensors and tokenizer files; ``.bin`` weights only if there are no safetensors."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"]
    path = Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache), allow_patterns=patterns))
    if not _has_weights(path):
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=str(cache),
                allow_patterns=patterns + ["pytorch_model*.bin"],
            )
        )
    return path
