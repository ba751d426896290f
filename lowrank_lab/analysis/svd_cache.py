"""A disk cache of base-model singular vectors, keyed by tensor content (for intruder dimensions).

The base SVD is the expensive half of :func:`lowrank_lab.analysis.intruders.find_intruders` and is the
same for every fine-tune of one base, so it is computed once and kept here. Layout and keying:
:class:`SVDCache`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from lowrank_lab.linalg.policy import compute_dtype
from lowrank_lab.utils.files import atomic_path

# Bump when the cache layout or the numbers stored change, so stale entries are never read.
# 2: every entry carries its key (which hashes the source matrix) and a checksum of its payload.
CACHE_FORMAT = 2


def default_cache_dir() -> Path:
    """Where base SVDs live by default.

    ``$LOWRANK_LAB_CACHE/svd``, else ``$XDG_CACHE_HOME/lowrank_lab/svd``, else ``~/.cache/lowrank_lab/svd``.
    """
    if os.environ.get("LOWRANK_LAB_CACHE"):
        return Path(os.environ["LOWRANK_LAB_CACHE"]) / "svd"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "lowrank_lab" / "svd"


def tensor_digest(W: torch.Tensor) -> str:
    """BLAKE2b digest of the raw bytes of ``W`` (any dtype, any device), 40 hex digits."""
    raw = W.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(memoryview(raw), digest_size=20).hexdigest()


class SVDCache:
    """Base-model singular vectors on disk, keyed by tensor content.

    The key hashes the bytes of the tensor together with its shape, dtype, the side, the compute
    precision and :data:`CACHE_FORMAT`, so a renamed file or another model with the same weights
    hits, and any change in a single bit misses. Entries are safetensors files
    ``<dir>/<key[:2]>/<key>.safetensors`` holding ``vectors`` (d, p) and ``singular_values`` (p,),
    written to a temporary file in the same directory and moved into place with ``os.replace``, so a
    crash or a concurrent writer never leaves a torn entry. An unreadable entry counts as a miss and
    is rewritten.

    Entries are checked before they are trusted: each carries in its safetensors metadata its key
    (the hash of the source matrix's bytes, shape, dtype, side and precision) and a BLAKE2b checksum
    of the vectors and singular values stored. An entry whose key or checksum disagrees (a file
    copied to another name, rewritten, or damaged in place: a valid file of zeros gave wrong intruder
    counts with exit 0) is recomputed and overwritten, with a note on stderr.

    Disk use: one side of an (m, n) float32 matrix takes ``4·(d + 1)·min(m, n)`` bytes — about the
    size of the matrix itself (MiniLM: ~22 MB per side).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0
        #: Entries found but not trusted (key or checksum disagreed) and so recomputed.
        self.rejected = 0

    def key(self, W: torch.Tensor, side: str, *, reference: bool = False, digest: str | None = None) -> str:
        cdt = compute_dtype(W.dtype, reference=reference)
        header = f"lowrank_lab-svd-v{CACHE_FORMAT}|{tuple(W.shape)}|{W.dtype}|{side}|{cdt}"
        h = hashlib.blake2b(header.encode(), digest_size=20)
        h.update((digest or tensor_digest(W)).encode())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def load(self, key: str, expected: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached ``(vectors, singular_values)``, or None on a miss (a missing, unreadable or
        mis-shaped entry, or one whose key or checksum disagrees: noted on stderr)."""
        from safetensors import safe_open

        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                vecs, sv = fh.get_tensor("vectors"), fh.get_tensor("singular_values")
        except Exception:  # a torn or foreign file: recompute and overwrite
            return None
        if tuple(vecs.shape) != tuple(expected) or tuple(sv.shape) != (expected[1],):
            return None
        if meta.get("key") != key:
            why = "it was made from another matrix" if meta.get("key") else "it records no source matrix"
        elif meta.get("checksum") != payload_checksum(vecs, sv):
            why = "its contents changed after it was written"
        else:
            return vecs, sv
        self.rejected += 1
        print(f"note: base-SVD cache entry {path} does not match its source matrix ({why}); recomputing it",
              file=sys.stderr)
        return None

    def store(
        self, key: str, vectors: torch.Tensor, singular_values: torch.Tensor, *, side: str, tensor: str = ""
    ) -> Path:
        """Write one entry atomically (:func:`lowrank_lab.utils.files.atomic_path`), with its key and
        the checksum of its payload (:func:`payload_checksum`) in the metadata."""
        from safetensors.torch import save_file

        vectors = vectors.detach().cpu().contiguous()
        singular_values = singular_values.detach().cpu().contiguous()
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, "--cache-dir") as tmp:
            save_file(
                {"vectors": vectors, "singular_values": singular_values},
                str(tmp),
                metadata={
                    "side": side,
                    "tensor": tensor,
                    "format": str(CACHE_FORMAT),
                    "key": key,
                    "checksum": payload_checksum(vectors, singular_values),
                },
            )
        return path


def payload_checksum(vectors: torch.Tensor, singular_values: torch.Tensor) -> str:
    """BLAKE2b over the bytes, shapes and dtypes of a cache entry's two tensors, 40 hex digits."""
    h = hashlib.blake2b(digest_size=20)
    for t in (vectors, singular_values):
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(tensor_digest(t).encode())
    return h.hexdigest()
