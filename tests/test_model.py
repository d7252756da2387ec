"""Tests of the model: build_model contract, min_samples, temporal pooling, registry, save/load."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from birdnet_tf.config import Config  # noqa: E402
from birdnet_tf.errors import BirdnetError, ConfigError  # noqa: E402
from birdnet_tf.models.build import build_model, load_keras_model, min_samples  # noqa: E402
from birdnet_tf.models.layers import TemporalPooling  # noqa: E402
from birdnet_tf.models.registry import available, get_backbone  # noqa: E402


def waves(batch: int, n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((batch, n))).astype(np.float32)


@pytest.fixture(scope="module")
def default_model():
    cfg = Config()
    return cfg, build_model(cfg, 5)


def test_default_model_scores(default_model):
    cfg, model = default_model
    for n in (cfg.excerpt_samples, 2 * cfg.excerpt_samples + 1234):
        scores = model.predict(waves(3, n), verbose=0)
        assert scores.shape == (3, 5)
        assert scores.dtype == np.float32
        assert np.all(np.isfinite(scores)) and scores.min() >= 0 and scores.max() <= 1
    assert model.output_shape == (None, 5)
    assert model.input_shape == (None, None)
    assert model.get_layer("frame_logits").output.shape[-1] == 5


def test_inference_is_deterministic(default_model):
    cfg, model = default_model
    x = waves(2, cfg.excerpt_samples, seed=1)
    np.testing.assert_array_equal(model(x, training=False).numpy(), model(x, training=False).numpy())


def test_min_samples_is_tight(default_model):
    cfg, model = default_model
    n = min_samples(model, cfg)
    hop, n_fft = cfg.frontend.hop_length, cfg.frontend.n_fft
    assert (n - n_fft) % hop == 0  # a whole number of frames
    # ~103 frames of receptive field: ~1.5 s at 70 frames/s
    assert 1.3 < n / cfg.audio.sample_rate_hz < 1.7
    out = model(waves(1, n), training=False).numpy()
    assert out.shape == (1, 5) and np.all(np.isfinite(out))
    # one sample fewer is one frame fewer: no output step left
    with pytest.raises(ValueError):
        model.compute_output_shape((1, n - 1))
    with pytest.raises(ValueError):
        model(waves(1, n - 1), training=False)
    # the default excerpt is well above one receptive field
    assert cfg.excerpt_samples >= n


def test_min_samples_tiny_config(tiny_config):
    model = build_model(tiny_config, 3)
    n = min_samples(model, tiny_config)
    assert n <= tiny_config.excerpt_samples
    assert model(waves(2, n), training=False).shape == (2, 3)


def test_softmax_output_sums_to_one():
    cfg = Config().replace({"model.output_activation": "softmax", "model.width": 0.25, "model.dense_units": 8})
    model = build_model(cfg, 4)
    s = model(waves(2, cfg.excerpt_samples), training=False).numpy()
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-5)


def test_build_model_rejects_bad_settings():
    with pytest.raises(ConfigError, match="output_activation"):
        build_model(Config().replace({"model.output_activation": "relu", "model.width": 0.25}), 3)
    with pytest.raises(ValueError, match="class"):
        build_model(Config(), 0)
    with pytest.raises(ValueError, match="temporal pooling"):
        build_model(Config().replace({"model.temporal_pooling": "median", "model.width": 0.25}), 3)


# --------------------------------------------------------------- pooling
X = np.array([[[1.0, 2.0], [3.0, 0.0], [5.0, -2.0]]], np.float32)  # (batch 1, steps 3, classes 2)


def test_temporal_pooling_by_hand():
    np.testing.assert_allclose(TemporalPooling("max")(X).numpy(), [[5.0, 2.0]])
    np.testing.assert_allclose(TemporalPooling("mean")(X).numpy(), [[3.0, 0.0]])
    lme1 = np.log(np.mean(np.exp(X[0]), axis=0))
    np.testing.assert_allclose(TemporalPooling("logmeanexp")(X).numpy(), [lme1], rtol=1e-6)
    np.testing.assert_allclose(TemporalPooling("logmeanexp:1")(X).numpy(), [lme1], rtol=1e-6)
    lme3 = np.log(np.mean(np.exp(3 * X[0]), axis=0)) / 3
    np.testing.assert_allclose(TemporalPooling("logmeanexp:3")(X).numpy(), [lme3], rtol=1e-6)


def test_logmeanexp_between_mean_and_max_and_limits():
    x = np.random.default_rng(0).standard_normal((4, 10, 3)).astype(np.float32)
    mean, mx = x.mean(axis=1), x.max(axis=1)
    for a in (0.1, 1.0, 5.0):
        lme = TemporalPooling(f"logmeanexp:{a}")(x).numpy()
        assert np.all(lme >= mean - 1e-5) and np.all(lme <= mx + 1e-5)
    # a -> 0: mean (+ a·var/2); a -> inf: max (float32 limits how small a can usefully be)
    np.testing.assert_allclose(TemporalPooling("logmeanexp:0.01")(x).numpy(), mean, atol=0.02)
    np.testing.assert_allclose(TemporalPooling("logmeanexp:1000")(x).numpy(), mx, atol=1e-2)


def test_logmeanexp_stable_for_large_values():
    x = np.array([[[1000.0, -1000.0], [1000.0, -1000.0], [990.0, -2000.0]]], np.float32)
    out = TemporalPooling("logmeanexp:1")(x).numpy()
    assert np.all(np.isfinite(out))
    expected0 = 1000.0 + np.log((2 + np.exp(-10.0)) / 3)
    expected1 = -1000.0 + np.log((2 + np.exp(-1000.0)) / 3)
    np.testing.assert_allclose(out, [[expected0, expected1]], rtol=1e-6)
    assert x[0, :, 0].mean() <= out[0, 0] <= x[0, :, 0].max()


def test_temporal_pooling_single_step_is_identity():
    x = np.array([[[0.3, -4.0]]], np.float32)
    for m in ("max", "mean", "logmeanexp:2"):
        np.testing.assert_allclose(TemporalPooling(m)(x).numpy(), x[:, 0], rtol=1e-6)


def test_temporal_pooling_rejects_bad_methods():
    with pytest.raises(ValueError, match="unknown temporal pooling"):
        TemporalPooling("median")
    with pytest.raises(ValueError, match="a > 0"):
        TemporalPooling("logmeanexp:0")


def test_temporal_pooling_config_round_trip():
    layer = TemporalPooling("logmeanexp:2.5", name="p")
    clone = TemporalPooling.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_allclose(clone(X).numpy(), layer(X).numpy())


# -------------------------------------------------------------- registry
def test_registry_unknown_model_lists_names():
    assert "ismir2016" in available()
    with pytest.raises(ConfigError) as e:
        get_backbone("resnet9000")
    assert "resnet9000" in str(e.value) and "ismir2016" in str(e.value)
    with pytest.raises(ConfigError, match="ismir2016"):
        build_model(Config().replace({"model.name": "nope"}), 3)


def test_registry_refuses_duplicate_names():
    from birdnet_tf.models.registry import register

    with pytest.raises(ValueError, match="twice"):
        register("ismir2016")(lambda spec, cfg: spec)


# ------------------------------------------------------------ save / load
def test_save_and_load_keras_model_gives_identical_predictions(tmp_path, tiny_config):
    model = build_model(tiny_config, 3)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    # one training step so batch-norm statistics and weights differ from their init
    x = waves(4, tiny_config.excerpt_samples, seed=3)
    model.fit(x, np.eye(3, dtype=np.float32)[[0, 1, 2, 0]], epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_keras_model(path)
    for n in (tiny_config.excerpt_samples, 3 * tiny_config.excerpt_samples):
        xt = waves(2, n, seed=4)
        np.testing.assert_array_equal(loaded.predict(xt, verbose=0), model.predict(xt, verbose=0))
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


def test_load_keras_model_errors(tmp_path):
    with pytest.raises(BirdnetError, match="does not exist"):
        load_keras_model(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(BirdnetError, match="bad.keras"):
        load_keras_model(bad)
