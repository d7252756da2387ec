"""Whole-recording inference: the network runs once over a recording, windows are pooled afterwards.

Scoring overlapping windows one by one recomputes every frame several times. Here the
model is split at its temporal pooling::

    waveform ─front─▶ log-mel frames ─(band centring)─▶ body ─▶ per-step logits ─pool─▶ windows

* **front** (STFT, mel, magnitude) is pointwise in time, so it runs on the decoded audio
  as it streams in, in fixed-size chunks (:func:`birdnet_tf.data.audio.iter_audio`).
* **band centring** (when the model has it) subtracts each band's mean over the
  *recording* — in whole-recording mode the recording is the whole file, not one window.
* **body** (per-band standardisation, the CNN, the per-step logits layer) is fully
  convolutional in time: output step ``s`` sees frames ``[s·stride, s·stride + field)``.
  It runs over segments of the recording that overlap by ``field − stride`` frames, so
  the concatenated steps are exactly those of one pass over the whole recording, and
  segments of many files are batched together.
* **pooling** of the steps inside each output window (the model's temporal pooling, then
  its output activation) gives the window's scores; per-file scores pool the windows as
  :func:`birdnet_tf.infer.predict.predict` does.

Exactness: a window that starts on the step grid (a multiple of ``stride`` frames,
``stride · hop`` samples: 2,835 samples = 0.129 s for the default model) pools exactly the
steps that scoring that window alone produces, so its scores equal sliding-window scores
up to float rounding — given the same band-centring statistics (the tests check both).
Other starts are rounded to the nearest step (at most half a step, 64 ms, off).

Metadata: a combined audio + metadata model (``metadata.use=combined``) adds its metadata
network's logits, one bias per class and recording, to the pooled logits before the output
activation. Max, mean, log-mean-exp and attention pooling commute with adding a constant
(``pool(x + b) = pool(x) + b``), so the bias is added to each window's pooled logits here;
noisy-or does not, and such models are scored window by window.

Memory: one decoded block, one front chunk, a batch of segments, plus the recording's
log-mel frames (80 float32 per 14.3 ms: about 77 MB per hour, a quarter of the decoded
audio at 22.05 kHz, centred in place) — the decoded audio itself is never held.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from birdnet_tf.config import Config
from birdnet_tf.errors import AudioDecodeError, BirdnetError
from birdnet_tf.grid import Grid
from birdnet_tf.infer.engine import Scorer, WindowEmbeddings, WindowScores
from birdnet_tf.models.surgery import (StepGeometry, metadata_bias_model, missing_metadata, pooled_classes,
                                       probe_geometry, split_model)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Frames:
    """A recording's frames ``[frames, bands]``, kept as the chunks the front produced.

    Joining them into one array would double the peak memory of a long recording.
    """

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [np.asarray(p, np.float32) for p in parts]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def mean(self) -> np.ndarray:
        """Mean over frames, ``[1, bands]``."""
        total = sum(p.sum(axis=0, dtype=np.float64) for p in self.parts)
        return (total / max(1, len(self)))[None, :].astype(np.float32)

    def subtract_(self, row: np.ndarray) -> Frames:
        for p in self.parts:
            p -= row
        return self

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as one array (a view when they lie in one chunk)."""
        stop = min(stop, len(self))
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pieces = []
        while start < stop:
            a = start - self.offsets[i]
            b = min(stop - self.offsets[i], len(self.parts[i]))
            pieces.append(self.parts[i][a:b])
            start += b - a
            i += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def array(self) -> np.ndarray:
        return self.slice(0, len(self))


