"""The evaluation window grid, without TensorFlow (the LiteRT runtime uses it too)."""

from __future__ import annotations

import numpy as np


def window_starts(n_samples: int, window: int, hop: int, max_windows: int | None = None) -> np.ndarray:
    """Start samples of evaluation windows covering a file of ``n_samples``.

    Windows advance by ``hop``; a last window is aligned to the file's end so the tail
    is covered. Files shorter than one window get one window (looped when read).
    With ``max_windows``, that many windows are spread evenly over the file.
    """
    if n_samples <= window:
        return np.zeros(1, np.int64)
    starts = np.arange(0, n_samples - window + 1, max(1, hop), dtype=np.int64)
    if starts[-1] + window < n_samples:
        starts = np.append(starts, n_samples - window)
    if max_windows and len(starts) > max_windows:
        idx = np.unique(np.round(np.linspace(0, len(starts) - 1, max_windows)).astype(int))
        starts = starts[idx]
    return starts
