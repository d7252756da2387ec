"""Similarity search over an embedding database: exact cosine nearest neighbours.

The index is the database's vectors scaled to unit length, held as one matrix; a query
is a matrix product, taken in blocks of rows so that memory stays at the index plus one
block, with a running top-k per query (``np.argpartition``). It is exact (no approximate
index): ``benchmarks/search_speed.py`` measures it at 10⁶ vectors, where one query costs
one pass over the matrix and a batch of queries shares that pass.

Pure numpy (+ soundfile to cut hits out as clips); no TensorFlow.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.embed.db import EmbeddingTable
from birdnet_tf.errors import BirdnetError

HIT_COLUMNS = ("query", "rank", "file", "start_s", "end_s", "similarity")
CLIPS_MARKER = ".birdnet-tf-clips"
"""Marks a folder of clips that ``search --clips`` wrote (so ``--force`` may replace it)."""


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean length; all-zero rows stay zero (similarity 0 to everything)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class VectorIndex:
    """Exact cosine search over ``vectors`` ``[n, dim]``.

    ``dtype=np.float16`` halves the index's memory (scores then carry ~1e-3 rounding);
    ``block_rows`` bounds the temporary ``[block_rows, n_queries]`` score block.
    """

    def __init__(self, vectors: np.ndarray, *, dtype=np.float32, block_rows: int = 131072):
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise BirdnetError(f"an index needs a [n, dim] matrix, got shape {vectors.shape}")
        self.dim = int(vectors.shape[1])
        self.block_rows = max(1, int(block_rows))
        self.matrix = np.empty(vectors.shape, dtype=dtype)
        for lo in range(0, len(vectors), self.block_rows):  # normalise block by block: no float32 copy of it all
            self.matrix[lo:lo + self.block_rows] = unit_rows(vectors[lo:lo + self.block_rows])

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, similarities)``, each ``[n_queries, min(k, n)]``, best first."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise BirdnetError(f"query vectors of shape {tuple(q.shape)} do not fit an index of dimension {self.dim}")
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32)
        qt = np.ascontiguousarray(unit_rows(q).T)
        best_i = np.zeros((len(q), 0), np.int64)
        best_s = np.zeros((len(q), 0), np.float32)
        # NumPy has no BLAS for float16: a float16 index is multiplied in float32 blocks
        block = self.block_rows if self.matrix.dtype == np.float32 else min(self.block_rows, 16384)
        for lo in range(0, len(self), block):
            rows = self.matrix[lo:lo + block]
            sims = (rows.astype(np.float32, copy=False) @ qt).T  # [Q, block]
            kk = min(k, sims.shape[1])
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            cand_i = np.concatenate([best_i, part + lo], axis=1)
            cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, axis=1)], axis=1)
            if cand_s.shape[1] > k:
                keep = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
                cand_i = np.take_along_axis(cand_i, keep, axis=1)
                cand_s = np.take_along_axis(cand_s, keep, axis=1)
            best_i, best_s = cand_i, cand_s
        # best first; ties broken by row order so results are reproducible
        order = np.lexsort((best_i, -best_s), axis=1) if best_s.size else np.zeros_like(best_i)
        return np.take_along_axis(best_i, order, axis=1), np.take_along_axis(best_s, order, axis=1)


def search_table(table: EmbeddingTable, queries: np.ndarray, k: int = 10, *,
                 query_names: Sequence[str] | None = None, index: VectorIndex | None = None) -> pd.DataFrame:
    """The ``k`` nearest windows of ``table`` to each query, as a table of :data:`HIT_COLUMNS`."""
    index = index or VectorIndex(table.vectors)
    q = np.asarray(queries, dtype=np.float32)
    q = q[None] if q.ndim == 1 else q
    idx, sims = index.search(q, k)
    names = list(query_names) if query_names is not None else [str(i) for i in range(len(q))]
    rows = []
    for qi in range(len(q)):
        for rank, (i, s) in enumerate(zip(idx[qi], sims[qi]), start=1):
            rows.append((names[qi], rank, table.files[i], float(table.starts[i]), float(table.ends[i]), float(s)))
    return pd.DataFrame(rows, columns=list(HIT_COLUMNS))


def _safe(name: str, limit: int) -> str:
    return re.sub(r"[^\w.-]+", "_", name)[:limit]


def _clip_name(rank: int, file: str, start: float, end: float) -> str:
    stem = _safe(Path(file).stem, 80) or "clip"
    return f"{rank:03d}_{stem}_{start:.2f}-{end:.2f}.wav"


def cut_clips(hits: pd.DataFrame, out_dir: str | os.PathLike, *, pad_s: float = 0.0, force: bool = False,
              resolve=None) -> list[Path]:
    """Writes each hit's stretch of audio (± ``pad_s``) as a 16-bit WAV at the recording's rate.

    ``resolve(file) -> path`` maps a database's file entry to a readable path (default: as is).
    A hit whose recording cannot be read is skipped with a warning (counted); the folder is
    refused if it exists with other content, unless ``force`` and it is one this wrote.
    """
    import warnings

    from birdnet_tf.data.audio import load_audio, write_wav16
    from birdnet_tf.errors import AudioDecodeError
    from birdnet_tf.fileio import check_replaceable

    out = Path(out_dir)
    check_replaceable(out, (CLIPS_MARKER,), "clip folder", force)
    if out.exists() and force:
        for p in out.iterdir():
            if p.is_file() and (p.suffix == ".wav" or p.name == CLIPS_MARKER):
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / CLIPS_MARKER).write_text("clips cut by birdnet-tf search\n", encoding="utf-8")
    written, failed = [], 0
    cache: dict[str, tuple[np.ndarray, int]] = {}
    for row in hits.itertuples(index=False):
        src = str(resolve(row.file) if resolve else row.file)
        try:
            if src not in cache:
                cache.clear()  # one recording in memory at a time (hits are grouped by query, not file)
                cache[src] = load_audio(src)
            audio, sr = cache[src]
        except (AudioDecodeError, OSError) as err:
            warnings.warn(f"{src}: cannot cut a clip ({err})", stacklevel=2)
            failed += 1
            continue
        lo = max(0, int(round((row.start_s - pad_s) * sr)))
        hi = min(len(audio), int(round((row.end_s + pad_s) * sr)))
        name = _clip_name(int(row.rank), str(row.file), float(row.start_s), float(row.end_s))
        if "query" in hits.columns and hits["query"].nunique() > 1:
            name = f"{_safe(str(row.query), 40)}_{name}"
        written.append(write_wav16(out / name, audio[lo:hi], sr))
    if failed:
        warnings.warn(f"{failed} of {len(hits)} clips could not be cut (see the warnings above)", stacklevel=2)
    return written
