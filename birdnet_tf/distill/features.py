"""Feature distillation: a teacher's per-window embeddings as targets of an auxiliary head.

An **embedding table** (``birdnet-tf teacher birdnet DATA --embeddings --out EMB.npz``) holds one
vector per teacher window: arrays ``row_file`` (the file as the table names it, per row),
``start_s``, ``end_s`` and ``vectors`` ``[W, D]`` (BirdNET V2.4: D = 1,024). In training
(``distill.features``), each excerpt's target is the overlap-weighted mean of the vectors of the
windows it covers (as :mod:`birdnet_tf.distill.targets` pools scores), projected onto the
``distill.feature_dims`` principal components fitted on the windows of the run's *training* files
only. The student gets an auxiliary head (its time-averaged backbone features → a linear
projection to those dimensions) trained with a cosine loss weighted by ``distill.feature_weight``
beside the soft-target loss; the head lives in the distiller, not in the student, so checkpoints,
``best.keras`` and exports are the plain student (same signature, same speed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdnet_tf.distill.table import TeacherTable
from birdnet_tf.distill.targets import TableTargets
from birdnet_tf.errors import BirdnetError
from birdnet_tf.fileio import atomic_path

#: The sidecar ``format`` of an embedding table.
EMBEDDING_FORMAT = "birdnet-tf embedding table 1"
_ARRAYS = ("row_file", "start_s", "end_s", "vectors")


@dataclass
class EmbeddingTable:
    """Per-window teacher embeddings.

    Attributes:
        files: The files as the table names them, one entry per file.
        file_index: int64 ``[W]``: row ``w`` belongs to ``files[file_index[w]]``.
        start_s, end_s: float64 ``[W]``: the window in seconds.
        vectors: float32 ``[W, D]``.
        source: The table's path, for messages.
    """

    files: list[str]
    file_index: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    vectors: np.ndarray
    source: str

    @property
    def dims(self) -> int:
        return int(self.vectors.shape[1])


def write_embedding_table(path, row_file, start_s, end_s, vectors) -> None:
    """Writes an embedding table (``.npz``, atomically; vectors stored as float16)."""
    with atomic_path(Path(path), suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, row_file=np.asarray(row_file, dtype=str), start_s=np.asarray(start_s, np.float64),
                 end_s=np.asarray(end_s, np.float64), vectors=np.asarray(vectors, np.float16))


def read_embedding_table(path) -> EmbeddingTable:
    """Reads an embedding table.

    Raises:
        BirdnetError: The file is missing, unreadable, lacks an array, or its arrays disagree in length.
    """
    p = Path(path)
    if not p.is_file():
        raise BirdnetError(f"{p}: embedding table does not exist (make one with "
                           "'birdnet-tf teacher birdnet DATA --embeddings --out FILE.npz')")
    try:
        with np.load(p, allow_pickle=False) as d:
            missing = [k for k in _ARRAYS if k not in d.files]
            if missing:
                raise BirdnetError(f"{p}: not an embedding table (lacks {', '.join(missing)})")
            row_file, start, end, vectors = (d[k] for k in _ARRAYS)
    except (OSError, ValueError) as e:
        raise BirdnetError(f"{p}: unreadable embedding table ({e})") from None
    if vectors.ndim != 2 or not len(row_file) == len(start) == len(end) == len(vectors):
        raise BirdnetError(f"{p}: embedding table arrays disagree ({len(row_file)} rows, vectors {vectors.shape})")
    files, file_index = np.unique(row_file.astype(str), return_inverse=True)
    return EmbeddingTable([str(f) for f in files], file_index.astype(np.int64), start.astype(np.float64),
                          end.astype(np.float64), vectors.astype(np.float32), str(p))


def fit_pca(vectors: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [D], components [D, k])``: the first ``k = min(dims, D, rows)`` principal axes
    (``dims`` 0: all D axes, no reduction)."""
    x = np.asarray(vectors, np.float64)
    mean = x.mean(axis=0)
    if dims <= 0 or dims >= x.shape[1]:
        return mean.astype(np.float32), np.eye(x.shape[1], dtype=np.float32)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:dims].T.astype(np.float32)


