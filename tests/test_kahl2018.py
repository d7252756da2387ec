"""Tests of the 2018 baseline's CNNs (birdnet_tf.models.kahl2018) through build_model."""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from birdnet_tf.config import Config  # noqa: E402
from birdnet_tf.errors import ConfigError  # noqa: E402
from birdnet_tf.models.build import build_model, load_keras_model, min_samples  # noqa: E402
from birdnet_tf.models.registry import available, get_backbone  # noqa: E402

MODELS = ("kahl2018_baseline", "kahl2018_resnet")


def waves(batch: int, n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((batch, n))).astype(np.float32)


def small(tiny_config, name: str, *settings: str) -> Config:
    """A tiny config with backbone ``name``: 3 groups of 4/8/8 filters on 32 mel bands."""
    return tiny_config.replace([f"model.name={name}", "model.filters=4,8,8", "model.resnet_k=1",
                                "frontend.n_mels=32", "model.temporal_pooling=mean", *settings])


def frames(cfg: Config, n: int) -> int:
    return 1 + (n - cfg.frontend.n_fft) // cfg.frontend.hop_length


# ------------------------------------------------------------ parameter counts
def expected_baseline_params(filters, bn=True):
    """(all, trainable) parameters of the baseline backbone on a 1-channel image, by hand."""
    total = trainable = 0
    cin = 1
    # 3×3 convolution groups, then the final 1×1 convolution of 2 × filters[-1]
    for k, f in [(9, f) for f in filters] + [(1, 2 * filters[-1])]:
        conv = k * cin * f + (0 if bn else f)
        total += conv + (4 * f if bn else 0)
        trainable += conv + (2 * f if bn else 0)
        cin = f
    return total, trainable


def expected_resnet_params(filters, k, n):
    """All parameters of the ResNet backbone (batch norm on), by hand."""
    total = 9 * filters[0] + filters[0]  # stem conv with bias
    cin = filters[0]
    for f in filters:
        w = f * k
        for j in range(n):
            total += 4 * cin  # pre-activation BN
            total += 9 * cin * w + 4 * w  # conv1 (no bias) + BN
            total += 9 * w * w + w  # conv2 with bias
            if j == 0:
                total += cin * w  # 1×1 projection shortcut, no bias
            cin = w
    return total + 4 * cin  # final BN


def backbone_model(name: str, cfg: Config, width: int = 256, height: int = 128) -> keras.Model:
    spec = keras.Input((width, height))
    return keras.Model(spec, get_backbone(name)(spec, cfg))


def test_full_size_parameter_counts_on_256x128():
    cfg = Config().replace(["model.dropout=0"])  # the baseline's filters 16/32/64/128, K = N = 2
    base = backbone_model("kahl2018_baseline", cfg)
    total, trainable = expected_baseline_params((16, 32, 64, 128))
    assert base.count_params() == total == 131_664
    assert sum(int(np.prod(w.shape)) for w in base.trainable_weights) == trainable
    assert base.output_shape == (None, 16, 256)  # 256 frames / 2^4 steps, 2 × 128 units
    res = backbone_model("kahl2018_resnet", cfg)
    assert res.count_params() == expected_resnet_params((16, 32, 64, 128), 2, 2) == 2_794_144
    assert res.output_shape == (None, 16, 256)  # 128 × K units
    assert sum(isinstance(layer, keras.layers.Add) for layer in res.layers) == 4 * 2  # stacks × RESNET_N
    wide = backbone_model("kahl2018_resnet", cfg.replace(["model.resnet_k=1", "model.resnet_n=3"]))
    assert wide.count_params() == expected_resnet_params((16, 32, 64, 128), 1, 3)


