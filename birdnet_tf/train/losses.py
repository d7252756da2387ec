"""Training losses (``train.loss``), on the model's scores (after its output activation).

- ``cce``: softmax (categorical) cross-entropy, Keras' ``CategoricalCrossentropy``.
- ``bce``: binary cross-entropy, Keras' ``BinaryCrossentropy`` (mean over classes).
- ``ce_bgtopk:k``: binary cross-entropy that ignores, per example, the ``k`` highest-scoring
  non-target classes — OFAI's guess that they are unlabelled background species. A class is
  a target when its target value is > 0; of the others, the ``k`` with the highest scores
  (ties: the lower class index first; fewer when there are fewer non-targets) contribute
  nothing. The rest are averaged over *all* classes, as ``bce`` does, so ``ce_bgtopk:0``
  is exactly ``bce``. The choice of ignored classes is not differentiated through.

Background species in the targets: :func:`birdnet_tf.data.labels.encode_targets` gives the
primary species 1 and each labelled background species that is a class
``data.background_weight`` (default 0.5; 0 leaves them out). For ``bce`` and
``ce_bgtopk`` those values are the binary targets (so a background species is a target
and never ignored by ``ce_bgtopk``); for ``cce`` the trainer divides each row by its sum
first, so the row is a distribution (``[1, 0.5]`` → ``[2/3, 1/3]``).

With a sigmoid (``bce``, ``ce_bgtopk``) or softmax (``cce``) output, Keras computes the
cross-entropy from the logits behind the activation, so it stays finite for saturated scores.
"""

from __future__ import annotations

import numpy as np

from birdnet_tf.config import split_kind
from birdnet_tf.errors import ConfigError

#: Loss names (``ce_bgtopk`` takes ``:k``).
LOSSES = ("cce", "bce", "ce_bgtopk")

#: Scores are clipped to [EPS, 1 − EPS] where logs of probabilities are taken (Keras' epsilon).
EPS = 1e-7


def parse_loss(name: str) -> tuple[str, int]:
    """``"ce_bgtopk:2"`` → ``("ce_bgtopk", 2)``; ``"bce"`` → ``("bce", 0)``.

    Raises:
        ConfigError: Unknown loss or bad ``k`` (names ``train.loss``).
    """
    kind, param = split_kind(name)
    if kind not in LOSSES:
        raise ConfigError(f"train.loss must be cce, bce or ce_bgtopk:k, not '{name}'")
    if kind != "ce_bgtopk":
        if param is not None:
            raise ConfigError(f"train.loss '{kind}' takes no parameter, got '{name}'")
        return kind, 0
    try:
        k = int(param) if param else 1
    except ValueError:
        k = -1
    if k < 0:
        raise ConfigError(f"train.loss=ce_bgtopk:k needs a whole number k >= 0, got '{name}'")
    return kind, k


def make_loss(name: str, label_smoothing: float = 0.0):
    """The Keras loss of ``train.loss`` (see the module docstring).

    Raises:
        ConfigError: Unknown loss name.
    """
    import keras

    from birdnet_tf.models.losses import TopKBackgroundBCE

    kind, k = parse_loss(name)
    if kind == "bce":
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    if kind == "cce":
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    return TopKBackgroundBCE(k=k, label_smoothing=label_smoothing)


def bgtopk_keep_np(targets: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """numpy :func:`birdnet_tf.models.losses.bgtopk_keep` (same ties: the lower class index is ignored first)."""
    keep = np.ones(scores.shape, np.float64)
    if k <= 0:
        return keep
    candidates = np.where(targets > 0, -np.inf, scores.astype(np.float64))
    order = np.argsort(-candidates, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(scores))[:, None]
    keep[rows, order] = np.where(np.isfinite(candidates[rows, order]), 0.0, 1.0)
    return keep


def loss_value(name: str, targets: np.ndarray, scores: np.ndarray) -> float:
    """The loss ``name`` of scores against targets, mean over examples (numpy; validation logging).

    ``cce`` normalises each target row to sum 1 (as the trainer does); scores are clipped to
    ``[EPS, 1 − EPS]``. Args ``targets``, ``scores``: ``(examples, classes)``.
    """
    kind, k = parse_loss(name)
    p = np.clip(scores, EPS, 1 - EPS)
    if kind == "cce":
        t = targets / np.maximum(targets.sum(axis=1, keepdims=True), EPS)
        return float(-np.mean(np.sum(t * np.log(p), axis=1)))
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    if kind == "ce_bgtopk":
        bce = bce * bgtopk_keep_np(targets, scores, k)
    return float(np.mean(bce))
