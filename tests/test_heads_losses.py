"""OFAI heads and losses: noisy-or and attention pooling, ismir2016 knobs, cce / bce / ce_bgtopk."""

from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from birdnet_tf.config import Config  # noqa: E402
from birdnet_tf.errors import ConfigError  # noqa: E402
from birdnet_tf.models.layers import (  # noqa: E402
    TemporalPooling, attention_pool, noisy_or_logits, pool_packed, pool_steps)
from conftest import TINY_SETTINGS, run_cli, tiny_set_args  # noqa: E402

L3 = float(np.log(3.0))  # σ(ln 3) = 0.75, σ(0) = 0.5, σ(-ln 3) = 0.25


def _noisy_or_reference(x: np.ndarray) -> np.ndarray:
    """float64 ``logit(1 - Π(1 - σ(x_t)))`` over axis 1, straight from the definition (moderate x only)."""
    x = x.astype(np.float64)
    rest = np.prod(1.0 / (1.0 + np.exp(x)), axis=1)  # Π (1 - σ(x_t))
    return np.log((1.0 - rest) / rest)


# ------------------------------------------------------------------ noisy-or
def test_noisy_or_by_hand():
    # (batch 1, steps 2, classes 3); columns are classes
    x = np.array([[[0.0, L3, -L3],
                   [0.0, -L3, -L3]]], np.float32)
    # class 0: 1 - 0.5·0.5 = 0.75            → logit ln(0.75/0.25) = ln 3
    # class 1: 1 - 0.25·0.75 = 0.8125         → logit ln(0.8125/0.1875) = ln(13/3)
    # class 2: 1 - 0.75·0.75 = 0.4375         → logit ln(0.4375/0.5625) = ln(7/9)
    want = [[L3, np.log(13 / 3), np.log(7 / 9)]]
    np.testing.assert_allclose(TemporalPooling("noisy-or")(x).numpy(), want, atol=1e-6)


