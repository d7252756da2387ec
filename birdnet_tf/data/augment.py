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


def coloured_noise(shape: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
    """Unit-variance noise of ``shape`` (``(..., samples)``) whose power spectrum falls as ``1/f^beta``;
    ``beta`` broadcasts against ``shape[:-1] + [1]`` (0: white, 1: pink, 2: brown).

    White noise shaped in the frequency domain (the DC bin is zeroed), then scaled back to
    unit variance per waveform.
    """
    n = shape[-1]
    white = tf.random.normal(shape)
    spec = tf.signal.rfft(white)
    f = tf.cast(tf.range(tf.shape(spec)[-1]), tf.float32)
    gain = tf.pow(tf.maximum(f, 1.0), -tf.cast(beta, tf.float32) / 2.0) * tf.cast(f > 0, tf.float32)
    y = tf.signal.irfft(spec * tf.cast(gain, tf.complex64), fft_length=[n])
    return y / tf.sqrt(tf.reduce_mean(tf.square(y), axis=-1, keepdims=True) + 1e-12)


def add_noise(x: tf.Tensor, prob: float, snr_db: tuple[float, float],
              beta: tuple[float, float] = (0.0, 0.0)) -> tf.Tensor:
    """Adds noise at an SNR uniform in ``snr_db`` to each waveform, with probability ``prob``.

    The SNR is relative to the waveform's RMS (a silent one gets noise at RMS 1e-4). With
    ``beta`` (0, 0) the noise is white (uniform with unit variance, cheaper than Gaussian);
    otherwise each waveform's noise has a power spectrum ~ ``1/f^beta``, ``beta`` uniform in
    the range (:func:`coloured_noise`).
    """
    if prob <= 0:
        return x
    lo, hi = snr_db
    snr = tf.random.uniform(_row_shape(x), lo, hi)
    rms = tf.maximum(tf.sqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + 1e-12), 1e-4)
    scale = tf.where(_coin(x, prob), rms / tf.pow(10.0, snr / 20.0), 0.0)
    if beta[0] == 0 and beta[1] == 0:
        return x + tf.random.uniform(tf.shape(x), -_SQRT3, _SQRT3) * scale
    b = tf.random.uniform(_row_shape(x), float(beta[0]), float(beta[1]))
    return x + coloured_noise(tf.shape(x), b) * scale


def augment_waveform(x: tf.Tensor, aug: AugmentConfig, training: bool) -> tf.Tensor:
    """All waveform augmentations of ``aug`` in order; the identity when ``training`` is False."""
    if not training:
        return x
    x = random_shift(x, aug.shift_prob)
    x = random_gain(x, aug.gain_prob, aug.gain_db)
    x = add_noise(x, aug.noise_prob, aug.noise_snr_db, aug.noise_beta)
    return x