class FeatureTargets:
    """Pooled, PCA-projected embedding targets of training excerpts, for :meth:`pool` in ``tf.data``.

    Args:
        table: The embedding table.
        keys, paths: The training files (as :class:`~birdnet_tf.distill.targets.TableTargets`).
        dims: Principal components kept (0: all), fitted on the windows of the matched training files.
        expect_dims: When > 0, the table's vector size must be this (a dimension mismatch is an error).
        log: Where unmatched files are reported.

    Raises:
        BirdnetError: The vectors' size differs from ``expect_dims``; no training file is in the table.
    """

    def __init__(self, table: EmbeddingTable, keys, paths, dims: int = 128, expect_dims: int = 0, log=print):
        if expect_dims and table.dims != expect_dims:
            raise BirdnetError(f"{table.source}: embedding vectors have {table.dims} dimensions, "
                               f"expected {expect_dims}")
        # reuse the score-table machinery: the projected vectors as the "classes" of a complete table
        probe = TeacherTable([], table.files, table.file_index, table.start_s, table.end_s,
                             np.zeros((len(table.file_index), 0), np.float32),
                             np.zeros((len(table.file_index), 0), bool), True, table.source)
        from birdnet_tf.distill.targets import match_table_files, report_unmatched

        matched = match_table_files(probe, keys, paths)
        self.unmatched = report_unmatched(probe, keys, matched, log)
        if self.unmatched == len(keys):
            raise BirdnetError(f"{table.source}: holds no window of any of the {len(keys)} training files")
        train_rows = np.isin(table.file_index, matched[matched >= 0])
        self.mean, self.components = fit_pca(table.vectors[train_rows], dims)
        self.dims = int(self.components.shape[1])
        projected = (table.vectors - self.mean) @ self.components
        names = [f"f{i}" for i in range(self.dims)]
        self._targets = TableTargets([TeacherTable(names, table.files, table.file_index, table.start_s, table.end_s,
                                                   projected.astype(np.float32),
                                                   np.ones(projected.shape, bool), True, table.source)],
                                     keys, paths, log=lambda _m: None)

    def pool(self, file_index, start_s, end_s):
        """TF: ``[dims, 2]``: the excerpt's pooled projected vector and its mask (1: the file is in the table)."""
        import tensorflow as tf

        out = self._targets.pool(file_index, start_s, end_s, tf.zeros([self.dims]))
        return out[0]


class WithFeatures:
    """Score tables and feature targets pooled together for the training pipeline: :meth:`pool`
    returns ``[T, C + dims, 2]``, the tables' ``[T, C, 2]`` followed on the class axis by the
    feature target ``[dims, 2]`` (repeated for every table row; the distiller reads it from row 0).
    With no score tables (``tables`` None) ``T`` is 1 and the class part is the labels, unknown."""

    def __init__(self, tables: TableTargets | None, features: FeatureTargets):
        self.tables, self.features = tables, features

    def pool(self, file_index, start_s, end_s, labels):
        import tensorflow as tf

        f = self.features.pool(file_index, start_s, end_s)[None]
        if self.tables is None:
            labels = tf.cast(labels, tf.float32)
            t = tf.stack([labels, tf.zeros_like(labels)], axis=-1)[None]
        else:
            t = self.tables.pool(file_index, start_s, end_s, labels)
        return tf.concat([t, tf.tile(f, [tf.shape(t)[0], 1, 1])], axis=1)


def feature_layer(student):
    """The student's per-step backbone features (the input of its ``frame_logits`` layer).

    Raises:
        BirdnetError: The student has no ``frame_logits`` layer.
    """
    try:
        return student.get_layer("frame_logits").input
    except ValueError:
        raise BirdnetError(f"distill.features needs a student with a 'frame_logits' layer; "
                           f"model '{student.name}' has none") from None


def cosine_loss(target, prediction, mask):
    """TF: per example ``mask · (1 − cos(target, prediction))``."""
    import tensorflow as tf

    t = tf.math.l2_normalize(tf.cast(target, tf.float32), axis=-1)
    p = tf.math.l2_normalize(tf.cast(prediction, tf.float32), axis=-1)
    return tf.cast(mask, tf.float32) * (1.0 - tf.reduce_sum(t * p, axis=-1))
