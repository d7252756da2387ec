"""The one place where tf.data pipelines are composed.

Prepared datasets hold mono 16-bit PCM WAV at the model's rate, which
``tf.audio.decode_wav`` reads. Training draws random fixed-length excerpts (short
files are looped) and augments them; evaluation cuts deterministic windows. The
spectrogram is computed inside the model, so batches here are raw waveforms
``(batch, samples)`` with multi-hot targets ``(batch, classes)``.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from birdnet_tf.config import Config
from birdnet_tf.data.augment import augment_waveform
from birdnet_tf.errors import AudioDecodeError

AUTOTUNE = tf.data.AUTOTUNE


# ----------------------------------------------------------------- file helpers
def wav_num_samples(path: str) -> int:
    """Number of frames in a 16-bit PCM WAV, read from its header."""
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes()
    except (OSError, EOFError, wave.Error) as e:
        raise AudioDecodeError(f"{path}: not a readable prepared WAV file ({e})") from None


def wav_layout(path: str) -> tuple[int, int]:
    """(byte offset of the first sample, number of samples) of a prepared 16-bit mono WAV."""
    from birdnet_tf.data.audio import read_wav_header

    h = read_wav_header(path)
    if h is None or h.format_tag != 1 or h.bits_per_sample != 16 or h.channels != 1:
        raise AudioDecodeError(f"{path}: not a prepared 16-bit mono PCM WAV file; run birdnet-tf prepare on it")
    return h.data_offset, h.n_frames


def read_excerpt(path: tf.Tensor, offset: tf.Tensor, n_frames: tf.Tensor, n: int) -> tf.Tensor:
    """A uniformly placed ``n``-sample excerpt of a 16-bit mono WAV, decoding only those samples.

    Files shorter than ``n`` are decoded whole and looped from a random point.
    """
    data = tf.io.read_file(path)
    n_frames = tf.cast(n_frames, tf.int64)
    offset = tf.cast(offset, tf.int64)

    def long_file():
        start = tf.random.uniform((), 0, n_frames - n + 1, dtype=tf.int64)
        return tf.io.decode_raw(tf.strings.substr(data, offset + 2 * start, 2 * n), tf.int16)

    def short_file():
        x = tf.io.decode_raw(tf.strings.substr(data, offset, 2 * n_frames), tf.int16)
        x = loop_to_length(x, n)
        start = tf.random.uniform((), 0, tf.maximum(n_frames, 1), dtype=tf.int64)
        return tf.roll(x, -tf.cast(start, tf.int32), axis=0)[:n]

    x = tf.cond(n_frames > n, long_file, short_file)
    return tf.cast(x, tf.float32) / 32768.0


def decode_wav(path: tf.Tensor) -> tf.Tensor:
    """Reads a 16-bit PCM WAV file → float32 mono ``(samples,)``."""
    audio, _ = tf.audio.decode_wav(tf.io.read_file(path), desired_channels=1)
    return audio[:, 0]


def loop_to_length(x: tf.Tensor, n: int) -> tf.Tensor:
    """Repeats ``x`` until it has at least ``n`` samples (no-op for long inputs)."""
    length = tf.maximum(tf.shape(x)[0], 1)
    x = tf.cond(tf.shape(x)[0] > 0, lambda: x, lambda: tf.zeros((1,), x.dtype))
    reps = (n + length - 1) // length
    return tf.tile(x, [tf.maximum(reps, 1)])


def window_starts(n_samples: int, window: int, hop: int, max_windows: int | None = None) -> np.ndarray:
    """Start samples of evaluation windows covering a file of ``n_samples``.

    Windows advance by ``hop``; a last window is aligned to the file's end so the tail
    is covered. Files shorter than one window get one window (looped when read).
    With ``max_windows``, that many windows are spread evenly over the file.
    """
    if n_samples <= window:
        return np.zeros(1, np.int64)
    starts = np.arange(0, n_samples - window + 1, max(1, hop), dtype=np.int64)
    if starts[-1] + window < n_samples:
        starts = np.append(starts, n_samples - window)
    if max_windows and len(starts) > max_windows:
        idx = np.unique(np.round(np.linspace(0, len(starts) - 1, max_windows)).astype(int))
        starts = starts[idx]
    return starts


# ------------------------------------------------------------------ datasets
def excerpts_per_file(durations_s: np.ndarray, cfg: Config) -> np.ndarray:
    """How many excerpts each file contributes to one training epoch."""
    d = cfg.data
    n = np.ceil(np.asarray(durations_s, float) / max(d.excerpts_per_file_s, 1e-6)).astype(int)
    return np.clip(n, d.min_excerpts_per_file, max(d.min_excerpts_per_file, d.max_excerpts_per_file))


def training_dataset(paths: list[str], targets: np.ndarray, durations_s: np.ndarray, cfg: Config,
                     training: bool = True, repeat: bool = False) -> tf.data.Dataset:
    """Batches of ``(waveform (B, samples), targets (B, classes))`` for ``model.fit``.

    One pass = one epoch: every file appears :func:`excerpts_per_file` times, in a new
    random order each pass, each time with a new random excerpt and augmentation.
    """
    reps = excerpts_per_file(durations_s, cfg)
    idx = np.repeat(np.arange(len(paths)), reps)
    n = cfg.excerpt_samples
    layout = np.array([wav_layout(p) for p in paths], np.int64).reshape(-1, 2)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths)[idx], layout[idx, 0], layout[idx, 1],
                                             np.asarray(targets, np.float32)[idx]))
    ds = ds.shuffle(len(idx), seed=cfg.data.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def load(path, offset, n_frames, target):
        return tf.ensure_shape(read_excerpt(path, offset, n_frames, n), (n,)), target

    def augment(x, target):  # once per batch, vectorised
        return augment_waveform(x, cfg.augment, training), target

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=False)
    if training and cfg.data.min_signal_score > 0:
        ds = ds.filter(signal_filter(cfg))
    ds = ds.batch(cfg.data.batch_size, drop_remainder=False)
    if training:
        ds = ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=False)
    return ds.prefetch(AUTOTUNE)


def signal_filter(cfg: Config):
    """Predicate for ``Dataset.filter``: keeps excerpts whose 2018-baseline signal/noise score
    (of their chunk spectrogram at ``cfg.chunks`` settings) is at least ``data.min_signal_score``,
    so on-the-fly training drops noise-only excerpts without the offline extract step."""
    from birdnet_tf.data.spectrograms import chunk_spectrogram, signal_noise_score_tf

    if cfg.audio.sample_rate_hz != cfg.chunks.sample_rate_hz:
        from birdnet_tf.errors import ConfigError

        raise ConfigError("data.min_signal_score needs audio.sample_rate_hz = chunks.sample_rate_hz "
                          f"({cfg.audio.sample_rate_hz} != {cfg.chunks.sample_rate_hz})")
    threshold = float(cfg.data.min_signal_score)

    def keep(x, target):
        return signal_noise_score_tf(chunk_spectrogram(x[tf.newaxis], cfg.chunks))[0] >= threshold

    return keep


def steps_in_epoch(durations_s: np.ndarray, cfg: Config) -> int:
    return max(1, math.ceil(int(excerpts_per_file(durations_s, cfg).sum()) / cfg.data.batch_size))


@dataclass
class WindowSet:
    """Evaluation windows of a list of files: ``dataset`` yields ``(B, samples)`` batches in
    order; ``file_index[i]`` and ``start_s[i]`` say which file and where window ``i`` is."""

    dataset: tf.data.Dataset
    file_index: np.ndarray
    start_s: np.ndarray


def evaluation_windows(paths: list[str], cfg: Config, window_s: float | None = None,
                       hop_s: float | None = None, max_windows: int | None = -1,
                       batch_size: int | None = None) -> WindowSet:
    """Deterministic windows over prepared WAV files, each file decoded once.

    Args:
        paths: Prepared 16-bit WAV files at the model's rate.
        window_s, hop_s: Window length and hop (default: the config's excerpt and eval hop).
        max_windows: Cap per file (default -1: the config's ``max_eval_windows``; None: no cap).
    """
    sr = cfg.audio.sample_rate_hz
    window = int(round((window_s or cfg.data.excerpt_s) * sr))
    hop = int(round((hop_s or cfg.data.eval_hop_s) * sr))
    if max_windows == -1:
        max_windows = cfg.data.max_eval_windows
    starts = [window_starts(wav_num_samples(p), window, hop, max_windows) for p in paths]
    counts = np.array([len(s) for s in starts], np.int64)
    flat = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    ragged = tf.RaggedTensor.from_row_lengths(flat, counts)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=str), ragged))

    def cut(path, file_starts):
        x = loop_to_length(decode_wav(path), window)
        x = tf.pad(x, [[0, tf.maximum(0, tf.cast(tf.reduce_max(file_starts), tf.int32) + window - tf.shape(x)[0])]])
        idx = tf.cast(file_starts, tf.int32)[:, None] + tf.range(window)[None, :]
        return tf.gather(x, idx)

    batch = batch_size or cfg.data.batch_size
    ds = ds.map(cut, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch().batch(batch)
    # unbatch() hides the length from Keras; state it so predict() knows when it is done
    ds = ds.apply(tf.data.experimental.assert_cardinality(int(math.ceil(counts.sum() / batch))))
    ds = ds.prefetch(AUTOTUNE)
    return WindowSet(ds, np.repeat(np.arange(len(paths)), counts), flat / sr)
