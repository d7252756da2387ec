"""Pooling of per-window scores into one score vector per file.

A recording is scored window by window; a score matrix ``p`` of shape
``[windows, classes]`` (probabilities in ``[0, 1]``) is pooled over the window
axis into one vector ``[classes]`` per file. Methods:

* ``"mean"`` — arithmetic mean over windows.
* ``"max"`` — maximum over windows.
* ``"logmeanexp"`` — ``log(mean(exp(a * x))) / a`` (the OFAI system's temporal
  pooling), computed stably by subtracting the maximum before ``exp``. ``a``
  (default 1) moves it from the mean (``a -> 0``) towards the max
  (``a -> inf``). Written ``"logmeanexp:5"`` to give ``a`` in the method string.
* ``"median"`` — the BirdCLEF 2018 baseline's median-filtered pooling: per
  window, scores below 1.5 × the window's median over classes are zeroed; the
  pooled score is ``mean((2p)**2)`` over windows, shifted so its minimum is 0
  and divided by its maximum when that exceeds 1.

Pure numpy; nothing happens at import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from birdnet_tf.config import split_kind
from birdnet_tf.errors import ConfigError

POOLINGS: tuple[str, ...] = ("mean", "max", "logmeanexp", "median")
"""Names of the pooling methods understood by :func:`pool`."""


def parse_method(method: str, a: float = 1.0) -> tuple[str, float]:
    """Splits a method string such as ``"logmeanexp:5"`` into name and parameter.

    Args:
        method: One of :data:`POOLINGS`, case-insensitive, optionally followed by
            ``":<a>"`` (only for ``"logmeanexp"``). A parameter in the string
            overrides ``a``.
        a: Default log-mean-exp sharpness when the string gives none.

    Returns:
        ``(name, a)`` with ``name`` in :data:`POOLINGS`.

    Raises:
        ConfigError: Unknown method, a parameter on a method that takes none, or an
            ``a`` that is not a finite non-zero number.
    """
    if not isinstance(method, str):
        raise ConfigError(
            f"pooling method must be a string, got {method!r}; valid choices: {', '.join(POOLINGS)}"
        )
    name, param = split_kind(method)
    name = name.lower()
    if name not in POOLINGS:
        raise ConfigError(
            f"unknown pooling method {method!r}; valid choices: {', '.join(POOLINGS)} "
            "(logmeanexp takes a parameter, e.g. 'logmeanexp:5')"
        )
    if param is not None:
        if name != "logmeanexp":
            raise ConfigError(
                f"pooling method {method!r}: only 'logmeanexp' takes a parameter after ':'"
            )
        try:
            a = float(param)
        except ValueError:
            raise ConfigError(
                f"pooling method {method!r}: parameter {param!r} is not a number"
            ) from None
    if name == "logmeanexp" and (not np.isfinite(a) or a == 0):
        raise ConfigError(
            f"pooling method {method!r}: logmeanexp needs a finite non-zero 'a', got {a!r}"
        )
    return name, float(a)


def _as_matrix(scores: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Validates a score matrix and returns it as float64 (a new array or a view)."""
    p = np.asarray(scores, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(
            f"scores must be a 2-D matrix [windows, classes], got shape {p.shape}"
        )
    if p.shape[0] == 0:
        raise ValueError(
            f"cannot pool an empty score matrix (0 windows, shape {p.shape}): "
            "the file produced no windows"
        )
    if p.shape[1] == 0:
        raise ValueError(f"score matrix has no classes (shape {p.shape})")
    if not np.all(np.isfinite(p)):
        raise ValueError("scores contain NaN or infinite values")
    return p


def logmeanexp(scores: np.ndarray, a: float = 1.0, axis: int = 0) -> np.ndarray:
    """Log-mean-exp ``log(mean(exp(a * x))) / a`` along ``axis``, without overflow.

    Args:
        scores: Array of any shape; usually ``[windows, classes]``.
        a: Sharpness, finite and non-zero; larger values approach the max.
        axis: Axis to pool over.

    Returns:
        ``scores`` with ``axis`` removed.
    """
    ax = a * np.asarray(scores, dtype=np.float64)
    m = np.max(ax, axis=axis, keepdims=True)
    out = m + np.log(np.mean(np.exp(ax - m), axis=axis, keepdims=True))
    return np.squeeze(out, axis=axis) / a


def median_pool(scores: np.ndarray) -> np.ndarray:
    """The BirdCLEF 2018 baseline's median-filtered pooling.

    ``row_median = median(p, axis=1)``; ``p[p < 1.5 * row_median] = 0``;
    ``pooled = mean((2p)**2, axis=0)``; ``pooled -= min(pooled)``; if
    ``max(pooled) > 1``: ``pooled /= max(pooled)``. The caller's array is not
    modified.

    Args:
        scores: ``[windows, classes]`` probabilities.

    Returns:
        ``[classes]`` pooled scores, ``>= 0``.
    """
    p = np.array(scores, dtype=np.float64, copy=True)
    row_median = np.median(p, axis=1)
    p[p < 1.5 * row_median[:, None]] = 0.0
    pooled = np.mean((2.0 * p) ** 2, axis=0)
    pooled -= np.min(pooled)
    top = np.max(pooled)
    if top > 1:
        pooled /= top
    return pooled


def pool(
    scores: np.ndarray | Sequence[Sequence[float]],
    method: str = "mean",
    a: float = 1.0,
) -> np.ndarray:
    """Pools a per-window score matrix into one score vector.

    Args:
        scores: ``[windows, classes]`` scores (probabilities in ``[0, 1]``). Not
            modified.
        method: One of :data:`POOLINGS`, or ``"logmeanexp:<a>"``.
        a: Log-mean-exp sharpness when ``method`` gives none.

    Returns:
        ``[classes]`` float64 pooled scores.

    Raises:
        ConfigError: Unknown method or invalid parameter.
        ValueError: ``scores`` is not 2-D, has no windows or classes, or holds
            NaN/inf.
    """
    name, a = parse_method(method, a)
    p = _as_matrix(scores)
    if name == "mean":
        return np.mean(p, axis=0)
    if name == "max":
        return np.max(p, axis=0)
    if name == "logmeanexp":
        return logmeanexp(p, a, axis=0)
    return median_pool(p)


def pool_many(
    matrices: Sequence[np.ndarray],
    method: str = "mean",
    a: float = 1.0,
) -> np.ndarray:
    """Pools one score matrix per file.

    Args:
        matrices: One ``[windows_i, classes]`` matrix per file; window counts may
            differ, class counts may not.
        method: As for :func:`pool`.
        a: As for :func:`pool`.

    Returns:
        ``[files, classes]`` float64 pooled scores.

    Raises:
        ConfigError: Unknown method or invalid parameter.
        ValueError: No matrices, an invalid matrix (message names its index), or
            differing class counts.
    """
    parse_method(method, a)  # fail on a bad method before touching the data
    if len(matrices) == 0:
        raise ValueError("pool_many needs at least one score matrix, got none")
    rows = []
    for i, m in enumerate(matrices):
        try:
            rows.append(pool(m, method, a))
        except ValueError as err:
            raise ValueError(f"score matrix {i}: {err}") from None
    n_classes = {r.shape[0] for r in rows}
    if len(n_classes) > 1:
        raise ValueError(
            f"score matrices have different numbers of classes: {sorted(n_classes)}"
        )
    return np.stack(rows, axis=0)
