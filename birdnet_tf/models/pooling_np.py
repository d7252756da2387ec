"""The model's masked temporal pooling in NumPy, for runtimes without TensorFlow.

:func:`birdnet_tf.models.layers.pool_packed` is the one definition (the model's pooling
layer, the export's ``windows`` signature and the streaming engine use it). The LiteRT
runtime (:mod:`birdnet_tf.lite`) must not import TensorFlow, so it pools with this twin, a
float64 reference that ``tests/test_lite.py`` holds equal to the TF definition for every
method (masked and unmasked).

NumPy only; importing it loads neither TensorFlow nor Keras.
"""

from __future__ import annotations

import numpy as np

from birdnet_tf.config import split_kind


def attention_heads(method: str) -> int:
    """Heads ``K`` of ``attention:K`` pooling (default 1), 0 for the other methods."""
    kind, param = split_kind(method)
    if kind != "attention":
        return 0
    return int(float(param)) if param else 1


def _noisy_or(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore"):
        ls = np.where(x < -15.0, x, np.log(np.logaddexp(0.0, np.maximum(x, -15.0))))
    ls = np.where(valid, ls, -np.inf)
    m = ls.max(axis=1)
    lam = m + np.log(np.sum(np.exp(ls - m[:, None]), axis=1))  # log Σ softplus(x_t) over the valid steps
    a = np.exp(lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a < 1e-3, lam + a / 2 + a * a / 24,
                        np.where(a < np.log(2.0), np.log(-np.expm1(-a)) + a, np.log1p(-np.exp(-a)) + a))


def pool_packed_np(x: np.ndarray, method: str, mask: np.ndarray | None = None) -> np.ndarray:
    """``[windows, steps, width]`` → ``[windows, classes]`` float64, as ``pool_packed`` computes it.

    ``mask``: bool ``[windows, steps]``, the steps each window pools (at least one each). For
    ``attention:K`` the last axis is the body's packed output: ``classes`` logits, then
    ``K × classes`` attention logits.
    """
    x = np.asarray(x, np.float64)
    valid = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    v = valid[:, :, None]
    kind, param = split_kind(method)
    if kind == "max":
        return np.where(v, x, -np.inf).max(axis=1)
    if kind == "mean":
        return np.sum(np.where(v, x, 0.0), axis=1) / np.maximum(valid.sum(axis=1), 1)[:, None]
    if kind == "noisy-or":
        return _noisy_or(x, v)
    if kind == "attention":
        heads = attention_heads(method)
        c = x.shape[-1] // (1 + heads)
        logits = x[..., :c]
        att = x[..., c:].reshape(*x.shape[:2], heads, c)
        att = np.where(valid[:, :, None, None], att, -np.inf)
        w = np.exp(att - att.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        return np.mean(np.sum(w * logits[:, :, None, :], axis=1), axis=1)
    if kind != "logmeanexp":
        raise ValueError(f"unknown temporal pooling '{method}'")
    a = float(param) if param else 1.0
    m = np.where(v, x, -np.inf).max(axis=1, keepdims=True)
    s = np.sum(np.where(v, np.exp(a * (x - m)), 0.0), axis=1) / np.maximum(valid.sum(axis=1), 1)[:, None]
    return (np.log(s) + a * m[:, 0]) / a