def test_noisy_or_matches_definition_and_single_step_is_identity():
    x = np.random.default_rng(0).normal(0, 3, (4, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(TemporalPooling("noisy-or")(x).numpy(), _noisy_or_reference(x), rtol=1e-5, atol=1e-5)
    one = np.array([[[-80.0, -20.0, -1.0, 0.0, 1e-3, 0.5, 3.0, 20.0, 80.0]]], np.float32)
    np.testing.assert_allclose(TemporalPooling("noisy-or")(one).numpy(), one[:, 0], rtol=1e-5, atol=1e-5)
    # noisy-or is at least the max of its steps' probabilities and grows with more steps
    pooled = TemporalPooling("noisy-or")(x).numpy()
    assert np.all(pooled >= x.max(axis=1) - 1e-5)


@pytest.mark.parametrize("method", ["noisy-or", "logmeanexp:1", "max", "mean", "attention:2"])
def test_pooling_is_stable_and_differentiable_at_large_logits(method):
    x = tf.constant(np.array([[[80.0, -80.0, 80.0], [80.0, -80.0, -80.0], [80.0, -80.0, 5.0]]] * 2, np.float32))
    layer = TemporalPooling(method)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    g = tape.gradient(y, x).numpy()
    assert np.all(np.isfinite(y.numpy())) and np.all(np.isfinite(g))
    assert np.any(g != 0)
    if method == "noisy-or":
        # all +80: -log(1 - p) = 3·80 and logit = 240; all -80: p ≈ 3·e⁻⁸⁰, logit = -80 + ln 3;
        # one step at +80: logit ≈ 80 + softplus(5) + softplus(-80)
        np.testing.assert_allclose(y.numpy()[0], [240.0, -80 + L3, 80 + np.log1p(np.exp(5.0))], rtol=1e-6)


def test_noisy_or_mask_equals_pooling_the_valid_steps_alone():
    x = np.random.default_rng(1).normal(0, 4, (3, 6, 2)).astype(np.float32)
    valid = np.arange(6)[None, :] < np.array([[6], [2], [1]])
    got = noisy_or_logits(x, axis=1, mask=np.broadcast_to(valid[:, :, None], x.shape)).numpy()
    for row, n in enumerate([6, 2, 1]):
        np.testing.assert_allclose(got[row], TemporalPooling("noisy-or")(x[row:row + 1, :n]).numpy()[0], rtol=1e-6)


@pytest.mark.parametrize("method", ["max", "mean", "logmeanexp:2", "noisy-or", "attention:2"])
def test_masked_pooling_equals_pooling_the_valid_steps_alone(method):
    """pool_packed with a mask (the export's windows and the streaming engine) = the layer on the valid steps."""
    rng = np.random.default_rng(2)
    x = rng.normal(0, 3, (3, 6, 2)).astype(np.float32)
    heads = 2 if method.startswith("attention") else 0
    att = rng.normal(0, 2, (3, 6, heads, 2)).astype(np.float32)
    packed = np.concatenate([x, att.reshape(3, 6, heads * 2)], -1)
    valid = np.arange(6)[None, :] < np.array([[6], [2], [1]])
    got = pool_packed(packed, method, mask=valid).numpy()
    assert got.shape == (3, 2)
    for row, n in enumerate([6, 2, 1]):
        alone = pool_steps(x[row:row + 1, :n], method, attention=att[row:row + 1, :n] if heads else None).numpy()
        np.testing.assert_allclose(got[row], alone[0], rtol=1e-5, atol=1e-6)
    unmasked = pool_steps(x, method, attention=att if heads else None).numpy()
    np.testing.assert_allclose(got[0], unmasked[0], rtol=1e-6)  # a full mask changes nothing
    assert not np.allclose(got[1], unmasked[1])  # and a partial one does


# ------------------------------------------------------------------ attention
def _fixed_attention_layer(classes: int = 2, channels: int = 1) -> TemporalPooling:
    layer = TemporalPooling("attention:2")
    layer.build((None, None, classes), (None, None, channels))
    # kernel (channels 1, heads·classes 4) laid out [h0c0, h0c1, h1c0, h1c1]:
    # head 0 attends with logit = the feature, head 1 has zero weights (uniform attention)
    layer.set_weights([np.array([[1.0, 1.0, 0.0, 0.0]], np.float32), np.zeros(4, np.float32)])
    return layer


def test_attention_by_hand_with_fixed_weights():
    layer = _fixed_attention_layer()
    feats = np.log(np.array([[[1.0], [2.0], [3.0]]], np.float32))  # head 0 weights ∝ 1, 2, 3 → 1/6, 2/6, 3/6
    x = np.array([[[6.0, 0.0], [0.0, 6.0], [12.0, -6.0]]], np.float32)  # (batch 1, steps 3, classes 2)
    # head 0: class 0 (6·1 + 0·2 + 12·3)/6 = 7,   class 1 (0·1 + 6·2 − 6·3)/6 = −1
    # head 1: class 0 (6 + 0 + 12)/3 = 6,         class 1 (0 + 6 − 6)/3 = 0
    # mean over heads: [6.5, −0.5]
    np.testing.assert_allclose(layer(x, feats).numpy(), [[6.5, -0.5]], rtol=1e-6)
    # the same pooling of the packed body output [logits | attention logits] (whole-recording engine, export)
    att = layer.attention_logits(x, feats).numpy().reshape(1, 3, 4)
    np.testing.assert_allclose(pool_packed(np.concatenate([x, att], -1), "attention:2").numpy(), [[6.5, -0.5]],
                               rtol=1e-6)
    # masking the last step = pooling the first two alone
    masked = attention_pool(x, layer.attention_logits(x, feats), mask=np.array([[True, True, False]])).numpy()
    np.testing.assert_allclose(masked, layer(x[:, :2], feats[:, :2]).numpy(), rtol=1e-6)
    # head 0 on two steps: weights 1/3, 2/3 → [2, 4]; head 1 → [3, 3]; mean [2.5, 3.5]
    np.testing.assert_allclose(masked, [[2.5, 3.5]], rtol=1e-6)


def test_attention_without_features_projects_the_logits_and_rejects_bad_heads():
    layer = TemporalPooling("attention:3")
    x = np.random.default_rng(2).normal(size=(2, 5, 4)).astype(np.float32)
    assert layer(x).shape == (2, 4)
    assert [tuple(w.shape) for w in layer.weights] == [(4, 12), (12,)]
    for bad in ("attention:0", "attention:1.5", "attention:x", "noisy-or:2"):
        with pytest.raises(ValueError, match="attention|noisy-or"):
            TemporalPooling(bad)


def _tiny(extra: list[str]):
    import keras

    from birdnet_tf.models.build import build_model

    keras.utils.set_random_seed(0)
    cfg = Config().replace([*TINY_SETTINGS, "frontend.center_bands=false", *extra])
    return build_model(cfg, 3), cfg


@pytest.mark.parametrize("method", ["attention:2", "noisy-or"])
def test_gradients_reach_the_pooling_and_the_backbone(method):
    model, cfg = _tiny([f"model.temporal_pooling={method}", "model.output_activation=sigmoid"])
    x = (0.1 * np.random.default_rng(3).standard_normal((2, cfg.excerpt_samples))).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) * tf.constant([[1.0, -1.0, 0.5]]))
    grads = tape.gradient(loss, model.trainable_variables)
    named = {v.path: g for v, g in zip(model.trainable_variables, grads)}
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    assert np.abs(named["c1_conv/kernel"].numpy()).sum() > 0
    if method.startswith("attention"):
        kernel = model.get_layer("temporal_pooling").attention_kernel
        assert tuple(kernel.shape) == (16, 6)  # dense_units 16 features → 2 heads × 3 classes
        assert np.abs(named[kernel.path].numpy()).sum() > 0


