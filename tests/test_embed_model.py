"""Embeddings from a model: the whole-recording pass gives each window the vector of that window
run alone; ``birdnet-tf embed`` / ``search`` over a database of tones and noise."""

from __future__ import annotations

import numpy as np
import pytest

from birdnet_tf.config import Config
from conftest import TINY_SETTINGS

TOL = 1e-4


def _model(center: bool = False, seed: int = 0):
    import keras

    from birdnet_tf.models.build import build_model

    keras.utils.set_random_seed(seed)
    cfg = Config().replace([*TINY_SETTINGS, f"frontend.center_bands={center}"])
    return build_model(cfg, 3), cfg


def _noise_and_tone(seconds: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sr = 22050
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 3000 * t) * (t % 4 < 2) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_window_embedding_equals_the_window_run_alone():
    from birdnet_tf.infer.whole import WholeRecordingModel
    from birdnet_tf.models.surgery import split_model

    model, cfg = _model(center=False)
    whole = WholeRecordingModel.from_keras(model, cfg, segment_s=2.0, batch_size=3)
    g = whole.geometry
    x = _noise_and_tone(12.0)
    window = 15 * g.stride_samples  # windows on the step grid, seams of 2-s segments inside them
    from birdnet_tf.grid import Grid

    grid = Grid.regular(window / g.sample_rate_hz, 7 * g.stride_samples / g.sample_rate_hz, g.sample_rate_hz)
    emb = whole.embed(x, grid=grid)
    front, feats, facts = split_model(model, features=True)
    starts = np.round(emb.starts * g.sample_rate_hz).astype(int)
    full = starts + window <= len(x)
    assert full.sum() >= 5
    alone = np.stack([np.asarray(feats(front(x[None, s:s + window]))).mean(axis=1)[0] for s in starts[full]])
    assert emb.vectors.shape == (len(starts), facts["dim"])
    np.testing.assert_allclose(emb.vectors[full], alone, atol=TOL)
    assert np.abs(np.diff(emb.vectors[full], axis=0)).max() > 1e-3  # windows differ: the check has teeth
