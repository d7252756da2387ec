"""Tests of the OFAI learnable frontends: mel_learn (+ stretch), log1p_learn, pow_learn, PCEN, frontend lr scale."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from conftest import tiny_cfg as shared_tiny_cfg  # noqa: E402

from birdnet_tf.config import Config  # noqa: E402
from birdnet_tf.errors import BirdnetError, ConfigError  # noqa: E402
from birdnet_tf.frontend import PCEN, MagnitudeScaling, MelSpectrogram, frontend_layers  # noqa: E402

SR = 22050
FRONTEND_LAYERS = ("mel", "magnitude")


def tiny_cfg(*settings: str) -> Config:
    return shared_tiny_cfg("model.dropout=0.0", *settings)


def noise(seconds: float = 2.0, seed: int = 0, batch: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 0.1 * rng.standard_normal((batch, int(SR * seconds)))
    x[:, : SR // 2] *= 0.05  # quiet start, so the smoother and gains see a change over time
    return x.astype(np.float32)


def frontend_vars(model) -> list:
    return [v for v in model.trainable_variables if v.path.split("/")[0] in FRONTEND_LAYERS]


# ---------------------------------------------------------------- filterbank
@pytest.mark.parametrize(("n_fft", "n_mels", "fmin", "fmax"), [(1024, 80, 150.0, 10000.0), (2048, 128, 50.0, 11025.0)])
def test_fixed_mel_bank_matches_librosa_and_learnable_starts_exactly_there(n_fft, n_mels, fmin, fmax, librosa):
    fixed = MelSpectrogram(SR, n_fft, 315, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=True, norm=None).T
    ours = fixed.mel_matrix.numpy()
    assert ours.shape == ref.shape
    # TF draws the triangles linearly in mel, librosa linearly in Hz: the same corners, slightly
    # different flanks. Measured max |Δweight| 0.0039 (default bank) and 0.0027 (128 bands), band
    # areas within 0.09 %; a centre halfway between two bins may peak one bin off.
    np.testing.assert_allclose(ours, ref, atol=0.01)
    np.testing.assert_allclose(ours.sum(axis=0), ref.sum(axis=0), rtol=0.002)
    assert np.abs(ours.argmax(axis=0) - ref.argmax(axis=0)).max() <= 1
    learn = MelSpectrogram(SR, n_fft, 315, n_mels, fmin, fmax, learnable=True)
    learn.build(None)
    np.testing.assert_allclose(learn.filterbank().numpy(), ours, atol=1e-6)
    x = noise(1.0)
    np.testing.assert_allclose(learn(x).numpy(), fixed(x).numpy(), rtol=1e-6, atol=1e-6)


def test_stretch_is_identity_in_inference_and_random_per_example_in_training():
    x = np.tile(noise(1.0, batch=1), (4, 1))  # four copies of one example
    plain = MelSpectrogram(SR, learnable=True)
    stretched = MelSpectrogram(SR, learnable=True, stretch=0.1)
    np.testing.assert_array_equal(stretched(x, training=False).numpy(), plain(x).numpy())
    np.testing.assert_array_equal(stretched(x).numpy(), plain(x).numpy())
    y = stretched(x, training=True).numpy()
    assert np.all(np.isfinite(y))
    ref = plain(x).numpy()
    assert all(not np.allclose(y[i], ref[i], rtol=1e-3) for i in range(4))
    assert not np.allclose(y[0], y[1], rtol=1e-3)  # a factor per example
    # a tone moves to a lower band when the bank is stretched up: 3 kHz with factor in [1.05, 1.1]
    t = np.arange(SR) / SR
    tone = (0.5 * np.sin(2 * np.pi * 3000.0 * t)).astype(np.float32)[None]
    up = MelSpectrogram(SR, stretch=0.1)
    peak = plain(tone).numpy()[0].mean(axis=0).argmax()
    tf.random.set_seed(1)
    peaks = [up(tone, training=True).numpy()[0].mean(axis=0).argmax() for _ in range(8)]
    assert min(peaks) >= peak - 3 and max(peaks) <= peak + 3 and len(set(peaks)) > 1


# ---------------------------------------------------------------- magnitudes
def test_learnable_magnitudes_start_at_their_fixed_counterparts():
    x = np.abs(np.random.default_rng(0).standard_normal((2, 30, 80)) * 10.0).astype(np.float32) ** 2
    np.testing.assert_allclose(MagnitudeScaling("log1p_learn")(x).numpy(), np.log1p(x), rtol=1e-6)
    np.testing.assert_allclose(MagnitudeScaling("pow_learn")(x).numpy(), np.sqrt(x), rtol=1e-6)
    layer = MagnitudeScaling("pow_learn")
    layer(x)
    layer.set_weights([np.full(80, 2.0, np.float32)])  # σ(2) = 0.881
    np.testing.assert_allclose(layer(x).numpy(), x ** (1 / (1 + np.exp(-2.0))), rtol=1e-5)
    assert np.isfinite(MagnitudeScaling("pow_learn")(np.zeros((1, 3, 80), np.float32)).numpy()).all()


def test_pcen_matches_librosa_on_a_real_recording(xc_pr20, librosa):
    import pandas as pd

    from birdnet_tf.data.audio import load_audio

    meta = pd.read_csv(xc_pr20 / "metadata.csv")
    audio, _ = load_audio(xc_pr20 / meta["filename"].iloc[0], SR)
    clip = audio[SR: 4 * SR].astype(np.float32)  # 3 s
    mel = MelSpectrogram(SR)(clip[None]).numpy()[0]  # (frames, 80)
    layer = PCEN(SR / 315)
    ours = layer(mel[None]).numpy()[0]
    b = layer.s_init
    assert abs(b - 0.03508) < 1e-4  # librosa's b for a 0.4-s time constant at 70 frames/s
    S = mel.T.astype(np.float64)  # (bands, frames)
    ref = librosa.pcen(S, sr=SR, hop_length=315, gain=0.98, bias=2.0, power=0.5, time_constant=0.4, eps=1e-6,
                       zi=(1 - b) * S[:, :1]).T  # librosa starts its filter at M = 1; ours at the first frame
    # float32 (ours) vs float64 (librosa): measured max |Δ| 6e-6, max relative 4e-6 on three clips
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    assert ref.std() > 0.01  # a real signal, not a constant


# ---------------------------------------------------------------- whole models
KINDS = [
    ("mel_learn", "log"),
    ("mel_learn", "log1p_learn"),
    ("mel", "pow_learn"),
    ("mel_learn", "pcen"),
]


@pytest.mark.parametrize(("filterbank", "magnitude"), KINDS)
def test_gradients_reach_every_frontend_parameter_and_save_load_round_trips(filterbank, magnitude, tmp_path):
    from birdnet_tf.models.build import build_model, load_keras_model

    cfg = tiny_cfg(f"frontend.filterbank={filterbank}", f"frontend.magnitude={magnitude}",
                   "frontend.filterbank_stretch=0.05")
    model = build_model(cfg, 3)
    fvars = frontend_vars(model)
    expected = {"mel/mel_offsets"} if filterbank == "mel_learn" else set()
    expected |= {"log1p_learn": {"magnitude/a"}, "pow_learn": {"magnitude/a"}, "log": set(),
                 "pcen": {f"magnitude/log_{p}" for p in ("s", "alpha", "delta", "r")}}[magnitude]
    assert {v.path for v in fvars} == expected
    x = tf.constant(noise())
    target = tf.constant(np.eye(3, dtype=np.float32)[[0, 2]])
    with tf.GradientTape() as tape:
        loss = keras.losses.categorical_crossentropy(target, model(x, training=True))
    grads = tape.gradient(loss, fvars)
    for v, g in zip(fvars, grads):
        assert g is not None, v.path
        g = tf.convert_to_tensor(g).numpy()
        assert np.all(np.isfinite(g)) and np.all(g != 0), f"{v.path}: {np.sum(g == 0)} zero gradients"

    # trained-looking (non-initial) frontend parameters survive model.save → load_keras_model
    rng = np.random.default_rng(1)
    for v in fvars:
        v.assign(rng.uniform(-0.1, 0.1, v.shape).astype(np.float32))
    before = model(x, training=False).numpy()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_keras_model(path)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), before, rtol=1e-5, atol=1e-6)
    for v, w in zip(fvars, frontend_vars(loaded)):
        np.testing.assert_array_equal(v.numpy(), w.numpy())
    assert loaded.get_layer("mel").get_config() == model.get_layer("mel").get_config()


def test_compiled_model_resumes_with_its_frontend_lr_scale(tmp_path):
    """last.keras holds the optimizer: its class, lr scale and scaled variables survive a reload."""
    from birdnet_tf.models.build import build_model, load_keras_model
    from birdnet_tf.train.optim import make_loss, make_optimizer

    cfg = tiny_cfg("frontend.filterbank=mel_learn", "frontend.magnitude=log1p_learn", "frontend.frontend_lr_scale=10")
    model = build_model(cfg, 3)
    model.compile(optimizer=make_optimizer(cfg, 4), loss=make_loss(cfg))
    grads = [tf.ones_like(v) for v in model.trainable_variables]  # one step without tracing a train function
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    model.save(tmp_path / "last.keras")
    loaded = load_keras_model(tmp_path / "last.keras")
    assert type(loaded.optimizer).__name__ == "FrontendLrAdamW" and loaded.optimizer.lr_scale == 10.0
    assert int(loaded.optimizer.iterations.numpy()) == 1
    # resumes: the reloaded optimizer rebuilt its scaled set, and steps the frontend 10× as far
    start = [v.numpy() for v in loaded.trainable_variables]
    loaded.optimizer.apply_gradients(zip(grads, loaded.trainable_variables))
    assert {v.path for v in loaded.trainable_variables if loaded.optimizer.scaled_variable(v)} == {
        "mel/mel_offsets", "magnitude/a"}
    moved = {v.path: np.abs(v.numpy() - w).max() for v, w in zip(loaded.trainable_variables, start)}
    np.testing.assert_allclose(moved["mel/mel_offsets"], 10 * moved["c1_conv/kernel"], rtol=0.05)


def test_default_frontend_is_unchanged():
    """The default model's frontend has no weights and computes exactly the fixed log-mel."""
    from birdnet_tf.models.build import build_model

    cfg = tiny_cfg()
    model = build_model(cfg, 3)
    assert not frontend_vars(model) and not model.get_layer("mel").weights and not model.get_layer("magnitude").weights
    assert [type(layer).__name__ for layer in frontend_layers(Config())] == [
        "MelSpectrogram", "MagnitudeScaling", "BandCentering", "BatchNormalization"]
    x = noise(1.0)
    front = keras.Model(model.input, model.get_layer("magnitude").output)
    fe = cfg.frontend
    frames = tf.signal.frame(x, fe.n_fft, fe.hop_length) * tf.signal.hann_window(fe.n_fft)
    power = tf.abs(tf.signal.rfft(frames)) ** 2
    matrix = tf.signal.linear_to_mel_weight_matrix(fe.n_mels, fe.n_fft // 2 + 1, SR, fe.fmin_hz, fe.fmax_hz)
    np.testing.assert_allclose(front(x).numpy(), np.log(np.matmul(power, matrix) + 1e-6), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_frontend_lr_scale_multiplies_the_frontend_update(optimizer):
    from birdnet_tf.models.build import build_model
    from birdnet_tf.train.optim import make_optimizer

    settings = ["frontend.filterbank=mel_learn", "frontend.magnitude=log1p_learn", f"train.optimizer={optimizer}",
                "train.momentum=0", "train.weight_decay=0", "train.schedule=constant", "train.warmup_epochs=0",
                "train.learning_rate=0.01"]
    model = build_model(tiny_cfg(*settings), 3)
    x = tf.constant(noise())
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=False)[:, 0])
    variables = model.trainable_variables
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
    start = [v.numpy().copy() for v in variables]
    steps = {}
    for scale in (1.0, 10.0):
        for v, w in zip(variables, start):
            v.assign(w)
        opt = make_optimizer(tiny_cfg(*settings, f"frontend.frontend_lr_scale={scale}"), 4)
        opt.apply_gradients(zip(grads, variables))  # the same gradients for both
        steps[scale] = [v.numpy() - w for v, w in zip(variables, start)]
    front = {v.path for v in frontend_vars(model)}
    assert front == {"mel/mel_offsets", "magnitude/a"}
    for v, s1, s10 in zip(variables, steps[1.0], steps[10.0]):
        assert np.any(s1 != 0), v.path
        if v.path in front:
            np.testing.assert_allclose(s10, 10.0 * s1, rtol=1e-4, atol=1e-9, err_msg=v.path)
        else:
            np.testing.assert_allclose(s10, s1, rtol=1e-6, atol=1e-10, err_msg=v.path)


