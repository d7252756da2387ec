"""Tests for the 2018 baseline's chunks, spectrograms (birdnet_tf.frontend.chunks), signal/noise
rule (birdnet_tf.frontend.signal_noise), PNGs (birdnet_tf.data.chunk_folder) and ``birdnet-tf
extract`` (birdnet_tf.data.extract)."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdnet_tf.config import ChunkConfig
from birdnet_tf.data import chunk_folder as F
from birdnet_tf.data import extract as E
from birdnet_tf.frontend import chunks as C
from birdnet_tf.frontend import signal_noise as SN
from birdnet_tf.errors import BirdnetError, ConfigError
from conftest import run_cli

SR = 44100
CFG = ChunkConfig()
#: Agreement of the TF spectrogram with librosa's, in 0..1 units (1/80 per dB at top_db 80):
#: 1e-3 = 0.08 dB. Measured: at most 5e-5 (float32 FFTs and logs in different orders).
LIBROSA_TOL = 1e-3


def chirps(duration_s: float, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    """Bird-like: 80-ms upward sweeps (3 -> 6 kHz) every 0.2 s over weak white noise."""
    t = np.arange(int(round(duration_s * SR))) / SR
    x = noise * rng.standard_normal(t.size)
    for start in np.arange(0.05, duration_s, 0.2):
        u = t - start
        on = (u >= 0) & (u < 0.08)
        x[on] += 0.5 * np.sin(2 * np.pi * (3000 * u[on] + 18750 * u[on] ** 2))
    return x.astype(np.float32)


def tone(freq_hz: float, duration_s: float = 1.0) -> np.ndarray:
    t = np.arange(int(round(duration_s * SR))) / SR
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def test_chunks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "silence": np.zeros(SR, np.float32),
        "white noise": (0.1 * rng.standard_normal(SR)).astype(np.float32),
        "tone": tone(5000.0),
        "chirps": chirps(1.0, rng),
    }


# ------------------------------------------------------------------ chunks


def test_chunk_starts_step_min_length_and_padding():
    cfg = ChunkConfig(sample_rate_hz=1000, fmin_hz=0.0, fmax_hz=500.0, width=8, height=4)  # 1 s = 1000 samples
    # step = chunk - overlap = 750 samples; a chunk needs min_chunk_s = 1 s of real samples
    assert C.chunk_starts(2500, cfg).tolist() == [0, 750, 1500]
    assert C.chunk_starts(2499, cfg).tolist() == [0, 750]
    assert C.chunk_starts(1000, cfg).tolist() == [0]
    assert C.chunk_starts(999, cfg).size == 0
    assert C.chunk_starts(3000, dataclasses.replace(cfg, overlap_s=0.0)).tolist() == [0, 1000, 2000]
    short_ok = dataclasses.replace(cfg, min_chunk_s=0.25)
    assert C.chunk_starts(1800, short_ok).tolist() == [0, 750, 1500]  # the last has 300 samples >= 250
    assert C.chunk_starts(1740, short_ok).tolist() == [0, 750]  # 240 samples left: dropped
    assert C.chunk_starts(200, short_ok).size == 0

    x = np.arange(1, 1801, dtype=np.float32)
    starts, chunks = C.cut_chunks(x, short_ok)
    assert chunks.shape == (3, 1000) and chunks.dtype == np.float32
    np.testing.assert_array_equal(chunks[1], x[750:1750])
    np.testing.assert_array_equal(chunks[2, :300], x[1500:])
    assert not chunks[2, 300:].any()  # zero-padded


@pytest.mark.parametrize("setting, value, word", [
    ("overlap_s", 1.0, "overlap_s"), ("min_chunk_s", 1.5, "min_chunk_s"), ("fmax_hz", 30000.0, "fmax_hz"),
    ("spectrogram", "cqt", "spectrogram"), ("width", 1, "width"),
])
def test_bad_chunk_settings_are_named(setting, value, word):
    with pytest.raises(ConfigError, match=word):
        C.check_chunk_config(dataclasses.replace(CFG, **{setting: value}))


# ------------------------------------------------------------------ spectrograms


def test_mel_filterbank_is_librosas_default(librosa):
    ref = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=128, fmin=500.0, fmax=15000.0)
    fb = C.mel_filterbank(CFG)
    assert fb.shape == (513, 128)
    np.testing.assert_allclose(fb, ref.T, rtol=1e-5, atol=1e-8)
    assert C.spec_params(CFG).n_fft == 1024 and C.spec_params(CFG).hop_length == 172


@pytest.mark.parametrize("kind, preemphasis", [("mel", 0.0), ("mel", 0.95), ("linear", 0.0)])
def test_tf_spectrogram_matches_librosa_reference(kind, preemphasis, test_chunks):
    cfg = ChunkConfig(spectrogram=kind, preemphasis=preemphasis)
    batch = np.stack(list(test_chunks.values()))
    img = C.chunk_spectrogram(batch, cfg).numpy()
    assert img.shape == (len(batch), 256, 128) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    for name, chunk, ours in zip(test_chunks, batch, img):
        ref = C.reference_chunk_spectrogram(chunk, cfg)
        assert np.abs(ours - ref).max() <= LIBROSA_TOL, name
    assert not img[0].any()  # digital silence: all zeros
    assert img[1:].max(axis=(1, 2)).tolist() == [1.0, 1.0, 1.0]  # each chunk's peak is 1


@pytest.mark.parametrize("kind", ["mel", "linear"])
def test_orientation_a_5khz_tone_peaks_in_its_band(kind):
    cfg = ChunkConfig(spectrogram=kind)
    img = C.chunk_spectrogram(tone(5000.0)[None], cfg).numpy()[0]
    band = int(img[32:224].mean(axis=0).argmax())  # axis 1 = frequency, lowest first
    fb = C.mel_filterbank(cfg) if kind == "mel" else C.linear_filterbank(cfg)
    hz = np.linspace(0, SR / 2, fb.shape[0])
    centre = float((fb[:, band] * hz).sum() / fb[:, band].sum())
    assert abs(centre - 5000.0) < 120.0, centre
    # a 10-kHz tone sits in a higher band
    band10 = int(C.chunk_spectrogram(tone(10000.0)[None], cfg).numpy()[0].mean(axis=0).argmax())
    assert band10 > band + 10
    # the PNG shows it as a conventional image: low frequencies at the bottom
    pixels = F.to_pixels(img)
    assert pixels.shape == (128, 256)
    assert int(pixels.mean(axis=1).argmax()) == 127 - band


def test_chunk_spectrogram_layer_and_savedmodel(tmp_path, test_chunks):
    import keras
    import tensorflow as tf

    from birdnet_tf.frontend import ChunkSpectrogram

    cfg = ChunkConfig(preemphasis=0.95)
    inp = keras.Input(shape=(SR,))
    model = keras.Model(inp, ChunkSpectrogram(cfg, name="chunk_spec")(inp))
    batch = np.stack(list(test_chunks.values()))
    expected = C.chunk_spectrogram(batch, cfg).numpy()
    np.testing.assert_allclose(model.predict(batch, verbose=0), expected, atol=1e-6)

    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("chunk_spec").cfg == cfg
    assert ChunkSpectrogram.from_config(model.get_layer("chunk_spec").get_config()).cfg == cfg

    model.export(str(tmp_path / "export"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"]
    out = list(served(tf.constant(batch)).values())[0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)


# ------------------------------------------------------------------ signal/noise rule


def test_signal_noise_scores_order_and_both_implementations_equal(test_chunks):
    images = C.chunk_spectrogram(np.stack(list(test_chunks.values())), CFG).numpy()
    ours = np.array([SN.signal_noise_score(img) for img in images], np.float32)
    tf_scores = SN.signal_noise_score_tf(images).numpy()
    np.testing.assert_array_equal(ours, tf_scores)  # same float32 operations: exactly equal
    silence, noise, tone_, chirp = ours
    assert silence == 0.0
    assert silence <= noise < tone_ < chirp
    assert noise < CFG.signal_threshold < chirp  # stationary noise rejected, bird-like chirps kept
    assert chirp > 10 * tone_


def _blobs(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A dim background with scattered bright cells and bright rectangles, some touching the borders."""
    img = 0.2 + 0.05 * rng.random((width, height))
    bright = rng.random((width, height)) < rng.uniform(0.15, 0.45)
    img[bright] = 0.6 + 0.3 * rng.random(int(bright.sum()))
    for _ in range(4):
        w0, h0 = rng.integers(-2, width - 1), rng.integers(-2, height - 1)
        img[max(w0, 0):w0 + rng.integers(2, 9), max(h0, 0):h0 + rng.integers(2, 6)] = rng.uniform(0.6, 1.0)
    img[rng.random((width, height)) < 0.05] = 0.0  # floor cells
    return img.astype(np.float32)


