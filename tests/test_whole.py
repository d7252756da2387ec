"""Whole-recording inference gives the scores of running each window on its own.

Tolerance: 1e-5 on scores in [0, 1] (float32 convolutions over different input shapes
sum in a different order; observed differences are ~1e-7).
"""

from __future__ import annotations

import numpy as np
import pytest

from birdnet_tf.config import Config
from conftest import tiny_model

TOL = 1e-5


def _model(center: bool, seed: int = 0):
    return tiny_model(5, center, seed)


def _recording(seconds: float, seed: int = 1) -> np.ndarray:
    """A bird-ish test signal: chirps over noise, float32 at 22.05 kHz."""
    rng = np.random.default_rng(seed)
    sr = 22050
    t = np.arange(int(seconds * sr)) / sr
    chirp = np.sin(2 * np.pi * (2000 + 1500 * np.sin(2 * np.pi * 0.7 * t)) * t) * (np.sin(2 * np.pi * 0.3 * t) > 0)
    return (0.3 * chirp + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def _alone(model, x, starts, window, mean=None):
    """Each window through the model on its own; with ``mean``, centred by those statistics instead."""
    from birdnet_tf.models.surgery import split_model

    if mean is None:
        return np.concatenate([model.predict(x[None, s:s + window], verbose=0) for s in starts])
    front, body, _ = split_model(model)
    out = []
    for s in starts:
        logits = body(front(x[None, s:s + window]).numpy() - mean).numpy()
        out.append(model.get_layer("scores")(model.get_layer("temporal_pooling")(logits)).numpy()[0])
    return np.array(out)


def test_geometry_of_the_default_model():
    from birdnet_tf.infer.whole import WholeRecordingModel
    from birdnet_tf.models.build import build_model, min_samples

    cfg = Config()
    model = build_model(cfg, 3)
    g = WholeRecordingModel.from_keras(model, cfg).geometry
    assert (g.stride, g.field) == (9, 103)  # two 3x pools; 103 frames = 1.48 s receptive field
    assert g.field_samples == min_samples(model, cfg)


@pytest.mark.parametrize("segment_s", [2.0, 20.0])
def test_windows_without_band_centring_equal_windows_scored_alone(segment_s):
    """No recording statistics: exactly the sliding-window scores, seams included (2-s segments
    put several seams inside every window)."""
    from birdnet_tf.infer.whole import WholeRecordingModel

    model, cfg = _model(center=False)
    whole = WholeRecordingModel.from_keras(model, cfg, segment_s=segment_s, batch_size=3, front_s=4.0)
    g = whole.geometry
    x = _recording(25.0)
    spec, n = whole.spectrogram([x[i:i + 7000] for i in range(0, len(x), 7000)])  # odd-sized stream blocks
    assert n == len(x)
    logits = whole.step_logits([whole.centre(spec)])[0]
    assert len(logits) == g.steps(g.frames(len(x)))
    window = 15 * g.stride_samples  # windows on the step grid
    starts = np.arange(0, len(x) - window, 7 * g.stride_samples)
    got = whole.window_scores(logits, starts, window)
    np.testing.assert_allclose(got, _alone(model, x, starts, window), atol=TOL)


def test_windows_with_band_centring_equal_windows_alone_given_the_recording_statistics():
    from birdnet_tf.infer.whole import WholeRecordingModel

    model, cfg = _model(center=True)
    whole = WholeRecordingModel.from_keras(model, cfg, segment_s=3.0)
    g = whole.geometry
    x = _recording(20.0, seed=2)
    spec, _ = whole.spectrogram([x])
    mean = spec.mean()
    logits = whole.step_logits([whole.centre(spec)])[0]
    window = 12 * g.stride_samples
    starts = np.arange(0, len(x) - window, 5 * g.stride_samples)
    got = whole.window_scores(logits, starts, window)
    np.testing.assert_allclose(got, _alone(model, x, starts, window, mean=mean), atol=TOL)
    # centring by the recording instead of by the window is a real difference, not a no-op
    assert np.abs(got - _alone(model, x, starts, window)).max() > 1e-4


def test_many_files_batched_together_equal_one_by_one():
    from birdnet_tf.infer.whole import WholeRecordingModel

    model, cfg = _model(center=True)
    xs = [_recording(s, seed=i) for i, s in enumerate([2.5, 7.0, 31.0, 4.0])]
    batched = WholeRecordingModel.from_keras(model, cfg, segment_s=5.0, batch_size=8)
    single = WholeRecordingModel.from_keras(model, cfg, segment_s=5.0, batch_size=1)
    res_b = {i: ws for i, ws, _ in batched.score_many(xs, window_s=2.0)}
    res_s = {}
    for i, x in enumerate(xs):
        res_s[i] = single.score(x, window_s=2.0)
    for i in range(len(xs)):
        np.testing.assert_allclose(res_b[i].scores, res_s[i].scores, atol=TOL)
        np.testing.assert_allclose(res_b[i].starts, np.arange(len(res_b[i].starts)) * 2.0)


def test_short_recording_is_looped_like_the_sliding_path():
    from birdnet_tf.infer.whole import WholeRecordingModel

    model, cfg = _model(center=True)
    whole = WholeRecordingModel.from_keras(model, cfg)
    x = _recording(0.7)
    res = whole.score(x)  # per-file: one window of data.excerpt_s (2 s), looped
    window = cfg.excerpt_samples
    expected = model.predict(np.resize(x, window)[None], verbose=0)[0]
    np.testing.assert_allclose(res.pooled(cfg.data.file_pooling), expected, atol=TOL)


def test_streamed_real_recordings_decode_like_load_audio(xc_pr20):
    from birdnet_tf.data.audio import iter_audio, load_audio

    for name in ("XC5164.mp3", "XC308510.ogg", "XC100146.mp3"):
        path = xc_pr20 / "audio" / name
        streamed = np.concatenate(list(iter_audio(path, 22050)))
        whole, _ = load_audio(path, 22050)
        assert streamed.shape == whole.shape
        np.testing.assert_allclose(streamed, whole, atol=1e-6)


def test_streaming_errors_name_the_file(tmp_path):
    from birdnet_tf.data.audio import iter_audio
    from birdnet_tf.errors import AudioDecodeError

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk" * 4)
    with pytest.raises(AudioDecodeError, match="bad.wav"):
        list(iter_audio(bad, 22050))
    with pytest.raises(AudioDecodeError, match="does not exist"):
        list(iter_audio(tmp_path / "missing.ogg", 22050))


def test_export_windows_signature_and_streaming_engine_agree(trained_synthetic, xc_pr20):
    """The SavedModel's 'windows' signature, the streaming engine on the export's front/body
    signatures, and the engine on the Keras model give the same window scores on a real file."""
    import tensorflow as tf

    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.export import ExportedModel
    from birdnet_tf.infer.whole import WholeRecordingModel
    from birdnet_tf.models.build import load_keras_model

    exported = ExportedModel(trained_synthetic.export)
    path = xc_pr20 / "audio" / "XC308504.ogg"  # 8.3 s
    x, _ = load_audio(path, exported.sample_rate_hz)
    sig = exported.signature("windows")(waveform=tf.constant(x))
    facts = exported.extra["whole_recording"]
    assert facts["window_s"] == pytest.approx(exported.config.data.excerpt_s, abs=1e-4)
    from_export = next(WholeRecordingModel.from_export(exported).score_many([str(path)], window_s=facts["window_s"]))
    keras_model = load_keras_model(trained_synthetic.run / "best.keras")
    from_keras = next(WholeRecordingModel.from_keras(keras_model, exported.config).score_many(
        [str(path)], window_s=facts["window_s"]))
    assert from_export[2] is None and from_keras[2] is None
    np.testing.assert_allclose(sig["scores"].numpy(), from_export[1].scores, atol=TOL)
    np.testing.assert_allclose(from_keras[1].scores, from_export[1].scores, atol=TOL)
    np.testing.assert_allclose(sig["start_s"].numpy(), from_export[1].starts, atol=1e-6)
    assert [s.decode() for s in sig["labels"].numpy()] == exported.labels
    assert int(sig["sample_rate_hz"].numpy()) == exported.sample_rate_hz
