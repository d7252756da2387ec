"""OFAI's bucketed variable-length excerpts, windowed reads and metadata rows in the tf.data pipelines."""

from __future__ import annotations

import resource
import struct
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from birdnet_tf.data.audio import write_wav16  # noqa: E402
from birdnet_tf.data.pipeline import (  # noqa: E402
    _bucket_batches,
    evaluation_windows,
    excerpts_per_file,
    length_buckets,
    read_excerpt,
    read_pcm16,
    steps_in_epoch,
    training_dataset,
    wav_layout,
)
from birdnet_tf.errors import ConfigError  # noqa: E402

SR = 22050
NO_AUGMENT = {"augment.gain_prob": 0.0, "augment.shift_prob": 0.0, "augment.noise_prob": 0.0,
              "augment.mask_prob": 0.0}


def bucket_cfg(tiny_config, **extra):
    settings = {**NO_AUGMENT, "data.excerpt_s": 1.0, "data.excerpt_max_s": 4.0, "data.length_buckets": 3,
                "data.batch_size": 2, "data.excerpts_per_file_s": 1.0, "data.max_excerpts_per_file": 2,
                "data.min_excerpts_per_file": 2}
    settings.update(extra)
    return tiny_config.replace(settings)


# --------------------------------------------------------------- length buckets
def test_length_buckets_sort_files_by_duration_and_bound_the_lengths(tiny_config):
    cfg = bucket_cfg(tiny_config)
    durations = np.array([9.0, 0.4, 2.5, 1.2, 6.0, 3.3])
    bucket, lengths = length_buckets(durations, cfg)
    assert len(lengths) == 3 and bucket.shape == (6,)
    # longer files never sit in a shorter bucket than shorter files
    order = np.argsort(durations)
    assert np.all(np.diff(bucket[order]) >= 0)
    # equal numbers of excerpts per bucket (2 files each here)
    assert sorted(Counter(bucket.tolist()).values()) == [2, 2, 2]
    lo, hi, hop = SR * 1, SR * 4, cfg.frontend.hop_length
    assert np.all(lengths >= lo) and np.all(lengths <= hi) and np.all(np.diff(lengths) >= 0)
    assert np.all((lengths - lo) % hop == 0)  # whole frames above the minimum
    for b, n in enumerate(lengths):
        shortest = durations[bucket == b].min() * SR
        # the bucket's shortest file fits (is cropped, not looped) unless it is below the minimum
        assert n <= max(shortest, lo)
        assert n > min(shortest, hi) - hop - 1 or n == lo
    # the bucket of the 0.4-s and 1.2-s files: the minimum length; of the 6-s and 9-s files: the maximum
    assert lengths[bucket[1]] == lo and lengths[bucket[0]] == hi


def test_length_buckets_need_a_larger_maximum(tiny_config):
    with pytest.raises(ConfigError, match="excerpt_max_s"):
        length_buckets(np.array([1.0, 2.0]), tiny_config.replace({"data.excerpt_max_s": 0.0}))
    with pytest.raises(ConfigError, match="length_buckets"):
        length_buckets(np.array([1.0]), bucket_cfg(tiny_config, **{"data.length_buckets": 0}))


def test_bucket_batches_are_full_single_bucket_and_cover_every_draw():
    rng = np.random.default_rng(0)
    bucket_of_file = np.array([0, 0, 0, 1, 1, 2])
    draws = np.repeat(np.arange(6), [3, 2, 2, 4, 1, 1])
    batches = _bucket_batches(draws, bucket_of_file, 3, rng)
    for b in batches:
        assert len(set(bucket_of_file[b])) == 1
    # full batches where the bucket has enough draws; only bucket 2 (one draw) makes a smaller one
    assert sorted(len(b) for b in batches) == [1, 3, 3, 3, 3, 3]  # 7 draws -> 3 batches, 5 -> 2, 1 -> 1
    seen = Counter(np.concatenate(batches).tolist())
    for f, n in Counter(draws.tolist()).items():
        assert seen[f] >= n  # every draw is there (fill-ups may add a few more)