@pytest.mark.parametrize("width, height", [(256, 128), (9, 7), (10, 5)])
def test_tf_score_equals_opencv_score_including_borders(width, height):
    rng = np.random.default_rng(width)
    images = np.stack([_blobs(rng, width, height) for _ in range(24)])
    ours = np.array([SN.signal_noise_score(img) for img in images], np.float32)
    np.testing.assert_array_equal(SN.signal_noise_score_tf(images).numpy(), ours)
    assert len(set(ours.tolist())) >= 5 and ours.max() > 0.1  # the images really differ


def test_score_rule_on_hand_made_images():
    """Cells worked out by hand: the blur, its replicated border and the closing each matter."""
    img = np.full((12, 10), 0.2, np.float32)
    img[2:5, 3:6] = 0.9  # a 3x3 block: its corners get 4 of 9 votes and go; edges (6) and centre (9) stay,
    #                      and the closing does not bring the corners back: a plus of 5 cells
    img[9, 8] = 0.9  # a lone cell: removed by the blur
    img[7, 0:2] = 0.9  # a 2-cell line at the border: at most 4 votes, removed
    for score in (SN.signal_noise_score(img), SN.signal_noise_score_tf(img[None]).numpy()[0]):
        assert score == np.float32(5 / 120)
    corner = np.full((12, 10), 0.2, np.float32)
    corner[0:2, 0:2] = 0.9  # a 2x2 block in a corner: with the edge replicated, the corner cell gets 9 votes
    #                         and its two neighbours 6, the inner cell 4: an L of 3 cells, kept by the closing
    #                         (a zero border would leave nothing)
    for score in (SN.signal_noise_score(corner), SN.signal_noise_score_tf(corner[None]).numpy()[0]):
        assert score == np.float32(3 / 120)