# ---------------------------------------------------------------- inference paths
def test_pcen_models_skip_whole_recording_inference(tmp_path):
    from birdnet_tf.data.audio import write_wav16
    from birdnet_tf.export import export_model
    from birdnet_tf.infer.predict import predict
    from birdnet_tf.models.surgery import split_model
    from birdnet_tf.models.build import build_model

    cfg = tiny_cfg("frontend.magnitude=pcen")
    model = build_model(cfg, 2)
    with pytest.raises(BirdnetError, match="recursive in time"):
        split_model(model)
    split_model(build_model(tiny_cfg("frontend.filterbank=mel_learn", "frontend.magnitude=pow_learn"), 2))  # fine
    notes = []
    out = export_model(model, cfg, ["a", "b"], tmp_path / "export", log=notes.append)
    assert any("no whole-recording signatures" in n and "recursive in time" in n for n in notes)
    wav = write_wav16(tmp_path / "rec.wav", noise(5.0, batch=1)[0], SR)
    table, failures = predict(out, [str(wav)], window_s=2.0, progress=False, log=notes.append)
    assert not failures and len(table) == 3
    assert any("scoring windows one by one" in n for n in notes)
    scores = table[["a", "b"]].to_numpy()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_pointwise_learnable_frontends_keep_whole_recording_inference_exact():
    """mel_learn + pow_learn are pointwise in time: whole-recording windows equal windows scored alone."""
    from birdnet_tf.infer.whole import WholeRecordingModel
    from birdnet_tf.models.build import build_model

    cfg = tiny_cfg("frontend.filterbank=mel_learn", "frontend.magnitude=pow_learn", "frontend.center_bands=false")
    model = build_model(cfg, 3)
    rng = np.random.default_rng(2)
    for v in frontend_vars(model):  # trained-looking parameters, which the front must carry
        v.assign(rng.uniform(-0.5, 0.5, v.shape).astype(np.float32))
    whole = WholeRecordingModel.from_keras(model, cfg, segment_s=2.0, front_s=1.5)
    g = whole.geometry
    x = noise(8.0, batch=1)[0]
    spec, _ = whole.spectrogram([x[i:i + 7000] for i in range(0, len(x), 7000)])
    logits = whole.step_logits([whole.centre(spec)])[0]
    window = 15 * g.stride_samples
    starts = np.arange(0, len(x) - window, 7 * g.stride_samples)
    got = whole.window_scores(logits, starts, window)
    alone = np.concatenate([model(x[None, s:s + window], training=False).numpy() for s in starts])
    np.testing.assert_allclose(got, alone, atol=1e-5)  # the tolerance of tests/test_whole.py


