"""OFAI 2018 augmentations: mixup, time stretch, frequency shift, random filters (birdnet_tf.data.spec_augment)."""

from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from birdnet_tf.config import AugmentConfig, Config  # noqa: E402
from birdnet_tf.data.pipeline import training_dataset  # noqa: E402
from birdnet_tf.data.spec_augment import (  # noqa: E402
    SpecTransforms,
    draw_filters,
    draw_mixup,
    draw_shift_bins,
    draw_stretch_factors,
    freq_shift,
    mixup,
    random_filters,
    time_stretch,
)
from birdnet_tf.models.build import build_model  # noqa: E402

from conftest import run_cli, tiny_set_args  # noqa: E402

B, T, F = 8, 40, 32


def _spec(seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(B, T, F)).astype(np.float32))


SPEC_FUNCS = [
    (time_stretch, 0.3),
    (freq_shift, 4),
    (random_filters, 10.0),
]


@pytest.mark.parametrize("func,param", SPEC_FUNCS, ids=["stretch", "shift", "filters"])
def test_identity_at_probability_zero_and_changes_at_one(func, param):
    x = _spec()
    assert func(x, 0.0, param) is x
    assert func(x, 0.0, param, seed=3) is x
    y = func(x, 1.0, param, seed=3)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not np.allclose(y.numpy(), x.numpy())
    # the same seed gives the same result; the global-state version runs too
    np.testing.assert_array_equal(func(x, 1.0, param, seed=3).numpy(), y.numpy())
    assert func(x, 1.0, param).shape == x.shape


def test_time_stretch_moves_a_moving_tone_as_expected():
    # a tone rising one band per frame: its band in frame t is t
    frames = bands = 41
    spec = np.zeros((B, frames, bands), np.float32)
    spec[:, np.arange(frames), np.arange(bands)] = 1.0
    y = time_stretch(tf.constant(spec), 1.0, 0.5, seed=11).numpy()
    f = draw_stretch_factors(B, 1.0, 0.5, seed=11).numpy()
    assert np.all((f >= 1 / 1.5 - 1e-6) & (f <= 1.5 + 1e-6)) and np.ptp(f) > 0.05
    c = (frames - 1) / 2
    for i in range(B):
        for t in range(frames):
            src = np.clip(c + (t - c) / f[i], 0, frames - 1)
            # linear interpolation: the peak is within one band of the source position, mass sums to 1
            assert abs(np.argmax(y[i, t]) - src) <= 0.5 + 1e-4
            assert y[i, t].sum() == pytest.approx(1.0, abs=1e-5)
        # the middle frame stays, the edges move by the stretch
        assert np.argmax(y[i, int(c)]) == int(c)
        if f[i] > 1.05:  # slowed down: the last frame shows an earlier moment
            assert np.argmax(y[i, -1]) < frames - 1
        if f[i] < 0.95:  # sped up: the edge frames repeat the last one
            assert np.argmax(y[i, -1]) == frames - 1 and np.argmax(y[i, -2]) == frames - 1


def test_freq_shift_moves_a_band_peak_by_the_drawn_shift():
    spec = np.zeros((B, T, F), np.float32)
    spec[:, :, 15] = 1.0
    y = freq_shift(tf.constant(spec), 1.0, 4, seed=5).numpy()
    d = draw_shift_bins(B, 1.0, 4, seed=5).numpy()
    assert np.all(np.abs(d) <= 4) and len(set(d.tolist())) > 1
    np.testing.assert_array_equal(np.argmax(y, axis=2), np.broadcast_to((15 + d)[:, None], (B, T)))
    # edge bands are repeated: a ramp shifted down keeps its top value at the top
    ramp = np.broadcast_to(np.arange(F, dtype=np.float32), (B, T, F))
    r = freq_shift(tf.constant(ramp), 1.0, 4, seed=5).numpy()
    for i in range(B):
        np.testing.assert_array_equal(r[i, 0], np.clip(np.arange(F) - d[i], 0, F - 1))


def test_filters_stay_within_max_db_and_are_constant_in_time():
    x = tf.zeros((64, T, F))
    y = random_filters(x, 1.0, 10.0, seed=2).numpy()
    assert np.abs(y).max() <= 10.0 + 1e-4
    assert np.abs(y).max() > 5.0  # not trivially small
    np.testing.assert_allclose(y, np.broadcast_to(y[:, :1], y.shape))  # the same gain in every frame
    np.testing.assert_allclose(y[:, 0], draw_filters(64, F, 1.0, 10.0, seed=2).numpy(), atol=1e-6)
    # smooth: neighbouring bands differ by far less than the range
    assert np.abs(np.diff(y[:, 0], axis=1)).max() < 0.25 * 20.0
    scaled = random_filters(x, 1.0, 10.0, seed=2, units_per_db=0.5).numpy()
    np.testing.assert_allclose(scaled, 0.5 * y, atol=1e-5)