class _Store:
    """A growing float32 ``[frames, bands]`` buffer (one allocation when the size is known)."""

    def __init__(self, capacity: int):
        self.data: np.ndarray | None = None
        self.capacity, self.n = max(1, capacity), 0

    def append(self, rows: np.ndarray) -> None:
        if self.data is None:
            self.data = np.empty((self.capacity, rows.shape[1]), np.float32)
        if self.n + len(rows) > len(self.data):
            grown = np.empty((max(self.n + len(rows), int(len(self.data) * 1.5)), rows.shape[1]), np.float32)
            grown[:self.n] = self.data[:self.n]
            self.data = grown
        self.data[self.n:self.n + len(rows)] = rows
        self.n += len(rows)

    def array(self) -> np.ndarray:
        return self.data[:self.n]


@dataclass
class _Segment:
    file: int  # index of the file in the current group
    first_step: int  # index of its first output step in that file
    n_steps: int  # valid output steps
    frames: np.ndarray  # [frames, bands], possibly zero-padded at the end


def prefetched(blocks: Iterator[np.ndarray], depth: int = 4) -> Iterator[np.ndarray]:
    """Decodes ahead in a thread (libsndfile and soxr release the GIL) while the model computes.

    At most ``depth`` blocks wait, so memory stays bounded; a decoding error is re-raised
    in the consumer at the point it happened.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        q.put(block, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def expected_samples(source, sample_rate_hz: int) -> int:
    """Samples a source will give at ``sample_rate_hz``, from its header (0 when unknown)."""
    if isinstance(source, np.ndarray):
        return len(source)
    try:
        from birdnet_tf.data.audio import header_frames

        frames, rate = header_frames(source)
        return int(frames * sample_rate_hz / rate) + 1
    except Exception:  # noqa: BLE001 - only a size hint; decoding reports real problems
        return 0


class WholeRecordingModel(Scorer):
    """A trained model run once per recording (see the module docstring): the streaming
    :class:`~birdnet_tf.infer.engine.Scorer`.

    Build it with :meth:`from_keras` (a trained Keras model) or :meth:`from_export` (an
    export folder: its ``front`` and ``body`` signatures).

    Args:
        front: ``float32 [batch, samples]`` → ``[batch, frames, bands]`` (numpy in, numpy out).
        body: ``float32 [batch, frames, bands]`` → ``[batch, steps, classes]``.
        cfg: The model's config.
        geometry: Its :class:`StepGeometry`.
        center, pooling, activation: as returned by :func:`split_model`.
        metadata_bias: For a combined audio + metadata model: ``float32 [batch, F]`` metadata
            → ``[batch, classes]`` logits added to every window's pooled logits (see
            :func:`metadata_bias_model`); None for audio models.
        segment_s: Length of the body's segments (longer = less overlap recomputed,
            more memory per batch).
        batch_size: Segments per body call.
        front_s: Audio per front call.
        labels: Class names in score order (an export's; None when unknown).
        features: ``float32 [batch, frames, bands]`` → ``[batch, steps, dim]``, the body cut
            before its class logits (:func:`split_model` with ``features``), for :meth:`embed`;
            None when the model gives no embeddings.
    """

    def __init__(self, front, body, cfg: Config, geometry: StepGeometry, center: bool, pooling: str,
                 activation: str, segment_s: float = 20.0, batch_size: int = 2, front_s: float = 10.0,
                 metadata_bias=None, labels: list[str] | None = None, numpy_pooling: bool = False,
                 features=None):
        self._front, self._body, self._features = front, body, features
        # the LiteRT runtime pools with the NumPy twin of pool_packed: it never imports TensorFlow
        self.numpy_pooling = bool(numpy_pooling)
        self.config, self.sample_rate = cfg, geometry.sample_rate_hz
        self.labels = list(labels) if labels is not None else None
        self._bias = metadata_bias
        self._missing_bias: np.ndarray | None = None
        self.cfg, self.geometry = cfg, geometry
        self.center, self.pooling, self.activation = center, pooling, activation
        g = geometry
        self.segment_steps = max(1, int(round(segment_s * g.sample_rate_hz / g.stride_samples)))
        self.batch_size = max(1, int(batch_size))
        self.front_frames = max(1, int(round(front_s * g.sample_rate_hz / g.hop)))

    @classmethod
    def from_keras(cls, model, cfg: Config, **kwargs) -> "WholeRecordingModel":
        import tensorflow as tf

        front, body, facts = split_model(model)
        fe = cfg.frontend
        geometry = probe_geometry(body, fe.n_mels, fe.hop_length, fe.n_fft, cfg.audio.sample_rate_hz)
        f = tf.function(lambda x: front(x, training=False), input_signature=[tf.TensorSpec([None, None], tf.float32)])
        b = tf.function(lambda x: body(x, training=False),
                        input_signature=[tf.TensorSpec([None, None, fe.n_mels], tf.float32)])
        bias = None
        if facts.pop("metadata", False):
            m = metadata_bias_model(model)
            bias = lambda x: np.asarray(m(np.asarray(x, np.float32), training=False), np.float32)  # noqa: E731
        feats = split_model(model, features=True)[1]
        e = tf.function(lambda x: tf.cast(feats(x, training=False), tf.float32),
                        input_signature=[tf.TensorSpec([None, None, fe.n_mels], tf.float32)])
        return cls(lambda x: f(x).numpy(), lambda x: b(x).numpy(), cfg, geometry, **facts, metadata_bias=bias,
                   features=lambda x: e(x).numpy(), **kwargs)

    @classmethod
    def from_export(cls, path: str | os.PathLike, **kwargs) -> "WholeRecordingModel":
        from birdnet_tf.export import ExportedModel

        exported = path if isinstance(path, ExportedModel) else ExportedModel(path)
        facts = exported.extra.get("whole_recording")
        if not facts:
            raise BirdnetError(f"{exported.path}: export has no whole-recording signatures "
                               "(made by an older birdnet-tf; export it again)")
        cfg = exported.config
        fe = cfg.frontend
        geometry = StepGeometry(cfg.audio.sample_rate_hz, fe.hop_length, fe.n_fft, facts["stride_frames"],
                                facts["field_frames"])
        front, body = exported.signature("front"), exported.signature("body")
        bias = None
        if facts.get("metadata"):
            import tensorflow as tf

            meta = exported.signature("metadata_logits")
            bias = lambda x: meta(metadata=tf.constant(np.asarray(x, np.float32)))["logits"].numpy()  # noqa: E731
        features = None
        if facts.get("features"):
            feats = exported.signature("features")
            features = lambda x: feats(frames=x)["features"].numpy()  # noqa: E731
        return cls(lambda x: front(waveform=x)["frames"].numpy(), lambda x: body(frames=x)["logits"].numpy(),
                   cfg, geometry, facts["center"], facts["pooling"], facts["activation"], metadata_bias=bias,
                   **{"labels": exported.labels, "features": features, **kwargs})

    @property
    def uses_metadata(self) -> bool:
        """True for a combined audio + metadata model (its windows get a per-recording bias)."""
        return self._bias is not None

    # ------------------------------------------------------------------ front
    def spectrogram(self, blocks: Iterable[np.ndarray], min_samples: int = 0,
                    expected_samples: int = 0) -> tuple[Frames, int]:
        """Streams audio blocks through the front: ``(Frames [frames, bands], n_samples)``.

        A recording shorter than ``min_samples`` (or than one receptive field) is looped
        to that length first, as the sliding-window path and the export do; ``n_samples``
        is the recording's own length all the same (its windows and end times are the
        recording's, not the loop's). Frames are
        copied into one buffer sized for ``expected_samples`` (grown if the stream is
        longer), so the front's output tensors are freed at once.
        """
        g = self.geometry
        need = (self.front_frames - 1) * g.hop + g.n_fft
        advance = self.front_frames * g.hop
        min_samples = max(min_samples, g.field_samples)
        store = _Store(g.frames(max(expected_samples, need)))
        buf = np.zeros(0, np.float32)
        total = 0
        for block in blocks:
            total += len(block)
            buf = np.concatenate([buf, block]) if buf.size else np.asarray(block, np.float32)
            while len(buf) >= need:
                store.append(self._front(buf[None, :need])[0])
                buf = buf[advance:]
        if total == 0:
            raise BirdnetError("recording holds no samples")
        if total < min_samples:  # nothing was consumed yet: buf is the whole recording
            buf = np.resize(buf, min_samples)
        if len(buf) >= g.n_fft:
            store.append(self._front(buf[None])[0])
        return Frames([store.array()]), total

    def centre(self, spec: Frames) -> Frames:
        """Band centring by the recording's mean (in place) when the model centres."""
        return spec.subtract_(spec.mean()) if self.center else spec

    # ------------------------------------------------------------------ body
    def _segments(self, file: int, spec: Frames) -> Iterator[_Segment]:
        g = self.geometry
        total = g.steps(len(spec))
        seg_frames = g.field + (self.segment_steps - 1) * g.stride
        for first in range(0, total, self.segment_steps):
            n = min(self.segment_steps, total - first)
            start = first * g.stride
            frames = spec.slice(start, start + g.field + (n - 1) * g.stride)
            if n < self.segment_steps and total > self.segment_steps:
                # the tail of a long recording: pad to the full segment so it batches with the others
                frames = np.pad(frames, [(0, seg_frames - len(frames)), (0, 0)])
            yield _Segment(file, first, n, frames)

    def step_logits(self, specs: list[Frames | np.ndarray]) -> list[np.ndarray]:
        """Per-step logits ``[steps, classes]`` of each (centred) spectrogram, segments batched across files.

        (With attention pooling, ``[steps, classes + K·classes]``: the body's packed output, see :func:`split_model`.)
        """
        return self._steps(specs, self._body)

    def step_features(self, specs: list[Frames | np.ndarray]) -> list[np.ndarray]:
        """Per-step backbone features ``[steps, dim]`` of each (centred) spectrogram (see :meth:`embed`)."""
        if self._features is None:
            raise BirdnetError("this model gives no embeddings (an export made before embeddings; export it again)")
        return self._steps(specs, self._features)

    def _steps(self, specs: list[Frames | np.ndarray], body) -> list[np.ndarray]:
        g = self.geometry
        specs = [s if isinstance(s, Frames) else Frames([s]) for s in specs]
        segments = [s for i, spec in enumerate(specs) for s in self._segments(i, spec)]  # views, mostly
        out = [[] for _ in specs]
        # batch segments of equal length; short recordings are padded up to a multiple of 8 steps
        by_len: dict[int, list[_Segment]] = {}
        for s in segments:
            n_frames = len(s.frames)
            if n_frames < g.field + (self.segment_steps - 1) * g.stride:
                padded_steps = min(self.segment_steps, 8 * math.ceil(s.n_steps / 8))
                target = g.field + (padded_steps - 1) * g.stride
                s.frames = np.pad(s.frames, [(0, target - n_frames), (0, 0)])
            by_len.setdefault(len(s.frames), []).append(s)
        for group in by_len.values():
            for i in range(0, len(group), self.batch_size):
                batch = group[i:i + self.batch_size]
                logits = body(np.stack([s.frames for s in batch]))
                for s, lg in zip(batch, logits):
                    out[s.file].append((s.first_step, lg[:s.n_steps]))
        return [np.concatenate([lg for _, lg in sorted(parts, key=lambda p: p[0])]) for parts in out]

    # ------------------------------------------------------------------ pooling
    def window_scores(self, logits: np.ndarray, starts: np.ndarray, window: int,
                      bias: np.ndarray | None = None) -> np.ndarray:
        """Scores ``[len(starts), classes]`` of windows ``[start, start + window)`` (samples).

        Each window pools its steps with the model's own temporal pooling
        (:func:`birdnet_tf.models.layers.pool_packed`, masked where a window runs past the
        last step). ``bias`` (``[classes]``, a combined model's metadata logits of the
        recording) is added to each window's pooled logits before the output activation; a
        combined model given none takes the recording's metadata as unknown (the bias of an
        all-missing row).
        """
        if self.numpy_pooling:
            from birdnet_tf.models.pooling_np import pool_packed_np as pool_packed
        else:
            from birdnet_tf.models.layers import pool_packed

        g = self.geometry
        n_steps = len(logits)
        per_window = max(1, g.steps(g.frames(window)))
        first = np.clip(np.round(np.asarray(starts) / g.stride_samples).astype(np.int64), 0, n_steps - 1)
        if bias is None and self._bias is not None:
            if self._missing_bias is None:
                self._missing_bias = np.asarray(self._bias(missing_metadata(self.cfg, 1)), np.float64)[0]
            bias = self._missing_bias
        shift = 0.0 if bias is None else np.asarray(bias, np.float64)
        if not len(first):
            return np.zeros((0, pooled_classes(logits.shape[1], self.pooling)), np.float32)
        idx = first[:, None] + np.arange(per_window)[None, :]
        valid = idx < n_steps  # windows running past the last step pool what there is
        pooled = pool_packed(logits[np.minimum(idx, n_steps - 1)], self.pooling, mask=valid)
        return self._activate(np.asarray(pooled, np.float64) + shift)

    def window_vectors(self, features: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
        """Vectors ``[len(starts), dim]``: the mean of the per-step ``features`` each window's scores pool."""
        g = self.geometry
        n_steps = len(features)
        if not len(starts) or not n_steps:
            return np.zeros((0, features.shape[-1] if features.ndim == 2 else 0), np.float32)
        per_window = max(1, g.steps(g.frames(window)))
        first = np.clip(np.round(np.asarray(starts) / g.stride_samples).astype(np.int64), 0, n_steps - 1)
        idx = first[:, None] + np.arange(per_window)[None, :]
        valid = (idx < n_steps).astype(np.float64)  # windows running past the last step average what there is
        picked = features[np.minimum(idx, n_steps - 1)].astype(np.float64)
        return ((picked * valid[..., None]).sum(axis=1) / valid.sum(axis=1, keepdims=True)).astype(np.float32)

    def embed(self, source, window_s: float | None = None, hop_s: float | None = None, *, grid: Grid | None = None,
              log=None) -> WindowEmbeddings:
        """Per-window embeddings of one recording from the same single pass that scores it.

        A window on the step grid averages exactly the steps that the window run alone gives
        (given the same band-centring statistics), so its vector equals the window's own.
        """
        grid = grid or self.grid(window_s, hop_s)
        spec, n = self._read_named(source, grid, log)
        feats = self.step_features([self.centre(spec)])[0]
        sr = self.geometry.sample_rate_hz
        starts = grid.starts(n)
        return WindowEmbeddings(None if isinstance(source, np.ndarray) else str(source), starts / sr,
                                grid.ends(starts, n) / sr, self.window_vectors(feats, starts, grid.window), sr, n)

    def _activate(self, pooled: np.ndarray) -> np.ndarray:
        if self.activation == "softmax":
            return _softmax(pooled.astype(np.float64)).astype(np.float32)
        if self.activation == "sigmoid":
            return (1.0 / (1.0 + np.exp(-pooled.astype(np.float64)))).astype(np.float32)
        raise BirdnetError(f"unsupported output activation '{self.activation}'")

    # ------------------------------------------------------------------ files
    def _read(self, source, min_samples: int, log) -> tuple[Frames, int]:
        """Streams one source (a path or a float32 waveform) through the front; decoding warnings go to ``log``."""
        from birdnet_tf.data.audio import iter_audio

        sr = self.geometry.sample_rate_hz
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            blocks = [np.asarray(source, np.float32)] if isinstance(source, np.ndarray) \
                else prefetched(iter_audio(source, sr))
            spec, n = self.spectrogram(blocks, min_samples=min_samples, expected_samples=expected_samples(source, sr))
        for w in caught:
            log(f"warning: {w.message}")
        return spec, n

    def _read_named(self, source, grid: Grid, log) -> tuple[Frames, int]:
        """:meth:`_read` for one recording whose errors name it."""
        try:
            return self._read(source, grid.window, log or (lambda msg: print(msg, file=sys.stderr)))
        except BirdnetError as e:  # decoding errors name the file already
            where = "waveform" if isinstance(source, np.ndarray) else str(source)
            raise type(e)(str(e) if where in str(e) else f"{where}: {e}") from None

    def _bias_of(self, metadata: np.ndarray | None) -> np.ndarray | None:
        if self._bias is None or metadata is None:
            return None
        return np.asarray(self._bias(np.asarray(metadata, np.float32)[None]), np.float64)[0]

    def _windows(self, source, logits: np.ndarray, n: int, grid: Grid, bias) -> WindowScores:
        sr = self.geometry.sample_rate_hz
        starts = grid.starts(n)
        return WindowScores(None if isinstance(source, np.ndarray) else str(source), starts / sr,
                            grid.ends(starts, n) / sr, self.window_scores(logits, starts, grid.window, bias),
                            self.labels, sr, n)

    def score(self, source, window_s=None, hop_s=None, *, grid=None, metadata=None, log=None) -> WindowScores:
        """One recording (see :meth:`birdnet_tf.infer.engine.Scorer.score`); errors name the file."""
        grid = grid or self.grid(window_s, hop_s)
        spec, n = self._read_named(source, grid, log)
        logits = self.step_logits([self.centre(spec)])[0]
        return self._windows(source, logits, n, grid, self._bias_of(metadata))

    def score_many(self, sources, window_s=None, hop_s=None, *, grid=None, metadata=None, progress=False,
                   log=None, group_s: float = 600.0) -> Iterator[tuple[int, WindowScores | None, str | None]]:
        """Scores recordings; yields ``(index, scores, error)`` per source in order of completion.

        ``sources`` are paths (decoded with :func:`iter_audio` at the model's rate) or
        float32 arrays at the model's rate. Files are processed in groups of about
        ``group_s`` seconds of audio whose segments are batched together.

        ``metadata`` (float32 ``[sources, F]``, the encoded metadata of each recording) is
        what a combined audio + metadata model adds as its per-recording bias; without it such
        a model takes every recording's metadata as unknown. Audio models ignore it.
        """
        from tqdm.auto import tqdm

        grid = grid or self.grid(window_s, hop_s)
        sr = self.geometry.sample_rate_hz
        log = log or (lambda msg: print(msg, file=sys.stderr))
        bar = tqdm(total=len(sources), desc="predict", unit="file", disable=not progress or len(sources) < 2)
        group: list[tuple[int, object, Frames, int]] = []
        group_samples = 0

        biases = None
        if self._bias is not None:
            rows = missing_metadata(self.cfg, len(sources)) if metadata is None else np.asarray(metadata, np.float32)
            biases = np.asarray(self._bias(rows), np.float64) if len(rows) else rows

        def flush():
            specs = [self.centre(spec) for _, _, spec, _ in group]  # in place
            for (index, source, _, n), logits in zip(group, self.step_logits(specs)):
                yield index, self._windows(source, logits, n, grid, None if biases is None else biases[index]), None
                bar.update()
            group.clear()

        for index, source in enumerate(sources):
            try:
                spec, n = self._read(source, grid.window, log)
            except (AudioDecodeError, BirdnetError) as e:
                bar.update()
                yield index, None, str(e)
                continue
            group.append((index, source, spec, n))
            group_samples += n
            if group_samples >= group_s * sr:
                yield from flush()
                group_samples = 0
        if group:
            yield from flush()
        bar.close()