# --------------------------------------------------------- through build_model
@pytest.mark.parametrize("name", MODELS)
def test_build_model_output_and_steps(tiny_config, name):
    assert name in available()
    cfg = small(tiny_config, name)
    model = build_model(cfg, 3)
    n = cfg.excerpt_samples
    scores = model.predict(waves(2, n), verbose=0)
    assert scores.shape == (2, 3) and np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    steps = keras.Model(model.input, model.get_layer("steps").output)
    feats = steps(waves(2, n), training=False).numpy()
    units = 16 if name == "kahl2018_baseline" else 8  # 2 × filters[-1]; filters[-1] × resnet_k
    assert feats.shape == (2, frames(cfg, n) // 8, units)  # three 2× max-pools
    # the smallest input is one output step, and it runs
    m = min_samples(model, cfg)
    assert frames(cfg, m) == 8
    assert np.all(np.isfinite(model(waves(1, m), training=False).numpy()))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("setting", ["model.nonlinearity=lrelu", "model.nonlinearity=vlrelu",
                                     "model.nonlinearity=elu", "model.batch_norm=false",
                                     "model.downsample=strided"])
def test_each_option_builds_and_runs(tiny_config, name, setting):
    cfg = small(tiny_config, name, setting)
    model = build_model(cfg, 2)
    n = cfg.excerpt_samples + 777
    out = model(waves(2, n), training=True).numpy()
    assert out.shape == (2, 2) and np.all(np.isfinite(out))
    layers = model.layers
    kinds = {type(layer).__name__ for layer in layers}
    if setting.endswith("lrelu"):
        slopes = {round(float(layer.negative_slope), 2) for layer in layers if type(layer).__name__ == "LeakyReLU"}
        assert slopes == ({0.33} if "vlrelu" in setting else {0.01})
    if setting.endswith("elu") and "lrelu" not in setting:
        assert "ELU" in kinds and "ReLU" not in kinds
    if setting == "model.batch_norm=false":
        # only the frontend's band normalisation remains; every convolution has a bias then
        assert [layer.name for layer in layers if type(layer).__name__ == "BatchNormalization"] == ["band_norm"]
        assert all(layer.use_bias for layer in layers if isinstance(layer, keras.layers.Conv2D)
                   and not layer.name.endswith("shortcut"))
    if setting == "model.downsample=strided":
        assert "MaxPooling2D" not in kinds
        feats = keras.Model(model.input, model.get_layer("steps").output)(waves(1, n)).numpy()
        assert feats.shape[1] == math.ceil(frames(cfg, n) / 8)  # "same" strided convolutions round up


@pytest.mark.parametrize("name", MODELS)
def test_save_and_load_gives_identical_outputs(tmp_path, tiny_config, name):
    cfg = small(tiny_config, name, "model.dropout=0.2")
    model = build_model(cfg, 3)
    # every weight and batch-norm statistic away from its initial value (cheaper than a training step)
    rng = np.random.default_rng(3)
    for v in model.weights:
        shape = tuple(v.shape)
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif v.dtype == "float32":
            v.assign(np.asarray(v) + rng.normal(0, 0.05, shape).astype(np.float32))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = load_keras_model(path)
    for n in (cfg.excerpt_samples, 2 * cfg.excerpt_samples + 100):
        xt = waves(2, n, seed=4)
        expected = model(xt, training=False).numpy()
        np.testing.assert_array_equal(loaded(xt, training=False).numpy(), expected)
        assert expected.std() > 1e-3  # the scores depend on the input (not a constant model)
    fresh = build_model(cfg, 3)  # a model with other weights gives other outputs: the check can fail
    assert not np.allclose(fresh(xt, training=False).numpy(), expected)


# ------------------------------------------------------------------- settings
def test_filters_override_from_the_command_line():
    cfg = Config().replace(["model.filters=16,32,64"])
    assert cfg.model.filters == (16, 32, 64) and all(isinstance(f, int) for f in cfg.model.filters)
    assert Config().replace({"model.filters": [8]}).model.filters == (8,)
    with pytest.raises(ConfigError, match="model.filters|ModelConfig.filters"):
        Config().replace(["model.filters=16,a"])
    assert Config().model.filters == (16, 32, 64, 128)  # the baseline's FILTERS


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("setting, message", [
    ("model.nonlinearity=tanh", "model.nonlinearity"),
    ("model.downsample=avgpool", "model.downsample"),
    ("model.filters=", "model.filters"),
    ("model.resnet_n=0", "resnet_n"),
    ("frontend.n_mels=4", "too few"),  # 4 bands cannot be max-pooled 3 times
])
def test_bad_settings_are_config_errors(tiny_config, name, setting, message):
    with pytest.raises(ConfigError, match=message):
        build_model(small(tiny_config, name, setting), 2)


def test_strided_models_accept_few_bands(tiny_config):
    cfg = small(tiny_config, "kahl2018_baseline", "model.downsample=strided", "frontend.n_mels=4")
    assert build_model(cfg, 2)(waves(1, cfg.excerpt_samples), training=False).shape == (1, 2)
