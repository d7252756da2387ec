"""Waveform augmentations: pure TF functions, each the identity at probability 0.

Each takes float32 waveforms of shape ``(samples,)`` or ``(batch, samples)`` and draws
its randomness per waveform (per row), so the training pipeline applies them once per
batch — vectorised — rather than once per example. They draw from TF's global random
state and work inside ``tf.data`` maps. Spectrogram masks live in the model
(:class:`birdnet_tf.frontend.SpecAugment`), because the spectrogram only exists there.
"""

from __future__ import annotations

import tensorflow as tf

from birdnet_tf.config import AugmentConfig

_SQRT3 = 1.7320508075688772


def _row_shape(x: tf.Tensor) -> tf.Tensor:
    """Shape of one random draw per waveform: ``x``'s leading dims and 1."""
    return tf.concat([tf.shape(x)[:-1], [1]], axis=0)


def _coin(x: tf.Tensor, prob: float) -> tf.Tensor:
    """Boolean per waveform, True with probability ``prob``."""
    return tf.random.uniform(_row_shape(x)) < prob


def random_gain(x: tf.Tensor, prob: float, max_db: float) -> tf.Tensor:
    """Scales each waveform by a gain uniform in ±``max_db`` dB, with probability ``prob``."""
    if prob <= 0 or max_db <= 0:
        return x
    db = tf.random.uniform(_row_shape(x), -max_db, max_db)
    return x * tf.where(_coin(x, prob), tf.pow(10.0, db / 20.0), 1.0)


def random_shift(x: tf.Tensor, prob: float) -> tf.Tensor:
    """Circularly shifts each waveform by a uniform random number of samples, with probability ``prob``."""
    if prob <= 0:
        return x
    n = tf.shape(x)[-1]
    shift = tf.random.uniform(_row_shape(x), 0, tf.maximum(n, 1), dtype=tf.int32)
    shift = tf.where(_coin(x, prob), shift, 0)
    idx = (tf.range(n) + shift) % tf.maximum(n, 1)
    return tf.gather(x, idx, batch_dims=len(x.shape) - 1)


def add_noise(x: tf.Tensor, prob: float, snr_db: tuple[float, float]) -> tf.Tensor:
    """Adds white noise at an SNR uniform in ``snr_db`` to each waveform, with probability ``prob``.

    The SNR is relative to the waveform's RMS (a silent one gets noise at RMS 1e-4). The
    noise is uniform with unit variance, which is white like Gaussian noise and cheaper.
    """
    if prob <= 0:
        return x
    lo, hi = snr_db
    snr = tf.random.uniform(_row_shape(x), lo, hi)
    rms = tf.maximum(tf.sqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + 1e-12), 1e-4)
    scale = tf.where(_coin(x, prob), rms / tf.pow(10.0, snr / 20.0), 0.0)
    return x + tf.random.uniform(tf.shape(x), -_SQRT3, _SQRT3) * scale


def augment_waveform(x: tf.Tensor, aug: AugmentConfig, training: bool) -> tf.Tensor:
    """All waveform augmentations of ``aug`` in order; the identity when ``training`` is False."""
    if not training:
        return x
    x = random_shift(x, aug.shift_prob)
    x = random_gain(x, aug.gain_prob, aug.gain_db)
    x = add_noise(x, aug.noise_prob, aug.noise_snr_db)
    return x
