"""The 2018 baseline's spectrogram chunks: settings, cutting and the chunk spectrogram.

REFERENCE §1 ("Spectrograms", "Signal/noise rule"); settings in
:class:`~birdnet_tf.config.ChunkConfig` (config section ``chunks``).

**Chunks.** A recording decoded at ``sample_rate_hz`` (44.1 kHz) is cut into chunks
of ``chunk_s`` (1 s) every ``chunk_s - overlap_s`` (0.75 s); a chunk with fewer than
``min_chunk_s`` of real samples is dropped, a shorter one that is kept is
zero-padded (:func:`chunk_starts`). With the defaults (``min_chunk_s = chunk_s``)
only whole chunks are kept.

**Spectrogram** of a chunk (:func:`chunk_spectrogram`, TF ops, batched;
:func:`reference_chunk_spectrogram`, librosa, one chunk): optional pre-emphasis
``y[n] = x[n] - c·x[n-1]`` inside the chunk (``y[0] = x[0]``); a centred STFT
(periodic Hann window, ``n_fft = 8 × height`` = 1024, zero padding of ``n_fft/2`` at
both ends as librosa ≥ 0.10 does by default, ``hop = samples // (width - 1)`` so the
first ``width`` frames cover the chunk, 172 samples = 3.9 ms); magnitude (power 1);
then either the **mel** filterbank of librosa's default (Slaney mel scale, Slaney
area normalisation, ``height`` bands from ``fmin_hz`` to ``fmax_hz``, computed here
without librosa: :func:`mel_filterbank`) or, for ``spectrogram: linear``, the mean
magnitude over ``height`` equal bands from ``fmin_hz`` to ``fmax_hz``
(:func:`linear_filterbank`: an area resampling of the STFT bins in that range);
``20·log10(max(1e-5, S))`` relative to the chunk's maximum (librosa's
``amplitude_to_db(ref=np.max, amin=1e-5)``), floored at ``-top_db`` and mapped
linearly to 0..1 (``(dB + top_db) / top_db``: 0 = ``-top_db`` dB, 1 = the chunk's
peak). A chunk whose peak is below 1e-5 (digital silence) becomes all zeros (librosa
would give an all-ones image). REFERENCE §1 says only "scaled to 0..1"; the fixed
mapping is this package's choice (a per-image min-max scaling would agree with it
whenever a chunk spans the full ``top_db`` range, and would stretch quiet, flat chunks).

**Orientation.** Spectrogram arrays are ``[width, height]`` (per batch
``[batch, width, height]``): time along axis 0 (the image's x), frequency along axis
1 (the image's y) with the lowest band first (the PNGs of a chunk folder:
:mod:`birdnet_tf.data.chunk_folder`). The signal/noise rule that scores a chunk is
:mod:`birdnet_tf.frontend.signal_noise`.

TensorFlow is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from birdnet_tf.config import ChunkConfig, Config
from birdnet_tf.errors import ConfigError
from birdnet_tf.frontend.mel import linear_filterbank_matrix, slaney_mel_filterbank
from birdnet_tf.frontend.stft import frame_blocks

__all__ = [
    "AMIN",
    "ChunkSpectrogramSpec",
    "check_chunk_config",
    "chunk_config",
    "chunk_spectrogram",
    "chunk_starts",
    "compiled_chunk_spectrogram",
    "cut_at",
    "cut_chunks",
    "linear_filterbank",
    "mel_filterbank",
    "reference_chunk_spectrogram",
    "spec_params",
]

#: ``amin`` of the dB conversion (librosa's default): magnitudes below count as this.
AMIN = 1e-5


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkSpectrogramSpec:
    """Derived sizes of a chunk spectrogram (see :func:`spec_params`).

    Attributes:
        chunk_samples: Samples per chunk.
        step_samples: Samples between chunk starts.
        min_samples: Fewest real samples a kept chunk has.
        n_fft: FFT size and window length (8 × height).
        hop_length: Samples between STFT frames.
    """

    chunk_samples: int
    step_samples: int
    min_samples: int
    n_fft: int
    hop_length: int


def check_chunk_config(cfg: ChunkConfig) -> None:
    """Raises :class:`~birdnet_tf.errors.ConfigError` naming the first unusable ``chunks`` setting."""
    sr = cfg.sample_rate_hz
    problems = [
        (sr > 0, f"chunks.sample_rate_hz must be positive, got {sr}"),
        (cfg.chunk_s > 0, f"chunks.chunk_s must be positive, got {cfg.chunk_s}"),
        (0 <= cfg.overlap_s < cfg.chunk_s,
         f"chunks.overlap_s must be in [0, chunk_s = {cfg.chunk_s}), got {cfg.overlap_s}"),
        (0 < cfg.min_chunk_s <= cfg.chunk_s,
         f"chunks.min_chunk_s must be in (0, chunk_s = {cfg.chunk_s}], got {cfg.min_chunk_s}"),
        (cfg.spectrogram in ("mel", "linear"), f"chunks.spectrogram must be mel or linear, got {cfg.spectrogram!r}"),
        (cfg.width >= 2, f"chunks.width must be at least 2 frames, got {cfg.width}"),
        (cfg.height >= 1, f"chunks.height must be at least 1, got {cfg.height}"),
        (0 <= cfg.fmin_hz < cfg.fmax_hz <= sr / 2,
         f"chunks: need 0 <= fmin_hz ({cfg.fmin_hz}) < fmax_hz ({cfg.fmax_hz}) <= sample_rate_hz / 2 ({sr / 2})"),
        (cfg.top_db > 0, f"chunks.top_db must be positive, got {cfg.top_db}"),
        (0 <= cfg.preemphasis < 1, f"chunks.preemphasis must be in [0, 1), got {cfg.preemphasis}"),
        (0 <= cfg.noise_fraction <= 1, f"chunks.noise_fraction must be in [0, 1], got {cfg.noise_fraction}"),
    ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(message)
    if int(round(cfg.chunk_s * sr)) < cfg.width - 1:
        raise ConfigError(f"chunks: a chunk of {cfg.chunk_s} s at {sr} Hz has fewer samples than "
                          f"width - 1 = {cfg.width - 1} frames need")
    if int(round((cfg.chunk_s - cfg.overlap_s) * sr)) < 1:
        raise ConfigError(f"chunks: chunk_s - overlap_s = {cfg.chunk_s - cfg.overlap_s} s is less than one sample")


def spec_params(cfg: ChunkConfig) -> ChunkSpectrogramSpec:
    """The derived sizes of ``cfg`` (checked with :func:`check_chunk_config`)."""
    check_chunk_config(cfg)
    sr = cfg.sample_rate_hz
    n = int(round(cfg.chunk_s * sr))
    return ChunkSpectrogramSpec(
        chunk_samples=n,
        step_samples=int(round((cfg.chunk_s - cfg.overlap_s) * sr)),
        min_samples=max(1, int(round(cfg.min_chunk_s * sr))),
        n_fft=8 * cfg.height,
        hop_length=n // (cfg.width - 1),
    )


def chunk_config(value: ChunkConfig | dict[str, Any] | None) -> ChunkConfig:
    """A :class:`~birdnet_tf.config.ChunkConfig` from itself, its dict (as saved in a chunk folder's
    ``extract_config.json`` or a layer's config; unknown keys ignored) or ``None`` (the defaults)."""
    if value is None:
        return ChunkConfig()
    if isinstance(value, ChunkConfig):
        return value
    return Config.from_dict({"chunks": dict(value)}, "chunk config", strict=False).chunks


# --------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------


def chunk_starts(n_samples: int, cfg: ChunkConfig) -> np.ndarray:
    """Start samples of the chunks of a signal.

    Chunks start every ``chunk_s - overlap_s`` seconds from 0; the first chunk
    with fewer than ``min_chunk_s`` of samples left and all after it are
    dropped (the last kept one is zero-padded by :func:`cut_chunks`).

    Args:
        n_samples: Length of the signal in samples at ``cfg.sample_rate_hz``.
        cfg: The chunk settings.

    Returns:
        int64 ``[chunks]`` start samples, ascending (empty when the signal is
        shorter than ``min_chunk_s``).
    """
    p = spec_params(cfg)
    n_samples = int(n_samples)
    if n_samples < p.min_samples:
        return np.zeros(0, np.int64)
    last = n_samples - p.min_samples  # the latest start that leaves min_samples
    return np.arange(0, last + 1, p.step_samples, dtype=np.int64)


def cut_chunks(audio: np.ndarray, cfg: ChunkConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cuts a signal into chunks (:func:`chunk_starts`), zero-padding the last.

    Args:
        audio: float ``[samples]`` mono signal at ``cfg.sample_rate_hz``.
        cfg: The chunk settings.

    Returns:
        ``(starts, chunks)``: int64 ``[n]`` start samples and float32
        ``[n, chunk_samples]``.
    """
    x = np.asarray(audio, np.float32).reshape(-1)
    starts = chunk_starts(x.size, cfg)
    return starts, cut_at(x, starts, spec_params(cfg).chunk_samples)


def cut_at(x: np.ndarray, starts: np.ndarray, chunk_samples: int) -> np.ndarray:
    """float32 ``[len(starts), chunk_samples]``: the pieces of ``x`` at ``starts``, zero-padded at the end."""
    out = np.zeros((len(starts), chunk_samples), np.float32)
    for i, s in enumerate(starts):
        piece = x[s:s + chunk_samples]
        out[i, :piece.size] = piece
    return out


# --------------------------------------------------------------------------
# Frequency matrices
# --------------------------------------------------------------------------


def mel_filterbank(cfg: ChunkConfig) -> np.ndarray:
    """librosa's default mel filterbank (Slaney scale and area normalisation), transposed.

    Equals ``librosa.filters.mel(sr=sample_rate_hz, n_fft=8*height, n_mels=height,
    fmin=fmin_hz, fmax=fmax_hz).T``, computed without librosa
    (:func:`~birdnet_tf.frontend.mel.slaney_mel_filterbank`).

    Returns:
        float32 ``[n_fft // 2 + 1, height]`` (read-only): STFT magnitudes
        ``[..., bins] @ this`` → mel bands, lowest first.
    """
    p = spec_params(cfg)
    return slaney_mel_filterbank(cfg.sample_rate_hz, p.n_fft, cfg.height, float(cfg.fmin_hz), float(cfg.fmax_hz))


def linear_filterbank(cfg: ChunkConfig) -> np.ndarray:
    """Area resampling of the STFT bins between ``fmin_hz`` and ``fmax_hz`` to ``height`` bands.

    Band ``j`` covers ``[fmin + j·Δ, fmin + (j+1)·Δ]`` with ``Δ = (fmax - fmin) /
    height``; its value is the mean over that range of the magnitude spectrum taken
    as constant across each bin's width (``±bin_hz / 2`` around its centre), i.e.
    the STFT bins up to ``fmax_hz`` cropped to the range and resized to ``height``
    like ``tf.image.resize(method="area")`` would along frequency.

    Returns:
        float32 ``[n_fft // 2 + 1, height]`` (read-only); every column sums to 1.
    """
    p = spec_params(cfg)
    return linear_filterbank_matrix(cfg.sample_rate_hz, p.n_fft, cfg.height, float(cfg.fmin_hz),
                                    float(cfg.fmax_hz))


def _frequency_matrix(cfg: ChunkConfig) -> np.ndarray:
    return mel_filterbank(cfg) if cfg.spectrogram == "mel" else linear_filterbank(cfg)


# --------------------------------------------------------------------------
# Spectrograms
# --------------------------------------------------------------------------


def chunk_spectrogram(chunks, cfg: ChunkConfig):
    """The baseline spectrogram of a batch of chunks, in TF ops (see the module docstring).

    Args:
        chunks: float32 ``[batch, samples]`` waveform chunks at
            ``cfg.sample_rate_hz`` in [-1, 1]; zero-padded or cut to
            ``chunk_s`` when their length differs.
        cfg: The chunk settings.

    Returns:
        float32 ``[batch, width, height]`` in 0..1: time along axis 1, frequency
        along axis 2, lowest band first; 0 = ``-top_db`` dB below the chunk's
        peak or quieter, 1 = the peak.
    """
    import tensorflow as tf

    p = spec_params(cfg)
    x = tf.cast(tf.convert_to_tensor(chunks), tf.float32)
    x = tf.pad(x, [[0, 0], [0, tf.maximum(p.chunk_samples - tf.shape(x)[1], 0)]])[:, :p.chunk_samples]
    if cfg.preemphasis > 0:
        x = tf.concat([x[:, :1], x[:, 1:] - float(cfg.preemphasis) * x[:, :-1]], axis=1)
    half = p.n_fft // 2
    x = tf.pad(x, [[0, 0], [half, half]])  # centred frames, zero padding (librosa's pad_mode="constant")
    frames = frame_blocks(x, p.n_fft, p.hop_length, cfg.width)
    window = tf.signal.hann_window(p.n_fft, periodic=True, dtype=tf.float32)
    magnitude = tf.abs(tf.signal.rfft(frames * window, fft_length=[p.n_fft]))
    spec = tf.matmul(magnitude, tf.constant(_frequency_matrix(cfg)))
    peak = tf.reduce_max(spec, axis=[1, 2], keepdims=True)
    scale = 20.0 / math.log(10.0)
    db = scale * (tf.math.log(tf.maximum(spec, AMIN)) - tf.math.log(tf.maximum(peak, AMIN)))
    top_db = float(cfg.top_db)
    img = (tf.maximum(db, -top_db) + top_db) / top_db
    return tf.where(peak > AMIN, img, tf.zeros_like(img))


def reference_chunk_spectrogram(chunk: np.ndarray, cfg: ChunkConfig) -> np.ndarray:
    """The same spectrogram as :func:`chunk_spectrogram` for one chunk, with librosa.

    ``librosa.feature.melspectrogram(power=1, center=True, pad_mode="constant")``
    (for ``linear``: ``|librosa.stft|`` times :func:`linear_filterbank`), then
    ``librosa.amplitude_to_db(ref=np.max, top_db)`` and ``(dB + top_db) / top_db``.
    Used by the tests and the benchmark; needs librosa (a dev dependency).

    Args:
        chunk: float ``[samples]``; zero-padded or cut to ``chunk_s``.
        cfg: The chunk settings.

    Returns:
        float32 ``[width, height]`` in 0..1.
    """
    import librosa

    p = spec_params(cfg)
    y = np.zeros(p.chunk_samples, np.float32)
    src = np.asarray(chunk, np.float32).reshape(-1)[:p.chunk_samples]
    y[:src.size] = src
    if cfg.preemphasis > 0:
        y = librosa.effects.preemphasis(y, coef=float(cfg.preemphasis), zi=np.zeros(1, np.float32))
    if cfg.spectrogram == "mel":
        spec = librosa.feature.melspectrogram(
            y=y, sr=cfg.sample_rate_hz, n_fft=p.n_fft, hop_length=p.hop_length, n_mels=cfg.height,
            fmin=cfg.fmin_hz, fmax=cfg.fmax_hz, power=1.0, center=True, pad_mode="constant")
    else:
        stft = np.abs(librosa.stft(y, n_fft=p.n_fft, hop_length=p.hop_length, center=True, pad_mode="constant"))
        spec = linear_filterbank(cfg).T @ stft
    spec = spec[:, :cfg.width]
    if spec.max() <= AMIN:
        return np.zeros((cfg.width, cfg.height), np.float32)
    db = librosa.amplitude_to_db(spec, ref=np.max, amin=AMIN, top_db=cfg.top_db)
    return np.ascontiguousarray(((db + cfg.top_db) / cfg.top_db).T, np.float32)


#: Per process: chunk config → compiled batch spectrogram function.
_COMPILED: dict[ChunkConfig, Callable] = {}


def compiled_chunk_spectrogram(cfg: ChunkConfig) -> Callable:
    """:func:`chunk_spectrogram` for ``cfg`` as a ``tf.function`` over float32 ``[None, chunk_samples]``
    batches, traced once per process and config."""
    fn = _COMPILED.get(cfg)
    if fn is None:
        import tensorflow as tf

        n = spec_params(cfg).chunk_samples

        @tf.function(input_signature=[tf.TensorSpec([None, n], tf.float32)], autograph=False)
        def fn(chunks):
            return chunk_spectrogram(chunks, cfg)

        _COMPILED[cfg] = fn
    return fn
