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
from birdnet_tf.grid import window_starts  # public here too (moved to grid.py: no TF)

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


def _read_pcm16(path: bytes, byte_offset: np.int64, start: np.int64, count: np.int64) -> np.ndarray:
    """``count`` 16-bit samples from ``start`` of a WAV whose samples begin at ``byte_offset``.

    A seek and one read: only the bytes asked for leave the disk, so long recordings cost no
    more than short ones and the dataset never needs to fit in memory.
    """
    path = path.item() if isinstance(path, np.ndarray) else path  # a 0-d array when run eagerly
    with open(path.decode("utf-8") if isinstance(path, bytes) else path, "rb") as f:
        f.seek(int(byte_offset) + 2 * int(start))
        data = f.read(2 * int(count))
    return np.frombuffer(data[:len(data) - len(data) % 2], "<i2").astype(np.int16)


def read_pcm16(path: tf.Tensor, byte_offset: tf.Tensor, start: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """TF op of :func:`_read_pcm16`: int16 ``(count,)`` (shorter only at the end of the file)."""
    x = tf.numpy_function(_read_pcm16, [path, tf.cast(byte_offset, tf.int64), tf.cast(start, tf.int64),
                                        tf.cast(count, tf.int64)], tf.int16, stateful=False)
    return tf.reshape(x, [-1])


def read_excerpt(path: tf.Tensor, offset: tf.Tensor, n_frames: tf.Tensor, n, with_span: bool = False):
    """A uniformly placed ``n``-sample excerpt of a 16-bit mono WAV, reading only those samples.

    Files shorter than ``n`` are read whole and looped from a random point. ``n`` may be a
    Python int or a scalar tensor (bucketed excerpts choose it per batch).

    With ``with_span`` also returns where the excerpt lies in the file: ``(x, first, end)``
    samples (int64; a looped short file covers all of it, ``0..n_frames``), so teacher tables
    can give the excerpt its target (:mod:`birdnet_tf.distill.targets`).
    """
    n_frames = tf.cast(n_frames, tf.int64)
    offset = tf.cast(offset, tf.int64)
    n64 = tf.cast(n, tf.int64)

    def long_file():
        start = tf.random.uniform((), 0, n_frames - n64 + 1, dtype=tf.int64)
        return read_pcm16(path, offset, start, n64), start, start + n64

    def short_file():
        x = read_pcm16(path, offset, tf.constant(0, tf.int64), n_frames)
        x = loop_to_length(x, n)
        start = tf.random.uniform((), 0, tf.maximum(n_frames, 1), dtype=tf.int64)
        return tf.roll(x, -tf.cast(start, tf.int32), axis=0)[:n], tf.constant(0, tf.int64), n_frames

    x, first, end = tf.cond(n_frames >= n64, long_file, short_file)
    x = tf.cast(x, tf.float32) / 32768.0
    return (x, first, end) if with_span else x


def decode_wav(path: tf.Tensor) -> tf.Tensor:
    """Reads a 16-bit PCM WAV file → float32 mono ``(samples,)``."""
    audio, _ = tf.audio.decode_wav(tf.io.read_file(path), desired_channels=1)
    return audio[:, 0]


def loop_to_length(x: tf.Tensor, n: int) -> tf.Tensor:
    """Repeats ``x`` until it has at least ``n`` samples (no-op for long inputs)."""
    length = tf.maximum(tf.shape(x)[0], 1)
    x = tf.cond(tf.shape(x)[0] > 0, lambda: x, lambda: tf.zeros((1,), x.dtype))
    reps = (tf.cast(n, tf.int32) + length - 1) // length
    return tf.tile(x, [tf.maximum(reps, 1)])


# ------------------------------------------------------------------ datasets
def excerpts_per_file(durations_s: np.ndarray, cfg: Config) -> np.ndarray:
    """How many excerpts each file contributes to one training epoch."""
    d = cfg.data
    n = np.ceil(np.asarray(durations_s, float) / max(d.excerpts_per_file_s, 1e-6)).astype(int)
    return np.clip(n, d.min_excerpts_per_file, max(d.min_excerpts_per_file, d.max_excerpts_per_file))


def bucketed(cfg: Config) -> bool:
    """True when ``cfg`` asks for OFAI's bucketed variable-length excerpts (``data.excerpt_max_s`` > ``excerpt_s``)."""
    return cfg.data.excerpt_max_s > cfg.data.excerpt_s


def length_buckets(durations_s: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """OFAI's length buckets: which bucket each file is in, and each bucket's excerpt length.

    Files are sorted by duration and cut into ``data.length_buckets`` groups holding about
    the same number of excerpts (:func:`excerpts_per_file`). A bucket's excerpts all have one
    length: its shortest file's duration, bounded to [``data.excerpt_s``, ``data.excerpt_max_s``]
    and rounded down to whole frames (``frontend.hop_length``), so long files are cropped to a
    random part and only files shorter than ``excerpt_s`` are looped.

    Returns:
        ``(bucket_of_file int64 [files], length_samples int64 [buckets])``; buckets are ordered
        by length and every bucket has at least one file.

    Raises:
        ConfigError: ``data.length_buckets`` < 1 or ``excerpt_max_s`` not above ``excerpt_s``.
    """
    from birdnet_tf.errors import ConfigError

    d, sr = cfg.data, cfg.audio.sample_rate_hz
    if d.length_buckets < 1:
        raise ConfigError(f"data.length_buckets must be >= 1, not {d.length_buckets}")
    if not bucketed(cfg):
        raise ConfigError(f"bucketed excerpts need data.excerpt_max_s > data.excerpt_s "
                          f"({d.excerpt_max_s} <= {d.excerpt_s})")
    durations_s = np.asarray(durations_s, float)
    reps = excerpts_per_file(durations_s, cfg)
    order = np.argsort(durations_s, kind="stable")
    cum = np.cumsum(reps[order]) - reps[order]  # excerpts before each file in length order
    n_buckets = max(1, min(d.length_buckets, len(order)))
    raw = np.minimum((cum * n_buckets) // max(1, int(reps.sum())), n_buckets - 1)
    _, dense = np.unique(raw, return_inverse=True)  # drop empty buckets, keep the order
    bucket = np.empty(len(order), np.int64)
    bucket[order] = dense
    lengths = []
    hop = max(1, cfg.frontend.hop_length)
    lo, hi = int(round(d.excerpt_s * sr)), int(round(d.excerpt_max_s * sr))
    for b in range(int(dense.max()) + 1 if len(dense) else 0):
        shortest = int(durations_s[bucket == b].min() * sr)
        n = min(max(shortest, lo), hi)
        lengths.append(max(lo, lo + (n - lo) // hop * hop))
    return bucket, np.asarray(lengths, np.int64)


def _bucket_batches(file_of_draw: np.ndarray, bucket_of_file: np.ndarray, batch: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches of bucketed excerpts: each a list of draws (file indices) of one bucket,
    in random order; a bucket's last batch is filled up with other draws of that bucket so every
    batch is full (a bucket with fewer draws than a batch makes one smaller batch)."""
    batches = []
    buckets = bucket_of_file[file_of_draw]
    for b in np.unique(buckets):
        draws = rng.permutation(file_of_draw[buckets == b])
        for i in range(0, len(draws), batch):
            chunk = draws[i:i + batch]
            if len(chunk) < batch and len(draws) >= batch:
                chunk = np.concatenate([chunk, rng.choice(draws[:i], batch - len(chunk), replace=False)])
            batches.append(chunk)
    return [batches[i] for i in rng.permutation(len(batches))]


def training_dataset(paths: list[str], targets: np.ndarray, durations_s: np.ndarray, cfg: Config,
                     training: bool = True, repeat: bool = False, metadata: np.ndarray | None = None,
                     tables=None, unlabeled=None) -> tf.data.Dataset:
    """Batches of ``(waveform (B, samples), targets (B, classes))`` for ``model.fit``.

    One pass = one epoch: every file appears :func:`excerpts_per_file` times, in a new
    random order each pass, each time with a new random excerpt and augmentation
    (waveform augmentations, then mixup within the batch when ``augment.mixup_prob`` > 0).
    Excerpts are read from disk with one seek and read each (:func:`read_pcm16`), so only
    the samples used are ever read.

    With ``data.excerpt_max_s`` > ``data.excerpt_s`` (OFAI's bucketed excerpts, see
    :func:`length_buckets`) each batch's excerpts share one length between the two, chosen
    by the bucket its files come from; ``samples`` then varies from batch to batch.

    Args:
        metadata: Optional float32 ``[files, F]`` features, one row per path: the batches
            become ``({"waveform": (B, samples), "metadata": (B, F)}, targets)``, each excerpt
            with its file's row (mixup mixes the rows with the waveforms).
        tables: Optional :class:`~birdnet_tf.distill.targets.TableTargets` of these paths (teacher
            tables): the targets become ``{"labels": (B, classes), "table": (B, T, classes),
            "known": (B, T, classes)}``, each excerpt's teacher scores pooled from the table windows
            it overlaps (mixup mixes them with the labels; a class is known after mixup when either
            excerpt knew it, the other contributing its label).
        unlabeled: Optional ``(paths, durations_s, tables)`` of recordings without labels (pseudo-labels;
            fixed-length excerpts only; ``tables`` their TableTargets or None): every batch then holds
            ``round(distill.pseudo_ratio × batch)`` of their excerpts, with zero labels, and the targets
            gain ``"labelled"`` ``(B,)``: 1 for the dataset's excerpts, 0 for these (mixup mixes it too).
    """
    reps = excerpts_per_file(durations_s, cfg)
    idx = np.repeat(np.arange(len(paths)), reps)
    layout = np.array([wav_layout(p) for p in paths], np.int64).reshape(-1, 2)
    targets = np.asarray(targets, np.float32)
    meta = None if metadata is None else np.asarray(metadata, np.float32).reshape(len(paths), -1)
    batch = cfg.data.batch_size
    columns = (np.asarray(paths, dtype=str), layout[:, 0], layout[:, 1], targets) + ((meta,) if meta is not None else ())
    sr = float(cfg.audio.sample_rate_hz)

    def excerpt(path, offset, n_frames, n, target, f, pooled=tables):
        """(waveform, *teacher): the excerpt, and with tables its pooled teacher targets [T, C, 2]."""
        if tables is None:
            return (read_excerpt(path, offset, n_frames, n),)
        x, first, end = read_excerpt(path, offset, n_frames, n, with_span=True)
        return x, pooled.pool(f, tf.cast(first, tf.float32) / sr, tf.cast(end, tf.float32) / sr, target)

    if bucketed(cfg):
        bucket_of_file, lengths = length_buckets(durations_s, cfg)
        rng = np.random.default_rng(cfg.data.seed)

        def plan():
            while True:  # one epoch per pass; a new order, new batches and fill-ups every epoch
                for chunk in _bucket_batches(idx, bucket_of_file, batch, rng):
                    for f in chunk:
                        yield np.int64(f)
                if not repeat:
                    return

        ds = tf.data.Dataset.from_generator(plan, output_signature=tf.TensorSpec((), tf.int64))
        table = tuple(tf.constant(c) for c in columns)
        bucket_t, lengths_t = tf.constant(bucket_of_file), tf.constant(lengths)

        def load(f):
            path, offset, n_frames, target = (tf.gather(t, f) for t in table[:4])
            b = tf.gather(bucket_t, f)
            n = tf.gather(lengths_t, b)
            x, *teacher = excerpt(path, offset, n_frames, n, target, f)
            return (b, x, target) + ((tf.gather(table[4], f),) if meta is not None else ()) + tuple(teacher)

        # the plan's batches arrive whole and in order (deterministic map); grouping by bucket
        # re-forms them, and still keeps lengths apart if the signal filter drops excerpts
        ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
        if training and cfg.data.min_signal_score > 0:
            keep = signal_filter(cfg)
            ds = ds.filter(lambda b, x, target, *m: keep(x, target))
        ds = ds.group_by_window(key_func=lambda b, *rest: b, window_size=batch,
                                reduce_func=lambda key, window: window.batch(batch))
        ds = ds.map(lambda b, x, target, *m: (x, target, *m))
    else:
        n = cfg.excerpt_samples
        ds = tf.data.Dataset.from_tensor_slices(tuple(c[idx] for c in columns) + (idx,))
        ds = ds.shuffle(len(idx), seed=cfg.data.seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()

        def load(path, offset, n_frames, target, *m_f):
            x, *teacher = excerpt(path, offset, n_frames, n, target, m_f[-1])
            return (tf.ensure_shape(x, (n,)), target, *m_f[:-1], *teacher)

        ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=False)
        if training and cfg.data.min_signal_score > 0:
            keep = signal_filter(cfg)
            ds = ds.filter(lambda x, target, *m: keep(x, target))
        if unlabeled is not None:
            ds = ds.map(lambda *e: (*e, tf.constant(1.0)))
            ds = _mix_unlabeled(ds, unlabeled, targets.shape[1], n, batch, cfg, excerpt)
        ds = ds.batch(batch, drop_remainder=False)

    def augment(x, target, *m):  # once per batch, vectorised
        x = augment_waveform(x, cfg.augment, training)
        if cfg.augment.mixup_prob > 0:  # OFAI mixup: batch-level, on waveforms and targets (and metadata)
            from birdnet_tf.data.spec_augment import draw_mixup

            perm, w = draw_mixup(tf.shape(x)[0], cfg.augment.mixup_prob, cfg.augment.mixup_alpha)

            def mix(v):
                wv = tf.reshape(w, tf.concat([[-1], tf.ones([tf.rank(v) - 1], tf.int32)], 0))
                return wv * v + (1.0 - wv) * tf.gather(v, perm)

            x, target = mix(x), mix(target)
            m = list(m)
            for i, v in enumerate(m):
                if tables is not None and i == int(meta is not None):  # teacher [B, T, C, 2]: scores mixed,
                    m[i] = tf.stack([mix(v[..., 0]), tf.maximum(v[..., 1], tf.gather(v[..., 1], perm))],
                                    axis=-1)  # known where either excerpt knew
                else:
                    m[i] = mix(v)
        return (x, target, *m)

    if training:
        ds = ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=False)

    def structure(x, target, *m):
        inputs = {"waveform": x, "metadata": m[0]} if meta is not None else x
        if tables is None and unlabeled is None:
            return inputs, target
        y = {"labels": target}
        if tables is not None:
            teacher = m[int(meta is not None)]
            y.update(table=teacher[..., 0], known=teacher[..., 1])
        if unlabeled is not None:
            y["labelled"] = m[-1]
        return inputs, y

    if meta is not None or tables is not None or unlabeled is not None:
        ds = ds.map(structure)
    return ds.prefetch(AUTOTUNE)


def _mix_unlabeled(ds: tf.data.Dataset, unlabeled, n_classes: int, n: int, batch: int, cfg: Config, excerpt):
    """``ds`` (unbatched labelled examples ending in their flag 1.0) interleaved with excerpts of
    unlabelled recordings (zero labels, flag 0.0): of every ``batch`` consecutive examples,
    ``round(pseudo_ratio × batch)`` (at least 1 when the ratio is > 0) are unlabelled."""
    paths, durations_s, pooled = unlabeled
    reps = excerpts_per_file(np.asarray(durations_s, float), cfg)
    idx = np.repeat(np.arange(len(paths)), reps)
    layout = np.array([wav_layout(p) for p in paths], np.int64).reshape(-1, 2)
    zeros = np.zeros((len(paths), n_classes), np.float32)
    u = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=str)[idx], layout[idx, 0], layout[idx, 1],
                                            zeros[idx], idx))
    u = u.shuffle(len(idx), seed=cfg.data.seed + 1, reshuffle_each_iteration=True).repeat()

    def load(path, offset, n_frames, target, f):
        x, *teacher = excerpt(path, offset, n_frames, n, target, f, pooled)
        return (tf.ensure_shape(x, (n,)), target, *teacher, tf.constant(0.0))

    u = u.map(load, num_parallel_calls=AUTOTUNE, deterministic=False)
    k = unlabeled_per_batch(cfg.distill.pseudo_ratio, batch)
    choice = tf.data.Dataset.from_tensor_slices(tf.constant([0] * (batch - k) + [1] * k, tf.int64)).repeat()
    return tf.data.Dataset.choose_from_datasets([ds, u], choice)


def unlabeled_per_batch(ratio: float, batch: int) -> int:
    """Unlabelled excerpts per batch of ``batch`` at ``distill.pseudo_ratio`` (at least 1 when > 0, at most batch − 1)."""
    if ratio <= 0:
        return 0
    return int(min(batch - 1, max(1, round(ratio * batch))))


def signal_filter(cfg: Config):
    """Predicate for ``Dataset.filter``: keeps excerpts whose 2018-baseline signal/noise score
    (of their chunk spectrogram at ``cfg.chunks`` settings) is at least ``data.min_signal_score``,
    so on-the-fly training drops noise-only excerpts without the offline extract step."""
    from birdnet_tf.frontend.chunks import chunk_spectrogram
    from birdnet_tf.frontend.signal_noise import signal_noise_score_tf

    if cfg.audio.sample_rate_hz != cfg.chunks.sample_rate_hz:
        from birdnet_tf.errors import ConfigError

        raise ConfigError("data.min_signal_score needs audio.sample_rate_hz = chunks.sample_rate_hz "
                          f"({cfg.audio.sample_rate_hz} != {cfg.chunks.sample_rate_hz})")
    threshold = float(cfg.data.min_signal_score)

    def keep(x, target):
        return signal_noise_score_tf(chunk_spectrogram(x[tf.newaxis], cfg.chunks))[0] >= threshold

    return keep


def steps_in_epoch(durations_s: np.ndarray, cfg: Config) -> int:
    """Batches in one epoch of :func:`training_dataset` (bucketed: each bucket's draws batched apart)."""
    reps = excerpts_per_file(durations_s, cfg)
    batch = cfg.data.batch_size
    if bucketed(cfg) and len(reps):
        bucket, _ = length_buckets(durations_s, cfg)
        per_bucket = np.bincount(bucket, weights=reps)
        return max(1, int(sum(math.ceil(n / batch) for n in per_bucket if n > 0)))
    return max(1, math.ceil(int(reps.sum()) / batch))


@dataclass
class WindowSet:
    """Evaluation windows of a list of files: ``dataset`` yields ``(B, samples)`` batches in
    order; ``file_index[i]`` and ``start_s[i]`` say which file and where window ``i`` is."""

    dataset: tf.data.Dataset
    file_index: np.ndarray
    start_s: np.ndarray


def evaluation_windows(paths: list[str], cfg: Config, window_s: float | None = None,
                       hop_s: float | None = None, max_windows: int | None = -1,
                       batch_size: int | None = None, metadata: np.ndarray | None = None) -> WindowSet:
    """Deterministic windows over prepared WAV files, each file decoded once.

    Args:
        paths: Prepared 16-bit WAV files at the model's rate.
        window_s, hop_s: Window length and hop (default: the config's excerpt and eval hop).
        max_windows: Cap per file (default -1: the config's ``max_eval_windows``; None: no cap).
        metadata: Optional float32 ``[files, F]``, one row per path: batches become
            ``{"waveform": (B, samples), "metadata": (B, F)}``, each window with its file's row.
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
    meta = None if metadata is None else np.asarray(metadata, np.float32).reshape(len(paths), -1)
    columns = (np.asarray(paths, dtype=str), ragged) + ((meta,) if meta is not None else ())
    ds = tf.data.Dataset.from_tensor_slices(columns)

    def cut(path, file_starts, *m):
        x = loop_to_length(decode_wav(path), window)
        x = tf.pad(x, [[0, tf.maximum(0, tf.cast(tf.reduce_max(file_starts), tf.int32) + window - tf.shape(x)[0])]])
        idx = tf.cast(file_starts, tf.int32)[:, None] + tf.range(window)[None, :]
        if m:  # the file's metadata row, once per window
            return {"waveform": tf.gather(x, idx), "metadata": tf.tile(m[0][None], [tf.shape(idx)[0], 1])}
        return tf.gather(x, idx)

    batch = batch_size or cfg.data.batch_size
    ds = ds.map(cut, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch().batch(batch)
    # unbatch() hides the length from Keras; state it so predict() knows when it is done
    ds = ds.apply(tf.data.experimental.assert_cardinality(int(math.ceil(counts.sum() / batch))))
    ds = ds.prefetch(AUTOTUNE)
    return WindowSet(ds, np.repeat(np.arange(len(paths)), counts), flat / sr)


# ------------------------------------------------- the 2018 baseline's PNG chunks
#: ``config.json`` of a run trained on a ``birdnet-tf extract`` folder records ``input: chunks``.
CHUNK_INPUT = "chunks"


def is_chunk_folder(path) -> bool:
    """True when ``path`` looks like a ``birdnet-tf extract`` output (``chunks.csv`` or ``extract_config.json``)."""
    from pathlib import Path

    from birdnet_tf.data.chunk_folder import CONFIG_NAME, INDEX_NAME

    p = Path(path)
    return (p / INDEX_NAME).is_file() or (p / CONFIG_NAME).is_file()


def read_chunk_index(chunks_dir, cfg: Config):
    """Reads and checks the index of a ``birdnet-tf extract`` folder for training or evaluating ``cfg``.

    Args:
        chunks_dir: The folder holding ``chunks.csv`` and ``extract_config.json``.
        cfg: The run's config: ``frontend.kind`` must be ``chunks`` and every ``chunks`` setting
            that shapes what extract writes must equal the folder's (``s2n_interval`` and
            ``max_chunks_per_file`` may differ).

    Returns:
        One row per PNG: ``png`` (absolute path), ``key`` (the source recording), ``primary_label``,
        ``secondary_labels`` (lists), ``split`` (as extract wrote it: ``train``, ``val``, ... or
        ``all``), ``start_s``, ``score`` (0..1), ``kind`` (``signal`` | ``noise``), ``s2n``
        (``floor(score × 10⁴)``, as in the PNG's name) and ``in_s2n_interval`` (bool, within
        ``chunks.s2n_interval``). ``attrs["extract_config"]`` holds the folder's extract config.

    Raises:
        ConfigError: ``frontend.kind`` is not ``chunks``, or the settings differ (each difference named).
        BirdnetError: No ``chunks.csv`` or ``extract_config.json``, or they are unreadable.
    """
    import dataclasses
    import json
    from pathlib import Path

    import pandas as pd

    from birdnet_tf.data.catalog import parse_secondary_labels
    from birdnet_tf.data.chunk_folder import (
        CONFIG_NAME,
        INDEX_COLUMNS,
        INDEX_NAME,
        NOT_EXTRACTION_FIELDS,
        score_x1e4,
    )
    from birdnet_tf.frontend.chunks import chunk_config
    from birdnet_tf.errors import BirdnetError, ConfigError

    folder = Path(chunks_dir)
    if cfg.frontend.kind != "chunks":
        raise ConfigError(f"{folder}: is a folder of PNG chunks (birdnet-tf extract); training on it needs a "
                          f"recipe with frontend.kind=chunks (e.g. pipelines/kahl2018_baseline.yaml), not "
                          f"frontend.kind={cfg.frontend.kind}")
    index_path, config_path = folder / INDEX_NAME, folder / CONFIG_NAME
    if not index_path.is_file():
        raise BirdnetError(f"{folder}: has no {INDEX_NAME} (an interrupted birdnet-tf extract?); run the same "
                           f"extract command again to finish it")
    if not config_path.is_file():
        raise BirdnetError(f"{folder}: has no {CONFIG_NAME}, so its chunk settings are unknown; "
                           "make it with birdnet-tf extract")
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        theirs = dataclasses.asdict(chunk_config(saved["chunks"]))
    except (OSError, ValueError, KeyError, TypeError, BirdnetError) as e:
        raise BirdnetError(f"{config_path}: unreadable extract config ({' '.join(str(e).split())})") from None
    mine = dataclasses.asdict(cfg.chunks)
    diffs = [f"chunks.{k} = {theirs[k]!r} there, {mine[k]!r} in the recipe" for k in mine
             if k not in NOT_EXTRACTION_FIELDS and json.dumps(theirs.get(k)) != json.dumps(mine[k])]
    if diffs:
        raise ConfigError(f"{folder}: was extracted with other chunks settings than this recipe's "
                          f"({'; '.join(diffs)}); pass the extract's settings (--set chunks.NAME=VALUE) "
                          "or extract again with the recipe's")
    try:
        table = pd.read_csv(index_path, dtype={"png": str, "source_key": str, "label": str, "secondary_labels": str,
                                               "split": str, "kind": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise BirdnetError(f"{index_path}: unreadable ({' '.join(str(e).split())[:200]})") from None
    missing = [c for c in INDEX_COLUMNS if c not in table.columns]
    if missing:
        raise BirdnetError(f"{index_path}: lacks the column(s) {', '.join(missing)} (not written by birdnet-tf extract?)")
    try:
        scores = pd.to_numeric(table["score"]).to_numpy(float)
        start_s = pd.to_numeric(table["start_s"]).to_numpy(float)
    except (ValueError, TypeError):
        raise BirdnetError(f"{index_path}: has non-numeric score or start_s values") from None
    cells = cfg.chunks.width * cfg.chunks.height
    s2n = np.array([score_x1e4(s, cells) for s in scores], np.int64)
    lo, hi = cfg.chunks.s2n_interval
    out = pd.DataFrame({
        "png": [str(folder / p) for p in table["png"]],
        "key": table["source_key"].astype(str),
        "primary_label": table["label"].astype(str),
        "secondary_labels": [parse_secondary_labels(v, primary=p) for v, p in zip(table["secondary_labels"],
                                                                                  table["label"])],
        "split": table["split"].astype(str).str.strip().str.lower(),
        "start_s": start_s,
        "score": scores,
        "kind": table["kind"].astype(str),
        "s2n": s2n,
        "in_s2n_interval": (s2n >= lo) & (s2n <= hi),
    })
    out.attrs["extract_config"] = saved
    return out


def chunk_file_table(index):
    """One row per source recording of a chunk index (:func:`read_chunk_index`).

    Returns:
        Columns ``key``, ``primary_label``, ``secondary_labels``, ``split``, ``signal_chunks``
        (its signal chunks), ``s2n_chunks`` (those within ``chunks.s2n_interval``: what training
        uses) and ``noise_chunks`` (its chunks kept in ``noise/``), in order of first appearance.
        Recordings that have no row in ``chunks.csv`` at all (no chunk, or none kept) are unknown here.
    """
    import pandas as pd

    signal = index["kind"] == "signal"
    first = index.drop_duplicates("key")[["key", "primary_label", "secondary_labels", "split"]]
    counts = pd.DataFrame({
        "signal_chunks": signal.groupby(index["key"]).sum(),
        "s2n_chunks": (signal & index["in_s2n_interval"]).groupby(index["key"]).sum(),
        "noise_chunks": (index["kind"] == "noise").groupby(index["key"]).sum(),
    })
    table = first.join(counts, on="key").reset_index(drop=True)
    for column in ("signal_chunks", "s2n_chunks", "noise_chunks"):
        table[column] = table[column].astype(int)
    return table


def select_chunks(index, keys, max_per_file: int | None = None):
    """The signal chunks of ``keys`` in file order, then by start; at most ``max_per_file`` per file,
    spread evenly over the file's chunks (as :func:`window_starts` spreads windows).

    Returns:
        ``(rows, file_index)``: the chosen rows of ``index`` and each row's position in ``keys``.
    """
    import pandas as pd

    position = {k: i for i, k in enumerate(keys)}
    rows = index[(index["kind"] == "signal") & index["key"].isin(position)].copy()
    rows["_file"] = rows["key"].map(position)
    rows = rows.sort_values(["_file", "start_s"], kind="stable")
    if max_per_file:
        keep = []
        for _, group in rows.groupby("_file", sort=True):
            n = len(group)
            idx = np.unique(np.round(np.linspace(0, n - 1, max_per_file)).astype(int)) if n > max_per_file \
                else np.arange(n)
            keep.append(group.iloc[idx])
        rows = pd.concat(keep) if keep else rows
    return rows.drop(columns="_file"), rows["_file"].to_numpy(np.int64)


def _decode_chunk(cfg: Config):
    from birdnet_tf.data.chunk_folder import decode_chunk_png

    shape = (cfg.chunks.width, cfg.chunks.height)
    return lambda path: tf.ensure_shape(decode_chunk_png(path), shape)


def chunk_training_dataset(png_paths: list[str], targets: np.ndarray, cfg: Config, training: bool = True,
                           repeat: bool = False) -> tf.data.Dataset:
    """Batches of ``(images (B, chunks.width, chunks.height), targets (B, classes))`` from chunk PNGs.

    One pass = one epoch: every chunk once, in a new random order each pass (``training``);
    the images are decoded with :func:`~birdnet_tf.data.chunk_folder.decode_chunk_png` (0..1,
    multiples of 1/255). Image augmentation happens inside the model (``ImageAugment``).
    """
    decode = _decode_chunk(cfg)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(png_paths, dtype=str), np.asarray(targets, np.float32)))
    if training:
        ds = ds.shuffle(len(png_paths), seed=cfg.data.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(lambda path, target: (decode(path), target), num_parallel_calls=AUTOTUNE,
                deterministic=not training)
    return ds.batch(cfg.data.batch_size, drop_remainder=False).prefetch(AUTOTUNE)


def chunk_windows(png_paths: list[str], file_index: np.ndarray, start_s: np.ndarray, cfg: Config,
                  batch_size: int | None = None) -> WindowSet:
    """A :class:`WindowSet` of chunk PNGs: ``dataset`` yields ``(B, chunks.width, chunks.height)``
    image batches in order; ``file_index[i]`` and ``start_s[i]`` say which file and where chunk ``i`` is."""
    decode = _decode_chunk(cfg)
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(png_paths, dtype=str))
    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size or cfg.data.batch_size).prefetch(AUTOTUNE)
    return WindowSet(ds, np.asarray(file_index, np.int64), np.asarray(start_s, float))


def chunk_file_windows(index, files, cfg: Config, max_per_file: int | None = None, log=print):
    """The signal chunks of ``files`` (rows with ``key``; at most ``max_per_file`` chunks each) as a
    :class:`WindowSet` of images for file-level scoring, and the files that have any.

    Files without a signal chunk cannot be scored: they are left out and counted in the log.

    Returns:
        ``(windows, files_kept)``; ``windows.file_index`` counts rows of ``files_kept``.

    Raises:
        BirdnetError: None of ``files`` has a signal chunk.
    """
    from birdnet_tf.errors import BirdnetError

    has = files["key"].isin(set(index.loc[index["kind"] == "signal", "key"])).to_numpy()
    if not has.all():
        log(f"{int((~has).sum())} of {len(files)} files have no signal chunk and are left out of the scoring")
    files = files[has]
    if files.empty:
        raise BirdnetError("none of the files to score has a signal chunk in the chunks folder (lower "
                           "chunks.signal_threshold when extracting, or use more files)")
    rows, file_index = select_chunks(index, list(files["key"]), max_per_file)
    return chunk_windows(list(rows["png"]), file_index, rows["start_s"].to_numpy(float), cfg), files
