"""Embeddings on disk, one row per text, so every paper is embedded once whatever list it is in.

Embedding all 237k papers of the dev + augmentation files takes tens of minutes on 2 cores; a
cache keyed by the whole text list (what this replaced) recomputed everything when one paper was
added, a cap changed or a run was interrupted. Here a row's key is sha256(text)[:16] under a
directory per encoder fingerprint, so:
- a new split, cap or file only embeds the papers no earlier run saw;
- a run writes a shard every `chunk` texts (temp file + rename, fsynced): an interrupted run
  resumes where it stopped, losing at most one chunk, and a reader never sees half a shard;
- shards are safetensors (`keys` uint8 (m, 16), `embeddings` float32 (m, dim)): no pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

KEY_BYTES = 16


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:KEY_BYTES]


class EmbeddingCache:
    """Per-text embedding store for one or more encoders (a subdirectory per fingerprint)."""

    def __init__(self, cache_dir: Path, chunk: int = 4096) -> None:
        self.cache_dir = Path(cache_dir)
        self.chunk = int(chunk)
        self.hits = 0  # calls answered without the encoder
        self.misses = 0  # calls that had to embed something
        self.embedded = 0  # texts embedded, over all calls
        self._index: dict[str, dict[bytes, tuple[Path, int]]] = {}

    def directory(self, encoder: Any) -> Path:
        """Where one encoder's shards live (the fingerprint names what the encoder computes)."""
        return self.cache_dir / hashlib.sha256(encoder.fingerprint().encode()).hexdigest()[:24]

    def shards(self, encoder: Any) -> list[Path]:
        return sorted(self.directory(encoder).glob("shard-*.safetensors"))

    def _load_index(self, encoder: Any) -> dict[bytes, tuple[Path, int]]:
        """key -> (shard, row) over every readable shard; an unreadable one is skipped with a
        warning (its texts are embedded again and land in a new shard)."""
        from safetensors import safe_open

        index = self._index.setdefault(str(self.directory(encoder)), {})
        known = {p for p, _ in index.values()}
        for path in self.shards(encoder):
            if path in known:
                continue
            try:
                with safe_open(str(path), "np") as f:
                    keys = f.get_tensor("keys")
                    shape = f.get_slice("embeddings").get_shape()
                if keys.shape != (shape[0], KEY_BYTES) or shape[1] != encoder.dim:
                    raise ValueError(f"keys {keys.shape} / embeddings {shape}")
            except Exception as e:  # any unreadable file: never trust it, never crash on it
                log.warning("embedding cache shard %s is unreadable (%s): ignoring it", path, e)
                continue
            for row, k in enumerate(keys):
                index.setdefault(k.tobytes(), (path, row))
        return index

    def _write_shard(self, directory: Path, keys: list[bytes], arr: np.ndarray, fp: str) -> Path:
        from safetensors.numpy import save_file

        directory.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.time_ns()}-{os.getpid()}.safetensors"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            tensors = {
                "keys": np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, KEY_BYTES),
                "embeddings": np.ascontiguousarray(arr, dtype=np.float32),
            }
            save_file(tensors, tmp, metadata={"fingerprint": fp, "n": str(len(keys))})
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, directory / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return directory / name

    def get_or_compute(
        self,
        encoder: Any,
        texts: Sequence[str],
        batch_size: int = 64,
        *,
        progress: bool = True,
        wait_s: float = 0.0,
    ) -> np.ndarray:
        """(n, dim) float32 embeddings of `texts` in order, embedding only the missing ones.

        `wait_s` > 0 first waits up to that long for another process (DDP rank 0) to embed the
        texts, instead of every rank embedding the same texts on the same cores.
        """
        from tqdm.auto import tqdm

        embed_texts = getattr(encoder, "embed_texts", None)
        if embed_texts is None:  # a torch Encoder: imported here, so the ONNX path needs no torch
            from paperops.models import encoder as encoder_module  # via the module: tests patch it

            def embed_texts(part: list[str], bs: int) -> np.ndarray:
                return encoder_module.embed(encoder, part, bs, progress=False)

        keys = [text_key(t) for t in texts]
        index = self._load_index(encoder)
        deadline = time.monotonic() + wait_s
        while wait_s > 0 and time.monotonic() < deadline and not all(k in index for k in keys):
            time.sleep(1.0)
            index = self._load_index(encoder)
        missing = sorted({k: i for i, k in enumerate(keys) if k not in index}.values())
        if missing:
            self.misses += 1
            log.info(
                "embedding cache miss: %d of %d texts to embed -> %s",
                len(missing), len(texts), self.directory(encoder),
            )  # fmt: skip
            bar = tqdm(total=len(missing), desc="embed", unit="text", disable=not progress)
            with bar:
                for start in range(0, len(missing), self.chunk):
                    part = missing[start : start + self.chunk]
                    arr = embed_texts([texts[i] for i in part], batch_size)
                    part_keys = [keys[i] for i in part]
                    shard = self._write_shard(
                        self.directory(encoder), part_keys, arr, encoder.fingerprint()
                    )
                    for row, k in enumerate(part_keys):
                        index[k] = (shard, row)
                    self.embedded += len(part)
                    bar.update(len(part))
        else:
            self.hits += 1
            log.info("embedding cache hit: %d texts (%s)", len(texts), self.directory(encoder))
        return self._read(index, keys, encoder.dim)

    @staticmethod
    def _read(index: dict[bytes, tuple[Path, int]], keys: list[bytes], dim: int) -> np.ndarray:
        """The cached rows of `keys`, in order (each shard opened once)."""
        from safetensors import safe_open

        out = np.empty((len(keys), dim), dtype=np.float32)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            shard, row = index[k]
            by_shard.setdefault(shard, []).append((i, row))
        for shard, pairs in by_shard.items():
            with safe_open(str(shard), "np") as f:
                emb = f.get_tensor("embeddings")
            dst, src = np.array(pairs).T
            out[dst] = emb[src]
        return out
