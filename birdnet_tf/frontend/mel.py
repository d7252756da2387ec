"""Frequency scales and filterbanks: HTK mel in TF ops (the model frontend) and, in NumPy, the
Slaney mel and linear banks of the 2018 baseline's chunk spectrograms.

The HTK functions (:func:`hz_to_mel`, :func:`mel_to_hz`, :func:`triangular_filterbank`) are
the exact ops of ``tf.signal.linear_to_mel_weight_matrix``; :class:`~birdnet_tf.frontend.layers.MelSpectrogram`
builds its fixed and learnable banks from them. :func:`slaney_mel_filterbank` is librosa's
default bank (Slaney mel scale, Slaney area normalisation), computed without librosa;
:func:`linear_filterbank_matrix` resamples STFT bins to equal bands by area. TensorFlow is
imported inside the functions that use it, so the NumPy banks load without it.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["MEL_BREAK_HZ", "MEL_Q", "hz_to_mel", "linear_filterbank_matrix", "mel_to_hz", "slaney_mel_filterbank",
           "triangular_filterbank"]

#: HTK mel scale as ``tf.signal.linear_to_mel_weight_matrix`` uses it: ``mel = Q · ln(1 + f / BREAK)``.
MEL_Q = 1127.0
MEL_BREAK_HZ = 700.0

def hz_to_mel(f_hz):
    """HTK mel of frequencies in Hz (the exact ops of ``tf.signal.linear_to_mel_weight_matrix``)."""
    import tensorflow as tf

    return MEL_Q * tf.math.log(1.0 + f_hz / MEL_BREAK_HZ)


def mel_to_hz(mel):
    """Inverse of :func:`hz_to_mel`."""
    import tensorflow as tf

    return MEL_BREAK_HZ * (tf.exp(mel / MEL_Q) - 1.0)


def triangular_filterbank(positions_mel, bins_mel, min_width_mel: float = 1e-3):
    """Triangular filters from their corner positions: ``(..., n + 2)`` mel → ``(..., bins + 1, n)`` weights.

    Filter ``i`` rises linearly in mel from ``positions[i]`` to 1 at ``positions[i + 1]`` and
    falls to 0 at ``positions[i + 2]`` (neighbouring filters share corners), exactly as
    ``tf.signal.linear_to_mel_weight_matrix`` draws them (the same ops, so the same float32
    values for its positions). Differentiable in ``positions_mel``.

    Args:
        positions_mel: ``(n + 2,)`` or ``(batch, n + 2)`` corner positions in mel, ascending.
        bins_mel: ``(bins,)`` mel of the rFFT bins 1 … n_fft/2 (the DC bin gets weight 0, as HTK).
        min_width_mel: Floor of each half-triangle's width, so corners that cross in training
            cannot divide by zero (never active for a sane bank: mel bands are tens of mel wide).

    Returns:
        ``(bins + 1, n)`` or ``(batch, bins + 1, n)`` float32 weights (no area normalisation).
    """
    import tensorflow as tf

    p = positions_mel[..., None, :]  # (..., 1, n + 2)
    lower, center, upper = p[..., :-2], p[..., 1:-1], p[..., 2:]
    b = bins_mel[:, None]  # (bins, 1)
    lower_slopes = (b - lower) / tf.maximum(center - lower, min_width_mel)
    upper_slopes = (upper - b) / tf.maximum(upper - center, min_width_mel)
    weights = tf.maximum(0.0, tf.minimum(lower_slopes, upper_slopes))
    pad = [[0, 0]] * (len(weights.shape) - 2) + [[1, 0], [0, 0]]
    return tf.pad(weights, pad)


# --------------------------------------------------------------------------
# NumPy banks of the chunk spectrograms (shared by their TF ops and the librosa reference)
# --------------------------------------------------------------------------


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = f / f_sp
    high = f >= min_log_hz
    return np.where(high, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, mel)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=16)
def slaney_mel_filterbank(sample_rate_hz: int, n_fft: int, n_mels: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """librosa's default mel filterbank (Slaney scale and area normalisation), transposed.

    Equals ``librosa.filters.mel(sr=sample_rate_hz, n_fft=n_fft, n_mels=n_mels, fmin=fmin_hz,
    fmax=fmax_hz).T``, computed without librosa.

    Returns:
        float32 ``[n_fft // 2 + 1, n_mels]`` (read-only, cached): STFT magnitudes
        ``[..., bins] @ this`` → mel bands, lowest first.
    """
    fft_hz = np.linspace(0.0, sample_rate_hz / 2, 1 + n_fft // 2)
    mel_edges = np.linspace(_hz_to_mel_slaney(fmin_hz), _hz_to_mel_slaney(fmax_hz), n_mels + 2)
    hz = _mel_to_hz_slaney(mel_edges)
    fdiff = np.diff(hz)
    ramps = hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (hz[2:] - hz[:-2]))[:, None]
    out = np.ascontiguousarray(weights.T, np.float32)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=16)
def linear_filterbank_matrix(sample_rate_hz: int, n_fft: int, height: int, fmin_hz: float,
                             fmax_hz: float) -> np.ndarray:
    """Area resampling of the STFT bins between ``fmin_hz`` and ``fmax_hz`` to ``height`` equal bands.

    Band ``j`` covers ``[fmin + j·Δ, fmin + (j+1)·Δ]`` with ``Δ = (fmax - fmin) / height``;
    its value is the mean over that range of the magnitude spectrum taken as constant
    across each bin's width (``±bin_hz / 2`` around its centre).

    Returns:
        float32 ``[n_fft // 2 + 1, height]`` (read-only, cached); every column sums to 1.
    """
    bin_hz = sample_rate_hz / n_fft
    k = np.arange(1 + n_fft // 2, dtype=np.float64)
    lo_k = np.clip((k - 0.5) * bin_hz, 0.0, sample_rate_hz / 2)
    hi_k = np.clip((k + 0.5) * bin_hz, 0.0, sample_rate_hz / 2)
    band = (fmax_hz - fmin_hz) / height
    lo_j = fmin_hz + band * np.arange(height)
    hi_j = lo_j + band
    overlap = np.minimum(hi_k[:, None], hi_j[None, :]) - np.maximum(lo_k[:, None], lo_j[None, :])
    out = np.ascontiguousarray(np.maximum(overlap, 0.0) / band, np.float32)
    out.flags.writeable = False
    return out