def test_quantization_safe_model_keeps_learned_filter_positions():
    from birdnet_tf.models.build import build_model
    from birdnet_tf.tflite import quantization_safe_model

    model = build_model(tiny_cfg("frontend.filterbank=mel_learn"), 2)
    offsets = model.get_layer("mel").mel_offsets
    offsets.assign(np.random.default_rng(0).uniform(-20, 20, offsets.shape).astype(np.float32))
    safe = quantization_safe_model(model)
    assert safe.get_layer("mel").quantization_safe
    np.testing.assert_array_equal(safe.get_layer("mel").mel_offsets.numpy(), offsets.numpy())
    x = noise()
    np.testing.assert_allclose(safe(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("setting", "match"), [
    ("frontend.filterbank=gammatone", "frontend.filterbank"),
    ("frontend.magnitude=db", "frontend.magnitude"),
    ("frontend.filterbank_stretch=1.5", "frontend.filterbank_stretch"),
    ("frontend.frontend_lr_scale=0", "frontend.frontend_lr_scale"),
])
def test_bad_frontend_config_is_named(setting, match):
    with pytest.raises(ConfigError, match=match):
        frontend_layers(Config().replace([setting]))


def test_layer_configs_round_trip():
    for layer in (MelSpectrogram(16000, 512, 160, 40, 100.0, 7000.0, learnable=True, stretch=0.2, name="m"),
                  MagnitudeScaling("pow_learn", name="p"), PCEN(50.0, 0.2, 0.9, 1.5, 0.4, 1e-5, name="c")):
        cfg = layer.get_config()
        assert type(layer).from_config(cfg).get_config() == cfg
