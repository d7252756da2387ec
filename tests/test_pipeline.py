"""Tests of the tf.data pipelines, waveform augmentations and the config system."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from birdnet_tf.config import (  # noqa: E402
    AugmentConfig,
    Config,
    load_config,
    parse_overrides,
    read_config_json,
    save_config,
)
from birdnet_tf.data.audio import write_wav16  # noqa: E402
from birdnet_tf.data.augment import add_noise, augment_waveform, random_gain, random_shift  # noqa: E402
from birdnet_tf.data.pipeline import (  # noqa: E402
    evaluation_windows,
    excerpts_per_file,
    steps_in_epoch,
    training_dataset,
    wav_num_samples,
    window_starts,
)
from birdnet_tf.errors import AudioDecodeError, ConfigError  # noqa: E402

SR = 22050
NO_AUGMENT = {"augment.gain_prob": 0.0, "augment.shift_prob": 0.0, "augment.noise_prob": 0.0,
              "augment.mask_prob": 0.0}


# -------------------------------------------------------------- window_starts
def test_window_starts_short_file_is_one_window():
    np.testing.assert_array_equal(window_starts(10, 100, 50), [0])
    np.testing.assert_array_equal(window_starts(100, 100, 50), [0])  # exactly one window
    np.testing.assert_array_equal(window_starts(0, 100, 50), [0])


def test_window_starts_exact_multiple_has_no_extra_window():
    # 10 samples, window 4, hop 2: 0, 2, 4, 6 and 6 + 4 == 10 covers the end
    np.testing.assert_array_equal(window_starts(10, 4, 2), [0, 2, 4, 6])
    np.testing.assert_array_equal(window_starts(12, 4, 4), [0, 4, 8])


def test_window_starts_tail_is_aligned_to_the_end():
    np.testing.assert_array_equal(window_starts(11, 4, 4), [0, 4, 7])
    s = window_starts(SR * 7 + 123, SR * 2, SR)
    assert s[-1] == SR * 7 + 123 - SR * 2
    assert np.all(np.diff(s) > 0) and np.all(np.diff(s) <= SR)


def test_window_starts_max_windows_evenly_spread():
    full = window_starts(1000, 10, 10)  # 100 windows: 0, 10, ..., 990
    assert len(full) == 100
    capped = window_starts(1000, 10, 10, max_windows=5)
    assert len(capped) == 5
    assert capped[0] == 0 and capped[-1] == 990  # first and last kept
    gaps = np.diff(capped)
    assert gaps.max() - gaps.min() <= 10  # evenly spread, up to one hop of rounding
    assert set(capped) <= set(full)
    np.testing.assert_array_equal(window_starts(1000, 10, 10, max_windows=200), full)  # cap above count
    np.testing.assert_array_equal(window_starts(1000, 10, 10, max_windows=None), full)


def test_window_starts_hop_zero_does_not_hang():
    assert len(window_starts(100, 10, 0)) == 91


# ---------------------------------------------------------------- datasets
def ramp(n: int) -> np.ndarray:
    """A signal whose int16 samples are all distinct and non-zero (so positions can be read back)."""
    assert n < 30000
    return (np.arange(1, n + 1) / 32768.0).astype(np.float64)


def as_decoded(x: np.ndarray) -> np.ndarray:
    """What write_wav16 + decode_wav give back for ``x``."""
    return (np.rint(x * 32767.0) / 32768.0).astype(np.float32)


@pytest.fixture
def wavs(tmp_path):
    """Prepared WAVs at SR: a 0.5-s ramp (shorter than the 2-s excerpt) and a 3.1-s tone."""
    short = write_wav16(tmp_path / "short.wav", ramp(SR // 2), SR)
    t = np.arange(int(3.1 * SR)) / SR
    long = write_wav16(tmp_path / "long.wav", 0.5 * np.sin(2 * np.pi * 440 * t) + 0.01, SR)
    return short, long


def test_training_dataset_shapes(wavs, tiny_config):
    cfg = tiny_config.replace({"data.batch_size": 3, "data.max_excerpts_per_file": 4,
                               "data.excerpts_per_file_s": 1.0})
    paths = [str(p) for p in wavs]
    targets = np.array([[1, 0, 0, 0], [0, 0.5, 1, 0]], np.float32)
    durations = np.array([0.5, 3.1])
    reps = excerpts_per_file(durations, cfg)
    np.testing.assert_array_equal(reps, [1, 4])
    ds = training_dataset(paths, targets, durations, cfg)
    batches = list(ds)
    assert len(batches) == steps_in_epoch(durations, cfg) == 2  # 5 excerpts in batches of 3
    assert sorted(tuple(b[0].shape) for b in batches) == [(2, cfg.excerpt_samples), (3, cfg.excerpt_samples)]
    assert all(tuple(b[1].shape[1:]) == (4,) for b in batches)
    assert all(b[0].dtype == tf.float32 and b[1].dtype == tf.float32 for b in batches)
    seen = np.concatenate([b[1].numpy() for b in batches])
    # every file appears as often as excerpts_per_file says, with its own targets
    assert sorted(map(tuple, seen.tolist())) == sorted([tuple(targets[0])] + [tuple(targets[1])] * 4)
    assert ds.element_spec[0].shape.as_list() == [None, cfg.excerpt_samples]


def test_training_dataset_repeats_when_asked(wavs, tiny_config):
    paths = [str(p) for p in wavs]
    ds = training_dataset(paths, np.eye(2, dtype=np.float32), np.array([0.5, 3.1]), tiny_config, repeat=True)
    assert len(list(ds.take(5))) == 5  # more batches than one pass holds


def test_short_file_is_looped_not_zero_padded(wavs, tiny_config):
    cfg = tiny_config.replace({**NO_AUGMENT, "data.batch_size": 1, "data.min_excerpts_per_file": 4,
                               "data.max_excerpts_per_file": 4})
    short = str(wavs[0])
    x = as_decoded(ramp(SR // 2))
    n = cfg.excerpt_samples
    assert n > 3 * len(x)
    for xb, _ in training_dataset([short], np.ones((1, 1), np.float32), np.array([0.5]), cfg, training=False):
        e = xb.numpy()[0]
        assert e.shape == (n,)
        assert np.all(e != 0), "a short file must be looped, not padded with zeros"
        start = int(np.argmin(np.abs(x - e[0])))
        assert x[start] == e[0]
        np.testing.assert_array_equal(e, np.tile(x, 6)[start:start + n])


def test_training_excerpts_are_slices_of_long_files(wavs, tiny_config):
    cfg = tiny_config.replace({**NO_AUGMENT, "data.batch_size": 2, "data.min_excerpts_per_file": 2,
                               "data.max_excerpts_per_file": 2})
    x, _ = sf.read(wavs[1], dtype="float32")
    n = cfg.excerpt_samples
    for xb, _ in training_dataset([str(wavs[1])], np.ones((1, 1), np.float32), np.array([3.1]), cfg,
                                  training=False):
        for e in xb.numpy():
            # locate the excerpt: it must be one contiguous, in-range slice of the file
            hits = [s for s in range(len(x) - n + 1) if x[s] == e[0] and x[s + 1] == e[1]
                    and np.array_equal(x[s:s + n], e)]
            assert hits, "excerpt is not a slice of the file"


def test_training_augmentation_changes_audio_but_not_shape(wavs, tiny_config):
    cfg = tiny_config.replace({"augment.gain_prob": 1.0, "augment.noise_prob": 1.0, "augment.shift_prob": 1.0,
                               "data.batch_size": 2, "data.max_excerpts_per_file": 1})
    tf.random.set_seed(0)
    paths = [str(wavs[0])]
    plain = next(iter(training_dataset(paths, np.ones((1, 1), np.float32), np.array([0.5]),
                                       cfg.replace(NO_AUGMENT), training=False)))[0].numpy()
    aug = next(iter(training_dataset(paths, np.ones((1, 1), np.float32), np.array([0.5]), cfg)))[0].numpy()
    assert aug.shape == plain.shape
    # looped ramp values are all multiples of 1/32768; added noise breaks that
    assert not np.allclose(aug * 32768, np.rint(aug * 32768))


def test_evaluation_windows_match_numpy_slicing(tmp_path, tiny_config):
    cfg = tiny_config.replace({"data.excerpt_s": 1.0, "data.eval_hop_s": 0.5})
    rng = np.random.default_rng(0)
    signals = [0.3 * rng.standard_normal(n) for n in (int(3.3 * SR), int(0.4 * SR), int(1.0 * SR), int(2.0 * SR))]
    paths = [str(write_wav16(tmp_path / f"f{i}.wav", s, SR)) for i, s in enumerate(signals)]
    w = evaluation_windows(paths, cfg, max_windows=None, batch_size=3)
    window, hop = SR, SR // 2
    expected_starts = [window_starts(len(s), window, hop) for s in signals]
    np.testing.assert_array_equal(w.file_index, np.repeat(np.arange(4), [len(s) for s in expected_starts]))
    np.testing.assert_allclose(w.start_s, np.concatenate(expected_starts) / SR)
    got = np.concatenate([b.numpy() for b in w.dataset])
    assert got.shape == (len(w.file_index), window)
    expect = []
    for p, starts in zip(paths, expected_starts):
        x, rate = sf.read(p, dtype="float32")
        assert rate == SR
        for s in starts:
            seg = x[s:s + window]
            expect.append(seg if len(seg) == window else np.resize(x, window))  # short files loop
    np.testing.assert_array_equal(got, np.stack(expect))
    # deterministic: a second pass gives the same windows
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in w.dataset]), got)
    # the 3.3-s file has windows at 0, 0.5, ..., 2.0 and one aligned to its end
    np.testing.assert_allclose(w.start_s[w.file_index == 0], [0, 0.5, 1.0, 1.5, 2.0, 2.3], atol=1e-4)


def test_evaluation_windows_defaults_and_cap(tmp_path, tiny_config):
    cfg = tiny_config.replace({"data.excerpt_s": 1.0, "data.eval_hop_s": 0.5, "data.max_eval_windows": 3})
    path = str(write_wav16(tmp_path / "a.wav", 0.1 * np.ones(int(4 * SR)), SR))
    assert len(evaluation_windows([path], cfg).file_index) == 3  # config cap
    np.testing.assert_allclose(evaluation_windows([path], cfg, max_windows=None).start_s,
                               [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    w = evaluation_windows([path], cfg, window_s=2.0, hop_s=1.0, max_windows=None)
    np.testing.assert_allclose(w.start_s, [0.0, 1.0, 2.0])
    assert next(iter(w.dataset)).shape[1] == 2 * SR


def test_evaluation_windows_empty_list(tiny_config):
    w = evaluation_windows([], tiny_config)
    assert len(w.file_index) == 0 and len(w.start_s) == 0


def test_wav_num_samples_errors(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....nope")
    with pytest.raises(AudioDecodeError, match="bad.wav"):
        wav_num_samples(str(bad))
    good = write_wav16(tmp_path / "g.wav", np.zeros(1234), SR)
    assert wav_num_samples(str(good)) == 1234


# ------------------------------------------------------------ augmentations
def _x():
    return tf.constant((0.2 * np.sin(np.arange(4000) / 7.0)).astype(np.float32))


def test_augmentations_are_identity_at_prob_zero():
    x = _x()
    for y in (random_gain(x, 0.0, 6.0), random_gain(x, 1.0, 0.0), random_shift(x, 0.0),
              add_noise(x, 0.0, (3.0, 30.0))):
        np.testing.assert_array_equal(y.numpy(), x.numpy())
    none = AugmentConfig(gain_prob=0.0, shift_prob=0.0, noise_prob=0.0)
    np.testing.assert_array_equal(augment_waveform(x, none, training=True).numpy(), x.numpy())
    everything = AugmentConfig(gain_prob=1.0, shift_prob=1.0, noise_prob=1.0)
    np.testing.assert_array_equal(augment_waveform(x, everything, training=False).numpy(), x.numpy())


def test_augmentations_change_the_signal_at_prob_one():
    tf.random.set_seed(3)
    x = _x()
    g = random_gain(x, 1.0, 6.0).numpy()
    ratio = g / x.numpy()
    assert np.allclose(ratio[np.abs(x.numpy()) > 1e-3], ratio[np.abs(x.numpy()) > 1e-3][0], rtol=1e-4)
    assert 10 ** (-6 / 20) - 1e-6 <= abs(ratio[1]) <= 10 ** (6 / 20) + 1e-6 and ratio[1] != 1.0
    shifts = [random_shift(x, 1.0).numpy() for _ in range(3)]
    assert any(not np.array_equal(s, x.numpy()) for s in shifts)
    for s in shifts:  # a circular shift keeps the samples
        np.testing.assert_array_equal(np.sort(s), np.sort(x.numpy()))
    n = add_noise(x, 1.0, (10.0, 10.0)).numpy() - x.numpy()
    snr = 10 * np.log10(np.mean(x.numpy() ** 2) / np.mean(n**2))
    assert abs(snr - 10.0) < 0.5
    y = augment_waveform(x, AugmentConfig(gain_prob=1.0, shift_prob=1.0, noise_prob=1.0), training=True)
    assert y.shape == x.shape and not np.array_equal(y.numpy(), x.numpy())


def test_add_noise_to_silence():
    tf.random.set_seed(4)
    y = add_noise(tf.zeros(1000), 1.0, (0.0, 0.0)).numpy()
    assert np.all(np.isfinite(y)) and 0 < np.sqrt(np.mean(y**2)) < 1e-3


# ------------------------------------------------------------------- config
def test_unknown_override_key_is_explained():
    with pytest.raises(ConfigError) as e:
        Config().replace(["train.epoch=3"])
    msg = str(e.value)
    assert "train.epoch" in msg and "epochs" in msg  # names the key and lists the valid ones
    with pytest.raises(ConfigError, match="unknown section 'trian'.*train"):
        Config().replace({"trian.epochs": 3})
    with pytest.raises(ConfigError, match="section.field"):
        Config().replace({"epochs": 3})
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_overrides(["train.epochs"])


def test_override_type_coercion_from_strings():
    cfg = Config().replace(["train.epochs=3", "data.val_fraction=0.25", "train.mixed_precision=false",
                            "frontend.band_norm=Yes", "augment.noise_snr_db=5,20", "model.name=ismir2016",
                            "data.excerpt_s=3"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.data.val_fraction == 0.25
    assert cfg.train.mixed_precision is False and cfg.frontend.band_norm is True
    assert cfg.augment.noise_snr_db == (5.0, 20.0)
    assert cfg.data.excerpt_s == 3.0 and isinstance(cfg.data.excerpt_s, float)
    assert cfg.excerpt_samples == 3 * cfg.audio.sample_rate_hz
    assert Config().replace(["augment.noise_snr_db=(1, 2)"]).augment.noise_snr_db == (1.0, 2.0)
    assert Config().replace({"train.epochs": 4.0}).train.epochs == 4


@pytest.mark.parametrize("item", ["train.epochs=three", "train.epochs=1.5", "train.mixed_precision=maybe",
                                  "data.val_fraction=", "augment.noise_snr_db=a,b"])
def test_override_bad_values(item):
    key = item.split("=")[0].split(".")[1]
    with pytest.raises(ConfigError, match=key):
        Config().replace([item])


def test_config_is_frozen_and_replace_copies():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3  # type: ignore[misc]
    other = cfg.replace({"train.epochs": 3})
    assert cfg.train.epochs == Config().train.epochs != 3 and other.train.epochs == 3
    assert cfg.replace({}) is cfg


def test_config_json_round_trip(tmp_path):
    cfg = Config().replace({"train.epochs": 7, "augment.noise_snr_db": "1,9"})
    save_config(cfg, tmp_path / "c.json", data_dir="/x")
    back, extra = read_config_json(tmp_path / "c.json")
    assert back == cfg
    assert extra["data_dir"] == "/x" and "birdnet_tf_version" in extra


def test_load_config_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("description: test\ntrain:\n  epochs: 5\nmodel:\n  width: 0.5\n")
    cfg = load_config(recipe, ["train.epochs=6"])
    assert cfg.train.epochs == 6 and cfg.model.width == 0.5 and cfg.data == Config().data
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 5\n")
    with pytest.raises(ConfigError, match="epoch"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(tmp_path / "broken.yaml")
    assert load_config(None) == Config()


def test_default_recipe_equals_defaults():
    path = Path(__file__).resolve().parents[1] / "pipelines" / "default.yaml"
    if not path.is_file():
        pytest.skip("pipelines/default.yaml does not exist (yet)")
    assert load_config(path) == Config()


@pytest.mark.parametrize("text", ["- train\n- epochs\n", "just some text\n"])
def test_recipe_that_is_not_a_mapping_is_a_config_error(tmp_path, text):
    recipe = tmp_path / "odd.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match="odd.yaml"):
        load_config(recipe)


@pytest.mark.parametrize("value", ["5", "1,2,3"])
def test_pair_setting_needs_two_values(value):
    with pytest.raises(ConfigError, match="noise_snr_db"):
        Config().replace([f"augment.noise_snr_db={value}"])


def test_predicting_evaluation_windows_raises_no_false_alarm(tmp_path, tiny_config):
    """The window dataset states its length, so Keras does not warn 'Your input ran out of data;
    interrupting training' at every validation (it did while the length was unknown)."""
    import warnings

    from birdnet_tf.models.build import build_model

    paths = [str(write_wav16(tmp_path / f"{i}.wav", 0.1 * np.ones(int(3 * SR)), SR)) for i in range(2)]
    windows = evaluation_windows(paths, tiny_config)
    model = build_model(tiny_config, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = model.predict(windows.dataset, verbose=0)
    assert len(scores) == len(windows.file_index)
    assert windows.dataset.cardinality().numpy() == 1  # 4 windows in one batch of 4
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def test_coloured_noise_has_its_spectral_slope_and_snr():
    from birdnet_tf.data.augment import coloured_noise

    for beta in (0.0, 1.0, 2.0):  # white, pink, brown: log power falls with slope -beta in log frequency
        y = coloured_noise(tf.constant([4, 22050]), tf.fill([4, 1], beta)).numpy()
        np.testing.assert_allclose(y.std(axis=-1), 1.0, rtol=1e-3)
        power = (np.abs(np.fft.rfft(y, axis=-1)) ** 2).mean(axis=0)
        f = np.arange(len(power))
        band = (f > 50) & (f < 5000)
        assert abs(np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0] + beta) < 0.1
    x = tf.random.normal([3, 22050]) * 0.1
    n = (add_noise(x, 1.0, (6.0, 6.0), (2.0, 2.0)) - x).numpy()
    np.testing.assert_allclose(10 * np.log10((x.numpy() ** 2).mean(-1) / (n ** 2).mean(-1)), 6.0, atol=1e-3)
