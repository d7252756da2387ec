"""Evaluation metrics of per-file scores, pure numpy.

Every metric takes a score matrix ``scores`` of shape ``[files, classes]`` (one
pooled score vector per file, higher = more likely) and the labels as either

* ``primary_idx`` — int ``[files]``: the foreground (primary) class of each file, or
* ``relevant`` — bool / 0-1 ``[files, classes]``: every class that counts as
  correct for a file (foreground, optionally plus background species).

Ties are treated pessimistically everywhere, as scikit-learn's
``label_ranking_average_precision_score`` and ``average_precision_score`` do:
the rank of a class is the number of classes whose score is ``>=`` its score,
so a correct class tied with wrong ones is ranked below all of them.

Metric names follow the two 2018 systems:

* **MLRAP** (BirdCLEF baseline) — label-ranking average precision per file,
  averaged over files (:func:`lrap`). With one relevant class per file it is the
  reciprocal rank of that class.
* **MAP** (OFAI) — mean reciprocal rank of the foreground class (:func:`mrr`).
* **MAP-bg** (OFAI) — LRAP with foreground and background species relevant.
* **cmAP** — mean over classes of each class's average precision over files
  (:func:`cmap`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _scores(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be a 2-D matrix [files, classes], got shape {s.shape}")
    if s.shape[0] == 0:
        raise ValueError(f"no files to evaluate (scores have shape {s.shape})")
    if s.shape[1] == 0:
        raise ValueError(f"scores have no classes (shape {s.shape})")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    return s


def _relevant(relevant: Any, shape: tuple[int, int], name: str = "relevant") -> np.ndarray:
    r = np.asarray(relevant)
    if r.shape != shape:
        raise ValueError(f"{name} has shape {r.shape}, scores have shape {shape}")
    if r.dtype != np.bool_:
        if not np.all((r == 0) | (r == 1)):
            raise ValueError(f"{name} must be boolean or 0/1")
        r = r.astype(bool)
    return r


def _primary(primary_idx: Any, n_files: int, n_classes: int) -> np.ndarray:
    p = np.asarray(primary_idx)
    if p.ndim != 1 or p.shape[0] != n_files:
        raise ValueError(f"primary_idx has shape {p.shape}, expected ({n_files},) for the files")
    if p.size and not np.issubdtype(p.dtype, np.integer):
        if not np.all(np.mod(p, 1) == 0):
            raise ValueError("primary_idx must hold integer class indices")
    p = p.astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= n_classes):
        raise ValueError(
            f"primary_idx out of range: values in [{p.min()}, {p.max()}], "
            f"classes are 0..{n_classes - 1}"
        )
    return p


def _mean_precision_at_hits(s: np.ndarray, r: np.ndarray) -> float:
    """Mean over positives ``i`` of ``#{positives with s >= s_i} / #{all with s >= s_i}``.

    Args:
        s: ``[n]`` scores.
        r: ``[n]`` bool, at least one True.

    Returns:
        The mean precision at the positives' (pessimistic) ranks: LRAP of a file
        when ``s`` is a row, the non-interpolated average precision of a class
        when ``s`` is a column.
    """
    all_sorted = np.sort(s)
    pos_sorted = np.sort(s[r])
    n, n_pos = all_sorted.size, pos_sorted.size
    # count of values >= x  ==  n - (index of the first value >= x)
    rank = n - np.searchsorted(all_sorted, pos_sorted, side="left")
    hits = n_pos - np.searchsorted(pos_sorted, pos_sorted, side="left")
    return float(np.mean(hits / rank))


def ranks(primary_idx: Any, scores: Any) -> np.ndarray:
    """Pessimistic rank of each file's primary class.

    Args:
        primary_idx: int ``[files]`` foreground class per file.
        scores: ``[files, classes]``.

    Returns:
        int ``[files]``: number of classes scoring ``>=`` the primary class
        (1 = ranked first without ties).
    """
    s = _scores(scores)
    p = _primary(primary_idx, *s.shape)
    own = s[np.arange(s.shape[0]), p]
    return np.sum(s >= own[:, None], axis=1).astype(np.int64)


def lrap(relevant: Any, scores: Any) -> float:
    """Label-ranking average precision (MLRAP), mean over files.

    For each file and each relevant class ``j``: precision =
    ``#{relevant k with s_k >= s_j} / #{k with s_k >= s_j}``; the file's LRAP is
    the mean over its relevant classes. Equal to scikit-learn's
    ``label_ranking_average_precision_score`` except that **files with no
    relevant class are skipped** (scikit-learn counts them as 1.0).

    Args:
        relevant: bool/0-1 ``[files, classes]``.
        scores: ``[files, classes]``.

    Returns:
        Mean LRAP over files with at least one relevant class; NaN if there are
        none.
    """
    s = _scores(scores)
    r = _relevant(relevant, s.shape)
    values = [_mean_precision_at_hits(s[i], r[i]) for i in range(s.shape[0]) if r[i].any()]
    return float(np.mean(values)) if values else float("nan")


def mrr(primary_idx: Any, scores: Any) -> float:
    """Mean reciprocal rank of the primary (foreground) class (OFAI "MAP").

    The rank counts the classes scoring ``>=`` the primary class (pessimistic
    ties, consistent with :func:`lrap`; with one relevant class per file both
    are equal).

    Args:
        primary_idx: int ``[files]``.
        scores: ``[files, classes]``.

    Returns:
        ``mean(1 / rank)`` over files, in ``(0, 1]``.
    """
    return float(np.mean(1.0 / ranks(primary_idx, scores)))


def top_k_accuracy(primary_idx: Any, scores: Any, k: int) -> float:
    """Fraction of files whose primary class is among the ``k`` best.

    Uses the pessimistic rank of :func:`ranks`: a primary class tied with others
    across the k-th place does not count.

    Args:
        primary_idx: int ``[files]``.
        scores: ``[files, classes]``.
        k: ``>= 1``.

    Returns:
        Fraction of files with ``rank <= k``.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return float(np.mean(ranks(primary_idx, scores) <= k))