# ------------------------------------------------------------ bucketed datasets
def locate(src: np.ndarray, head: np.ndarray) -> int | None:
    """First position where ``head`` occurs in ``src``."""
    windows = np.lib.stride_tricks.sliding_window_view(src, len(head))
    hits = np.flatnonzero((windows == head).all(axis=1))
    return int(hits[0]) if len(hits) else None


@pytest.fixture
def files(tmp_path):
    """Four prepared WAVs of 0.6, 1.5, 3.0 and 5.0 s, each a distinct, seeded noise."""
    rng = np.random.default_rng(1)
    out = []
    for i, d in enumerate((0.6, 1.5, 3.0, 5.0)):
        out.append(str(write_wav16(tmp_path / f"f{i}.wav", 0.3 * rng.standard_normal(int(d * SR)), SR)))
    return out, np.array([0.6, 1.5, 3.0, 5.0])


def test_bucketed_batches_share_one_length_and_are_slices_of_their_files(files, tiny_config):
    paths, durations = files
    cfg = bucket_cfg(tiny_config)
    bucket, lengths = length_buckets(durations, cfg)
    targets = np.eye(4, dtype=np.float32)
    audio = [sf.read(p, dtype="float32")[0] for p in paths]
    ds = training_dataset(paths, targets, durations, cfg, training=False)
    batches = list(ds)
    assert len(batches) == steps_in_epoch(durations, cfg)
    seen = Counter()
    for x, t in batches:
        x, t = x.numpy(), t.numpy()
        f = t.argmax(axis=1)
        assert len(set(bucket[f])) == 1, "a batch mixes buckets"
        assert x.shape[1] == lengths[bucket[f[0]]]
        for e, i in zip(x, f):
            seen[int(i)] += 1
            src = audio[i]
            looped = np.tile(src, 1 + 2 * len(e) // len(src))  # cropped: a slice of src; looped: of src repeated
            start = locate(looped[:len(src) + len(e)], e[:16])
            assert start is not None and (len(src) < len(e) or start + len(e) <= len(src))
            np.testing.assert_array_equal(looped[start:start + len(e)], e)
    reps = excerpts_per_file(durations, cfg)
    for i in range(4):
        assert seen[i] >= reps[i]
    # at least two lengths occur: the files really go to different buckets
    assert len({x.shape[1] for x, _ in batches}) >= 2


def test_bucketed_dataset_repeats_with_new_orders(files, tiny_config):
    paths, durations = files
    cfg = bucket_cfg(tiny_config)
    steps = steps_in_epoch(durations, cfg)
    ds = training_dataset(paths, np.eye(4, dtype=np.float32), durations, cfg, training=True, repeat=True)
    epochs = [[tuple(t.numpy().argmax(1)) for _, t in ds.take(steps)] for _ in range(1)]
    more = [tuple(t.numpy().argmax(1)) for _, t in ds.skip(steps).take(3 * steps)]
    assert len(epochs[0]) == steps and len(more) == 3 * steps  # an endless stream for model.fit
    assert len(set(map(tuple, [more[i:i + steps] for i in range(0, 3 * steps, steps)]))) > 1


def test_a_model_trains_on_bucketed_batches(files, tiny_config):
    from birdnet_tf.models.build import build_model
    from birdnet_tf.train.optim import make_loss, make_optimizer

    paths, durations = files
    cfg = bucket_cfg(tiny_config, **{"data.excerpt_s": 2.0, "data.excerpt_max_s": 5.0})  # >= the receptive field
    model = build_model(cfg, 4)
    model.compile(optimizer=make_optimizer(cfg, 4), loss=make_loss(cfg))
    steps = steps_in_epoch(durations, cfg)
    ds = training_dataset(paths, np.eye(4, dtype=np.float32), durations, cfg, repeat=True)
    history = model.fit(ds, epochs=2, steps_per_epoch=steps, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


# ----------------------------------------------------------------- windowed reads
def test_read_pcm16_reads_exactly_the_asked_samples(files):
    path = files[0][2]
    x, _ = sf.read(path, dtype="int16")
    offset, n = wav_layout(path)
    assert n == len(x)
    for start, count in ((0, 10), (1000, 4321), (n - 7, 7), (n - 3, 50)):
        got = read_pcm16(tf.constant(path), offset, start, count).numpy()
        np.testing.assert_array_equal(got, x[start:start + count])


def _sparse_wav(path, n_frames: int) -> None:
    """A valid 16-bit mono WAV header for ``n_frames`` samples over a sparse (unallocated) file."""
    data = 2 * n_frames
    header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, SR, 2 * SR, 2, 16) + b"data" + struct.pack("<I", data)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data)


