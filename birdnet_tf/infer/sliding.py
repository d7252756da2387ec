"""Sliding windows: each window cut from the decoded recording and scored on its own.

:class:`SlidingScorer` wraps any model called as ``model(waveforms float32 [batch, samples])
→ [batch, classes]`` (``model(waveforms, metadata [batch, F])`` with metadata input) with
``labels`` and ``sample_rate_hz`` attributes: an export's ``serving_default``
(:class:`~birdnet_tf.export.ExportedModel`), a served model
(:class:`~birdnet_tf.infer.remote.RemoteModel`) or a ``.tflite`` model
(:class:`~birdnet_tf.tflite.TFLiteModel`). A window running past the recording's end is
looped from its start to full length. The decoded recording is held in memory.

No TensorFlow here (the model brings its own runtime).
"""

from __future__ import annotations

import numpy as np

from birdnet_tf.infer.engine import Scorer, WindowScores, decode


def cut_windows(x: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """``[len(starts), window]`` windows of ``x``; parts beyond the end are looped from the window's start."""
    out = np.empty((len(starts), window), np.float32)
    for i, s in enumerate(starts):
        seg = x[s:s + window]
        out[i] = np.resize(seg, window) if len(seg) < window else seg
    return out


def score_recording(model, x: np.ndarray, window: int, starts: np.ndarray, batch_size: int = 32,
                    metadata: np.ndarray | None = None) -> np.ndarray:
    """Scores ``[len(starts), classes]`` of windows of one recording, in batches.

    ``metadata`` (float32 ``[F]``, the recording's encoded metadata) goes with every window
    to a model with metadata input.
    """
    def call(batch: np.ndarray) -> np.ndarray:
        if metadata is None:
            return model(batch)
        return model(batch, np.repeat(np.asarray(metadata, np.float32)[None], len(batch), axis=0))

    parts = [call(cut_windows(x, starts[i:i + batch_size], window)) for i in range(0, len(starts), batch_size)]
    return np.concatenate(parts, axis=0)


def score_windows(model, windows: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``float32 [windows, classes]`` scores of ready-cut ``windows [windows, samples]``, ``batch_size`` per call."""
    windows = np.asarray(windows, np.float32)
    parts = [np.asarray(model(windows[i:i + batch_size]), np.float32) for i in range(0, len(windows), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


class SlidingScorer(Scorer):
    """A window-by-window :class:`~birdnet_tf.infer.engine.Scorer` around ``model`` (see the module docstring).

    Args:
        model: The window model.
        batch_size: Windows per model call.
    """

    def __init__(self, model, batch_size: int = 32):
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self.labels = list(model.labels)
        self.sample_rate = int(model.sample_rate_hz)
        self.config = getattr(model, "config", None)
        self.reads_audio = bool(getattr(model, "uses_waveform", True))
        self.uses_metadata = bool(getattr(model, "uses_metadata", False))

    def __repr__(self) -> str:
        return f"SlidingScorer({self.model!r})"

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """Scores of ready-cut windows ``[windows, samples]`` (see :func:`score_windows`)."""
        return score_windows(self.model, windows, self.batch_size)

    def score(self, source, window_s=None, hop_s=None, *, grid=None, metadata=None, log=None) -> WindowScores:
        grid = grid or self.grid(window_s, hop_s)
        x, file = decode(source, self.sample_rate, log)
        n = len(x)
        starts = grid.starts(n)
        row = None if metadata is None or not self.uses_metadata else np.asarray(metadata, np.float32)
        if not self.reads_audio and isinstance(source, np.ndarray):  # metadata only: one row for every window
            one = np.asarray(self.model(np.zeros((1, 1), np.float32), None if row is None else row[None]))
            scores = np.repeat(one, len(starts), axis=0)
        else:
            scores = score_recording(self.model, x, grid.window, starts, self.batch_size, metadata=row)
        return WindowScores(file, starts / self.sample_rate, grid.ends(starts, n) / self.sample_rate,
                            np.asarray(scores), list(self.labels), self.sample_rate, n)
