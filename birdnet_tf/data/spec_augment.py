"""The OFAI 2018 augmentations: mixup, random time stretch, frequency shift and random filters.

Pure TF functions, each exactly the identity at probability 0 and vectorised over the
batch (one random draw per example). The three spectrogram transforms take
``spec (batch, frames, bands)`` float32 and return the same shape and dtype; the layer
:class:`SpecTransforms` applies them inside the model, in training only, right after
``spec_augment`` (see :func:`birdnet_tf.models.build.build_model`). :func:`mixup` works on
batches of ``(waveform, targets)`` in :func:`birdnet_tf.data.pipeline.training_dataset`.

Randomness: ``seed=None`` draws from TF's global random state (what training uses);
an ``int`` seed makes the draws stateless and reproducible, and the ``draw_*`` helpers
return the very values a function draws with that seed (tests read them back).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

PACKAGE = "birdnet_tf"

#: Spectrogram units per dB for the random filters inside the model: the frontend's
#: ``log`` magnitude is the natural log of mel power, where +10 dB adds ln(10).
NATURAL_LOG_POWER_PER_DB = math.log(10.0) / 10.0

#: Cosine components of a random filter curve (k = 1..3 half-periods across the bands).
FILTER_COMPONENTS = 3


def _uniform(shape, seed, k: int, minval=0.0, maxval=1.0, dtype=tf.float32) -> tf.Tensor:
    """Uniform draws; stateless with seed pair ``(seed, k)`` when ``seed`` is an int."""
    if seed is None:
        return tf.random.uniform(shape, minval, maxval, dtype=dtype)
    return tf.random.stateless_uniform(shape, tf.constant([int(seed), k], tf.int64), minval, maxval, dtype=dtype)


def _coin(batch, prob: float, seed, k: int) -> tf.Tensor:
    """Boolean ``(batch,)``: True with probability ``prob``."""
    return _uniform((batch,), seed, k) < prob


def draw_stretch_factors(batch, prob: float, max_stretch: float, seed=None) -> tf.Tensor:
    """Stretch factor per example, ``(batch,)``: log-uniform in ``[1/(1+s), 1+s]`` with
    probability ``prob``, else 1 (what :func:`time_stretch` uses with the same seed)."""
    span = math.log1p(max_stretch)
    factor = tf.exp(_uniform((batch,), seed, 0, -span, span))
    return tf.where(_coin(batch, prob, seed, 1), factor, 1.0)


def time_stretch(spec: tf.Tensor, prob: float, max_stretch: float, seed=None) -> tf.Tensor:
    """Stretches each spectrogram along time by a random factor, keeping the number of frames.

    With probability ``prob`` per example, the factor ``f`` is log-uniform in
    ``[1/(1+max_stretch), 1+max_stretch]``; output frame ``t`` is the input linearly
    interpolated at ``c + (t - c) / f`` with ``c`` the centre frame, so ``f > 1`` slows down
    (zooms in on the middle, cropping the ends) and ``f < 1`` speeds up; sources past either
    end repeat the edge frame (no padding with made-up values).

    Args:
        spec: ``(batch, frames, bands)`` float32.
        prob: Probability per example; 0 returns ``spec`` itself.
        max_stretch: ``s`` ≥ 0 of the factor range.
        seed: None (global random state) or an int (stateless, reproducible).

    Returns:
        ``(batch, frames, bands)``, same dtype.
    """
    if prob <= 0 or max_stretch <= 0:
        return spec
    shape = tf.shape(spec)
    batch, frames = shape[0], shape[1]
    f = draw_stretch_factors(batch, prob, max_stretch, seed)
    t = tf.cast(tf.range(frames), tf.float32)
    c = (tf.cast(frames, tf.float32) - 1.0) / 2.0
    src = tf.clip_by_value(c + (t[None, :] - c) / f[:, None], 0.0, tf.cast(frames - 1, tf.float32))
    lo = tf.floor(src)
    w = (src - lo)[:, :, None]
    lo_i = tf.cast(lo, tf.int32)
    hi_i = tf.minimum(lo_i + 1, frames - 1)
    a = tf.gather(spec, lo_i, batch_dims=1)
    b = tf.gather(spec, hi_i, batch_dims=1)
    return tf.cast(a * (1.0 - w) + b * w, spec.dtype)


def draw_shift_bins(batch, prob: float, max_bins: int, seed=None) -> tf.Tensor:
    """Band shift per example, int32 ``(batch,)``: uniform in ``[-max_bins, max_bins]`` with
    probability ``prob``, else 0 (what :func:`freq_shift` uses with the same seed)."""
    shift = _uniform((batch,), seed, 2, -int(max_bins), int(max_bins) + 1, dtype=tf.int32)
    return tf.where(_coin(batch, prob, seed, 3), shift, 0)


def freq_shift(spec: tf.Tensor, prob: float, max_bins: int, seed=None) -> tf.Tensor:
    """Shifts each spectrogram along the band axis by a random whole number of bands.

    With probability ``prob`` per example, the shift ``d`` is uniform in
    ``[-max_bins, max_bins]``; output band ``j`` is input band ``clip(j - d)``, so ``d > 0``
    moves content up (towards higher bands) and the edge band is repeated where the shift
    uncovers it.

    Args:
        spec: ``(batch, frames, bands)`` float32.
        prob: Probability per example; 0 returns ``spec`` itself.
        max_bins: Largest shift in bands.
        seed: None (global random state) or an int (stateless, reproducible).

    Returns:
        ``(batch, frames, bands)``, same dtype.
    """
    if prob <= 0 or max_bins <= 0:
        return spec
    shape = tf.shape(spec)
    batch, bands = shape[0], shape[2]
    d = draw_shift_bins(batch, prob, max_bins, seed)
    idx = tf.clip_by_value(tf.range(bands)[None, :] - d[:, None], 0, bands - 1)
    return tf.gather(spec, idx, axis=2, batch_dims=1)


def draw_filters(batch, bands, prob: float, max_db: float, seed=None) -> tf.Tensor:
    """Gain curves in dB, ``(batch, bands)``, within ±``max_db`` (0 where not applied).

    Each curve is ``Σ_k a_k cos(π k x + φ_k)`` over ``x`` = 0..1 across the bands, k = 1..3,
    ``a_k`` uniform in ±1 and ``φ_k`` uniform in [0, 2π); it is scaled so that its largest
    absolute value is uniform in ``[0, max_db]``: a smooth, random equaliser.
    """
    k = tf.range(1, FILTER_COMPONENTS + 1, dtype=tf.float32)
    x = tf.cast(tf.range(bands), tf.float32) / tf.maximum(tf.cast(bands, tf.float32) - 1.0, 1.0)
    amp = _uniform((batch, FILTER_COMPONENTS), seed, 4, -1.0, 1.0)
    phase = _uniform((batch, FILTER_COMPONENTS), seed, 5, 0.0, 2.0 * math.pi)
    curve = tf.reduce_sum(amp[:, :, None] * tf.cos(math.pi * k[None, :, None] * x[None, None, :]
                                                    + phase[:, :, None]), axis=1)
    peak = tf.reduce_max(tf.abs(curve), axis=1, keepdims=True)
    curve = curve / tf.maximum(peak, 1e-6) * _uniform((batch, 1), seed, 6, 0.0, max_db)
    return tf.where(_coin(batch, prob, seed, 7)[:, None], curve, 0.0)


def random_filters(spec: tf.Tensor, prob: float, max_db: float, seed=None, units_per_db: float = 1.0) -> tf.Tensor:
    """Adds a random smooth gain curve across the bands (:func:`draw_filters`) to each spectrogram.

    On a log-magnitude spectrogram adding is filtering: the same gain in every frame.

    Args:
        spec: ``(batch, frames, bands)`` float32, log magnitudes.
        prob: Probability per example; 0 returns ``spec`` itself.
        max_db: The curve stays within ±``max_db`` dB.
        seed: None (global random state) or an int (stateless, reproducible).
        units_per_db: ``spec``'s units per dB (1 = ``spec`` is in dB; the model's natural
            log of power uses :data:`NATURAL_LOG_POWER_PER_DB`).

    Returns:
        ``(batch, frames, bands)``, same dtype.
    """
    if prob <= 0 or max_db <= 0:
        return spec
    shape = tf.shape(spec)
    gain = draw_filters(shape[0], shape[2], prob, max_db, seed) * units_per_db
    return spec + tf.cast(gain[:, None, :], spec.dtype)


def draw_mixup(batch, prob: float, alpha: float, seed=None) -> tuple[tf.Tensor, tf.Tensor]:
    """Partner index ``(batch,)`` int32 and own weight ``(batch,)``.

    The partners are a random permutation without fixed points (a random cycle through the
    batch: shuffle, then each example's partner is the next one in the shuffled order), so
    no example is "mixed" with itself when the batch has two or more. The weight is ``max(λ, 1 - λ)`` with ``λ ~ Beta(alpha, alpha)`` — so each example stays
    the larger part of its mix — with probability ``prob``, else 1 (not mixed).
    """
    if seed is None:
        order = tf.random.shuffle(tf.range(batch))
        g1 = tf.random.gamma((batch,), alpha)
        g2 = tf.random.gamma((batch,), alpha)
    else:
        order = tf.argsort(_uniform((batch,), seed, 8))
        g1 = tf.random.stateless_gamma((batch,), tf.constant([int(seed), 9], tf.int64), alpha)
        g2 = tf.random.stateless_gamma((batch,), tf.constant([int(seed), 10], tf.int64), alpha)
    perm = tf.gather(tf.roll(order, -1, axis=0), tf.argsort(order))  # order[j] → order[j + 1]
    lam = g1 / tf.maximum(g1 + g2, 1e-12)
    lam = tf.where(g1 + g2 > 0, tf.maximum(lam, 1.0 - lam), 1.0)
    return tf.cast(perm, tf.int32), tf.where(_coin(batch, prob, seed, 11), lam, 1.0)


def mixup(x: tf.Tensor, targets: tf.Tensor, prob: float, alpha: float, seed=None) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixes each example of a batch with another one of the batch, with probability ``prob``.

    ``x' = w·x + (1 - w)·x[perm]`` and the targets with the same weight ``w``
    (:func:`draw_mixup`), so targets stay convex combinations (one-hot rows still sum to 1).

    Args:
        x: ``(batch, ...)`` float32, e.g. waveforms ``(batch, samples)``.
        targets: ``(batch, classes)`` float32.
        prob: Probability per example; 0 returns the inputs themselves.
        alpha: Beta(α, α) parameter of the mixing weight.
        seed: None (global random state) or an int (stateless, reproducible).

    Returns:
        ``(x', targets')``, the same shapes and dtypes.
    """
    if prob <= 0 or alpha <= 0:
        return x, targets
    perm, w = draw_mixup(tf.shape(x)[0], prob, alpha, seed)
    wx = tf.reshape(w, tf.concat([tf.shape(w), tf.ones([tf.rank(x) - 1], tf.int32)], 0))
    x2 = wx * x + (1.0 - wx) * tf.gather(x, perm)
    t2 = w[:, None] * targets + (1.0 - w[:, None]) * tf.gather(targets, perm)
    return tf.cast(x2, x.dtype), tf.cast(t2, targets.dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpecTransforms(keras.layers.Layer):
    """Random time stretch, frequency shift and filters on ``(batch, frames, bands)``; training only.

    In that order, each with its own probability per example (:func:`time_stretch`,
    :func:`freq_shift`, :func:`random_filters`). The identity when ``training`` is false.
    ``units_per_db`` converts ``filter_max_db`` to the spectrogram's units; in the model the
    layer sits after the per-band standardisation, so there a "dB" is ln(10)/10 standardised
    units — the intended strength where a band's log power has a standard deviation of 1 nat.
    """

    def __init__(self, stretch_prob=0.0, stretch_max=0.15, freq_shift_prob=0.0, freq_shift_max_bins=4,
                 filter_prob=0.0, filter_max_db=10.0, units_per_db=NATURAL_LOG_POWER_PER_DB, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.stretch_prob = float(stretch_prob)
        self.stretch_max = float(stretch_max)
        self.freq_shift_prob = float(freq_shift_prob)
        self.freq_shift_max_bins = int(freq_shift_max_bins)
        self.filter_prob = float(filter_prob)
        self.filter_max_db = float(filter_max_db)
        self.units_per_db = float(units_per_db)

    def call(self, x, training=None):
        if not training:
            return x
        x = time_stretch(x, self.stretch_prob, self.stretch_max)
        x = freq_shift(x, self.freq_shift_prob, self.freq_shift_max_bins)
        return random_filters(x, self.filter_prob, self.filter_max_db, units_per_db=self.units_per_db)

    def get_config(self):
        return {**super().get_config(), "stretch_prob": self.stretch_prob, "stretch_max": self.stretch_max,
                "freq_shift_prob": self.freq_shift_prob, "freq_shift_max_bins": self.freq_shift_max_bins,
                "filter_prob": self.filter_prob, "filter_max_db": self.filter_max_db,
                "units_per_db": self.units_per_db}


def spec_transforms_layer(aug) -> SpecTransforms | None:
    """The ``spec_transforms`` layer of an :class:`~birdnet_tf.config.AugmentConfig`, or None
    when all three of its probabilities are 0 (so default models have no such layer)."""
    if max(aug.stretch_prob, aug.freq_shift_prob, aug.filter_prob) <= 0:
        return None
    return SpecTransforms(aug.stretch_prob, aug.stretch_max, aug.freq_shift_prob, aug.freq_shift_max_bins,
                          aug.filter_prob, aug.filter_max_db, name="spec_transforms")
