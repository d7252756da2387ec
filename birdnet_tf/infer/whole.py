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
from birdnet_tf.errors import BirdnetError


@dataclass(frozen=True)
class StepGeometry:
    """How output steps map to frames and samples: step ``s`` sees frames ``[s·stride, s·stride + field)``."""

    sample_rate_hz: int
    hop: int  # samples between frames
    n_fft: int  # samples per frame
    stride: int  # frames between output steps
    field: int  # frames one output step sees

    def frames(self, n_samples: int) -> int:
        return 0 if n_samples < self.n_fft else 1 + (n_samples - self.n_fft) // self.hop

    def steps(self, n_frames: int) -> int:
        return 0 if n_frames < self.field else 1 + (n_frames - self.field) // self.stride

    @property
    def stride_samples(self) -> int:
        return self.stride * self.hop

    @property
    def field_samples(self) -> int:
        """Shortest input that gives one output step."""
        return self.n_fft + (self.field - 1) * self.hop


def probe_geometry(body, n_mels: int, hop: int, n_fft: int, sample_rate_hz: int) -> StepGeometry:
    """Finds stride and receptive field of ``body`` (frames → steps) from symbolic shapes."""

    def steps(frames: int) -> int:
        try:
            n = body.compute_output_shape((1, frames, n_mels))[1]
        except ValueError:
            return 0
        return max(0, int(n)) if n is not None else 0

    lo, hi = 1, 1
    while steps(hi) < 1:
        lo, hi = hi, hi * 2
        if hi > 1 << 20:
            raise BirdnetError("the model gives no output step for any input length up to 2^20 frames")
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if steps(mid) >= 1 else (mid + 1, hi)
    field = hi
    stride = 1
    while steps(field + stride) < 2:
        stride += 1
    geo = StepGeometry(sample_rate_hz, hop, n_fft, stride, field)
    for frames in range(field, field + 4 * stride + 1):
        if steps(frames) != geo.steps(frames):
            raise BirdnetError(f"the model's output steps are not a regular grid over frames "
                               f"({frames} frames give {steps(frames)} steps, expected {geo.steps(frames)}); "
                               "whole-recording inference needs a fully convolutional model")
    return geo


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _attention_heads(method: str) -> int:
    """Heads ``K`` of ``attention:K`` pooling, 0 for the other methods."""
    kind, _, param = method.partition(":")
    return int(float(param)) if kind == "attention" and param else (1 if kind == "attention" else 0)


def pooled_classes(width: int, method: str) -> int:
    """Classes in a body output with ``width`` values per step (see :func:`split_model`)."""
    return width // (1 + _attention_heads(method))