@pytest.mark.parametrize("method", ["attention:2", "noisy-or"])
def test_save_load_round_trip(tmp_path, method):
    from birdnet_tf.models.build import load_keras_model

    model, cfg = _tiny([f"model.temporal_pooling={method}", "model.output_activation=sigmoid"])
    if method.startswith("attention"):  # non-trivial attention weights, so a lost weight would show
        layer = model.get_layer("temporal_pooling")
        layer.attention_bias.assign(np.linspace(-2, 2, 6).astype(np.float32))
    model.save(tmp_path / "m.keras")
    loaded = load_keras_model(tmp_path / "m.keras")
    assert loaded.get_layer("temporal_pooling").method == method
    x = (0.1 * np.random.default_rng(4).standard_normal((2, cfg.excerpt_samples))).astype(np.float32)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), model(x, training=False).numpy(), rtol=1e-6)
    clone = TemporalPooling.from_config(model.get_layer("temporal_pooling").get_config())
    assert clone.get_config() == model.get_layer("temporal_pooling").get_config()


# ------------------------------------------------------------------ whole-recording exactness
def _recording(seconds: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 22050)) / 22050
    chirp = np.sin(2 * np.pi * (2000 + 1500 * np.sin(2 * np.pi * 0.7 * t)) * t) * (np.sin(2 * np.pi * 0.3 * t) > 0)
    return (0.3 * chirp + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("method", ["noisy-or", "attention:2"])
def test_whole_recording_windows_equal_windows_scored_alone(method):
    """The streaming engine (WholeRecordingModel) and the export's TF ``windows`` graph both give each
    window's own scores (windows on the step grid; the last ones run past the end)."""
    from birdnet_tf.export import _whole_recording_fns
    from birdnet_tf.infer.whole import WholeRecordingModel

    model, cfg = _tiny([f"model.temporal_pooling={method}", "model.output_activation=sigmoid"])
    if method.startswith("attention"):
        model.get_layer("temporal_pooling").attention_bias.assign(np.linspace(-2, 2, 6).astype(np.float32))
    whole = WholeRecordingModel.from_keras(model, cfg, segment_s=2.0, batch_size=3)
    g = whole.geometry
    x = _recording(9.0)
    spec, n = whole.spectrogram([x])
    logits = whole.step_logits([whole.centre(spec)])[0]
    window = 12 * g.stride_samples
    starts = np.arange(0, len(x) - window, 5 * g.stride_samples)
    got = whole.window_scores(logits, starts, window)
    alone = np.concatenate([model.predict(x[None, s:s + window], verbose=0) for s in starts])
    assert got.shape == (len(starts), 3)
    np.testing.assert_allclose(got, alone, atol=1e-5)
    assert np.abs(np.diff(alone, axis=0)).max() > 1e-4  # windows differ: the comparison means something

    hop_s = 5 * g.stride_samples / 22050
    fns, facts = _whole_recording_fns(model, cfg, ["a", "b", "c"], window / 22050, hop_s)
    assert facts["pooling"] == method
    out = fns["windows"](tf.constant(x))
    tf_starts = np.round(out["start_s"].numpy() * 22050).astype(np.int64)
    np.testing.assert_allclose(out["scores"].numpy(), whole.window_scores(logits, tf_starts, window), atol=1e-5)
    inside = tf_starts + window <= len(x)
    np.testing.assert_allclose(out["scores"].numpy()[inside][:len(starts)], alone[:inside.sum()], atol=1e-5)
    assert (~inside).any()  # the masked (partial) windows at the end were checked against the streaming engine


# ------------------------------------------------------------------ ismir2016 knobs
#: The default model's weights after the frontend (layer/weight, shape) before conv_groups and preset existed.
DEFAULT_BACKBONE_WEIGHTS = [
    ("c1_conv/kernel", (3, 3, 1, 16)), ("c2_conv/kernel", (3, 3, 16, 16)), ("c3_conv/kernel", (3, 3, 16, 16)),
    ("c4_conv/kernel", (3, 3, 16, 16)), ("c5_conv/kernel", (3, 21, 16, 32)), ("fc1_conv/kernel", (9, 1, 32, 128)),
    ("fc2_conv/kernel", (1, 1, 128, 128)), ("frame_logits/kernel", (128, 5)), ("frame_logits/bias", (5,)),
]
DEFAULT_BACKBONE_LAYERS = [
    "add_channel", "c1_conv", "c1_bn", "c1_act", "c2_conv", "c2_bn", "c2_act", "pool1", "c3_conv", "c3_bn",
    "c3_act", "c4_conv", "c4_bn", "c4_act", "c5_conv", "c5_bn", "c5_act", "pool2", "pool2_drop", "fc1_conv",
    "fc1_bn", "fc1_act", "fc1_drop", "fc2_conv", "fc2_bn", "fc2_act", "fc2_drop", "steps", "frame_logits",
    "temporal_pooling", "scores"]
DEFAULT_BACKBONE_PARAMS = 94613  # the whole default model with 5 classes had 94,773 (160 of them in band_norm)


def test_default_model_is_unchanged():
    from birdnet_tf.models.build import build_model

    model = build_model(Config(), 5)
    names = [layer.name for layer in model.layers]
    assert names[names.index("add_channel"):] == DEFAULT_BACKBONE_LAYERS
    kernels = [(w.path, tuple(w.shape)) for w in model.weights
               if w.path.endswith(("conv/kernel", "frame_logits/kernel", "frame_logits/bias"))]
    assert kernels == DEFAULT_BACKBONE_WEIGHTS
    start = names.index("add_channel")
    assert sum(layer.count_params() for layer in model.layers[start:]) == DEFAULT_BACKBONE_PARAMS


def test_grouped_convolutions_build_and_train_a_step():
    model, cfg = _tiny(["model.conv_groups=2", "model.output_activation=sigmoid"])
    plain, _ = _tiny(["model.output_activation=sigmoid"])
    # width 0.25: 8 channels in c2–c4, 16 out of c5; grouped kernels see half the input channels
    assert tuple(model.get_layer("c2_conv").kernel.shape) == (3, 3, 4, 8)
    assert tuple(model.get_layer("c5_conv").kernel.shape)[2:] == (4, 16)
    assert tuple(model.get_layer("c1_conv").kernel.shape) == (3, 3, 1, 8)  # one input channel: never grouped
    assert model.count_params() < plain.count_params()
    from birdnet_tf.train.optim import make_loss, make_optimizer

    cfg = cfg.replace(["train.loss=bce"])
    model.compile(optimizer=make_optimizer(cfg, 2), loss=make_loss(cfg))
    rng = np.random.default_rng(5)
    x = (0.1 * rng.standard_normal((4, cfg.excerpt_samples))).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    before = model.get_layer("c3_conv").kernel.numpy().copy()
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert np.abs(model.get_layer("c3_conv").kernel.numpy() - before).max() > 0


def test_wide_preset_and_bad_knobs():
    from birdnet_tf.models.build import build_model

    wide = build_model(Config().replace(["model.preset=wide"]), 3)
    assert tuple(wide.get_layer("c1_conv").kernel.shape) == (3, 3, 1, 32)  # OFAI's full width
    assert tuple(wide.get_layer("c5_conv").kernel.shape)[-1] == 64
    assert tuple(wide.get_layer("fc2_conv").kernel.shape) == (1, 1, 1024, 1024)
    with pytest.raises(ConfigError, match="model.preset"):
        build_model(Config().replace(["model.preset=narrow"]), 3)
    with pytest.raises(ConfigError, match="model.dense_units=64"):
        build_model(Config().replace(["model.preset=wide", "model.dense_units=64"]), 3)
    with pytest.raises(ConfigError, match="conv_groups=3"):
        build_model(Config().replace(["model.conv_groups=3"]), 3)  # 16 channels at width 0.5
    with pytest.raises(ConfigError, match="conv_groups"):
        build_model(Config().replace(["model.conv_groups=0"]), 3)


# ------------------------------------------------------------------ losses
T = np.array([[1.0, 0.0, 0.0, 0.0],
              [1.0, 0.0, 0.5, 0.0],  # class 2: a background species at data.background_weight 0.5
              [1.0, 1.0, 1.0, 0.0]], np.float32)
P = np.array([[0.9, 0.6, 0.2, 0.1],
              [0.5, 0.8, 0.4, 0.7],
              [0.9, 0.8, 0.7, 0.6]], np.float32)


def _loss(name, t=T, p=P):
    from birdnet_tf.train.losses import make_loss

    loss = make_loss(name)
    return loss.call(tf.constant(t), tf.constant(p)).numpy(), float(loss(tf.constant(t), tf.constant(p)))


def test_ce_bgtopk_by_hand():
    per_example, batch = _loss("ce_bgtopk:2")
    # row 0: non-targets 1 (0.6), 2 (0.2), 3 (0.1): ignore 1 and 2 → -(ln 0.9 + ln 0.9)/4 = 0.0526803
    # row 1: targets 0 and 2 (0.5 > 0); non-targets 1 (0.8), 3 (0.7) both ignored
    #        → -(ln 0.5 + 0.5 ln 0.4 + 0.5 ln 0.6)/4 = (0.693147 + 0.458145 + 0.255413)/4 = 0.351676
    # row 2: one non-target (3), fewer than k: only it is ignored → -(ln .9 + ln .8 + ln .7)/4 = 0.171295
    np.testing.assert_allclose(per_example, [0.0526803, 0.351676, 0.171295], rtol=2e-5)
    np.testing.assert_allclose(batch, np.mean([0.0526803, 0.351676, 0.171295]), rtol=2e-5)
    from birdnet_tf.models.losses import bgtopk_keep
    from birdnet_tf.train.losses import bgtopk_keep_np

    keep = [[1, 0, 0, 1], [1, 0, 1, 0], [1, 1, 1, 0]]
    np.testing.assert_array_equal(bgtopk_keep(tf.constant(T), tf.constant(P), 2).numpy(), keep)
    np.testing.assert_array_equal(bgtopk_keep_np(T, P, 2), keep)


def test_ce_bgtopk_ties_and_k0_is_bce():
    t = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    p = np.array([[0.9, 0.3, 0.3, 0.3]], np.float32)
    # three tied non-targets, k = 1: exactly one ignored (the lowest index, class 1)
    # → -(ln 0.9 + 2 ln 0.7)/4 = (0.105361 + 0.713350)/4 = 0.204678
    np.testing.assert_allclose(_loss("ce_bgtopk:1", t, p)[0], [0.204678], rtol=2e-5)
    # bce row 0: -(ln 0.9 + ln 0.4 + ln 0.8 + ln 0.9)/4 = (0.105361 + 0.916291 + 0.223144 + 0.105361)/4 = 0.337539
    np.testing.assert_allclose(_loss("bce")[0][0], 0.337539, rtol=2e-5)
    np.testing.assert_allclose(_loss("ce_bgtopk:0")[0], _loss("bce")[0], rtol=1e-6)


def test_cce_and_the_numpy_losses_by_hand():
    from birdnet_tf.train.losses import loss_value

    t = np.array([[2 / 3, 0.0, 1 / 3, 0.0]], np.float32)  # [1, 0, 0.5, 0] normalised, as the trainer does for cce
    p = np.array([[0.7, 0.1, 0.1, 0.1]], np.float32)
    # -(2/3 ln 0.7 + 1/3 ln 0.1) = 0.237783 + 0.767528 = 1.005311
    np.testing.assert_allclose(_loss("cce", t, p)[0], [1.005311], rtol=2e-5)
    np.testing.assert_allclose(loss_value("cce", np.array([[1.0, 0, 0.5, 0]]), p), 1.005311, rtol=2e-5)
    for name in ("bce", "ce_bgtopk:2", "ce_bgtopk:1"):
        np.testing.assert_allclose(loss_value(name, T, P), _loss(name)[1], rtol=1e-5)


def test_ce_bgtopk_gradient_skips_ignored_classes_and_survives_saturation():
    import keras

    from birdnet_tf.train.losses import make_loss

    logits = tf.Variable([[3.0, 1.0, -1.0, 40.0], [-40.0, 40.0, 0.0, 2.0]])
    with tf.GradientTape() as tape:
        value = make_loss("ce_bgtopk:1")(tf.constant(T[:2]), keras.activations.sigmoid(logits))
    g = tape.gradient(value, logits).numpy()
    assert np.isfinite(float(value)) and np.all(np.isfinite(g))
    # row 0 ignores class 3 (score ~1), row 1 class 1: no gradient there, gradient elsewhere
    assert g[0, 3] == 0 and g[1, 1] == 0
    assert np.all(g[0, :3] != 0) and g[1, 0] != 0 and g[1, 3] != 0


def test_loss_names_are_checked():
    from birdnet_tf.train.losses import parse_loss

    assert parse_loss("ce_bgtopk:3") == ("ce_bgtopk", 3)
    for bad in ("focal", "ce_bgtopk:x", "ce_bgtopk:-1", "bce:2"):
        with pytest.raises(ConfigError, match="train.loss"):
            parse_loss(bad)


# ------------------------------------------------------------------ through the CLI
def test_cli_trains_ce_bgtopk_with_noisy_or_sigmoid(tmp_path, trained_synthetic):
    from birdnet_tf.models.build import load_keras_model

    run = tmp_path / "run"
    extra = ["train.loss=ce_bgtopk:2", "model.output_activation=sigmoid", "model.temporal_pooling=noisy-or"]
    rc, out, err = run_cli(["train", "--data", str(trained_synthetic.prepared), "--out", str(run),
                            *tiny_set_args(extra)])
    assert rc == 0, f"{out[-3000:]}\n{err[-3000:]}"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["loss"] == "ce_bgtopk:2" and cfg["model"]["temporal_pooling"] == "noisy-or"
    import pandas as pd

    history = pd.read_csv(run / "history.csv")
    assert len(history) == 1 and np.isfinite(history["loss"]).all() and np.isfinite(history["val_loss"]).all()
    last = load_keras_model(run / "checkpoints" / "last.keras")  # compiled with the custom loss
    assert type(last.loss).__name__ == "TopKBackgroundBCE" and last.loss.k == 2
    assert load_keras_model(run / "best.keras").get_layer("temporal_pooling").method == "noisy-or"
    rc, out, err = run_cli(["train", "--data", str(trained_synthetic.prepared), "--out", str(tmp_path / "bad"),
                            *tiny_set_args(["train.loss=focal"])])
    assert rc != 0 and "train.loss" in err and not (tmp_path / "bad").exists()
