"""The custom Keras loss of ``train.loss=ce_bgtopk:k`` (OFAI's top-k background cross-entropy).

It lives under ``models/`` because a compiled ``.keras`` file names it (registered as
``birdnet_tf>TopKBackgroundBCE`` when this module is imported, see
:mod:`birdnet_tf.models.objects`); choosing a loss from a config, and the NumPy twin used to log
validation losses, stay in :mod:`birdnet_tf.train.losses`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="birdnet_tf")
class TopKBackgroundBCE(keras.losses.Loss):
    """Binary cross-entropy ignoring the ``k`` top-scoring non-targets per example (``ce_bgtopk:k``).

    ``y_true``, ``y_pred``: ``(batch, classes)``, targets in [0, 1] and scores in (0, 1).
    Returns per example ``Σ_c keep_c · bce_c / classes`` (then Keras' batch reduction).
    """

    def __init__(self, k: int = 1, label_smoothing: float = 0.0, name: str = "ce_bgtopk", **kwargs):
        super().__init__(name=name, **kwargs)
        self.k, self.label_smoothing = int(k), float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        keep = tf.stop_gradient(bgtopk_keep(y_true, y_pred, self.k))
        t = y_true * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing if self.label_smoothing \
            else y_true
        bce = keras.ops.binary_crossentropy(t, y_pred)  # elementwise; from the sigmoid's logits when it has them
        return tf.reduce_sum(keep * bce, axis=-1) / tf.cast(tf.shape(y_pred)[-1], bce.dtype)

    def get_config(self):
        return {**super().get_config(), "k": self.k, "label_smoothing": self.label_smoothing}


def bgtopk_keep(y_true, y_pred, k: int):
    """``1.0`` for the classes ``ce_bgtopk:k`` counts, ``0.0`` for the ``k`` it ignores (TF).

    Args:
        y_true: Targets ``(batch, classes)``; > 0 is a target.
        y_pred: Scores ``(batch, classes)``.
        k: Non-targets to ignore per example (the highest-scoring; fewer if there are fewer).

    Returns:
        ``(batch, classes)`` in ``y_pred``'s dtype.
    """
    if k <= 0:
        return tf.ones_like(y_pred)
    n = tf.shape(y_pred)[-1]
    neg_inf = tf.fill(tf.shape(y_pred), tf.constant(-np.inf, y_pred.dtype))
    candidates = tf.where(y_true > 0, neg_inf, y_pred)
    values, idx = tf.math.top_k(candidates, k=tf.minimum(k, n))  # ties: lower index first
    chosen = tf.cast(values > -np.inf, y_pred.dtype)  # only real non-targets
    ignore = tf.reduce_sum(tf.one_hot(idx, n, dtype=y_pred.dtype) * chosen[..., None], axis=-2)
    return 1.0 - ignore