# ------------------------------------------------------------------ PNG


def test_png_round_trip(tmp_path, test_chunks):
    import tensorflow as tf

    img = C.chunk_spectrogram(test_chunks["chirps"][None], CFG).numpy()[0]
    path = F.write_chunk_png(tmp_path / "a" / "x.png", img)
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert pixels.shape == (128, 256) and pixels.dtype == np.uint8  # height rows x width columns
    back = F.read_chunk_png(path)
    assert back.shape == (256, 128) and back.dtype == np.float32
    assert np.abs(back - img).max() <= 0.5 / 255 + 1e-6  # quantisation only
    np.testing.assert_array_equal(F.decode_chunk_png(tf.constant(str(path))).numpy(), back)
    ds = tf.data.Dataset.from_tensor_slices([str(path)]).map(F.decode_chunk_png)
    np.testing.assert_array_equal(next(iter(ds)).numpy(), back)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]  # no temporary left
    with pytest.raises(BirdnetError, match="not a readable PNG"):
        F.read_chunk_png(tmp_path / "missing.png")


# ------------------------------------------------------------------ extract

NAME = re.compile(r"^(?P<stem>.+)_(?P<ms>\d+)_(?P<score>\d+)\.png$")


@pytest.fixture
def chunk_dataset(tmp_path) -> Path:
    """metadata.csv dataset at 44.1 kHz with a split column, a corrupt file and a too-short file."""
    rng = np.random.default_rng(7)
    root = tmp_path / "data"
    (root / "audio").mkdir(parents=True)
    sf.write(root / "audio" / "bird1.wav", chirps(2.6, rng), SR, subtype="PCM_16")  # 3 chunks
    sf.write(root / "audio" / "bird2.flac", chirps(1.8, rng), SR)  # 2 chunks
    sf.write(root / "audio" / "quiet.wav", (0.05 * rng.standard_normal(int(3.4 * SR))), SR, subtype="PCM_16")
    sf.write(root / "audio" / "short.wav", chirps(0.5, rng), SR, subtype="PCM_16")  # no chunk
    (root / "audio" / "broken.wav").write_bytes(b"RIFF" + rng.bytes(2000))
    pd.DataFrame({
        "filename": ["audio/bird1.wav", "audio/bird2.flac", "audio/quiet.wav", "audio/short.wav",
                     "audio/broken.wav"],
        "primary_label": ["Setophaga adelaidae", "Vireo/latimeri", "Setophaga adelaidae", "Vireo/latimeri",
                          "Vireo/latimeri"],
        "secondary_labels": ["Vireo latimeri", "", "", "", ""],
        "split": ["train", "val", "train", "train", "train"],
    }).to_csv(root / "metadata.csv", index=False)
    return root