def test_excerpts_of_a_huge_file_read_only_what_they_need(tmp_path):
    """A 1.5-GB recording (sparse on disk) gives 2-s excerpts without the process ever holding it."""
    path = tmp_path / "huge.wav"
    n_frames = 750_000_000  # 9.4 hours at 22,050 Hz
    try:
        _sparse_wav(path, n_frames)
    except OSError:
        pytest.skip("no room for a sparse 1.5-GB file here")
    offset, n = wav_layout(str(path))
    assert n == n_frames
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for _ in range(5):
        x = read_excerpt(tf.constant(str(path)), offset, n_frames, 2 * SR).numpy()
        assert x.shape == (2 * SR,) and np.all(x == 0)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 300, f"peak memory grew by {grown_mib:.0f} MiB reading 2-s excerpts of a 1.5-GB file"


# ------------------------------------------------------------------- metadata rows
def test_training_batches_carry_each_files_metadata_row(files, tiny_config):
    paths, durations = files
    meta = np.arange(4 * 3, dtype=np.float32).reshape(4, 3) + 0.5
    for cfg in (bucket_cfg(tiny_config), tiny_config.replace({**NO_AUGMENT, "data.batch_size": 3})):
        ds = training_dataset(paths, np.eye(4, dtype=np.float32), durations, cfg, training=True, metadata=meta)
        n = 0
        for inputs, t in ds:
            assert set(inputs) == {"waveform", "metadata"}
            np.testing.assert_array_equal(inputs["metadata"].numpy(), meta[t.numpy().argmax(1)])
            assert inputs["waveform"].shape[0] == t.shape[0]
            n += 1
        assert n == steps_in_epoch(durations, cfg)


def test_mixup_mixes_metadata_rows_with_the_same_weights_as_targets(files, tiny_config):
    paths, durations = files
    cfg = bucket_cfg(tiny_config, **{"augment.mixup_prob": 1.0, "augment.mixup_alpha": 1.0,
                                     "data.batch_size": 4, "data.length_buckets": 1})
    ds = training_dataset(paths, np.eye(4, dtype=np.float32), durations, cfg, training=True,
                          metadata=np.eye(4, dtype=np.float32))
    mixed = 0
    for inputs, t in ds:
        np.testing.assert_allclose(inputs["metadata"].numpy(), t.numpy(), atol=1e-6)
        mixed += int(np.sum((t.numpy() > 1e-3) & (t.numpy() < 1 - 1e-3)))
    assert mixed > 0  # mixup really happened


def test_evaluation_windows_carry_each_files_metadata_row(files, tiny_config):
    paths, _ = files
    cfg = tiny_config.replace({"data.excerpt_s": 1.0, "data.eval_hop_s": 0.5})
    meta = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0]], np.float32)
    plain = evaluation_windows(paths, cfg, max_windows=None)
    with_meta = evaluation_windows(paths, cfg, max_windows=None, metadata=meta)
    np.testing.assert_array_equal(plain.file_index, with_meta.file_index)
    waves = np.concatenate([b.numpy() for b in plain.dataset])
    batches = list(with_meta.dataset)
    np.testing.assert_array_equal(np.concatenate([b["waveform"].numpy() for b in batches]), waves)
    np.testing.assert_array_equal(np.concatenate([b["metadata"].numpy() for b in batches]),
                                  meta[with_meta.file_index])
