"""Tests of birdnet_tf.frontend: mel spectrogram vs librosa, scaling, SpecAugment, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from birdnet_tf.config import Config  # noqa: E402
from birdnet_tf.frontend import (  # noqa: E402
    BandCentering,
    MagnitudeScaling,
    MelSpectrogram,
    SpecAugment,
    frontend_layers,
)

SR = 22050


def noise(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(SR * seconds))).astype(np.float32)


def chirp(seconds: float = 2.0, f0: float = 300.0, f1: float = 9000.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2))).astype(np.float32)


def tone(freq_hz: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def librosa_mel(x, n_fft, hop, n_mels, fmin, fmax) -> np.ndarray:
    """(frames, mels), the reference the layer claims to match."""
    librosa = pytest.importorskip("librosa")  # only the tests that compare with it need it
    return librosa.feature.melspectrogram(
        y=x, sr=SR, n_fft=n_fft, hop_length=hop, n_mels=n_mels, fmin=fmin, fmax=fmax,
        power=2.0, htk=True, norm=None, center=False).T


def db(x: np.ndarray) -> np.ndarray:
    return 10 * np.log10(x + 1e-10)


# Tolerances. REFERENCE.md §4 measures ~0.04 dB. The residual is not noise: TF draws the
# triangles linearly in mel, librosa linearly in Hz, so it grows with band width. Measured
# maxima on cells within 60 dB of the peak: 0.064 dB for the default 80-band filterbank,
# 0.04 dB for 128 bands, 0.15 dB for a coarse 40-band one (n_fft 512). Bounds below leave
# ~50% headroom over those measurements.
@pytest.mark.parametrize(
    ("n_fft", "hop", "n_mels", "fmin", "fmax", "max_db"),
    [
        (1024, 315, 80, 150.0, 10000.0, 0.1),  # the package default
        (2048, 512, 128, 50.0, 11025.0, 0.1),
        (512, 128, 40, 0.0, 11025.0, 0.25),  # few, wide bands: larger shape mismatch
    ],
)
@pytest.mark.parametrize("signal", ["noise", "chirp"])
def test_mel_matches_librosa_htk(n_fft, hop, n_mels, fmin, fmax, max_db, signal):
    x = noise() if signal == "noise" else chirp()
    layer = MelSpectrogram(SR, n_fft, hop, n_mels, fmin, fmax, 2.0)
    ours = layer(x[None]).numpy()[0]
    ref = librosa_mel(x, n_fft, hop, n_mels, fmin, fmax)
    assert ours.shape == ref.shape == (1 + (len(x) - n_fft) // hop, n_mels)
    ref_db, ours_db = db(ref), db(ours)
    meaningful = ref_db > ref_db.max() - 60.0
    assert meaningful.sum() > 0.04 * meaningful.size  # the comparison covers real content
    diff = np.abs(ours_db - ref_db)[meaningful]
    assert diff.max() < max_db, f"max |dB diff| {diff.max():.3f} >= {max_db}"
    assert diff.mean() < max_db / 2


def test_mel_power_one_matches_librosa(librosa):
    x = noise(1.0)
    p1 = MelSpectrogram(SR, 1024, 315, 80, 150.0, 10000.0, power=1.0)(x[None]).numpy()
    assert np.all(p1 >= 0)
    ref = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=1024, hop_length=315, n_mels=80, fmin=150.0,
                                         fmax=10000.0, power=1.0, htk=True, norm=None, center=False).T
    assert np.abs(db(p1[0]) - db(ref)).max() < 0.1


@pytest.mark.parametrize(("n_samples", "n_fft", "hop"), [
    (22050, 1024, 315), (44100, 1024, 315), (1024, 1024, 315), (1024 + 315, 1024, 315),
    (1024 + 314, 1024, 315), (5000, 512, 100), (300, 1024, 315), (1, 1024, 315),
])
def test_output_shape_formula(n_samples, n_fft, hop):
    layer = MelSpectrogram(SR, n_fft, hop, 40, 100.0, 8000.0)
    out = layer(np.zeros((2, n_samples), np.float32))
    frames = 1 + (max(n_samples, n_fft) - n_fft) // hop
    assert tuple(out.shape) == (2, frames, 40)
    assert layer.compute_output_shape((2, n_samples)) == (2, frames, 40)
    assert layer.compute_output_shape((None, None)) == (None, None, 40)


def test_input_shorter_than_n_fft_gives_one_frame():
    layer = MelSpectrogram(SR, 1024, 315, 80, 150.0, 10000.0)
    x = tone(2000.0, 0.02)  # 441 samples < n_fft
    out = layer(x[None]).numpy()
    assert out.shape == (1, 1, 80)
    assert np.all(np.isfinite(out)) and out.max() > 0
    # equals the spectrum of the zero-padded frame
    padded = np.zeros(1024, np.float32)
    padded[: len(x)] = x
    assert np.allclose(out, layer(padded[None]).numpy(), rtol=1e-5, atol=1e-6)


def _centres(n_mels, fmin, fmax):
    librosa = pytest.importorskip("librosa")
    return librosa.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax, htk=True)[1:-1]


@pytest.mark.parametrize("freq", [440.0, 1000.0, 2500.0, 4000.0, 6000.0, 8800.0])
def test_tone_peaks_in_nearest_band(freq):
    n_mels, fmin, fmax = 80, 150.0, 10000.0
    centres = _centres(n_mels, fmin, fmax)
    k = int(np.argmin(np.abs(centres - freq)))
    # the chosen frequencies are not close to a midpoint between two centres
    spacing = centres[min(k + 1, n_mels - 1)] - centres[max(k - 1, 0)]
    assert abs(centres[k] - freq) < 0.3 * spacing
    layer = MelSpectrogram(SR, 2048, 512, n_mels, fmin, fmax)
    spec = layer(tone(freq)[None]).numpy()[0].mean(axis=0)
    assert int(np.argmax(spec)) == k


def test_tone_below_fmin_and_above_fmax_is_nearly_absent():
    layer = MelSpectrogram(SR, 1024, 315, 80, 500.0, 6000.0)
    inside = layer(tone(2000.0)[None]).numpy().sum()
    for f in (100.0, 9000.0):
        assert layer(tone(f)[None]).numpy().sum() < 1e-3 * inside


def test_mel_rejects_bad_band_edges():
    with pytest.raises(ValueError, match="fmin"):
        MelSpectrogram(SR, 1024, 315, 80, 5000.0, 4000.0)
    with pytest.raises(ValueError, match="sample_rate"):
        MelSpectrogram(16000, 1024, 315, 80, 150.0, 10000.0)


# ----------------------------------------------------------------- scaling
def test_magnitude_scaling_kinds():
    x = np.array([[[0.0, 1e-6, 1.0, 100.0]]], np.float32)
    np.testing.assert_allclose(MagnitudeScaling("log", 1e-6)(x).numpy(), np.log(x + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(MagnitudeScaling("log", 1e-3)(x).numpy(), np.log(x + 1e-3), rtol=1e-6)
    np.testing.assert_allclose(MagnitudeScaling("log1p")(x).numpy(), np.log1p(x), rtol=1e-6)
    np.testing.assert_array_equal(MagnitudeScaling("none")(x).numpy(), x)
    assert np.all(np.isfinite(MagnitudeScaling("log")(np.zeros((1, 2, 3), np.float32)).numpy()))
    with pytest.raises(ValueError, match="log1p"):
        MagnitudeScaling("db")


# ------------------------------------------------------------- SpecAugment
def _spec(batch=4, frames=120, bands=40, seed=0):
    return tf.constant(np.random.default_rng(seed).standard_normal((batch, frames, bands)).astype(np.float32))


def test_spec_augment_identity_when_not_training_or_prob_zero():
    x = _spec()
    np.testing.assert_array_equal(SpecAugment(prob=1.0)(x, training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(SpecAugment(prob=1.0)(x).numpy(), x.numpy())  # training=None
    np.testing.assert_array_equal(SpecAugment(prob=0.0)(x, training=True).numpy(), x.numpy())
    np.testing.assert_array_equal(
        SpecAugment(prob=1.0, freq_masks=0, time_masks=0)(x, training=True).numpy(), x.numpy())


def test_spec_augment_masks_with_prob_one():
    tf.random.set_seed(1)
    x = _spec()
    layer = SpecAugment(prob=1.0, freq_masks=2, freq_mask_bins=8, time_masks=2, time_mask_frames=25)
    y = layer(x, training=True).numpy()
    changed = y != x.numpy()
    assert changed.any()
    # masked cells hold the example's mean; nothing else changes
    means = x.numpy().mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(np.where(changed, y, 0), np.where(changed, np.broadcast_to(means, y.shape), 0),
                               rtol=1e-5, atol=1e-6)
    # masks are whole bands or whole frames, and never cover more than the configured widths
    for b in range(y.shape[0]):
        rows = changed[b].all(axis=1).sum()  # fully masked frames
        cols = changed[b].all(axis=0).sum()  # fully masked bands
        assert rows <= 2 * 25 and cols <= 2 * 8
        covered = changed[b] == (changed[b].all(axis=1, keepdims=True) | changed[b].all(axis=0, keepdims=True))
        assert covered.all()


def test_spec_augment_masks_some_examples_over_many_draws():
    tf.random.set_seed(2)
    x = _spec(batch=64, frames=60, bands=20)
    y = SpecAugment(prob=1.0, freq_masks=1, freq_mask_bins=4, time_masks=1, time_mask_frames=10)(x, training=True)
    per_example = (y.numpy() != x.numpy()).any(axis=(1, 2))
    # a mask can draw width 0 for both; most examples are masked
    assert per_example.mean() > 0.5


# ----------------------------------------------------------- serialisation
@pytest.mark.parametrize("layer", [
    MelSpectrogram(16000, 512, 160, 64, 100.0, 7000.0, 1.0, name="m"),
    MagnitudeScaling("log1p", 1e-4, name="s"),
    SpecAugment(0.3, 1, 4, 3, 10, name="a"),
    BandCentering(name="c"),
])
def test_get_config_round_trip(layer):
    cfg = layer.get_config()
    clone = type(layer).from_config(cfg)
    assert clone.get_config() == cfg
    assert clone.name == layer.name
    x = tf.constant(np.abs(np.random.default_rng(0).standard_normal((2, 4000))).astype(np.float32))
    if not isinstance(layer, MelSpectrogram):
        x = tf.reshape(x, (2, 40, 100))
    np.testing.assert_allclose(clone(x).numpy(), layer(x).numpy(), rtol=1e-6)


def test_frontend_layers_follow_config():
    cfg = Config().replace({"frontend.n_mels": 48, "frontend.magnitude": "log1p", "frontend.band_norm": False,
                            "frontend.center_bands": False})
    layers = frontend_layers(cfg)
    assert [type(layer).__name__ for layer in layers] == ["MelSpectrogram", "MagnitudeScaling"]
    assert layers[0].n_mels == 48 and layers[1].kind == "log1p"
    names = [layer.name for layer in frontend_layers(Config().replace({"frontend.center_bands": False}))]
    assert names == ["mel", "magnitude", "band_norm"]
    names = [layer.name for layer in frontend_layers(Config().replace({"frontend.center_bands": True}))]
    assert names == ["mel", "magnitude", "band_centering", "band_norm"]


def test_band_centering_removes_each_bands_mean_per_example():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 50, 8)).astype("float32") + np.arange(8, dtype="float32") * 3  # band offsets
    x[1] += 10.0  # a louder recording
    y = BandCentering()(x).numpy()
    np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y, x - x.mean(axis=1, keepdims=True), atol=1e-5)
    # a constant gain (an offset in log magnitude) leaves the output unchanged
    np.testing.assert_allclose(BandCentering()(x[:1] + 4.0).numpy(), y[:1], atol=1e-4)

