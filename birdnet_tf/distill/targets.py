"""Teacher tables as per-excerpt training targets.

A training excerpt ``[start_s, end_s)`` of a file gets from each :class:`TeacherTable` the
overlap-weighted mean of the table's windows of that file, per class over the windows where the
class is known, and a per-class mask "any overlapping window knows this class". A class no
overlapping window knows is taught by its label alone (:func:`soft_target`).

:class:`TableTargets` holds every table flat (all windows of all files, files' rows contiguous,
with per-file row offsets) so the pooling runs vectorised inside ``tf.data``
(:meth:`TableTargets.pool`); :func:`pool_windows_np` is its numpy reference.
"""

from __future__ import annotations

from pathlib import PurePath

import numpy as np

from birdnet_tf.distill.table import TeacherTable


def _norm(name: str) -> str:
    return str(name).replace("\\", "/").strip().lower()


def match_table_files(table: TeacherTable, keys, paths) -> np.ndarray:
    """Which table file each training file is: by path relative to the dataset (the catalog ``key``),
    then by file name, then by stem (all case-insensitive; a name held by several table files
    matches none of them).

    Args:
        table: The teacher table (``table.files`` as the table names them).
        keys: The training files' dataset-relative keys (e.g. ``species/XC1234.mp3``).
        paths: The training files' paths (the prepared WAVs or the originals), for name and stem.

    Returns:
        int64 ``[len(keys)]``: index into ``table.files``, or -1 for a file the table lacks.
    """
    files = [_norm(f) for f in table.files]

    def index(names):
        out: dict[str, int] = {}
        for i, n in enumerate(names):
            out[n] = -2 if n in out else i  # -2: ambiguous
        return out

    by_path = index(files)
    by_name = index([PurePath(f).name for f in files])
    by_stem = index([PurePath(f).stem for f in files])
    out = np.full(len(keys), -1, np.int64)
    for i, (key, path) in enumerate(zip(keys, paths)):
        k = _norm(key)
        candidates = [(by_path, k), (by_path, k.lstrip("./")),
                      (by_name, PurePath(k).name), (by_name, _norm(PurePath(str(path)).name)),
                      (by_stem, PurePath(k).stem), (by_stem, _norm(PurePath(str(path)).stem))]
        for table_index, name in candidates:
            j = table_index.get(name, -1)
            if j >= 0:
                out[i] = j
                break
    return out


def report_unmatched(table: TeacherTable, keys, matched: np.ndarray, log=print) -> int:
    """Logs one warning naming the training files a table lacks (count + first few); returns the count."""
    missing = [k for k, m in zip(keys, matched) if m < 0]
    if missing:
        shown = ", ".join(str(k) for k in missing[:5])
        log(f"warning: {table.source}: has no windows for {len(missing)} of {len(keys)} training file(s) "
            f"({shown}{' …' if len(missing) > 5 else ''}); they train on their labels alone")
    return len(missing)


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Scores (0..1, sigmoid-like) softened by a temperature: ``sigmoid(logit(p) / T)``; T = 1: unchanged."""
    if temperature == 1.0:
        return np.asarray(scores, np.float32)
    p = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
    return (1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / float(temperature)))).astype(np.float32)


def pool_windows_np(start_s: np.ndarray, end_s: np.ndarray, scores: np.ndarray, known: np.ndarray,
                    excerpt_start_s: float, excerpt_end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference of the excerpt target: windows ``[W]`` of one file, scores/known ``[W, C]``.

    Returns:
        ``(target float32 [C], mask bool [C])``: per class the mean of the known overlapping windows'
        scores weighted by their overlap in seconds; mask = some overlapping window knows the class.
    """
    ov = np.maximum(0.0, np.minimum(end_s, excerpt_end_s) - np.maximum(start_s, excerpt_start_s))
    w = ov[:, None] * known
    total = w.sum(axis=0)
    target = np.where(total > 0, (w * scores).sum(axis=0) / np.maximum(total, 1e-12), 0.0)
    return target.astype(np.float32), total > 0


class TableTargets:
    """The teacher tables of a run, matched to its training files, for :meth:`pool` in ``tf.data``.

    Args:
        tables: Teacher tables on the student's labels.
        keys, paths: The training files (see :func:`match_table_files`), in the order of the
            file indices that :meth:`pool` receives.
        temperature: Applied to the scores (:func:`apply_temperature`).
        log: Where unmatched files are reported.
    """

    def __init__(self, tables: list[TeacherTable], keys, paths, temperature: float = 1.0, log=print):
        self.n_tables = len(tables)
        self.n_classes = len(tables[0].labels) if tables else 0
        self.flat = []  # per table: (start_s [R], end_s [R], scores [R, C], known [R, C], row0 [F], count [F])
        self.unmatched = []
        for table in tables:
            matched = match_table_files(table, keys, paths)
            self.unmatched.append(report_unmatched(table, keys, matched, log))
            order = np.argsort(table.file_index, kind="stable")
            fi = table.file_index[order]
            first = np.searchsorted(fi, np.arange(len(table.files)), side="left")
            last = np.searchsorted(fi, np.arange(len(table.files)), side="right")
            row0 = np.where(matched >= 0, first[np.maximum(matched, 0)], 0).astype(np.int64)
            count = np.where(matched >= 0, (last - first)[np.maximum(matched, 0)], 0).astype(np.int64)
            scores = apply_temperature(table.scores[order], temperature)
            self.flat.append((table.start_s[order].astype(np.float32), table.end_s[order].astype(np.float32),
                              np.where(table.known[order], scores, 0).astype(np.float32),
                              table.known[order].astype(np.float32), row0, count))
        self._tf = None

    def _constants(self):
        import tensorflow as tf

        if self._tf is None:
            self._tf = [tuple(tf.constant(a) for a in t) for t in self.flat]
        return self._tf

    def pool(self, file_index, start_s, end_s, labels):
        """TF: the targets of one excerpt of training file ``file_index`` covering ``[start_s, end_s)``.

        Returns:
            float32 ``[tables, C, 2]``: ``[..., 0]`` the pooled teacher score (the label where
            unknown, so mixup mixes whole targets), ``[..., 1]`` the mask (1 = known).
        """
        import tensorflow as tf

        out = []
        start_s, end_s = tf.cast(start_s, tf.float32), tf.cast(end_s, tf.float32)
        labels = tf.cast(labels, tf.float32)
        for ws, we, sc, kn, row0, count in self._constants():
            r0, n = tf.gather(row0, file_index), tf.gather(count, file_index)
            s, e = ws[r0:r0 + n], we[r0:r0 + n]
            ov = tf.maximum(0.0, tf.minimum(e, end_s) - tf.maximum(s, start_s))
            w = ov[:, None] * kn[r0:r0 + n]
            total = tf.reduce_sum(w, axis=0)
            target = tf.math.divide_no_nan(tf.reduce_sum(w * sc[r0:r0 + n], axis=0), total)
            mask = tf.cast(total > 0, tf.float32)
            out.append(tf.stack([mask * target + (1 - mask) * labels, mask], axis=-1))
        return tf.stack(out, axis=0)