def _extract(*args, **kwargs) -> E.ExtractResult:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = E.extract(*args, **kwargs)
    result.warnings = [str(w.message) for w in caught]  # type: ignore[attr-defined]
    return result


def test_extract_writes_chunks_index_noise_and_resumes(chunk_dataset, tmp_path):
    out = tmp_path / "chunks"
    cfg = ChunkConfig(noise_fraction=1.0)  # every rejected chunk goes to noise/: deterministic counts
    logged: list[str] = []
    r = _extract(chunk_dataset, out, cfg, workers=1, progress=False, log=logged.append)

    assert (r.files, r.processed, r.skipped, r.too_short) == (5, 4, 0, 1)
    assert [(k, reason.startswith("not a recognised audio file")) for k, _, reason in r.failed] == [
        ("audio/broken.wav", True)]
    assert any("audio/broken.wav" in w and "failed" in w for w in r.warnings)
    assert r.chunks == 3 + 2 + 4 and r.kept + r.rejected == r.chunks and r.noise_saved == r.rejected
    assert "1 failed" in logged[-1] and "audio/broken.wav" in logged[-1]

    index = pd.read_csv(out / "chunks.csv", dtype={"secondary_labels": str}, keep_default_na=False)
    assert tuple(index.columns) == F.INDEX_COLUMNS
    assert len(index) == r.kept + r.noise_saved
    signal, noise = index[index["kind"] == "signal"], index[index["kind"] == "noise"]
    # chirps are signal, the stationary noise recording is rejected
    assert set(signal["source_key"]) == {"audio/bird1.wav", "audio/bird2.flac"} and len(signal) == 5
    assert set(noise["source_key"]) == {"audio/quiet.wav"} and len(noise) == 4
    assert (signal["score"] >= cfg.signal_threshold).all() and (noise["score"] < cfg.signal_threshold).all()
    bird1 = signal[signal["source_key"] == "audio/bird1.wav"]
    assert bird1["start_s"].tolist() == [0.0, 0.75, 1.5]
    assert bird1["secondary_labels"].tolist() == ["Vireo latimeri"] * 3
    assert set(signal["split"]) == {"train", "val"}

    for row in index.itertuples():
        rel = Path(row.png)
        m = NAME.match(rel.name)
        assert m, row.png
        assert int(m["ms"]) == round(row.start_s * 1000)
        assert int(m["score"]) == int(np.floor(row.score * 1e4 + 1e-9))
        if row.kind == "signal":
            assert rel.parts[:2] == (row.split, row.label.replace("/", "_")), row.png
        else:
            assert rel.parts[0] == "noise"
        img = F.read_chunk_png(out / rel)
        assert img.shape == (256, 128)
    assert (out / "train" / "Setophaga adelaidae").is_dir()
    assert (out / "val" / "Vireo_latimeri").is_dir()
    # the PNG path and the TF-ops path agree within quantisation
    audio, _ = sf.read(chunk_dataset / "audio" / "bird1.wav", dtype="float32")
    direct = C.chunk_spectrogram(audio[33075:33075 + SR][None], cfg).numpy()[0]
    png = F.read_chunk_png(out / bird1["png"].iloc[1])
    assert np.abs(png - direct).max() <= 0.5 / 255 + 1e-6

    report = json.loads((out / "extract_report.json").read_text())
    assert (report["files"], report["failed_count"], report["kept"], report["noise_saved"]) == (5, 1, 5, 4)
    saved = json.loads((out / "extract_config.json").read_text())
    assert saved["chunks"]["noise_fraction"] == 1.0 and "birdnet_tf_version" in saved

    # rerun: finished files are skipped (their PNGs untouched), the broken one is retried
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    r2 = _extract(chunk_dataset, out, cfg, workers=1, progress=False, log=lambda m: None)
    assert (r2.processed, r2.skipped, len(r2.failed)) == (0, 4, 1)
    assert (r2.kept, r2.noise_saved, r2.chunks) == (r.kept, r.noise_saved, r.chunks)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "chunks.csv", dtype={"secondary_labels": str}, keep_default_na=False), index)

    # a file whose PNG went missing is redone
    (out / bird1["png"].iloc[0]).unlink()
    r3 = _extract(chunk_dataset, out, cfg, workers=1, progress=False, log=lambda m: None)
    assert (r3.processed, r3.skipped) == (1, 3) and (out / bird1["png"].iloc[0]).is_file()

    # other settings are refused, naming the difference; s2n_interval does not matter
    with pytest.raises(BirdnetError, match=r"chunks\.overlap_s = 0\.25 there, 0\.5 now"):
        E.extract(chunk_dataset, out, ChunkConfig(noise_fraction=1.0, overlap_s=0.5), workers=1, progress=False)
    with pytest.raises(BirdnetError, match=r"seed = 0 there, 3 now"):
        E.extract(chunk_dataset, out, cfg, workers=1, progress=False, seed=3)
    _extract(chunk_dataset, out, ChunkConfig(noise_fraction=1.0, s2n_interval=(10.0, 100.0)), workers=1,
             progress=False, log=lambda m: None)


