"""The 2018 baseline's spectrogram chunks and its signal/noise rule (``birdnet-tf extract``).

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
1 (the image's y) with the lowest band first. A PNG is a conventional image of
``height`` rows × ``width`` columns, 8-bit grayscale ``round(255 · value)``, with the
lowest band in the **bottom** row: ``pixels = flipud(img.T)``
(:func:`write_chunk_png`, :func:`read_chunk_png`, :func:`decode_chunk_png`).

**Signal/noise rule** (:func:`signal_noise_score` in NumPy + OpenCV,
:func:`signal_noise_score_tf` in TF ops on a batch; equal results): zero every cell
below 1.25 × its image row's median (the median over time of its frequency band) or
below 1.15 × its image column's median (the median over frequency of its frame), both
medians taken of the unmodified image; set the non-zero cells to 1; a 3 × 3 median
blur (OpenCV ``medianBlur``, replicated border); a morphological closing with a 3 × 3
square of ones (OpenCV ``morphologyEx(MORPH_CLOSE)``: dilation then erosion, pixels
outside the image ignored); the score is the mean of the result, the share of
"signal" cells in 0..1. The seed text gives neither the kernel of the closing nor
the median conventions; the 3 × 3 square and ``np.median`` (the mean of the two
middle values for an even count) are this package's choice.

**extract** writes, for every recording of a dataset::

    OUT/extract_config.json            the ChunkConfig, seed and package version
    OUT/<split>/<label>/<stem>_<start_ms>_<score4>.png     chunks scoring >= signal_threshold
    OUT/noise/<stem>_<start_ms>_<score4>.png               about noise_fraction of the others
    OUT/chunks.csv                     one row per PNG: png (path relative to OUT), source_key,
                                       label, secondary_labels (";"-joined), split, start_s,
                                       score (0..1), kind (signal | noise)
    OUT/extract_report.json            counts and failures of the latest run
    OUT/.parts/<hash of key>.json      per-file done marker holding that file's rows

``<split>`` is the catalog's ``split`` column (lower case; ``all`` where there is
none), ``<label>`` the primary label with characters other than letters, digits,
space and ``._-+,()`` replaced by ``_`` (:func:`safe_name`), ``<stem>`` the audio
file's name without suffix (followed by ``-`` and 8 hex digits of the key's SHA-1 when
two recordings share a stem), ``<start_ms>`` the chunk's start in whole milliseconds
and ``<score4>`` ``floor(score × 10⁴)`` computed exactly from the cell count, as the
baseline kept the score in its file names.

TensorFlow is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdnet_tf.config import ChunkConfig, Config
from birdnet_tf.errors import BirdnetError, ConfigError
from birdnet_tf.fileio import atomic_path, write_json_atomic, write_text_atomic

__all__ = [
    "CONFIG_NAME",
    "INDEX_COLUMNS",
    "INDEX_NAME",
    "REPORT_NAME",
    "ChunkSpectrogramSpec",
    "ExtractResult",
    "check_chunk_config",
    "chunk_spectrogram",
    "chunk_starts",
    "cut_chunks",
    "decode_chunk_png",
    "extract",
    "linear_filterbank",
    "mel_filterbank",
    "read_chunk_png",
    "reference_chunk_spectrogram",
    "safe_name",
    "signal_noise_score",
    "signal_noise_score_tf",
    "spec_params",
    "write_chunk_png",
]

#: The extraction settings of a folder (refuses a rerun with other settings).
CONFIG_NAME = "extract_config.json"
#: One row per written PNG.
INDEX_NAME = "chunks.csv"
#: Counts and failures of the latest run.
REPORT_NAME = "extract_report.json"
#: Per-file done markers (JSON with the file's index rows).
PARTS_DIR = ".parts"
#: Folder of the rejected chunks kept for noise augmentation.
NOISE_DIR = "noise"
#: Columns of ``chunks.csv``.
INDEX_COLUMNS = ("png", "source_key", "label", "secondary_labels", "split", "start_s", "score", "kind")

#: ``amin`` of the dB conversion (librosa's default): magnitudes below count as this.
AMIN = 1e-5
#: The rule's factors: a cell must reach these multiples of its row and column medians.
ROW_FACTOR = 1.25
COLUMN_FACTOR = 1.15
#: ChunkConfig fields that do not change what extract writes (used later by training / testing).
_NOT_EXTRACTION_FIELDS = ("s2n_interval", "max_chunks_per_file")
#: Chunks per TF call inside one file (bounds memory: ~70 MB of frames at the defaults).
_BATCH_CHUNKS = 64


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


def _chunk_config(value: ChunkConfig | dict[str, Any] | None) -> ChunkConfig:
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
    return starts, _cut(x, starts, spec_params(cfg).chunk_samples)


def _cut(x: np.ndarray, starts: np.ndarray, chunk_samples: int) -> np.ndarray:
    out = np.zeros((len(starts), chunk_samples), np.float32)
    for i, s in enumerate(starts):
        piece = x[s:s + chunk_samples]
        out[i, :piece.size] = piece
    return out


# --------------------------------------------------------------------------
# Frequency matrices (NumPy; shared by the TF ops and the reference)
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
def _mel_filterbank(sample_rate_hz: int, n_fft: int, n_mels: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
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


def mel_filterbank(cfg: ChunkConfig) -> np.ndarray:
    """librosa's default mel filterbank (Slaney scale and area normalisation), transposed.

    Equals ``librosa.filters.mel(sr=sample_rate_hz, n_fft=8*height, n_mels=height,
    fmin=fmin_hz, fmax=fmax_hz).T``, computed without librosa.

    Returns:
        float32 ``[n_fft // 2 + 1, height]`` (read-only): STFT magnitudes
        ``[..., bins] @ this`` → mel bands, lowest first.
    """
    p = spec_params(cfg)
    return _mel_filterbank(cfg.sample_rate_hz, p.n_fft, cfg.height, float(cfg.fmin_hz), float(cfg.fmax_hz))


@functools.lru_cache(maxsize=16)
def _linear_filterbank(sample_rate_hz: int, n_fft: int, height: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
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
    return _linear_filterbank(cfg.sample_rate_hz, p.n_fft, cfg.height, float(cfg.fmin_hz), float(cfg.fmax_hz))


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
    from birdnet_tf.frontend import frame_blocks

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


# --------------------------------------------------------------------------
# Signal/noise rule
# --------------------------------------------------------------------------


def signal_noise_score(img: np.ndarray) -> float:
    """The baseline's signal/noise score of one spectrogram, NumPy + OpenCV.

    REFERENCE §1: zero every cell below 1.25 × its row median or below 1.15 ×
    its column median (an image *row* is one frequency band, its median taken
    over time; a *column* is one frame, its median over frequency; both medians
    of the unmodified image, ``np.median``); binarise (non-zero → 1); 3 × 3
    median blur (``cv2.medianBlur``, replicated border); morphological closing
    with a 3 × 3 square of ones (``cv2.morphologyEx(MORPH_CLOSE)``, default
    border: pixels outside the image never win the max or the min); mean.

    Args:
        img: ``[width, height]`` spectrogram in 0..1 (time × frequency, as
            :func:`chunk_spectrogram` returns; the rule is the same for the
            transposed or flipped image).

    Returns:
        The share of signal cells, in 0..1 (the float32 quotient
        ``count / cells``, identical to :func:`signal_noise_score_tf`).
    """
    import cv2

    x = np.asarray(img, np.float32)
    if x.ndim != 2:
        raise ValueError(f"signal_noise_score expects a [width, height] image, got shape {x.shape}")
    spec = x.copy()
    row_median = np.median(x, axis=0, keepdims=True)  # per frequency band, over time
    column_median = np.median(x, axis=1, keepdims=True)  # per frame, over frequency
    spec[x < row_median * np.float32(ROW_FACTOR)] = 0.0
    spec[x < column_median * np.float32(COLUMN_FACTOR)] = 0.0
    spec[spec > 0] = 1.0
    spec = cv2.medianBlur(spec, 3)
    spec = cv2.morphologyEx(spec, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    return float(np.float32(np.count_nonzero(spec)) / np.float32(spec.size))


def _median_tf(x, axis: int):
    """``np.median(x, axis, keepdims=True)`` in TF ops: the mean of the two middle values for an even count."""
    import tensorflow as tf

    n = tf.shape(x)[axis]
    s = tf.sort(x, axis=axis)
    lo = tf.gather(s, [(n - 1) // 2], axis=axis)
    hi = tf.gather(s, [n // 2], axis=axis)
    return (lo + hi) / 2.0


def signal_noise_score_tf(images):
    """The signal/noise rule of :func:`signal_noise_score` on a batch, in TF ops.

    Medians via ``tf.sort``. The 3 × 3 median blur of a binary image is the
    majority (≥ 5) of the 9 cells of the neighbourhood, the image padded by
    repeating its edge (OpenCV's replicated border); the closing is a 3 × 3
    dilation (logical or) then erosion (logical and), padded with false and true
    respectively so that, as with OpenCV's default morphology border, a pixel
    outside the image never decides. All three 3 × 3 operations are computed
    separably (rows, then columns), which is exact for them. Usable in a
    ``tf.data`` map and inside a model.

    Args:
        images: float32 ``[batch, width, height]`` spectrograms.

    Returns:
        float32 ``[batch]`` scores in 0..1, equal to :func:`signal_noise_score`
        on each image (the same float32 comparisons on the same values, and the
        same ``count / cells`` quotient).
    """
    import tensorflow as tf

    def window3(x, reduce):
        """``reduce`` over each cell's 3 × 3 neighbourhood of ``x`` padded by one on both axes."""
        x = reduce(reduce(x[:, :-2], x[:, 1:-1]), x[:, 2:])
        return reduce(reduce(x[:, :, :-2], x[:, :, 1:-1]), x[:, :, 2:])

    x = tf.cast(tf.convert_to_tensor(images), tf.float32)
    row_median = _median_tf(x, axis=1)  # [b, 1, height]: per band over time
    column_median = _median_tf(x, axis=2)  # [b, width, 1]: per frame over frequency
    keep = (x >= row_median * ROW_FACTOR) & (x >= column_median * COLUMN_FACTOR) & (x > 0)
    edges = [[0, 0], [1, 1], [1, 1]]
    votes = window3(tf.pad(tf.cast(keep, tf.float32), edges, mode="SYMMETRIC"), tf.add)  # 1-pixel = replicate
    blurred = votes >= 5.0
    dilated = window3(tf.pad(blurred, edges, constant_values=False), tf.logical_or)
    closed = window3(tf.pad(dilated, edges, constant_values=True), tf.logical_and)
    count = tf.reduce_sum(tf.cast(closed, tf.float32), axis=[1, 2])
    cells = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.float32)
    return count / cells


def _score_x1e4(score: float, cells: int) -> int:
    """``floor(score × 10⁴)`` computed exactly from the cell count behind ``score``."""
    count = int(round(float(score) * cells))
    return count * 10000 // cells


# --------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------


def _to_pixels(img: np.ndarray) -> np.ndarray:
    x = np.asarray(img, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a [width, height] spectrogram, got shape {x.shape}")
    return np.ascontiguousarray(np.flipud(np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8).T))


def write_chunk_png(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Writes a ``[width, height]`` 0..1 spectrogram as an 8-bit grayscale PNG, atomically.

    The PNG has ``height`` rows × ``width`` columns, lowest band in the bottom
    row, pixel ``round(255 · value)``; written with ``cv2.imwrite`` to a
    temporary name beside ``path`` and renamed over it.

    Returns:
        ``path``.

    Raises:
        OSError: OpenCV could not write the file.
    """
    import cv2

    pixels = _to_pixels(img)
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), pixels):
            raise OSError(f"{path}: OpenCV could not write the PNG")
    return Path(path)


def read_chunk_png(path: str | os.PathLike) -> np.ndarray:
    """Reads a chunk PNG back into a spectrogram (the inverse of :func:`write_chunk_png`).

    Returns:
        float32 ``[width, height]`` in 0..1 (multiples of 1/255), lowest band first.

    Raises:
        BirdnetError: The file is missing or not a readable grayscale image.
    """
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise BirdnetError(f"{path}: not a readable PNG image")
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise BirdnetError(f"{path}: expected an 8-bit grayscale chunk PNG, got shape {pixels.shape} "
                           f"of {pixels.dtype}")
    return np.ascontiguousarray(np.flipud(pixels).T.astype(np.float32) / np.float32(255.0))


def decode_chunk_png(path_tensor):
    """A chunk PNG → float32 ``[width, height]`` in 0..1, in TF ops (``tf.data`` friendly).

    Args:
        path_tensor: Scalar string tensor, the PNG's path.

    Returns:
        float32 ``[width, height]``, equal to :func:`read_chunk_png` of the file.
    """
    import tensorflow as tf

    pixels = tf.io.decode_png(tf.io.read_file(path_tensor), channels=1, dtype=tf.uint8)[:, :, 0]
    return tf.transpose(tf.reverse(tf.cast(pixels, tf.float32) / 255.0, axis=[0]))


# --------------------------------------------------------------------------
# extract: plan, worker, pool
# --------------------------------------------------------------------------


def safe_name(text: str) -> str:
    """A folder-name-safe version of a label or split (see the module docstring)."""
    name = re.sub(r"[^\w .+,()-]", "_", " ".join(str(text).split()))
    name = name.strip(" .")
    return name or "_"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _key_hash(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


@dataclass
class _Job:
    key: str
    path: str
    label: str
    secondary: str
    split: str
    stem: str


@dataclass
class ExtractResult:
    """What an :func:`extract` run produced (counts over the whole folder, earlier runs included).

    Attributes:
        out_dir: The output folder.
        files: Recordings in the dataset.
        processed: Files extracted in this run.
        skipped: Files finished by an earlier run (kept as they are).
        failed: ``(key, source_path, reason)`` for each file that failed (one-line reasons).
        chunks: Chunks cut from the finished files.
        kept: Chunks scoring at least ``signal_threshold`` (written under ``<split>/<label>/``).
        rejected: The other chunks.
        noise_saved: Rejected chunks written to ``noise/``.
        too_short: Finished files shorter than ``min_chunk_s`` (no chunks).
        index_path: ``chunks.csv``.
        elapsed_s: Wall-clock time of the run in seconds.
    """

    out_dir: Path
    files: int = 0
    processed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    chunks: int = 0
    kept: int = 0
    rejected: int = 0
    noise_saved: int = 0
    too_short: int = 0
    index_path: Path | None = None
    elapsed_s: float = 0.0

    def summary(self) -> str:
        """Multi-line account of the run: counts, then one line per failure."""
        lines = [
            f"extract: {self.files} files -> {self.out_dir}, {self.elapsed_s:.1f} s",
            f"  {self.processed} extracted, {self.skipped} already done (kept), {len(self.failed)} failed"
            + (f", {self.too_short} shorter than one chunk" if self.too_short else ""),
            f"  {self.chunks} chunks: {self.kept} kept (signal), {self.rejected} rejected, "
            f"{self.noise_saved} saved to {NOISE_DIR}/",
        ]
        for key, src, reason in self.failed:
            lines.append(f"    {key} ({src}): {reason}")
        if self.index_path is not None:
            lines.append(f"  index: {self.index_path}")
        return "\n".join(lines)


#: Per worker process: chunk config → compiled batch spectrogram function.
_COMPILED: dict[ChunkConfig, Callable] = {}


def _compiled(cfg: ChunkConfig) -> Callable:
    fn = _COMPILED.get(cfg)
    if fn is None:
        import tensorflow as tf

        n = spec_params(cfg).chunk_samples

        @tf.function(input_signature=[tf.TensorSpec([None, n], tf.float32)], autograph=False)
        def fn(chunks):
            return chunk_spectrogram(chunks, cfg)

        _COMPILED[cfg] = fn
    return fn


def _worker_init(threads: int) -> None:
    """Runs once in each worker process: TensorFlow quiet and using its share of the cores."""
    from birdnet_tf.fileio import quiet_tensorflow

    quiet_tensorflow()  # imports TensorFlow without its start-up chatter
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already initialised (in-process use)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def _extract_one(job: _Job, out_dir: str, cfg: ChunkConfig, seed: int) -> tuple[dict | None, str | None, list[str]]:
    """Extracts one recording; runs in a worker process.

    Writes the file's PNGs, then its done marker ``.parts/<hash>.json`` (rows and
    counts), both atomically.

    Returns:
        ``(part, error, warnings)``: the marker's content (``None`` on failure),
        a one-line error (``None`` on success) and warning texts to re-issue.
    """
    from birdnet_tf.data.audio import load_audio

    out = Path(out_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            audio, _ = load_audio(job.path, cfg.sample_rate_hz)
            starts = chunk_starts(audio.size, cfg)  # cut per batch: a long file never holds all its chunks
            fn = _compiled(cfg)
            rng = np.random.default_rng([int(seed), int(_key_hash(job.key)[:12], 16)])
            rows, kept, rejected, noise = [], 0, 0, 0
            cells = cfg.width * cfg.height
            for b0 in range(0, len(starts), _BATCH_CHUNKS):
                imgs = fn(_cut(audio, starts[b0:b0 + _BATCH_CHUNKS], spec_params(cfg).chunk_samples)).numpy()
                scores = [signal_noise_score(img) for img in imgs]  # = signal_noise_score_tf, 2.5x cheaper here
                for img, score, start in zip(imgs, scores, starts[b0:b0 + _BATCH_CHUNKS]):
                    start_s = int(start) / cfg.sample_rate_hz
                    name = f"{job.stem}_{int(start) * 1000 // cfg.sample_rate_hz}_{_score_x1e4(score, cells)}.png"
                    save_noise = False
                    if score >= cfg.signal_threshold:
                        kind, rel = "signal", f"{job.split}/{safe_name(job.label)}/{name}"
                        kept += 1
                    else:
                        rejected += 1
                        save_noise = bool(rng.random() < cfg.noise_fraction)  # one draw per rejected chunk
                        kind, rel = "noise", f"{NOISE_DIR}/{name}"
                    if kind == "signal" or save_noise:
                        write_chunk_png(out / rel, img)
                        noise += kind == "noise"
                        rows.append({"png": rel, "source_key": job.key, "label": job.label,
                                     "secondary_labels": job.secondary, "split": job.split,
                                     "start_s": round(start_s, 6), "score": float(score), "kind": kind})
            part = {"key": job.key, "chunks": int(len(starts)), "kept": kept, "rejected": rejected,
                    "noise_saved": noise, "rows": rows}
            write_json_atomic(out / PARTS_DIR / f"{_key_hash(job.key)}.json", part)
            result: tuple[dict | None, str | None] = (part, None)
        except Exception as e:  # noqa: BLE001 - one file must never stop the job
            from birdnet_tf.data.prepare import failure_reason

            result = (None, failure_reason(e, job.path))
    return result[0], result[1], [_one_line(str(w.message)) for w in caught]


def _read_part(out_dir: Path, key: str) -> dict | None:
    """The done marker of ``key`` if it is complete and all its PNGs exist, else None."""
    path = out_dir / PARTS_DIR / f"{_key_hash(key)}.json"
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(part, dict) or part.get("key") != key or not isinstance(part.get("rows"), list):
        return None
    if not all((out_dir / row["png"]).is_file() for row in part["rows"]):
        return None
    return part


def _settings(cfg: ChunkConfig, seed: int) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {**{k: v for k, v in d.items() if k not in _NOT_EXTRACTION_FIELDS}, "seed": int(seed)}


def _check_folder(out_dir: Path, cfg: ChunkConfig, seed: int) -> None:
    """Refuses a folder made by another config, or a non-empty folder that extract did not make."""
    cfg_path = out_dir / CONFIG_NAME
    if cfg_path.is_file():
        try:
            saved = json.loads(cfg_path.read_text(encoding="utf-8"))
            old = _settings(_chunk_config(saved["chunks"]), saved.get("seed", 0))
        except (OSError, ValueError, KeyError, TypeError, BirdnetError) as e:
            raise BirdnetError(f"{cfg_path}: unreadable extract config ({_one_line(str(e))}); "
                               "delete the folder or choose another --out") from None
        new = _settings(cfg, seed)
        diff = [f"{'chunks.' if k != 'seed' else ''}{k} = {old[k]!r} there, {new[k]!r} now"
                for k in new if json.dumps(old.get(k)) != json.dumps(new[k])]
        if diff:
            raise BirdnetError(f"{out_dir}: was extracted with other settings ({'; '.join(diff)}); "
                               "choose another output folder or the same settings")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise BirdnetError(f"{out_dir}: exists, is not empty and holds no {CONFIG_NAME}; "
                           "choose a new or empty output folder")


def _plan(catalog, source: Path, out_dir: Path) -> list[_Job]:
    from collections import Counter

    import pandas as pd

    src = source.resolve()
    out_r = out_dir.resolve()
    if out_r == src or out_r.is_relative_to(src):
        raise BirdnetError(f"{out_dir}: the output folder must not be inside the dataset folder {source}")
    keys = [str(k) for k in catalog["key"]]
    stems = [Path(k).stem for k in keys]
    repeated = {s for s, n in Counter(stems).items() if n > 1}
    has_split = "split" in catalog.columns
    jobs = []
    for i, row in enumerate(catalog.to_dict("records")):
        split = row.get("split") if has_split else None
        split = "all" if split is None or split is pd.NA or not str(split).strip() else safe_name(str(split).lower())
        if split == NOISE_DIR:
            raise BirdnetError(f"{source}: split value '{row.get('split')}' of {keys[i]} clashes with the "
                               f"{NOISE_DIR}/ folder of rejected chunks; rename that split")
        stem = stems[i] if stems[i] not in repeated else f"{stems[i]}-{_key_hash(keys[i])[:8]}"
        secondary = row.get("secondary_labels") or []
        jobs.append(_Job(key=keys[i], path=str(row["path"]), label=str(row["primary_label"]),
                         secondary=";".join(map(str, secondary)), split=split, stem=safe_name(stem)))
    return jobs


def _pool_context():
    from birdnet_tf.data.prepare import _pool_context as ctx

    return ctx()


def _run_pool(jobs: list[_Job], out_dir: Path, cfg: ChunkConfig, seed: int, workers: int, record, ctx) -> list[_Job]:
    """Extracts ``jobs`` in a process pool; returns the jobs lost to a broken pool, in order."""
    crashed: list[int] = []
    threads = max(1, (os.cpu_count() or 1) // workers)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                initargs=(threads,)) as pool:
        futures = {pool.submit(_extract_one, job, str(out_dir), cfg, seed): i for i, job in enumerate(jobs)}
        try:
            for fut in cf.as_completed(futures):
                index = futures[fut]
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    crashed.append(index)
                    continue
                except Exception as e:  # noqa: BLE001 - e.g. a result that failed to pickle
                    outcome = (None, _one_line(f"{type(e).__name__}: {e}"), [])
                record(jobs[index], outcome)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [jobs[i] for i in sorted(crashed)]


def _write_index(out_dir: Path, jobs: list[_Job], parts: dict[str, dict]) -> Path:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(INDEX_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for job in jobs:
        for row in parts.get(job.key, {}).get("rows", []):
            writer.writerow({c: row[c] for c in INDEX_COLUMNS})
    return write_text_atomic(out_dir / INDEX_NAME, buf.getvalue())


def extract(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: ChunkConfig,
    *,
    workers: int = 2,
    progress: bool = True,
    seed: int = 0,
    log: Callable[[str], Any] = print,
) -> ExtractResult:
    """Cuts every recording of a dataset into chunks and writes the baseline's PNG spectrograms.

    For each recording of ``source`` (:func:`~birdnet_tf.data.catalog.load_catalog`;
    a ``split`` column, as ``birdnet-tf sort`` writes, is kept): decode at
    ``cfg.sample_rate_hz``, cut chunks, compute their spectrograms
    (:func:`chunk_spectrogram`, TF ops, 64 chunks per call: 3.7 ms of CPU per chunk
    against 4.9 ms for the same steps in NumPy) and signal/noise scores
    (:func:`signal_noise_score`, NumPy + OpenCV: 1.4 ms of CPU per chunk against
    3.5 ms for :func:`signal_noise_score_tf`, which gives the same scores; one
    thread each, measured on the 2-core development machine); chunks scoring at least
    ``cfg.signal_threshold`` go to ``<split>/<label>/``, about
    ``cfg.noise_fraction`` of the others (seeded per file, independent of the
    order of processing) to ``noise/``; names and files as in the module
    docstring. Resumable: a file whose done marker exists (with all its PNGs) is
    skipped; an interrupted file is redone (its PNGs get the same names). A file
    that fails is recorded and warned about; the rest go on. ``chunks.csv`` is
    rewritten at the end from the markers of the dataset's files.

    Args:
        source: Dataset folder (``metadata.csv`` or one folder per class).
        out_dir: Output folder: new, empty, or made by an earlier run with the
            same settings.
        cfg: The chunk settings (``Config.chunks``). ``s2n_interval`` and
            ``max_chunks_per_file`` do not affect extraction and may differ on a rerun.
        workers: Worker processes; 1 extracts in this process (see
            :func:`birdnet_tf.data.prepare.prepare` for fork vs spawn).
        progress: Show a tqdm progress bar (on a terminal).
        seed: Seed of the noise selection (saved with the settings).
        log: Receives the summary at the end.

    Returns:
        The :class:`ExtractResult`; also written as ``extract_report.json``.

    Raises:
        BirdnetError: Unusable settings, an unreadable dataset, an output folder
            made with other settings or not by extract, or inside the dataset;
            or no file could be extracted at all.
    """
    from tqdm.auto import tqdm

    from birdnet_tf import __version__
    from birdnet_tf.data.catalog import load_catalog

    t0 = time.monotonic()
    check_chunk_config(cfg)
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    workers = int(workers)
    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BirdnetError(f"{out_dir}: output folder exists but is not a folder")
    catalog = load_catalog(source)
    jobs = _plan(catalog.sort_values("key", kind="stable"), source, out_dir)
    _check_folder(out_dir, cfg, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / CONFIG_NAME).is_file():
        write_json_atomic(out_dir / CONFIG_NAME, {"birdnet_tf_version": __version__, "seed": int(seed),
                                                   "source": str(source), "chunks": dataclasses.asdict(cfg)})

    result = ExtractResult(out_dir=out_dir, files=len(jobs))
    parts: dict[str, dict] = {}
    todo: list[_Job] = []
    for job in jobs:
        part = _read_part(out_dir, job.key)
        if part is None:
            todo.append(job)
        else:
            parts[job.key] = part
            result.skipped += 1

    ctx = _pool_context() if workers > 1 and len(todo) > 1 else None
    bar = tqdm(total=len(jobs), initial=result.skipped, desc="extract", unit="file", leave=True,
               disable=None if progress else True)

    def record(job: _Job, outcome: tuple[dict | None, str | None, list[str]]) -> None:
        part, error, texts = outcome
        for text in texts:
            warnings.warn(text, stacklevel=3)
        if error is None:
            parts[job.key] = part
            result.processed += 1
        else:
            result.failed.append((job.key, job.path, error))
            warnings.warn(f"extract: {job.key} ({job.path}) failed: {error}", stacklevel=3)
        bar.update(1)

    try:
        if workers == 1 or len(todo) <= 1:
            if todo:
                from birdnet_tf.fileio import quiet_tensorflow

                quiet_tensorflow()  # imports TensorFlow here without its start-up chatter
            for job in todo:
                record(job, _extract_one(job, str(out_dir), cfg, seed))
        else:
            remaining = todo
            while remaining:
                crashed = _run_pool(remaining, out_dir, cfg, seed, min(workers, len(remaining)), record, ctx)
                if crashed and len(crashed) == len(remaining):
                    head, crashed = crashed[0], crashed[1:]
                    if _run_pool([head], out_dir, cfg, seed, 1, record, ctx):
                        record(head, (None, "the worker process died (decoder crash or out of memory)", []))
                remaining = crashed
    finally:
        bar.close()
        result.failed.sort()
        for part in parts.values():
            result.chunks += int(part["chunks"])
            result.kept += int(part["kept"])
            result.rejected += int(part["rejected"])
            result.noise_saved += int(part["noise_saved"])
            result.too_short += int(part["chunks"]) == 0
        result.elapsed_s = time.monotonic() - t0
        with contextlib.suppress(OSError):
            result.index_path = _write_index(out_dir, jobs, parts)
            _write_report(result)
    log(result.summary())
    if jobs and not parts:
        raise BirdnetError(f"{source}: none of its {len(jobs)} recordings could be extracted "
                           f"(reasons above and in {out_dir / REPORT_NAME})")
    return result


def _write_report(result: ExtractResult) -> None:
    write_json_atomic(result.out_dir / REPORT_NAME, {
        "files": result.files,
        "processed": result.processed,
        "skipped": result.skipped,
        "failed_count": len(result.failed),
        "failed": [{"key": k, "source": s, "reason": r} for k, s, r in result.failed],
        "too_short": result.too_short,
        "chunks": result.chunks,
        "kept": result.kept,
        "rejected": result.rejected,
        "noise_saved": result.noise_saved,
        "elapsed_s": round(result.elapsed_s, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
