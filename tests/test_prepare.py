"""Tests for birdnet_tf.data.prepare."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import tone

from birdnet_tf.data.audio import read_wav_header, write_wav16
from birdnet_tf.data.prepare import MARKER_NAME, REPORT_NAME, PrepareResult, output_path_for, prepare
from birdnet_tf.errors import BirdnetError

RATE = 16000


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, list[tuple[str, str]], dict[str, float]]:
    """A small mixed source folder: (root, files, expected durations by key)."""
    root = tmp_path / "data"
    (root / "audio" / "sub").mkdir(parents=True)
    sf.write(root / "audio" / "a.wav", tone(1000, 44100, 1.0), 44100, subtype="PCM_24")
    x = tone(2000, 48000, 0.5)
    sf.write(root / "audio" / "sub" / "b.flac", np.stack([x, x], 1), 48000)
    sf.write(root / "audio" / "c.ogg", tone(1500, 32000, 0.75), 32000, format="OGG", subtype="VORBIS")
    (root / "audio" / "bad.mp3").write_bytes(np.random.default_rng(0).bytes(3000))
    keys = ["audio/a.wav", "audio/sub/b.flac", "audio/c.ogg", "audio/bad.mp3"]
    files = [(k, str(root / k)) for k in keys]
    return root, files, {"audio/a.wav": 1.0, "audio/sub/b.flac": 0.5, "audio/c.ogg": 0.75}


def _prepare(*args, **kwargs) -> PrepareResult:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        result = prepare(*args, **kwargs)
    result.warnings = [str(w.message) for w in rec]  # type: ignore[attr-defined]
    return result


def test_prepare_mixed_set_records_failure(dataset, tmp_path):
    root, files, durations = dataset
    out = tmp_path / "prepared"
    r = _prepare(files, out, RATE, workers=1, progress=False)

    assert r.converted == 3 and r.skipped == 0
    assert set(r.done) == set(durations)
    for key, (wav, dur) in r.done.items():
        assert wav == out / Path(key).with_suffix(".wav") == output_path_for(out, key)
        h = read_wav_header(wav)
        assert (h.format_tag, h.channels, h.sample_rate_hz, h.bits_per_sample) == (1, 1, RATE, 16)
        assert dur == pytest.approx(h.n_frames / RATE)
        assert dur == pytest.approx(durations[key], abs=0.03)

    bad = str(root / "audio" / "bad.mp3")
    reason = "not a recognised audio file or corrupt (no decodable audio stream found)"
    assert r.failed == [("audio/bad.mp3", bad, reason)]
    assert any(bad in w and reason in w for w in r.warnings)

    text = r.summary()
    assert "3 converted" in text and "0 already done" in text and "1 failed" in text
    assert f"audio/bad.mp3 ({bad}): {reason}" in text

    report = json.loads((out / REPORT_NAME).read_text())
    assert report["sample_rate_hz"] == RATE
    assert (report["converted"], report["skipped"], report["failed_count"]) == (3, 0, 1)
    assert report["failed"] == [{"key": "audio/bad.mp3", "source": bad, "reason": reason}]
    assert json.loads((out / MARKER_NAME).read_text())["sample_rate_hz"] == RATE

    # Nothing was written next to the sources; no temp files in the output.
    assert sorted(p.name for p in (root / "audio").rglob("*") if p.is_file()) == [
        "a.wav", "b.flac", "bad.mp3", "c.ogg",
    ]
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_prepare_pool_then_resume_skips_all(dataset, tmp_path):
    _, files, durations = dataset
    out = tmp_path / "prepared"
    good = [f for f in files if f[0] != "audio/bad.mp3"]
    r1 = _prepare(good, out, RATE, workers=2, progress=False)
    assert (r1.converted, r1.skipped, r1.failed) == (3, 0, [])
    mtimes = {k: v[0].stat().st_mtime_ns for k, v in r1.done.items()}

    r2 = _prepare(good, out, RATE, workers=2, progress=False)
    assert (r2.converted, r2.skipped, r2.failed) == (0, 3, [])
    assert {k: v[0].stat().st_mtime_ns for k, v in r2.done.items()} == mtimes
    assert {k: v[1] for k, v in r2.done.items()} == {k: v[1] for k, v in r1.done.items()}
    assert "3 already done" in r2.summary()
    assert json.loads((out / REPORT_NAME).read_text())["skipped"] == 3


def test_prepare_redoes_truncated_or_foreign_outputs(dataset, tmp_path):
    _, files, _ = dataset
    good = [f for f in files if f[0] != "audio/bad.mp3"]
    out = tmp_path / "prepared"
    r1 = _prepare(good, out, RATE, workers=1, progress=False)
    wav_a = r1.done["audio/a.wav"][0]
    wav_a.write_bytes(wav_a.read_bytes()[:100])  # as if cut off
    wav_c = r1.done["audio/c.ogg"][0]
    write_wav16(wav_c, np.zeros(100), 8000)  # valid WAV, wrong rate
    r2 = _prepare(good, out, RATE, workers=1, progress=False)
    assert (r2.converted, r2.skipped) == (2, 1)
    assert r2.done["audio/a.wav"][1] == pytest.approx(1.0, abs=0.01)
    assert read_wav_header(wav_c).sample_rate_hz == RATE


def test_missing_source_is_a_failure_not_an_abort(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "ok.wav", tone(440, RATE, 0.2), RATE)
    files = [("gone.wav", str(src / "gone.wav")), ("ok.wav", str(src / "ok.wav"))]
    r = _prepare(files, tmp_path / "out", RATE, workers=1, progress=False)
    assert list(r.done) == ["ok.wav"]
    assert r.failed == [("gone.wav", str(src / "gone.wav"), "audio file does not exist")]


def test_rate_mismatch_with_marker(dataset, tmp_path):
    _, files, _ = dataset
    out = tmp_path / "prepared"
    _prepare(files[:1], out, RATE, workers=1, progress=False)
    with pytest.raises(BirdnetError, match=r"already holds audio prepared at 16000 Hz, not 22050 Hz"):
        prepare(files[:1], out, 22050, workers=1, progress=False)
    assert json.loads((out / MARKER_NAME).read_text())["sample_rate_hz"] == RATE


def test_output_equal_to_source_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "x.wav", tone(440, RATE, 0.2), RATE)
    before = (src / "x.wav").read_bytes()
    with pytest.raises(BirdnetError, match="would overwrite its source"):
        prepare([("x.wav", str(src / "x.wav"))], src, RATE, workers=1, progress=False)
    assert (src / "x.wav").read_bytes() == before
    assert sorted(p.name for p in src.iterdir()) == ["x.wav"]


def test_output_next_to_or_inside_sources_is_refused(dataset):
    root, files, _ = dataset
    files = [f for f in files if f[0] != "audio/a.wav"]
    with pytest.raises(BirdnetError, match="into the source folder"):
        prepare(files, root, RATE, workers=1, progress=False)  # root/audio/c.wav next to c.ogg
    with pytest.raises(BirdnetError, match="is inside the source folder"):
        prepare(files, root / "audio" / "prepared", RATE, workers=1, progress=False)
    assert not (root / MARKER_NAME).exists()


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        (["a.wav", "a.wav"], "appears more than once"),
        (["a.wav", "a.flac"], "would both be written to"),
        (["/abs/a.wav"], "must be a relative path"),
        (["../a.wav"], "must be a relative path"),
        ([""], "invalid key"),
    ],
)
def test_bad_keys(tmp_path, keys, match):
    files = [(k, str(tmp_path / "src" / f"{i}.wav")) for i, k in enumerate(keys)]
    with pytest.raises(BirdnetError, match=match):
        prepare(files, tmp_path / "out", RATE, workers=1, progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        prepare([], tmp_path / "o", 0)
    with pytest.raises(ValueError):
        prepare([], tmp_path / "o", RATE, workers=0)


def test_decode_wav_reads_prepared_file(dataset, tmp_path):
    tf = pytest.importorskip("tensorflow")
    _, files, _ = dataset
    r = _prepare(files[:1], tmp_path / "prepared", RATE, workers=1, progress=False)
    wav, dur = r.done["audio/a.wav"]
    audio, rate = tf.audio.decode_wav(tf.io.read_file(str(wav)))
    assert int(rate) == RATE
    assert audio.shape == (round(dur * RATE), 1)
    x = audio.numpy()[:, 0]
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    assert abs(np.fft.rfftfreq(len(x), 1 / RATE)[np.argmax(spec)] - 1000) <= 2


def _crash_on_boom(source: str, output: str, sample_rate_hz: int):
    import os

    from birdnet_tf.data import prepare as prepare_mod

    if Path(source).name == "boom.wav":
        os._exit(3)  # a decoder crash takes the worker process down
    return prepare_mod._convert_one_original(source, output, sample_rate_hz)


def test_worker_crash_fails_only_the_culprit(tmp_path, monkeypatch):
    import multiprocessing

    from birdnet_tf.data import jobs
    from birdnet_tf.data import prepare as prepare_mod

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    monkeypatch.setattr(prepare_mod, "_convert_one_original", prepare_mod._convert_one, raising=False)
    monkeypatch.setattr(prepare_mod, "_convert_one", _crash_on_boom)
    monkeypatch.setattr(jobs, "pool_context", lambda: multiprocessing.get_context("fork"))
    src = tmp_path / "src"
    src.mkdir()
    names = ["a.wav", "boom.wav", "c.wav", "d.wav", "e.wav"]
    for n in names:
        sf.write(src / n, tone(440, RATE, 0.1), RATE)
    r = _prepare([(n, str(src / n)) for n in names], tmp_path / "out", RATE, workers=2, progress=False)
    assert sorted(r.done) == ["a.wav", "c.wav", "d.wav", "e.wav"]
    assert [(k, reason) for k, _, reason in r.failed] == [
        ("boom.wav", "the worker process died while decoding (decoder crash or out of memory)")
    ]
