"""One inference interface: a :class:`Scorer` turns a recording into typed :class:`WindowScores`.

Every way of scoring audio implements it::

    scorer.labels, scorer.sample_rate                  # class names in score order, Hz
    ws = scorer.score("rec.flac", window_s=5.0)        # windows of 5 s every 5 s (regular grid)
    ws = scorer.score(waveform)                        # the model's evaluation windows
    ws.starts, ws.ends, ws.scores, ws.labels           # [windows] s, [windows] s, [windows, classes]
    for index, ws, error in scorer.score_many(paths): ...

Implementations:

* :class:`birdnet_tf.infer.whole.WholeRecordingModel` — the network runs once over each
  streamed recording and windows are pooled from its per-step logits (an export's
  ``front``/``body`` signatures, or a Keras model); batches segments across files in
  :meth:`~Scorer.score_many`; :meth:`~Scorer.score_file` is its one-file entry.
* :class:`birdnet_tf.infer.sliding.SlidingScorer` — each window cut from the decoded
  recording and scored on its own by any ``model(waveforms [batch, samples]) → [batch,
  classes]`` with ``labels`` and ``sample_rate_hz``: an export's ``serving_default``
  (:class:`~birdnet_tf.export.ExportedModel`), a TF Serving / ``birdnet-tf serve`` model
  (:class:`~birdnet_tf.infer.remote.RemoteScorer`), a ``.tflite`` model
  (:class:`~birdnet_tf.tflite.TFLiteModel`).
* :class:`EnsembleScorer` — the (weighted) mean of several scorers' window scores on the
  same windows, each reordered to the first's labels.

Windows come from :mod:`birdnet_tf.grid`: without ``window_s`` the model's evaluation grid
(``data.excerpt_s`` every ``data.eval_hop_s``, the last window aligned to the end), with it
the regular grid (``k·hop_s``, no last window under 0.1 s); or any :class:`~birdnet_tf.grid.Grid`.

This module imports neither TensorFlow nor Keras: a scorer for a TF-free runtime
implements :meth:`Scorer.score` (and sets ``labels``, ``sample_rate``) with NumPy alone.
"""

from __future__ import annotations

import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from birdnet_tf.errors import AudioDecodeError, BirdnetError
from birdnet_tf.grid import Grid

Log = Callable[[str], None]

#: Window length (and hop) of a model whose config is unknown (a remote model).
DEFAULT_WINDOW_S = 3.0


@dataclass(frozen=True)
class WindowScores:
    """Class scores of one recording's windows.

    Attributes:
        file: The recording's path, or None for a waveform given as an array.
        starts, ends: float64 ``[windows]``, seconds (ends cut at the recording's end).
        scores: ``[windows, classes]`` in the order of ``labels``.
        labels: Class names.
        sample_rate: The rate the recording was scored at, Hz.
        n_samples: The recording's length at that rate.
    """

    file: str | None
    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    labels: list[str]
    sample_rate: int
    n_samples: int

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate

    def pooled(self, method: str) -> np.ndarray:
        """The windows pooled into one ``[classes]`` row (:func:`birdnet_tf.evaluate.pooling.pool`)."""
        from birdnet_tf.evaluate.pooling import pool

        return pool(self.scores, method)


@dataclass(frozen=True)
class WindowEmbeddings:
    """Per-window vectors of one recording: the mean of the backbone's per-step features
    (the input of the class-logits layer) over the steps each window's scores pool.

    Attributes:
        file: The recording's path, or None for a waveform given as an array.
        starts, ends: float64 ``[windows]``, seconds (ends cut at the recording's end).
        vectors: float32 ``[windows, dim]``.
        sample_rate: Hz; n_samples: the recording's length at that rate.
    """

    file: str | None
    starts: np.ndarray
    ends: np.ndarray
    vectors: np.ndarray
    sample_rate: int
    n_samples: int


def label_order(labels: Sequence[str], target: Sequence[str]) -> np.ndarray:
    """Indices that put columns in ``labels`` order into ``target`` order (the same set of names)."""
    index = {label: j for j, label in enumerate(labels)}
    return np.array([index[label] for label in target], np.int64)


class Scorer(ABC):
    """Scores recordings window by window (see the module docstring).

    Subclasses set ``labels`` (class names in score order), ``sample_rate`` (Hz) and,
    when known, ``config`` (the model's :class:`~birdnet_tf.config.Config`, for the
    default windows); ``reads_audio`` is False for a model that scores from metadata
    alone and ``uses_metadata`` True for one that takes a recording's encoded metadata.
    """

    labels: list[str]
    sample_rate: int
    config = None
    reads_audio: bool = True
    uses_metadata: bool = False

    def grid(self, window_s: float | None = None, hop_s: float | None = None,
             max_windows: int | None = None) -> Grid:
        """Without ``window_s``, the model's evaluation windows; with it, the regular grid of ``window_s``/``hop_s``."""
        if window_s is not None:
            return Grid.regular(window_s, hop_s, self.sample_rate)
        cfg = self.config
        excerpt_s = cfg.data.excerpt_s if cfg is not None else DEFAULT_WINDOW_S
        eval_hop_s = cfg.data.eval_hop_s if cfg is not None else excerpt_s
        return Grid.evaluation(excerpt_s, hop_s or eval_hop_s, self.sample_rate, max_windows)

    @abstractmethod
    def score(self, source: str | np.ndarray, window_s: float | None = None, hop_s: float | None = None, *,
              grid: Grid | None = None, metadata: np.ndarray | None = None, log: Log | None = None) -> WindowScores:
        """Scores one recording: a path (decoded at :attr:`sample_rate`) or a float32 waveform at that rate.

        Args:
            source: The recording.
            window_s, hop_s: The windows (see :meth:`grid`); ``grid`` overrides them.
            metadata: float32 ``[F]``, the recording's encoded metadata (models with metadata input).
            log: Where decoding warnings go (default stderr).

        Raises:
            AudioDecodeError: The recording cannot be decoded.
            BirdnetError: It holds no samples, or the model fails.
        """

    def score_many(self, sources: Sequence[str | np.ndarray], window_s: float | None = None,
                   hop_s: float | None = None, *, grid: Grid | None = None, metadata: np.ndarray | None = None,
                   progress: bool = False, log: Log | None = None
                   ) -> Iterator[tuple[int, WindowScores | None, str | None]]:
        """Scores recordings; yields ``(index, scores, error)`` per source (an unreadable one: ``error``).

        ``metadata``: float32 ``[sources, F]``, each recording's encoded metadata, or None.
        """
        from tqdm.auto import tqdm

        grid = grid or self.grid(window_s, hop_s)
        for index, source in enumerate(tqdm(sources, desc="predict", unit="file",
                                            disable=not progress or len(sources) < 2)):
            try:
                ws = self.score(source, grid=grid, metadata=None if metadata is None else metadata[index], log=log)
            except AudioDecodeError as e:
                yield index, None, str(e)
                continue
            yield index, ws, None

    def score_file(self, path: str) -> WindowScores:
        """One recording on the model's evaluation windows (the entry for batch runners)."""
        return self.score(path)