def _noisy_or_np(logits: np.ndarray) -> np.ndarray:
    """:func:`birdnet_tf.models.layers.noisy_or_logits` over axis 1, in float64."""
    x = logits.astype(np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        ls = np.where(x < -15.0, x, np.log(np.logaddexp(0.0, np.maximum(x, -15.0))))
    m = ls.max(axis=1)
    lam = m + np.log(np.sum(np.exp(ls - m[:, None]), axis=1))  # log Σ softplus(x_t)
    a = np.exp(lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a < 1e-3, lam + a / 2 + a * a / 24,
                        np.where(a < np.log(2.0), np.log(-np.expm1(-a)) + a, np.log1p(-np.exp(-a)) + a))


def _pool_steps(logits: np.ndarray, method: str) -> np.ndarray:
    """``[windows, steps, classes]`` → ``[windows, classes]``, as :class:`TemporalPooling` computes it.

    For ``attention:K`` the last axis holds the body's packed output (:func:`split_model`):
    ``classes`` logits, then ``K × classes`` attention logits; each head's weights are the
    softmax of its attention logits over the given steps.
    """
    kind, _, param = method.partition(":")
    if kind == "max":
        return logits.max(axis=1)
    if kind == "mean":
        return logits.mean(axis=1)
    if kind == "noisy-or":
        return _noisy_or_np(logits)
    if kind == "attention":
        heads = _attention_heads(method)
        c = pooled_classes(logits.shape[-1], method)
        x = logits[..., :c].astype(np.float64)
        att = logits[..., c:].astype(np.float64).reshape(*logits.shape[:2], heads, c)
        w = np.exp(att - att.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        return np.mean(np.sum(w * x[:, :, None, :], axis=1), axis=1)
    a = float(param) if param else 1.0
    m = logits.max(axis=1, keepdims=True)
    return (np.log(np.mean(np.exp(a * (logits - m)), axis=1)) + a * m[:, 0]) / a


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


def split_model(model):
    """Splits a :func:`~birdnet_tf.models.build.build_model` model: ``(front, body, facts)``.

    ``front``: waveform ``[batch, samples]`` → magnitude-scaled mel frames ``[batch, frames, bands]``;
    ``body``: (band-centred) frames → per-step logits ``[batch, steps, classes]``; ``facts``:
    ``center`` (bool), ``pooling`` (the temporal pooling method), ``activation``, and for a
    combined audio + metadata model ``metadata: True`` (its bias comes from :func:`metadata_bias_model`).

    With ``attention:K`` pooling the body also gives each step's attention logits (a
    projection of that step's features only), packed after the class logits:
    ``[batch, steps, classes + K·classes]`` (``[..., classes + k·classes + c]`` is head
    ``k``'s logit for class ``c``); :func:`_pool_steps` and the export's ``windows``
    signature unpack it.
    """
    import keras

    names = {layer.name for layer in model.layers}
    if "chunk_spectrogram" in names or any(layer.__class__.__name__ == "ChunkSpectrogram" for layer in model.layers):
        raise BirdnetError("the 2018 baseline's chunk models normalise each chunk's spectrogram on its own, so "
                           "their windows are scored one by one (no whole-recording pass)")
    missing = {"magnitude", "frame_logits", "temporal_pooling", "scores"} - names
    if missing:
        raise BirdnetError(f"model '{model.name}' lacks the layers {sorted(missing)} that whole-recording "
                           "inference splits it at (not built by birdnet_tf.models.build.build_model?)")
    magnitude = model.get_layer("magnitude")
    if not getattr(magnitude, "pointwise_in_time", True):  # PCEN: a recursive smoother over frames
        raise BirdnetError(f"model '{model.name}' has a magnitude layer ({type(magnitude).__name__}) that is "
                           "recursive in time, so the recording cannot be cut into segments exactly; "
                           "windows are scored one by one instead")
    center = "band_centering" in names
    front_out = magnitude.output
    body_in = model.get_layer("band_centering").output if center else front_out
    with_metadata = "combined_logits" in names
    if with_metadata and model.get_layer("temporal_pooling").method.partition(":")[0] == "noisy-or":
        raise BirdnetError("noisy-or pooling does not commute with the metadata network's bias, so a combined "
                           "audio + metadata model with it is scored window by window")
    wave_in = next((t for t in model.inputs if t.name.split(":")[0] == "waveform"), None) \
        if len(model.inputs) > 1 else model.input
    front = keras.Model(wave_in, front_out, name="front")
    pooling = model.get_layer("temporal_pooling")
    if getattr(pooling, "heads", 0):
        ins = pooling.input if isinstance(pooling.input, (list, tuple)) else [pooling.input]
        body_out = _pack_attention(pooling, name="packed_attention")(*ins)
    else:
        body_out = model.get_layer("frame_logits").output
    body = keras.Model(body_in, body_out, name="body")
    facts = {"center": center, "pooling": pooling.method,
             "activation": model.get_layer("scores").get_config()["activation"]}
    if with_metadata:
        facts["metadata"] = True
    return front, body, facts


def metadata_bias_model(model):
    """The metadata half of a combined model: ``metadata (batch, F)`` → ``meta_logits (batch, classes)``.

    Returns None for a model without the layers ``combined_logits`` and ``meta_logits``.
    """
    import keras

    names = {layer.name for layer in model.layers}
    if not {"combined_logits", "meta_logits"} <= names:
        return None
    meta_in = next(t for t in model.inputs if t.name.split(":")[0] == "metadata")
    return keras.Model(meta_in, model.get_layer("meta_logits").output, name="metadata_bias")


def missing_metadata(cfg: Config, n: int) -> np.ndarray:
    """``[n, F]`` metadata rows of ``cfg``'s encoding saying "all unknown" (indicators 1, values 0)."""
    from birdnet_tf.models.metadata import feature_names

    row = np.array([name.endswith("_missing") for name in feature_names(cfg)], np.float32)
    return np.repeat(row[None], n, axis=0)


def _pack_attention_layer():
    import keras
    import tensorflow as tf

    class PackAttention(keras.layers.Layer):
        """Per-step class logits and the pooling layer's attention logits in one tensor (not saved)."""

        def __init__(self, pooling, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.pooling = pooling

        def call(self, logits, features=None):
            att = self.pooling.attention_logits(logits, features)  # [batch, steps, heads, classes]
            shape = tf.shape(att)
            flat = tf.reshape(att, tf.stack([shape[0], shape[1], shape[2] * shape[3]]))
            return tf.concat([tf.cast(logits, tf.float32), flat], axis=-1)

    return PackAttention


def _pack_attention(pooling, name: str):
    """A :class:`PackAttention` layer around ``pooling`` (the class is defined on first use: no Keras at import)."""
    return _pack_attention_layer()(pooling, name=name)


def _prefetched(blocks: Iterator[np.ndarray], depth: int = 4) -> Iterator[np.ndarray]:
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


def _expected(source, sample_rate_hz: int) -> int:
    """Samples a source will give at ``sample_rate_hz``, from its header (0 when unknown)."""
    if isinstance(source, np.ndarray):
        return len(source)
    try:
        from birdnet_tf.data.audio import header_frames

        frames, rate = header_frames(source)
        return int(frames * sample_rate_hz / rate) + 1
    except Exception:  # noqa: BLE001 - only a size hint; decoding reports real problems
        return 0


class WholeRecordingModel:
    """A trained model run once per recording (see the module docstring).

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
    """

    def __init__(self, front, body, cfg: Config, geometry: StepGeometry, center: bool, pooling: str,
                 activation: str, segment_s: float = 20.0, batch_size: int = 2, front_s: float = 10.0,
                 metadata_bias=None):
        self._front, self._body = front, body
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
        return cls(lambda x: f(x).numpy(), lambda x: b(x).numpy(), cfg, geometry, **facts, metadata_bias=bias,
                   **kwargs)

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
        return cls(lambda x: front(waveform=x)["frames"].numpy(), lambda x: body(frames=x)["logits"].numpy(),
                   cfg, geometry, facts["center"], facts["pooling"], facts["activation"], metadata_bias=bias,
                   **kwargs)

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
                logits = self._body(np.stack([s.frames for s in batch]))
                for s, lg in zip(batch, logits):
                    out[s.file].append((s.first_step, lg[:s.n_steps]))
        return [np.concatenate([lg for _, lg in sorted(parts, key=lambda p: p[0])]) for parts in out]

    # ------------------------------------------------------------------ pooling
    def window_scores(self, logits: np.ndarray, starts: np.ndarray, window: int,
                      bias: np.ndarray | None = None) -> np.ndarray:
        """Scores ``[len(starts), classes]`` of windows ``[start, start + window)`` (samples).

        ``bias`` (``[classes]``, a combined model's metadata logits of the recording) is added
        to each window's pooled logits before the output activation; a combined model given
        none takes the recording's metadata as unknown (the bias of an all-missing row).
        """
        g = self.geometry
        n_steps = len(logits)
        per_window = max(1, g.steps(g.frames(window)))
        first = np.clip(np.round(np.asarray(starts) / g.stride_samples).astype(np.int64), 0, n_steps - 1)
        scores = np.empty((len(first), pooled_classes(logits.shape[1], self.pooling)), np.float32)
        if bias is None and self._bias is not None:
            if self._missing_bias is None:
                self._missing_bias = np.asarray(self._bias(missing_metadata(self.cfg, 1)), np.float64)[0]
            bias = self._missing_bias
        shift = 0.0 if bias is None else np.asarray(bias, np.float64)
        full = first + per_window <= n_steps
        if full.any():
            idx = first[full, None] + np.arange(per_window)[None, :]
            scores[full] = self._activate(_pool_steps(logits[idx], self.pooling) + shift)
        for i in np.nonzero(~full)[0]:  # windows running past the last step pool what there is
            scores[i] = self._activate(_pool_steps(logits[None, first[i]:], self.pooling) + shift)[0]
        return scores

    def _activate(self, pooled: np.ndarray) -> np.ndarray:
        if self.activation == "softmax":
            return _softmax(pooled.astype(np.float64)).astype(np.float32)
        if self.activation == "sigmoid":
            return (1.0 / (1.0 + np.exp(-pooled.astype(np.float64)))).astype(np.float32)
        raise BirdnetError(f"unsupported output activation '{self.activation}'")

    # ------------------------------------------------------------------ files
    def score_files(self, sources: list, window_s: float | None = None, hop_s: float | None = None,
                    file_pooling: str | None = None, group_s: float = 600.0, progress: bool = False,
                    log=None, metadata: np.ndarray | None = None) -> Iterator[tuple[int, dict | None, str | None]]:
        """Scores recordings; yields ``(index, result, error)`` per source in order of completion.

        ``sources`` are paths (decoded with :func:`iter_audio` at the model's rate) or
        float32 arrays at the model's rate. ``result`` has ``n_samples``, ``start_s``,
        ``end_s`` and ``scores [windows, classes]`` for windows of ``window_s`` (default:
        the model's excerpt) every ``hop_s`` (default: the window, or the config's eval
        hop for per-file windows), and ``file_scores [classes]`` = the windows pooled with
        ``file_pooling`` (default: the config's). Files are processed in groups of about
        ``group_s`` seconds of audio whose segments are batched together.

        ``metadata`` (float32 ``[sources, F]``, the encoded metadata of each recording) is
        what a combined audio + metadata model adds as its per-recording bias; without it such
        a model takes every recording's metadata as unknown. Audio models ignore it.
        """
        from tqdm.auto import tqdm

        from birdnet_tf.data.audio import iter_audio
        from birdnet_tf.errors import AudioDecodeError
        from birdnet_tf.evaluate.pooling import pool

        cfg, sr = self.cfg, self.geometry.sample_rate_hz
        per_file = window_s is None
        window = int(round((window_s or cfg.data.excerpt_s) * sr))
        hop = int(round((hop_s or (cfg.data.eval_hop_s if per_file else window_s)) * sr))
        file_pooling = file_pooling or cfg.data.file_pooling
        log = log or (lambda msg: print(msg, file=sys.stderr))
        bar = tqdm(total=len(sources), desc="predict", unit="file", disable=not progress or len(sources) < 2)
        group: list[tuple[int, np.ndarray, int]] = []
        group_samples = 0

        biases = None
        if self._bias is not None:
            rows = missing_metadata(cfg, len(sources)) if metadata is None else np.asarray(metadata, np.float32)
            biases = np.asarray(self._bias(rows), np.float64) if len(rows) else rows

        def flush():
            specs = [self.centre(spec) for _, spec, _ in group]  # in place
            for (index, _, n), logits in zip(group, self.step_logits(specs)):
                if per_file:
                    from birdnet_tf.data.windows import window_starts

                    starts = window_starts(n, window, hop)
                else:
                    starts = np.arange(0, max(n, 1), hop, dtype=np.int64)
                    starts = starts[(starts == 0) | (starts + 0.1 * sr < n)]  # no slivers under 0.1 s
                scores = self.window_scores(logits, starts, window, None if biases is None else biases[index])
                yield index, {"n_samples": n, "start_s": starts / sr, "end_s": np.minimum(starts + window, n) / sr,
                              "scores": scores, "file_scores": pool(scores, file_pooling)}, None
                bar.update()
            group.clear()

        for index, source in enumerate(sources):
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    blocks = [np.asarray(source, np.float32)] if isinstance(source, np.ndarray) \
                        else _prefetched(iter_audio(source, sr))
                    spec, n = self.spectrogram(blocks, min_samples=window, expected_samples=_expected(source, sr))
                for w in caught:
                    log(f"warning: {w.message}")
            except (AudioDecodeError, BirdnetError) as e:
                bar.update()
                yield index, None, str(e)
                continue
            group.append((index, spec, n))
            group_samples += n
            if group_samples >= group_s * sr:
                yield from flush()
                group_samples = 0
        if group:
            yield from flush()
        bar.close()
