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
    random order each pass, each time with a new random excerpt and augmentation
    (waveform augmentations, then mixup within the batch when ``augment.mixup_prob`` > 0).
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
        x = augment_waveform(x, cfg.augment, training)
        if cfg.augment.mixup_prob > 0:  # OFAI mixup: batch-level, on waveforms and targets
            from birdnet_tf.data.spec_augment import mixup

            x, target = mixup(x, target, cfg.augment.mixup_prob, cfg.augment.mixup_alpha)
        return x, target

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


# ------------------------------------------------- the 2018 baseline's PNG chunks
#: ``config.json`` of a run trained on a ``birdnet-tf extract`` folder records ``input: chunks``.
CHUNK_INPUT = "chunks"


def is_chunk_folder(path) -> bool:
    """True when ``path`` looks like a ``birdnet-tf extract`` output (``chunks.csv`` or ``extract_config.json``)."""
    from pathlib import Path

    from birdnet_tf.data.spectrograms import CONFIG_NAME, INDEX_NAME

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
    from birdnet_tf.data.spectrograms import (
        _NOT_EXTRACTION_FIELDS,
        CONFIG_NAME,
        INDEX_COLUMNS,
        INDEX_NAME,
        _chunk_config,
        _score_x1e4,
    )
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
        theirs = dataclasses.asdict(_chunk_config(saved["chunks"]))
    except (OSError, ValueError, KeyError, TypeError, BirdnetError) as e:
        raise BirdnetError(f"{config_path}: unreadable extract config ({' '.join(str(e).split())})") from None
    mine = dataclasses.asdict(cfg.chunks)
    diffs = [f"chunks.{k} = {theirs[k]!r} there, {mine[k]!r} in the recipe" for k in mine
             if k not in _NOT_EXTRACTION_FIELDS and json.dumps(theirs.get(k)) != json.dumps(mine[k])]
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
    s2n = np.array([_score_x1e4(s, cells) for s in scores], np.int64)
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
    from birdnet_tf.data.spectrograms import decode_chunk_png

    shape = (cfg.chunks.width, cfg.chunks.height)
    return lambda path: tf.ensure_shape(decode_chunk_png(path), shape)


def chunk_training_dataset(png_paths: list[str], targets: np.ndarray, cfg: Config, training: bool = True,
                           repeat: bool = False) -> tf.data.Dataset:
    """Batches of ``(images (B, chunks.width, chunks.height), targets (B, classes))`` from chunk PNGs.

    One pass = one epoch: every chunk once, in a new random order each pass (``training``);
    the images are decoded with :func:`~birdnet_tf.data.spectrograms.decode_chunk_png` (0..1,
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
