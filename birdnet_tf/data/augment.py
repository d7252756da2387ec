"""Waveform augmentations: pure per-example TF functions, each the identity at probability 0.

All take and return a float32 waveform ``(samples,)`` and draw from TF's global
random state, so they work inside ``tf.data`` maps. Spectrogram masks live in the
model (:class:`birdnet_tf.frontend.SpecAugment`), because the spectrogram only
exists there.
"""

from __future__ import annotations

import tensorflow as tf

from birdnet_tf.config import AugmentConfig


def _coin(prob: float) -> tf.Tensor:
    return tf.random.uniform(()) < prob


def random_gain(x: tf.Tensor, prob: float, max_db: float) -> tf.Tensor:
    """Scales by a gain drawn uniformly in ±``max_db`` dB, with probability ``prob``."""
    if prob <= 0 or max_db <= 0:
        return x
    db = tf.random.uniform((), -max_db, max_db)
    gain = tf.pow(10.0, db / 20.0)
    return tf.where(_coin(prob), x * gain, x)


def random_shift(x: tf.Tensor, prob: float) -> tf.Tensor:
    """Circularly shifts by a uniform random number of samples, with probability ``prob``."""
    if prob <= 0:
        return x
    n = tf.shape(x)[0]
    shift = tf.random.uniform((), 0, tf.maximum(n, 1), dtype=tf.int32)
    return tf.where(_coin(prob), tf.roll(x, shift, axis=0), x)


def add_noise(x: tf.Tensor, prob: float, snr_db: tuple[float, float]) -> tf.Tensor:
    """Adds white Gaussian noise at an SNR drawn uniformly in ``snr_db``, with probability ``prob``.

    The SNR is relative to the excerpt's RMS; a silent excerpt gets noise at RMS 1e-4.
    """
    if prob <= 0:
        return x
    lo, hi = snr_db

    def noisy():
        snr = tf.random.uniform((), lo, hi)
        rms = tf.maximum(tf.sqrt(tf.reduce_mean(tf.square(x)) + 1e-12), 1e-4)
        return x + tf.random.normal(tf.shape(x)) * rms / tf.pow(10.0, snr / 20.0)

    return tf.cond(_coin(prob), noisy, lambda: x)


def augment_waveform(x: tf.Tensor, aug: AugmentConfig, training: bool) -> tf.Tensor:
    """All waveform augmentations of ``aug`` in order; the identity when ``training`` is False."""
    if not training:
        return x
    x = random_shift(x, aug.shift_prob)
    x = random_gain(x, aug.gain_prob, aug.gain_db)
    x = add_noise(x, aug.noise_prob, aug.noise_snr_db)
    return x
