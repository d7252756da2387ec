"""Custom layers of the classification head."""

from __future__ import annotations

import keras
import tensorflow as tf

PACKAGE = "birdnet_tf"


@keras.saving.register_keras_serializable(package=PACKAGE)
class TemporalPooling(keras.layers.Layer):
    """Pools per-step class logits ``(batch, steps, classes)`` → ``(batch, classes)``.

    Methods: ``max``, ``mean``, ``logmeanexp:a`` = ``log(mean(exp(a·x)))/a`` computed
    stably (between mean for a→0 and max for a→∞). Always computes in float32.
    """

    def __init__(self, method="logmeanexp:1", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        name, _, param = method.partition(":")
        if name not in ("max", "mean", "logmeanexp"):
            raise ValueError(f"unknown temporal pooling '{method}'; choose max, mean or logmeanexp:a")
        self.method = method
        self._kind = name
        self._a = float(param) if param else 1.0
        if self._kind == "logmeanexp" and self._a <= 0:
            raise ValueError(f"logmeanexp needs a > 0, got {self._a}")

    def call(self, x):
        x = tf.cast(x, tf.float32)
        if self._kind == "max":
            return tf.reduce_max(x, axis=1)
        if self._kind == "mean":
            return tf.reduce_mean(x, axis=1)
        a = self._a
        n = tf.cast(tf.shape(x)[1], tf.float32)
        return (tf.reduce_logsumexp(a * x, axis=1) - tf.math.log(n)) / a

    def get_config(self):
        return {**super().get_config(), "method": self.method}
