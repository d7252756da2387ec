"""Magnitude compression of the frontend's mel energies, fixed and learnable (OFAI 2018), and PCEN.

All are Keras layers on ``(batch, frames, bands)`` → same, in float32; all are pointwise
in time except :class:`PCEN`, whose smoother is recursive over frames. Learnable ones store
their parameters as offsets from the fixed counterpart they start at (see
:mod:`birdnet_tf.frontend.layers`).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from birdnet_tf.frontend.layers import PACKAGE

__all__ = ["PCEN", "MagnitudeScaling", "pcen_smoothing_coefficient"]


@keras.saving.register_keras_serializable(package=PACKAGE)
class MagnitudeScaling(keras.layers.Layer):
    """Pointwise compression of mel energies ``(batch, frames, bands)`` → same.

    Fixed: ``log`` (log(x + offset)), ``log1p`` or ``none``. Learnable per band (OFAI), with
    one weight ``a`` of shape ``(bands,)``, initially 0:

    - ``log1p_learn``: ``log(1 + e^a · x)`` — starts as ``log1p``;
    - ``pow_learn``: ``max(x, POW_FLOOR)^sigmoid(a)`` — starts as the square root. The floor
      (1e-12, about 170 dB below a full-scale tone's power) keeps the gradient of the
      exponent finite on digital silence.
    """

    KINDS = ("log", "log1p", "none", "log1p_learn", "pow_learn")
    LEARNABLE = ("log1p_learn", "pow_learn")
    POW_FLOOR = 1e-12

    def __init__(self, kind="log", offset=1e-6, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if kind not in self.KINDS:
            raise ValueError(f"unknown magnitude scaling '{kind}'; choose one of {', '.join(self.KINDS)}")
        self.kind = kind
        self.offset = float(offset)
        self.a = None

    def build(self, input_shape):
        if self.kind in self.LEARNABLE and self.a is None:
            bands = input_shape[-1]
            if bands is None:
                raise ValueError(f"magnitude scaling '{self.kind}' needs a known number of bands")
            self.a = self.add_weight(name="a", shape=(int(bands),), initializer="zeros", trainable=True,
                                     dtype="float32")
        super().build(input_shape)

    def call(self, x):
        if self.kind == "log":
            return tf.math.log(x + self.offset)
        if self.kind == "log1p":
            return tf.math.log1p(x)
        if self.kind == "log1p_learn":
            return tf.math.log1p(tf.exp(tf.convert_to_tensor(self.a)) * x)
        if self.kind == "pow_learn":
            return tf.pow(tf.maximum(x, self.POW_FLOOR), tf.sigmoid(tf.convert_to_tensor(self.a)))
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "offset": self.offset}


def pcen_smoothing_coefficient(time_constant_s: float, frame_rate_hz: float) -> float:
    """librosa's default smoothing coefficient ``b`` for a time constant at a frame rate.

    ``t = time_constant_s · frame_rate_hz`` frames; ``b = (sqrt(1 + 4 t²) − 1) / (2 t²)``
    (``librosa.pcen`` with ``b=None``): 0.0351 for 0.4 s at 70 frames/s.
    """
    t = float(time_constant_s) * float(frame_rate_hz)
    return float((math.sqrt(1.0 + 4.0 * t * t) - 1.0) / (2.0 * t * t))


@keras.saving.register_keras_serializable(package=PACKAGE)
class PCEN(keras.layers.Layer):
    """Per-channel energy normalisation with per-band learnable parameters: ``(batch, frames, bands)`` → same.

    As ``librosa.pcen`` (``max_size=1``)::

        M[t] = (1 − s) · M[t−1] + s · E[t]          (M[−1] = E[0]: steady state at the first frame)
        out  = (E / (eps + M)^α + δ)^r − δ^r

    computed in librosa's stable form ``δ^r · expm1(r · log1p(E · (eps + M)^−α / δ))``.
    ``s``, ``α``, ``δ``, ``r`` are per band and learnable, each stored as ``log(p / p_init)``
    (weights ``log_s``, ``log_alpha``, ``log_delta``, ``log_r``, initially 0): positive by
    construction, and weight decay pulls them back to the initial values; ``s`` is capped at 1.
    The initial values are librosa's defaults at this frame rate: ``s`` from a 0.4-s time
    constant (:func:`pcen_smoothing_coefficient`), α 0.98, δ 2, r 0.5, eps 1e-6. (librosa's own
    default starts its filter at ``M[−1] = 1``; pass ``zi = (1 − s) · E[0]`` to match this layer.)

    The smoother is the exact IIR recursion, run with ``tf.scan`` over frames (sequential
    in time, parallel over batch and bands) rather than a truncated FIR approximation: it
    equals librosa to float rounding, the truncation of an FIR kernel would depend on
    the learned ``s`` (at s = 0.035 the response needs about 200 frames to fall to 0.1 %),
    and any input length works. Being recursive, the layer is not pointwise in time
    (``pointwise_in_time = False``): whole-recording inference refuses such models
    (:func:`birdnet_tf.models.surgery.split_model`) and windows are scored one by one.

    Args:
        frame_rate_hz: Frames per second of the input (sample rate / hop).
        time_constant_s: Initial smoother time constant.
        alpha, delta, r: Initial gain exponent, bias and root.
        eps: Floor of the smoothed energy (fixed).
    """

    pointwise_in_time = False

    def __init__(self, frame_rate_hz=22050 / 315, time_constant_s=0.4, alpha=0.98, delta=2.0, r=0.5,
                 eps=1e-6, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.frame_rate_hz = float(frame_rate_hz)
        self.time_constant_s = float(time_constant_s)
        self.alpha, self.delta, self.r, self.eps = float(alpha), float(delta), float(r), float(eps)
        if min(self.frame_rate_hz, self.time_constant_s, self.alpha, self.delta, self.r, self.eps) <= 0:
            raise ValueError("PCEN's frame rate, time constant, alpha, delta, r and eps must all be > 0")
        self.s_init = pcen_smoothing_coefficient(self.time_constant_s, self.frame_rate_hz)
        self.log_s = self.log_alpha = self.log_delta = self.log_r = None

    def build(self, input_shape):
        bands = input_shape[-1]
        if bands is None:
            raise ValueError("PCEN needs a known number of bands")
        for name in ("log_s", "log_alpha", "log_delta", "log_r"):
            if getattr(self, name) is None:
                setattr(self, name, self.add_weight(name=name, shape=(int(bands),), initializer="zeros",
                                                    trainable=True, dtype="float32"))
        super().build(input_shape)

    def parameters(self):
        """Current per-band ``(s, alpha, delta, r)``, each ``(bands,)`` float32."""
        def value(weight, init):
            return init * tf.exp(tf.convert_to_tensor(weight))

        return (tf.minimum(value(self.log_s, self.s_init), 1.0), value(self.log_alpha, self.alpha),
                value(self.log_delta, self.delta), value(self.log_r, self.r))

    def smooth(self, x, s):
        """The IIR smoother ``M`` of ``x`` ``(batch, frames, bands)`` with coefficients ``s`` ``(bands,)``."""
        xt = tf.transpose(x, [1, 0, 2])  # (frames, batch, bands): scan runs over frames
        m = tf.scan(lambda prev, e: prev + s * (e - prev), xt, initializer=xt[0])
        return tf.transpose(m, [1, 0, 2])

    def call(self, x):
        x = tf.cast(x, tf.float32)
        s, alpha, delta, r = self.parameters()
        m = self.smooth(x, s)
        gain = tf.exp(-alpha * (math.log(self.eps) + tf.math.log1p(m / self.eps)))  # (eps + M)^-alpha
        return tf.exp(r * tf.math.log(delta)) * tf.math.expm1(r * tf.math.log1p(x * gain / delta))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "frame_rate_hz": self.frame_rate_hz,
                "time_constant_s": self.time_constant_s, "alpha": self.alpha, "delta": self.delta, "r": self.r,
                "eps": self.eps}
