"""Custom layers of the classification head, and the pooling maths they share with the export.

Temporal pooling turns per-step class logits ``(batch, steps, classes)`` into one logit per
class ``(batch, classes)``. The functions :func:`noisy_or_logits` and :func:`attention_pool`
are the TF implementations of the two non-trivial methods. :func:`pool_steps` is the one
definition of every method, with an optional ``mask`` of valid steps, so the export's
whole-recording ``windows`` signature and the streaming engine (:mod:`birdnet_tf.infer.whole`),
which pool windows of a padded step matrix, compute exactly what :class:`TemporalPooling`
computes on the window's steps alone (:func:`pool_packed` unpacks attention logits packed
after the class logits, as :func:`birdnet_tf.models.surgery.split_model` packs them).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from birdnet_tf.config import split_kind

PACKAGE = "birdnet_tf"

#: Temporal pooling methods (``logmeanexp`` and ``attention`` take a parameter after ``:``).
POOLING_METHODS = ("max", "mean", "logmeanexp", "noisy-or", "attention")

#: Below this, ``log(softplus(x)) = x`` to float32 precision (the next term, ``-eˣ/2``, is < 2e-7).
_LOG_SOFTPLUS_LINEAR_BELOW = -15.0


def parse_pooling(method: str) -> tuple[str, float]:
    """``"logmeanexp:2"`` → ``("logmeanexp", 2.0)``; checks the method and its parameter.

    Returns:
        ``(kind, param)``: ``a`` of ``logmeanexp:a`` (default 1), the number of heads ``K``
        of ``attention:K`` (default 1), else 0.

    Raises:
        ValueError: Unknown method or bad parameter (names the method).
    """
    kind, param = split_kind(method)
    if kind not in POOLING_METHODS:
        raise ValueError(f"unknown temporal pooling '{method}'; choose max, mean, logmeanexp:a, noisy-or "
                         "or attention:K")
    if kind in ("max", "mean", "noisy-or"):
        if param:
            raise ValueError(f"temporal pooling '{kind}' takes no parameter, got '{method}'")
        return kind, 0.0
    try:
        value = float(param) if param else 1.0
    except ValueError:
        raise ValueError(f"temporal pooling '{method}': '{param}' is not a number") from None
    if kind == "logmeanexp" and not value > 0:
        raise ValueError(f"logmeanexp needs a > 0, got {value}")
    if kind == "attention" and (value != int(value) or value < 1):
        raise ValueError(f"attention needs a whole number of heads K >= 1, got '{param}'")
    return kind, value


def _log_softplus(x):
    """``log(log(1 + eˣ))`` without underflow: ``x`` itself below -15 (float32 exact there)."""
    linear = x < _LOG_SOFTPLUS_LINEAR_BELOW
    safe = tf.where(linear, tf.zeros_like(x), x)  # keeps the unused branch finite for the gradient
    return tf.where(linear, x, tf.math.log(tf.nn.softplus(safe)))


def _logit_from_log_neg_log1mp(lam):
    """``logit(p)`` from ``λ = log(-log(1 - p))`` (float32, stable for any finite λ).

    With ``a = eᵝ = -log(1 - p)``: ``logit(p) = log(1 - e⁻ᵃ) + a``, evaluated as
    ``λ + a/2 + a²/24`` for ``a < 1e-3`` (the series of ``log((1 - e⁻ᵃ)/a) + a``; also right
    when ``a`` underflows to 0), ``log(-expm1(-a)) + a`` for ``a < ln 2`` and
    ``log1p(-e⁻ᵃ) + a`` above.
    """
    a = tf.exp(lam)
    small = a < 1e-3
    mid = (a >= 1e-3) & (a < math.log(2.0))
    a_mid = tf.where(mid, a, tf.ones_like(a))
    a_big = tf.where(small | mid, tf.ones_like(a), a)
    return tf.where(small, lam + a / 2 + a * a / 24,
                    tf.where(mid, tf.math.log(-tf.math.expm1(-a_mid)) + a_mid,
                             tf.math.log1p(-tf.exp(-a_big)) + a_big))


def noisy_or_logits(x, axis: int = 1, mask=None):
    """Noisy-or over ``axis`` on logits: ``logit(1 − Πₜ (1 − σ(xₜ)))``, computed in log space.

    ``-log(1 - p) = Σₜ softplus(xₜ)``, whose log is a log-sum-exp of ``log(softplus(xₜ))``,
    so neither very negative logits (every step ≈ 0: the result tends to
    ``logsumexp(x)``) nor very positive ones (``p`` rounds to 1: the result is
    ``Σₜ softplus(xₜ)``) overflow, underflow or give NaN gradients.

    Args:
        x: Logits, float, e.g. ``(batch, steps, classes)``.
        axis: The step axis.
        mask: Optional bool, broadcastable to ``x``: steps to pool (at least one per output).

    Returns:
        Pooled logits, float32, ``x``'s shape without ``axis``.
    """
    ls = _log_softplus(tf.cast(x, tf.float32))
    if mask is not None:
        ls = tf.where(mask, ls, tf.fill(tf.shape(ls), -1e30))
    return _logit_from_log_neg_log1mp(tf.reduce_logsumexp(ls, axis=axis))


def attention_pool(x, attention, mask=None):
    """Attention pooling: ``mean_k Σₜ softmaxₜ(attention[:, :, k]) · x`` per class.

    Args:
        x: Logits ``(batch, steps, classes)``.
        attention: Attention logits ``(batch, steps, heads, classes)``; each head and class
            gets its own softmax over the steps.
        mask: Optional bool ``(batch, steps)``: steps to pool (at least one per row).

    Returns:
        ``(batch, classes)``, float32.
    """
    x, attention = tf.cast(x, tf.float32), tf.cast(attention, tf.float32)
    if mask is not None:
        m = tf.broadcast_to(mask[:, :, None, None], tf.shape(attention))
        attention = tf.where(m, attention, tf.fill(tf.shape(attention), -1e30))
        x = tf.where(tf.broadcast_to(mask[:, :, None], tf.shape(x)), x, tf.zeros_like(x))
    w = tf.nn.softmax(attention, axis=1)  # (batch, steps, heads, classes)
    return tf.reduce_mean(tf.reduce_sum(w * x[:, :, None, :], axis=1), axis=1)


def pool_steps(x, method: str, mask=None, attention=None):
    """Temporal pooling of per-step logits ``(batch, steps, classes)`` → ``(batch, classes)``, float32.

    The one definition of the methods of :class:`TemporalPooling` (see there).

    Args:
        x: Per-step logits.
        method: ``max``, ``mean``, ``logmeanexp:a``, ``noisy-or`` or ``attention:K``.
        mask: Optional bool ``(batch, steps)``: the steps to pool (at least one per row);
            masked pooling equals pooling the valid steps alone.
        attention: ``attention:K`` only: attention logits ``(batch, steps, K, classes)``.
    """
    kind, param = parse_pooling(method)
    x = tf.cast(x, tf.float32)
    valid3 = None if mask is None else tf.broadcast_to(tf.cast(mask, tf.bool)[:, :, None], tf.shape(x))
    if kind == "attention":
        if attention is None:
            raise ValueError("attention pooling needs the attention logits")
        return attention_pool(x, attention, mask=None if mask is None else tf.cast(mask, tf.bool))
    if kind == "noisy-or":
        return noisy_or_logits(x, axis=1, mask=valid3)
    if kind == "max":
        return tf.reduce_max(x if valid3 is None else tf.where(valid3, x, -1e30), axis=1)
    if valid3 is None:
        count = tf.cast(tf.shape(x)[1], tf.float32)
    else:
        count = tf.reduce_sum(tf.cast(valid3, tf.float32), axis=1)
    if kind == "mean":
        return tf.reduce_sum(x if valid3 is None else tf.where(valid3, x, 0.0), axis=1) / count
    a = param
    ax = a * x if valid3 is None else tf.where(valid3, a * x, -1e30)
    return (tf.reduce_logsumexp(ax, axis=1) - tf.math.log(count)) / a


def pool_packed(packed, method: str, mask=None):
    """:func:`pool_steps` of a body output that packs ``attention:K``'s attention logits after the class logits.

    ``packed``: ``(batch, steps, classes)``, or for ``attention:K``
    ``(batch, steps, classes + K·classes)`` (``[..., classes + k·classes + c]`` is head ``k``'s
    logit for class ``c``, as :func:`birdnet_tf.models.surgery.split_model` packs them).
    """
    kind, param = parse_pooling(method)
    if kind != "attention":
        return pool_steps(packed, method, mask)
    heads = int(param)
    packed = tf.cast(packed, tf.float32)
    c = tf.shape(packed)[-1] // (1 + heads)
    shape = tf.shape(packed)
    att = tf.reshape(packed[:, :, c:], tf.stack([shape[0], shape[1], heads, c]))
    return pool_steps(packed[:, :, :c], method, mask, attention=att)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TemporalPooling(keras.layers.Layer):
    """Pools per-step class logits ``(batch, steps, classes)`` → ``(batch, classes)``.

    Methods (always computed in float32):

    - ``max``, ``mean``;
    - ``logmeanexp:a`` = ``log(mean(exp(a·x)))/a``, computed stably (between mean for a→0
      and max for a→∞; ``logmeanexp`` alone is ``a = 1``);
    - ``noisy-or``: the logit of ``1 − Πₜ (1 − σ(xₜ))`` — "the class sounds in at least one
      step" with independent steps (:func:`noisy_or_logits`); meant for sigmoid outputs;
    - ``attention:K``: ``K`` learned attention heads. Per step, a 1×1 projection (kernel
      ``(channels, K·classes)`` + bias) of the ``features`` (the backbone's per-step
      features ``(batch, steps, channels)``; the logits themselves when none are given)
      gives one attention logit per head and class; each is softmaxed over the steps and
      weights the class's logits; the heads are averaged (:func:`attention_pool`). The
      weights of a step depend on that step's features only, so pooling a window of steps
      is the softmax over that window (whole-recording inference relies on it).

    Call as ``layer(logits)`` or, for attention, ``layer(logits, features)``.

    Args:
        method: One of the methods above.
    """

    def __init__(self, method="logmeanexp:1", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self._kind, param = parse_pooling(method)
        self.method = method
        self.heads = int(param) if self._kind == "attention" else 0

    def build(self, logits_shape, features_shape=None):
        if self._kind == "attention":
            channels = (features_shape if features_shape is not None else logits_shape)[-1]
            classes = logits_shape[-1]
            if channels is None or classes is None:
                raise ValueError("attention pooling needs known channel and class dimensions")
            self.attention_kernel = self.add_weight(
                shape=(int(channels), self.heads * int(classes)), initializer="glorot_uniform",
                name="attention_kernel")
            self.attention_bias = self.add_weight(shape=(self.heads * int(classes),), initializer="zeros",
                                                  name="attention_bias")
        self.built = True

    def attention_logits(self, logits, features=None):
        """Per-step attention logits ``(batch, steps, heads, classes)`` (attention pooling only)."""
        if self._kind != "attention":
            raise ValueError(f"temporal pooling '{self.method}' has no attention logits")
        src = tf.cast(logits if features is None else features, tf.float32)
        a = tf.tensordot(src, tf.cast(self.attention_kernel, tf.float32), axes=[[2], [0]])
        a = a + tf.cast(self.attention_bias, tf.float32)
        shape = tf.shape(src)
        return tf.reshape(a, tf.stack([shape[0], shape[1], self.heads, tf.shape(logits)[-1]]))

    def call(self, logits, features=None):
        x = tf.cast(logits, tf.float32)
        attention = self.attention_logits(x, features) if self._kind == "attention" else None
        return pool_steps(x, self.method, attention=attention)

    def get_config(self):
        return {**super().get_config(), "method": self.method}
