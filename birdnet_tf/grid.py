"""Window grids: where the scored windows of a recording start and end.

Every way of scoring a recording (training's evaluation, ``predict``, ``submit``, the
export's ``windows`` signature, every :class:`~birdnet_tf.infer.engine.Scorer`) lays its
windows out with the functions here, so they agree window for window:

* **evaluation grid** (:func:`window_starts`) — windows of ``window`` samples every
  ``hop``, the last one aligned to the recording's end, at most ``max_windows`` spread
  evenly; a recording shorter than one window gets one (looped when read). Per-file
  scores of ``predict``, ``evaluate`` and ``submit --task monophone``.
* **regular grid** (:func:`regular_starts`) — ``start = k·hop`` from 0; a last window
  starting less than :data:`MIN_WINDOW_S` before the end is dropped (a recording shorter
  than that still gets one). ``predict --window-s`` rows, the export's ``windows``
  signature and BirdCLEF soundscape windows (:func:`soundscape_windows`).

Pure numpy; sits below every other layer (``data``, ``models``, ``infer`` import it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_WINDOW_S = 0.1
"""A window of the regular grid starting closer than this to the recording's end is not scored."""

SOUNDSCAPE_WINDOW_S = 5.0
"""Length (and default hop) of a soundscape window, as BirdCLEF 2018 scores them."""

EVALUATION, REGULAR = "evaluation", "regular"


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


def regular_starts(n_samples: int, hop: int, sample_rate_hz: int) -> np.ndarray:
    """Start samples ``k·hop`` of the regular grid, without a last window under :data:`MIN_WINDOW_S`."""
    starts = np.arange(0, max(int(n_samples), 1), max(1, int(hop)), dtype=np.int64)
    return starts[(starts == 0) | (starts + MIN_WINDOW_S * sample_rate_hz < n_samples)]


def soundscape_windows(n_samples: int, sample_rate_hz: int, window_s: float = SOUNDSCAPE_WINDOW_S,
                       hop_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Soundscape windows of a recording: ``(start_s, end_s)``, each ``float64 [windows]``, seconds.

    Windows of ``window_s`` every ``hop_s`` (default ``window_s``) on the regular grid.
    Ends are nominal (``start + window_s``), also past the recording's end, so the time
    stamps stay on the grid.
    """
    from birdnet_tf.errors import BirdnetError

    if window_s <= 0 or (hop_s is not None and hop_s <= 0):
        raise BirdnetError("soundscape --window-s and --hop-s must be positive")
    starts = regular_starts(n_samples, int(round((hop_s or window_s) * sample_rate_hz)), sample_rate_hz)
    start_s = starts / float(sample_rate_hz)
    return start_s, start_s + float(window_s)


@dataclass(frozen=True)
class Grid:
    """A window layout in samples: ``kind`` :data:`EVALUATION` or :data:`REGULAR` (see the module docstring).

    Build it with :meth:`evaluation` or :meth:`regular` from seconds.
    """

    kind: str
    window: int  # samples per window
    hop: int  # samples between window starts
    sample_rate_hz: int
    max_windows: int | None = None  # evaluation grid only

    @classmethod
    def evaluation(cls, window_s: float, hop_s: float, sample_rate_hz: int,
                   max_windows: int | None = None) -> Grid:
        return cls(EVALUATION, int(round(window_s * sample_rate_hz)), int(round(hop_s * sample_rate_hz)),
                   int(sample_rate_hz), max_windows)

    @classmethod
    def regular(cls, window_s: float, hop_s: float | None, sample_rate_hz: int) -> Grid:
        return cls(REGULAR, int(round(window_s * sample_rate_hz)), int(round((hop_s or window_s) * sample_rate_hz)),
                   int(sample_rate_hz))

    def starts(self, n_samples: int) -> np.ndarray:
        """Start samples ``int64 [windows]`` of a recording of ``n_samples``."""
        if self.kind == EVALUATION:
            return window_starts(int(n_samples), self.window, self.hop, self.max_windows)
        return regular_starts(n_samples, self.hop, self.sample_rate_hz)

    def ends(self, starts: np.ndarray, n_samples: int) -> np.ndarray:
        """End samples: the window's end, cut at the recording's."""
        return np.minimum(np.asarray(starts) + self.window, int(n_samples))
