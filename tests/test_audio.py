"""Tests for birdnet_tf.data.audio: decoding, resampling, WAV writing."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import tone

from birdnet_tf.data import audio as audio_mod
from birdnet_tf.data.audio import (
    AUDIO_EXTENSIONS,
    audio_duration_s,
    load_audio,
    read_wav_header,
    write_wav16,
)
from birdnet_tf.errors import AudioDecodeError, BirdnetError

XC_DIR = Path("/work/shared/data/xc-pr20")


def peak_freq_hz(x: np.ndarray, rate_hz: int) -> float:
    """Frequency in Hz of the largest FFT bin (Hann window)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate_hz)[np.argmax(spec)])


# --------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subtype", "atol"),
    [("PCM_16", 1e-4), ("PCM_24", 1e-6), ("PCM_32", 1e-6), ("FLOAT", 1e-7), ("PCM_U8", 1e-2)],
)
def test_wav_bit_depths(tmp_path, subtype, atol):
    x = tone(1000, 16000, 0.5)
    path = tmp_path / f"t_{subtype}.wav"
    sf.write(path, x, 16000, subtype=subtype)
    y, rate = load_audio(path)
    assert rate == 16000
    assert y.dtype == np.float32 and y.ndim == 1
    assert y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=atol)


def test_resampled_tone_keeps_its_frequency(tmp_path):
    path = tmp_path / "t44.wav"
    sf.write(path, tone(1000, 44100, 1.0), 44100, subtype="PCM_16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 44.1 -> 22.05 kHz must not warn
        y, rate = load_audio(path, 22050)
    assert rate == 22050
    assert abs(len(y) - 22050) <= 1
    assert abs(peak_freq_hz(y, rate) - 1000) <= 2
    assert 0.45 < np.abs(y).max() <= 0.51


def test_low_rate_source_warns_and_is_upsampled(tmp_path):
    path = tmp_path / "phone.wav"
    sf.write(path, tone(1000, 8000, 1.0), 8000, subtype="PCM_16")
    with pytest.warns(UserWarning) as rec:
        y, rate = load_audio(path, 22050)
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1
    assert str(path) in msgs[0] and "8000 Hz" in msgs[0] and "content above 4 kHz is missing" in msgs[0]
    assert rate == 22050
    assert abs(len(y) - 22050) <= 1
    assert abs(peak_freq_hz(y, rate) - 1000) <= 2


def test_native_rate_when_no_target(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(500, 11025, 0.3), 11025)
    y, rate = load_audio(path, None)
    assert rate == 11025 and len(y) == int(round(11025 * 0.3))


def test_stereo_flac_is_downmixed_by_mean(tmp_path):
    x = tone(1000, 48000, 0.5)
    stereo = np.stack([x, -0.5 * x], axis=1)
    path = tmp_path / "s.flac"
    sf.write(path, stereo, 48000, subtype="PCM_24")
    y, rate = load_audio(path)
    assert rate == 48000 and y.shape == (len(x),)
    np.testing.assert_allclose(y, 0.25 * x, atol=1e-5)


@pytest.mark.parametrize(("suffix", "subtype"), [(".ogg", "VORBIS"), (".opus", "OPUS")])
def test_ogg(tmp_path, suffix, subtype):
    if suffix not in AUDIO_EXTENSIONS:
        pytest.skip(f"{suffix} not supported by this libsndfile")
    rate = 48000
    path = tmp_path / f"t{suffix}"
    sf.write(path, tone(1000, rate, 1.0), rate, format="OGG", subtype=subtype)
    y, r = load_audio(path, 22050)
    assert r == 22050
    assert abs(len(y) / r - 1.0) < 0.05
    assert abs(peak_freq_hz(y, r) - 1000) <= 3


def test_stereo_mp3(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("libsndfile without MP3 support")
    rate = 44100
    x = tone(1000, rate, 1.0)
    path = tmp_path / "s.mp3"
    sf.write(path, np.stack([x, x], axis=1), rate, format="MP3")
    assert sf.info(path).channels == 2
    y, r = load_audio(path, 22050)
    assert r == 22050
    assert abs(len(y) / r - 1.0) < 0.1
    assert abs(peak_freq_hz(y, r) - 1000) <= 3
    assert 0.4 < np.abs(y).max() <= 1.0


def test_extensions():
    assert {".wav", ".flac", ".ogg", ".oga", ".mp3"} <= set(AUDIO_EXTENSIONS)
    assert all(e.startswith(".") and e == e.lower() for e in AUDIO_EXTENSIONS)
    if "OPUS" in sf.available_subtypes("OGG"):
        assert ".opus" in AUDIO_EXTENSIONS


def test_float_wav_over_full_scale_is_scaled_not_clipped(tmp_path):
    x = tone(1000, 16000, 0.2, amp=2.0)
    path = tmp_path / "loud.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    y, _ = load_audio(path)
    assert np.abs(y).max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(y, x / np.abs(x).max(), atol=1e-6)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def _msg(path, **kw) -> str:
    with pytest.raises(AudioDecodeError) as info:
        load_audio(path, **kw)
    assert isinstance(info.value, BirdnetError)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_path(tmp_path):
    p = tmp_path / "nope.wav"
    assert _msg(p) == f"{p}: audio file does not exist"


def test_directory(tmp_path):
    assert _msg(tmp_path) == f"{tmp_path}: is a directory, not an audio file"


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp3"
    p.touch()
    assert _msg(p) == f"{p}: empty file (0 bytes)"


def test_corrupt_wav(tmp_path):
    p = tmp_path / "junk.wav"
    p.write_bytes(np.random.default_rng(0).bytes(4000))
    assert _msg(p) == f"{p}: not a recognised audio file or corrupt (Format not recognised)"


def test_corrupt_mp3(tmp_path, capfd):
    p = tmp_path / "junk.mp3"
    p.write_bytes(np.random.default_rng(1).bytes(4000))
    assert _msg(p) == f"{p}: not a recognised audio file or corrupt (no decodable audio stream found)"
    # libmpg123's chatter on fd 2 is filtered out.
    err = capfd.readouterr().err
    assert "libmpg123" not in err and "Note:" not in err


def test_text_file_with_audio_suffix(tmp_path):
    p = tmp_path / "notes.ogg"
    p.write_text("not audio at all\n" * 20)
    assert _msg(p).startswith(f"{p}: not a recognised audio file or corrupt (")


def test_zero_samples(tmp_path):
    p = tmp_path / "zero.wav"
    sf.write(p, np.zeros(0), 16000, subtype="PCM_16")
    assert _msg(p) == f"{p}: decoded to zero samples (no audio in the file)"


def test_nan_samples(tmp_path):
    x = tone(100, 8000, 0.1).astype(np.float32)
    x[5] = np.nan
    p = tmp_path / "nan.wav"
    sf.write(p, x, 8000, subtype="FLOAT")
    assert _msg(p) == f"{p}: contains NaN or infinite sample values"


def test_bad_target_rate(tmp_path):
    p = tmp_path / "t.wav"
    sf.write(p, tone(100, 8000, 0.1), 8000)
    with pytest.raises(ValueError):
        load_audio(p, 0)


def test_failure_mid_stream_keeps_decoded_audio(tmp_path, monkeypatch):
    p = tmp_path / "t.wav"
    sf.write(p, tone(100, 8000, 1.0), 8000)

    class Flaky(sf.SoundFile):
        calls = 0

        def read(self, *args, **kwargs):
            Flaky.calls += 1
            if Flaky.calls > 2:
                raise sf.LibsndfileError(3, "boom: ")
            return super().read(*args, **kwargs)

    monkeypatch.setattr(audio_mod, "_BLOCK_FRAMES", 1000)
    monkeypatch.setattr(audio_mod.sf, "SoundFile", Flaky)
    with pytest.warns(UserWarning, match="decoding stopped after 0.25 s") as rec:
        y, rate = load_audio(p)
    assert str(p) in str(rec[0].message)
    assert rate == 8000 and len(y) == 2000


def test_failure_before_any_audio(tmp_path, monkeypatch):
    p = tmp_path / "t.wav"
    sf.write(p, tone(100, 8000, 1.0), 8000)

    class Broken(sf.SoundFile):
        def read(self, *args, **kwargs):
            raise sf.LibsndfileError(3, "boom: ")

    monkeypatch.setattr(audio_mod.sf, "SoundFile", Broken)
    msg = _msg(p)
    assert msg.startswith(f"{p}: decoding failed (")


# --------------------------------------------------------------------------
# WAV writing and duration
# --------------------------------------------------------------------------


def test_write_wav16_roundtrip(tmp_path):
    x = tone(440, 22050, 0.5).astype(np.float32)
    p = write_wav16(tmp_path / "o.wav", x, 22050)
    assert p.stat().st_size == 44 + 2 * len(x)  # canonical header
    h = read_wav_header(p)
    assert (h.format_tag, h.channels, h.sample_rate_hz, h.bits_per_sample, h.n_frames, h.data_offset) == (
        1, 1, 22050, 16, len(x), 44,
    )
    info = sf.info(p)
    assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
    y, rate = load_audio(p)
    assert rate == 22050
    np.testing.assert_allclose(y, x, atol=1 / 32767)
    assert audio_duration_s(p) == pytest.approx(0.5)
    assert [f.name for f in tmp_path.iterdir()] == ["o.wav"]  # no temp files left


def test_write_wav16_scales_down_instead_of_clipping(tmp_path):
    x = tone(440, 8000, 0.2, amp=3.0)
    p = write_wav16(tmp_path / "o.wav", x, 8000)
    y, _ = sf.read(p, dtype="int16")
    assert np.abs(y).max() == 32767
    np.testing.assert_allclose(y / 32767, x / 3.0, atol=1 / 32767)


def test_write_wav16_rejects_bad_input_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_wav16(tmp_path / "a.wav", np.zeros((10, 2)), 8000)
    with pytest.raises(ValueError):
        write_wav16(tmp_path / "a.wav", np.array([0.0, np.inf]), 8000)
    with pytest.raises(ValueError):
        write_wav16(tmp_path / "a.wav", np.zeros(10), 0)
    assert list(tmp_path.iterdir()) == []


def test_write_wav16_replaces_existing_file(tmp_path):
    p = tmp_path / "o.wav"
    p.write_bytes(b"old junk")
    write_wav16(p, np.zeros(100), 8000)
    assert read_wav_header(p).n_frames == 100


def test_read_wav_header_rejects_truncated(tmp_path):
    p = write_wav16(tmp_path / "o.wav", np.zeros(1000), 8000)
    p.write_bytes(p.read_bytes()[:1000])
    assert read_wav_header(p) is None
    assert read_wav_header(tmp_path / "missing.wav") is None


def test_audio_duration_compressed(tmp_path):
    p = tmp_path / "s.flac"
    sf.write(p, tone(440, 16000, 1.25), 16000)
    assert audio_duration_s(p) == pytest.approx(1.25)
    with pytest.raises(AudioDecodeError):
        audio_duration_s(tmp_path / "missing.flac")


# --------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------


def test_real_mp3s_match_metadata_durations():
    if not (XC_DIR / "metadata.csv").is_file():
        pytest.skip(f"{XC_DIR} not available")
    import pandas as pd

    meta = pd.read_csv(XC_DIR / "metadata.csv")
    mp3 = meta[meta["filename"].str.lower().str.endswith(".mp3")]
    assert len(mp3) == 31
    bad = []
    for fname, expected in zip(mp3["filename"], mp3["duration_s"]):
        path = XC_DIR / fname
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y, rate = load_audio(path)
        assert y.size > 0 and np.abs(y).max() > 0
        if abs(len(y) / rate - float(expected)) > 0.1:
            bad.append((fname, len(y) / rate, expected))
    assert not bad, bad


def test_real_mp3_with_broken_length_header():
    path = XC_DIR / "audio" / "XC5163.mp3"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    assert sf.info(path).frames > 351360  # the header overstates the length
    y, rate = load_audio(path, 16000)
    assert rate == 16000
    assert abs(len(y) / rate - 15.93) < 0.1


def test_stderr_filter_keeps_other_output(capfd):
    import os

    with audio_mod._filtered_native_stderr():
        with audio_mod._filtered_native_stderr():  # nesting shares one redirection
            os.write(2, b"Note: Trying to resync...\n")
        os.write(2, b"keep me\n[src/libmpg123/layer3.c:x] error: y\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert err == "keep me\nafter\n"
