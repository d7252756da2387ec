"""The one inference interface (``birdnet_tf.infer.engine``): every scorer kind on one recording.

Whole-recording engine, sliding windows through the SavedModel, a served model over real
HTTP on loopback and a real TFLite flatbuffer all score the same synthetic recording on
the same window grid, with the same scores; the ensemble scorer is the weighted mean by
hand; the window grid keeps its one "no window under 0.1 s" rule.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from birdnet_tf.errors import BirdnetError
from birdnet_tf.grid import Grid, regular_starts, soundscape_windows, window_starts
from birdnet_tf.infer.engine import EnsembleScorer, Scorer, WindowScores
from birdnet_tf.infer.sliding import SlidingScorer

SR = 22050  # the tiny run's rate; its excerpt (and TFLite window) is 2 s


# ------------------------------------------------------------------ the grid
def test_regular_grid_drops_only_a_last_window_under_a_tenth_of_a_second():
    np.testing.assert_array_equal(regular_starts(10 * SR + int(0.1 * SR) + 1, 5 * SR, SR), [0, 5 * SR, 10 * SR])
    np.testing.assert_array_equal(regular_starts(10 * SR + int(0.1 * SR), 5 * SR, SR), [0, 5 * SR])
    np.testing.assert_array_equal(regular_starts(100, 5 * SR, SR), [0])  # shorter than 0.1 s: still one
    start_s, end_s = soundscape_windows(10 * SR + 2000, SR)
    np.testing.assert_allclose(start_s, [0, 5])
    np.testing.assert_allclose(end_s, [5, 10])  # nominal ends
    grid = Grid.regular(2.0, 0.5, SR)
    starts = grid.starts(3 * SR)
    np.testing.assert_array_equal(starts, regular_starts(3 * SR, SR // 2, SR))
    assert grid.ends(starts, 3 * SR)[-1] == 3 * SR  # cut at the recording's end
    ev = Grid.evaluation(2.0, 1.0, SR, max_windows=3)
    np.testing.assert_array_equal(ev.starts(10 * SR), window_starts(10 * SR, 2 * SR, SR, 3))


# ------------------------------------------------------------------ a TF-free scorer
class _BandEnergy:
    """A NumPy window model: softmax of the energy in two halves of each window, in ``labels`` order."""

    def __init__(self, labels, sample_rate_hz=SR):
        self.labels, self.sample_rate_hz = list(labels), sample_rate_hz

    def __call__(self, waveforms):
        x = np.asarray(waveforms, np.float64)
        half = x.shape[1] // 2
        e = np.stack([np.log1p((x[:, :half] ** 2).sum(1)), np.log1p((x[:, half:] ** 2).sum(1)),
                      np.zeros(len(x))], axis=1)
        order = {"early": 0, "late": 1, "none": 2}
        e = e[:, [order[label] for label in self.labels]]
        p = np.exp(e - e.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True)).astype(np.float32)


def _recording(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    chirp = np.sin(2 * np.pi * (800 + 600 * t) * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    return (0.3 * chirp + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_ensemble_scorer_is_the_weighted_mean_by_hand_in_the_first_members_label_order(tmp_path):
    import soundfile as sf

    a = SlidingScorer(_BandEnergy(["early", "late", "none"]), batch_size=3)
    b = SlidingScorer(_BandEnergy(["none", "late", "early"]), batch_size=5)  # the same classes reordered
    x = _recording(5.3)
    path = tmp_path / "rec.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    ens = EnsembleScorer([a, b], weights=[3.0, 1.0])
    assert isinstance(ens, Scorer) and ens.labels == ["early", "late", "none"]
    got = ens.score(str(path), window_s=1.0, hop_s=0.5)
    wa, wb = a.score(x, window_s=1.0, hop_s=0.5), b.score(x, window_s=1.0, hop_s=0.5)
    assert isinstance(got, WindowScores) and got.file == str(path) and got.n_samples == len(x)
    np.testing.assert_array_equal(got.starts, wa.starts)
    assert len(got.starts) == 11  # 0, 0.5, ..., 5.0 s (5.0 + 0.1 < 5.3)
    by_hand = 0.75 * wa.scores + 0.25 * wb.scores[:, [2, 1, 0]]
    np.testing.assert_allclose(got.scores, by_hand, rtol=1e-6)
    assert np.abs(wa.scores - wb.scores).max() > 0.1  # the reorder is not a no-op
    plain = EnsembleScorer([a, b]).score(x, window_s=1.0, hop_s=0.5)
    np.testing.assert_allclose(plain.scores, (wa.scores + wb.scores[:, [2, 1, 0]]) / 2, rtol=1e-6)
    np.testing.assert_allclose(plain.pooled("mean"), plain.scores.mean(0), rtol=1e-6)

    with pytest.raises(BirdnetError, match="one sample rate"):
        EnsembleScorer([a, SlidingScorer(_BandEnergy(["early", "late", "none"], 16000))])
    with pytest.raises(BirdnetError, match="classes differ"):
        EnsembleScorer([a, SlidingScorer(_BandEnergy(["early", "late"]))])


# ------------------------------------------------------------------ every kind, one recording
def test_every_scorer_kind_gives_the_same_windows_and_scores(trained_synthetic, tflite_tiny, tmp_path):
    """Whole-recording, sliding, remote (real HTTP on loopback) and TFLite on one WAV file."""
    import soundfile as sf
    import tensorflow as tf

    from birdnet_tf.export import ExportedModel
    from birdnet_tf.infer.remote import RemoteScorer
    from birdnet_tf.infer.whole import WholeRecordingModel
    from birdnet_tf.serve import ServerThread, make_app
    from birdnet_tf.tflite import TOLERANCES, TFLiteModel

    exported = ExportedModel(trained_synthetic.export)
    assert exported.sample_rate_hz == SR
    whole = WholeRecordingModel.from_export(exported)
    sliding = SlidingScorer(exported)
    window = 2 * SR
    tflite = TFLiteModel(tflite_tiny.out / "model_float32.tflite").scorer()  # the session's shared conversion
    base = tmp_path / "bird"
    shutil.copytree(trained_synthetic.export, base / "1")
    server = ServerThread(make_app(base, workers=1, log=lambda m: None))
    try:
        remote = RemoteScorer(server.url, "bird")
        x = _recording(6.4)
        path = tmp_path / "rec.wav"
        sf.write(path, x, SR, subtype="FLOAT")
        hop_s = 4 * whole.geometry.stride_samples / SR  # on the step grid: the whole engine is exact there
        results = {name: s.score(str(path), window_s=2.0, hop_s=hop_s, log=lambda m: None)
                   for name, s in [("whole", whole), ("sliding", sliding), ("remote", remote), ("tflite", tflite)]}
        per_file = {name: s.score_file(str(path)) for name, s in [("whole", whole), ("sliding", sliding)]}
    finally:
        server.stop()
    ref = results["sliding"]
    inside = ref.starts * SR + window <= len(x)  # windows past the end: sliding loops them, whole pools what is there
    assert inside.sum() >= 5 and (~inside).any()
    assert np.abs(np.diff(ref.scores[inside], axis=0)).max() > 1e-4  # windows differ: the comparison means something
    # the whole engine centres bands by the recording's mean, a window alone by its own: close, not equal
    # (its exactness is checked against the export's one-graph ``windows`` signature below)
    tolerance = {"whole": 1e-2, "sliding": 0.0, "remote": 1e-6, "tflite": TOLERANCES["float32"]}
    for name, ws in results.items():
        assert isinstance(ws, WindowScores) and ws.file == str(path), name
        assert ws.labels == exported.labels and ws.sample_rate == SR and ws.n_samples == len(x), name
        np.testing.assert_array_equal(ws.starts, ref.starts, err_msg=name)
        np.testing.assert_array_equal(ws.ends, ref.ends, err_msg=name)
        np.testing.assert_allclose(ws.scores[inside], ref.scores[inside], atol=tolerance[name], err_msg=name)
    facts = exported.extra["whole_recording"]
    signature = exported.signature("windows")(waveform=tf.constant(x))
    ws = whole.score(x, window_s=facts["window_s"], hop_s=facts["hop_s"])
    np.testing.assert_allclose(ws.starts, signature["start_s"].numpy(), atol=1e-6)
    np.testing.assert_allclose(ws.ends, signature["end_s"].numpy(), atol=1e-6)
    np.testing.assert_allclose(ws.scores, signature["scores"].numpy(), atol=1e-5)
    # score_file: the model's evaluation windows (2 s every data.eval_hop_s, the last one aligned to the end)
    cfg = exported.config
    expected = window_starts(len(x), window, int(round(cfg.data.eval_hop_s * SR))) / SR
    for name, ws in per_file.items():
        np.testing.assert_allclose(ws.starts, expected, err_msg=name)


def test_whole_engine_batched_across_files_equals_one_file_at_a_time(trained_synthetic):
    from birdnet_tf.export import ExportedModel
    from birdnet_tf.infer.whole import WholeRecordingModel

    whole = WholeRecordingModel.from_export(ExportedModel(trained_synthetic.export), batch_size=4, segment_s=2.0)
    xs = [_recording(s, seed) for seed, s in enumerate([1.0, 4.7, 3.2])]
    batched = {i: ws for i, ws, err in whole.score_many(xs, window_s=1.0, hop_s=0.5)}
    assert sorted(batched) == [0, 1, 2]
    for i, x in enumerate(xs):
        alone = whole.score(x, window_s=1.0, hop_s=0.5)
        assert alone.file is None
        np.testing.assert_array_equal(batched[i].starts, alone.starts)
        np.testing.assert_allclose(batched[i].scores, alone.scores, atol=1e-6)