def test_mixup_targets_are_convex_combinations():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(B, 100)).astype(np.float32))
    t = tf.constant(np.eye(4, dtype=np.float32)[rng.integers(0, 4, B)])
    x0, t0 = mixup(x, t, 0.0, 0.3)
    assert x0 is x and t0 is t
    x1, t1 = mixup(x, t, 1.0, 0.3, seed=4)
    assert x1.shape == x.shape and t1.shape == t.shape and x1.dtype == x.dtype
    perm, w = (v.numpy() for v in draw_mixup(B, 1.0, 0.3, seed=4))
    assert sorted(perm.tolist()) == list(range(B)) and np.all(perm != np.arange(B))  # never mixed with itself
    assert np.all((w >= 0.5) & (w <= 1.0))
    np.testing.assert_allclose(t1.numpy().sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(t1.numpy(), w[:, None] * t.numpy() + (1 - w[:, None]) * t.numpy()[perm], atol=1e-6)
    np.testing.assert_allclose(x1.numpy(), w[:, None] * x.numpy() + (1 - w[:, None]) * x.numpy()[perm], atol=1e-5)
    assert not np.allclose(x1.numpy(), x.numpy())
    # at probability 0.5 some rows stay as they were
    _, w_half = draw_mixup(64, 0.5, 0.3, seed=1)
    assert 0 < int(np.sum(w_half.numpy() == 1.0)) < 64


def test_layer_is_identity_in_inference_and_round_trips_config():
    layer = SpecTransforms(1.0, 0.3, 1.0, 4, 1.0, 10.0)
    x = _spec()
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())
    assert not np.allclose(layer(x, training=True).numpy(), x.numpy())
    clone = SpecTransforms.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def _layer_classes(model):
    return {type(layer).__name__ for layer in model.layers}


def test_default_model_has_no_spec_transforms_but_enabled_one_has():
    aug = AugmentConfig()
    assert aug.mixup_prob == aug.stretch_prob == aug.freq_shift_prob == aug.filter_prob == 0.0  # all off by default
    small = ["model.width=0.25", "model.dense_units=8"]
    assert "SpecTransforms" not in _layer_classes(build_model(Config().replace(small), 3))
    model = build_model(Config().replace([*small, "augment.freq_shift_prob=0.5"]), 3)
    assert "SpecTransforms" in _layer_classes(model)
    assert model.get_layer("spec_transforms").freq_shift_prob == 0.5


def test_mixup_in_training_dataset(tmp_path):
    import soundfile as sf

    sr = 22050
    paths = []
    for i in range(2):
        p = tmp_path / f"{i}.wav"
        sf.write(p, np.full(sr, 0.1 * (i + 1), np.float32), sr, subtype="PCM_16")
        paths.append(str(p))
    base = Config().replace(["data.batch_size=2", "data.excerpt_s=0.5", "data.max_excerpts_per_file=1",
                             "augment.gain_prob=0", "augment.noise_prob=0"])
    targets = np.eye(2, dtype=np.float32)
    xb, tb = next(iter(training_dataset(paths, targets, np.array([1.0, 1.0]), base)))
    # default: no mixing, each waveform is one file and its target one-hot
    np.testing.assert_allclose(np.sort(xb.numpy().mean(axis=1)), [0.1, 0.2], atol=2e-3)
    np.testing.assert_allclose(xb.numpy().mean(axis=1), tb.numpy() @ np.array([0.1, 0.2]), atol=2e-3)
    assert set(tb.numpy().ravel().tolist()) == {0.0, 1.0}
    mixed = base.replace(["augment.mixup_prob=1.0"])
    batches = list(training_dataset(paths, targets, np.array([1.0, 1.0]), mixed, repeat=True).take(3))
    t = np.concatenate([tb.numpy() for _, tb in batches])
    levels = np.concatenate([xb.numpy().mean(axis=1) for xb, _ in batches])
    np.testing.assert_allclose(t.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(t.max(axis=1) >= 0.5 - 1e-6)  # each example stays the larger part of its mix
    # each waveform's level is the same convex combination as its targets
    np.testing.assert_allclose(levels, t @ np.array([0.1, 0.2]), atol=2e-3)
    assert not set(t.ravel().tolist()) <= {0.0, 1.0}  # mixed (exact 0/1 weights from Beta(0.3, 0.3) are rare)


def test_tiny_training_with_all_four_enabled(trained_synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDNET_TF_CACHE", str(tmp_path / "cache"))
    extra = ["augment.mixup_prob=0.5", "augment.stretch_prob=0.5", "augment.freq_shift_prob=0.5",
             "augment.filter_prob=0.5"]
    rc, out, err = run_cli(["train", "--data", str(trained_synthetic.prepared), "--out", str(tmp_path / "run"),
                            *tiny_set_args(extra)])
    assert rc == 0, f"{out[-3000:]}\n{err[-3000:]}"
    from birdnet_tf.models.build import load_keras_model

    model = load_keras_model(tmp_path / "run" / "best.keras")  # the layer saves and loads
    layer = model.get_layer("spec_transforms")
    assert (layer.stretch_prob, layer.freq_shift_prob, layer.filter_prob) == (0.5, 0.5, 0.5)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["augment"]["mixup_prob"] == 0.5 and saved["augment"]["filter_max_db"] == 10.0