def class_average_precision(relevant: Any, scores: Any) -> np.ndarray:
    """Average precision of each class over the files ranked by that class's score.

    Non-interpolated AP: the mean over the class's positive files ``i`` of
    ``#{positives with s >= s_i} / #{files with s >= s_i}``; equal to
    scikit-learn's ``average_precision_score`` per column, ties included.

    Args:
        relevant: bool/0-1 ``[files, classes]``.
        scores: ``[files, classes]``.

    Returns:
        float ``[classes]``; NaN for classes with no positive file.
    """
    s = _scores(scores)
    r = _relevant(relevant, s.shape)
    ap = np.full(s.shape[1], np.nan)
    for c in np.flatnonzero(r.any(axis=0)):
        ap[c] = _mean_precision_at_hits(s[:, c], r[:, c])
    return ap


def cmap(relevant: Any, scores: Any) -> float:
    """Class-mean average precision over classes with at least one positive.

    Args:
        relevant: bool/0-1 ``[files, classes]``.
        scores: ``[files, classes]``.

    Returns:
        Mean of :func:`class_average_precision` ignoring NaN; NaN if no class has
        a positive.
    """
    ap = class_average_precision(relevant, scores)
    ap = ap[~np.isnan(ap)]
    return float(np.mean(ap)) if ap.size else float("nan")


def confusion_matrix(primary_idx: Any, scores: Any, n_classes: int | None = None) -> np.ndarray:
    """Counts of (true primary class, top-1 predicted class).

    Args:
        primary_idx: int ``[files]``.
        scores: ``[files, classes]``; the prediction is ``argmax`` (the lowest
            index among tied maxima).
        n_classes: Size of the matrix; defaults to ``scores.shape[1]`` and must
            equal it when given.

    Returns:
        int64 ``[n_classes, n_classes]``: rows = true class, columns = predicted.
    """
    s = _scores(scores)
    if n_classes is None:
        n_classes = s.shape[1]
    if n_classes != s.shape[1]:
        raise ValueError(f"n_classes={n_classes} but scores have {s.shape[1]} classes")
    p = _primary(primary_idx, *s.shape)
    pred = np.argmax(s, axis=1)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (p, pred), 1)
    return cm


def one_hot(primary_idx: Any, n_classes: int) -> np.ndarray:
    """bool ``[files, n_classes]`` with one True per row at ``primary_idx``."""
    p = np.asarray(primary_idx, dtype=np.int64)
    out = np.zeros((p.shape[0], n_classes), dtype=bool)
    out[np.arange(p.shape[0]), p] = True
    return out


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def evaluate_scores(scores: Any, primary_idx: Any, background: Any = None) -> dict[str, Any]:
    """All file-level metrics in one flat, JSON-serialisable dict.

    Args:
        scores: ``[files, classes]`` pooled scores.
        primary_idx: int ``[files]`` foreground class per file.
        background: bool ``[files, classes]`` background species of each file
            that are in the label set, or None for none. The foreground class may
            be marked too; it makes no difference.

    Returns:
        A dict with (NaN written as None):

        * ``mlrap`` — LRAP with the foreground class only relevant (= ``mrr``).
        * ``mlrap_bg`` — LRAP with foreground and background relevant (the
          baseline's MLRAP with ``TEST_WITH_BG_SPECIES``).
        * ``mrr`` — mean reciprocal rank of the foreground class.
        * ``map`` — OFAI's "MAP", the same value as ``mrr``.
        * ``map_bg`` — OFAI's "MAP-bg", the same value as ``mlrap_bg``.
        * ``cmap`` — mean per-class AP, foreground labels, classes with positives.
        * ``cmap_bg`` — the same with background species as positives too.
        * ``top1`` … ``top5`` — top-k accuracy of the foreground class.
        * ``n_files`` — number of files.
        * ``per_class_ap`` — list ``[classes]`` of foreground AP per class
          (None for classes without a foreground file).
    """
    s = _scores(scores)
    n_files, n_classes = s.shape
    p = _primary(primary_idx, n_files, n_classes)
    fg = one_hot(p, n_classes)
    if background is None:
        bg = fg
    else:
        bg = fg | _relevant(background, s.shape, name="background")
    rk = ranks(p, s)
    rr = 1.0 / rk
    ap = class_average_precision(fg, s)
    mrr_value = float(np.mean(rr))
    mlrap_bg = lrap(bg, s)
    out: dict[str, Any] = {
        "mlrap": _json_float(lrap(fg, s)),
        "mlrap_bg": _json_float(mlrap_bg),
        "mrr": _json_float(mrr_value),
        "map": _json_float(mrr_value),
        "map_bg": _json_float(mlrap_bg),
        "cmap": _json_float(cmap(fg, s)),
        "cmap_bg": _json_float(cmap(bg, s)),
    }
    for k in range(1, 6):
        out[f"top{k}"] = float(np.mean(rk <= k))
    out["n_files"] = int(n_files)
    out["per_class_ap"] = [_json_float(v) for v in ap]
    return out