def decode(source: str | np.ndarray, sample_rate: int, log: Log | None = None) -> tuple[np.ndarray, str | None]:
    """``(waveform float32, path or None)`` of a source; decoding warnings go to ``log``."""
    if isinstance(source, np.ndarray):
        return np.asarray(source, np.float32), None
    from birdnet_tf.data.audio import load_audio

    log = log or (lambda msg: print(msg, file=sys.stderr))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, _ = load_audio(source, sample_rate)
    for w in caught:
        log(f"warning: {w.message}")
    return x, str(source)


class EnsembleScorer(Scorer):
    """The mean of several scorers' window scores, weighted by ``weights`` (normalised to sum 1).

    Every member scores the same windows; scores are reordered to the first member's labels.
    A member that reads no audio (metadata only) is given a silent recording of the
    others' length, so its windows are theirs. ``metadata`` of :meth:`score` is one row
    (or None) per member.

    Raises:
        BirdnetError: No members, or members with other sample rates or classes.
    """

    def __init__(self, scorers: Sequence[Scorer], weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None):
        if not scorers:
            raise BirdnetError("an ensemble needs at least one scorer")
        names = [str(n) for n in names] if names is not None else [f"member {i + 1}" for i in range(len(scorers))]
        first = scorers[0]
        for name, s in zip(names[1:], scorers[1:]):
            if s.sample_rate != first.sample_rate:
                raise BirdnetError(f"{name}: takes {s.sample_rate} Hz audio but {names[0]} takes "
                                   f"{first.sample_rate} Hz; an ensemble needs one sample rate")
            if set(s.labels) != set(first.labels):
                missing = sorted(set(first.labels) - set(s.labels))
                extra = sorted(set(s.labels) - set(first.labels))
                raise BirdnetError(f"{name}: its classes differ from {names[0]}'s (missing {missing[:5]}, "
                                   f"extra {extra[:5]}); an ensemble needs the same classes")
        self.scorers = list(scorers)
        self.labels = list(first.labels)
        self.sample_rate = first.sample_rate
        self.config = first.config
        self.reads_audio = any(s.reads_audio for s in scorers)
        self.uses_metadata = any(s.uses_metadata for s in scorers)
        self.orders = [label_order(s.labels, self.labels) for s in scorers]
        if weights is None:
            self.weights = None
        else:
            w = np.asarray(weights, np.float64)
            if w.shape != (len(scorers),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise BirdnetError(f"ensemble weights {list(weights)}: need one non-negative weight per member, "
                                   "not all zero")
            self.weights = w / w.sum()

    def score(self, source, window_s=None, hop_s=None, *, grid=None, metadata=None, log=None) -> WindowScores:
        grid = grid or self.grid(window_s, hop_s)
        rows = list(metadata) if metadata is not None else [None] * len(self.scorers)
        seen: set[str] = set()
        outer = log or (lambda msg: print(msg, file=sys.stderr))

        def once(msg: str) -> None:  # members decoding the same file warn once
            if msg not in seen:
                seen.add(msg)
                outer(msg)

        results: list[WindowScores | None] = [None] * len(self.scorers)
        for i, s in enumerate(self.scorers):
            if s.reads_audio:
                results[i] = s.score(source, grid=grid, metadata=rows[i], log=once)
        audio = next((r for r in results if r is not None), None)
        for i, s in enumerate(self.scorers):
            if results[i] is None:
                stand_in = source if audio is None else np.zeros(audio.n_samples, np.float32)
                results[i] = s.score(stand_in, grid=grid, metadata=rows[i], log=once)
        ref = next(r for r in results if r is not None and (audio is None or r is audio))
        total = None
        for i, (r, order) in enumerate(zip(results, self.orders)):
            if len(r.scores) != len(ref.scores):
                raise BirdnetError(f"{source if isinstance(source, str) else 'waveform'}: ensemble members scored "
                                   f"{len(r.scores)} and {len(ref.scores)} windows")
            s = np.asarray(r.scores, np.float64)[:, order]
            if self.weights is not None:
                s = float(self.weights[i]) * s
            total = s if total is None else total + s
        scores = total if self.weights is not None else total / len(self.scorers)
        return WindowScores(None if isinstance(source, np.ndarray) else str(source), ref.starts, ref.ends, scores,
                            list(self.labels), self.sample_rate, ref.n_samples)