def test_extract_noise_set_is_seeded_per_file(chunk_dataset, tmp_path):
    import hashlib

    cfg = ChunkConfig(noise_fraction=0.5)
    key = "audio/quiet.wav"  # its 4 chunks are all rejected
    for seed in (0, 5):
        out = tmp_path / f"seed{seed}"
        r = _extract(chunk_dataset, out, cfg, workers=1, progress=False, seed=seed, log=lambda m: None)
        assert (r.processed, len(r.failed), r.rejected) == (4, 1, 4)
        index = pd.read_csv(out / "chunks.csv")
        # one draw per rejected chunk from (seed, key): independent of the order files are processed in
        draws = np.random.default_rng([seed, int(hashlib.sha1(key.encode()).hexdigest()[:12], 16)]).random(4)
        expected = [0.75 * i for i in range(4) if draws[i] < cfg.noise_fraction]
        assert index.loc[index["kind"] == "noise", "start_s"].tolist() == expected
        assert r.noise_saved == len(expected)


def test_extract_cli_and_refusals(chunk_dataset, tmp_path):
    out = tmp_path / "cli"
    with pytest.warns(UserWarning, match="broken.wav"):
        rc, stdout, stderr = run_cli(["extract", str(chunk_dataset), "--out", str(out), "--workers", "1",
                                      "--no-progress", "--set", "chunks.noise_fraction=0", "--strict"])
    assert rc == 1, stderr  # --strict: a file failed
    assert "audio/broken.wav" in stdout and "0 saved to noise/" in stdout
    index = pd.read_csv(out / "chunks.csv")
    assert (index["kind"] == "signal").all() and len(index) == 5

    rc, _, stderr = run_cli(["extract", str(chunk_dataset), "--out", str(out), "--workers", "1", "--no-progress",
                             "--set", "chunks.top_db=60"])
    assert rc == 2 and "birdnet-tf: error:" in stderr and "chunks.top_db" in stderr

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc, _, stderr = run_cli(["extract", str(chunk_dataset), "--out", str(other), "--workers", "1", "--no-progress"])
    assert rc == 2 and "not empty" in stderr
    rc, _, stderr = run_cli(["extract", str(chunk_dataset), "--out", str(chunk_dataset / "x"), "--no-progress"])
    assert rc == 2 and "inside the dataset" in stderr


def test_extract_class_folders_with_repeated_stems(tmp_path):
    import hashlib

    rng = np.random.default_rng(3)
    for label in ("alpha", "beta"):
        (tmp_path / "data" / label).mkdir(parents=True)
        sf.write(tmp_path / "data" / label / "rec.wav", chirps(1.2, rng), SR, subtype="PCM_16")
    r = _extract(tmp_path / "data", tmp_path / "out", CFG, workers=1, progress=False, log=lambda m: None)
    assert (r.processed, r.kept) == (2, 2)
    index = pd.read_csv(tmp_path / "out" / "chunks.csv")
    assert index["split"].tolist() == ["all", "all"]  # no split column
    for row in index.itertuples():
        stem = f"rec-{hashlib.sha1(row.source_key.encode()).hexdigest()[:8]}"  # two 'rec' files: disambiguated
        assert row.png.startswith(f"all/{row.label}/{stem}_0_"), row.png
