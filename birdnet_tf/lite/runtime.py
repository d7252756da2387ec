"""LiteRT inference of ``birdnet-tf tflite`` outputs, without TensorFlow.

Two ways to score audio with the flatbuffers of an output folder:

* :class:`TFLiteModel` — ``model_<q>.tflite``: one fixed-length window in, its scores out
  (the window contract of :mod:`birdnet_tf.tflite`).
* :class:`LiteModel` — the folder: besides the window model, the *whole-recording halves*
  ``front_<q>.tflite`` (waveform → log-mel frames, a fixed ``front_samples`` per call) and
  ``body_<q>.tflite`` (frames → per-step logits over fixed ``segment_frames``, any batch),
  run by the same streaming engine as the SavedModel
  (:class:`birdnet_tf.infer.whole.WholeRecordingModel`: band centring, overlapping
  segments, pooling the steps of each window in NumPy). The front is pointwise in time and
  the body fully convolutional, so cutting a recording into fixed chunks (the last one
  zero-padded, its extra output dropped) gives exactly the frames and steps of one pass.
  With ``embed_<q>.tflite`` (frames → per-step features, the body cut before its class logits)
  the same engine gives per-window embeddings (:meth:`LiteModel.embed_model`, for ``birdnet-tf
  embed`` / ``search``): the mean of each window's steps, in NumPy.

Imports: NumPy, the LiteRT interpreter (``ai_edge_litert``), and the package's TF-free
modules (config, audio decoding, pooling); never TensorFlow or Keras.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from birdnet_tf.errors import BirdnetError

#: what LiteRT prints to fd 2 each time it loads a model on a CPU
LITERT_NOISE = re.compile(rb"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU")

#: Quantizations a folder may hold, in the order :class:`LiteModel` prefers them.
PREFERRED = ("float32", "float16", "int8")


def load_interpreter(content: bytes, where, num_threads: int | None = None):
    """A LiteRT interpreter of a flatbuffer, its tensors allocated (LiteRT's start-up line hidden)."""
    from ai_edge_litert.interpreter import Interpreter

    from birdnet_tf.fileio import filtered_native_stderr

    try:
        with filtered_native_stderr(LITERT_NOISE):
            interp = Interpreter(model_content=content, num_threads=num_threads)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise BirdnetError(f"{where}: LiteRT cannot load it ({str(e).splitlines()[0][:200]})") from None
    return interp


def sidecar_path(path: str | os.PathLike) -> Path:
    """``model_x.tflite`` → ``model_x.json`` (the sidecar with labels, config and verification)."""
    return Path(path).with_suffix(".json")


class TFLiteModel:
    """A ``.tflite`` written by ``birdnet-tf tflite``, run with LiteRT: ``scores = m(waveforms)``.

    Attributes ``labels``, ``sample_rate_hz``, ``window_samples``, ``quantization``,
    ``config`` and ``meta`` (the whole sidecar) come from the sidecar JSON next to the file.

    Args:
        path: The ``.tflite`` file; its sidecar is ``<name>.json`` beside it.
        num_threads: LiteRT CPU threads (default: LiteRT's choice).
        content: The flatbuffer itself, when it is not (yet) on disk (``path`` then only names it).
        meta: The sidecar's content, with ``content``.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None, *, content: bytes | None = None,
                 meta: dict | None = None):
        from birdnet_tf.config import Config

        self.path = Path(path)
        if content is None:
            if not self.path.is_file():
                raise BirdnetError(f"{self.path}: TFLite model file does not exist")
            side = sidecar_path(self.path)
            if not side.is_file():
                raise BirdnetError(f"{self.path}: no sidecar {side.name} beside it (labels, sample rate); "
                                   "write the model with 'birdnet-tf tflite RUN_DIR --out DIR'")
            try:
                meta = json.loads(side.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BirdnetError(f"{side}: not valid JSON ({e})") from None
            content = self.path.read_bytes()
        if not isinstance(meta, dict) or not {"labels", "sample_rate_hz", "window_samples"} <= set(meta):
            raise BirdnetError(f"{sidecar_path(self.path)}: sidecar lacks labels, sample_rate_hz or window_samples")
        self.meta = meta
        self.labels: list[str] = list(meta["labels"])
        self.sample_rate_hz = int(meta["sample_rate_hz"])
        self.window_samples = int(meta["window_samples"])
        self.quantization: str = meta.get("quantization", "float32")
        self.config = Config.from_dict(meta["config"], str(sidecar_path(self.path)), strict=False) \
            if "config" in meta else None
        self._interp = load_interpreter(content, self.path, num_threads)
        inp, out = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise BirdnetError(f"{self.path}: expected one input and one output, found {len(inp)} and {len(out)}")
        self._in, self._out = inp[0]["index"], out[0]["index"]
        shape = [int(d) for d in inp[0]["shape_signature"]]
        if len(shape) != 2 or shape[1] != self.window_samples:
            raise BirdnetError(f"{self.path}: input shape {shape} does not match the sidecar's window "
                               f"of {self.window_samples} samples")
        self.dynamic_batch = shape[0] == -1
        self._batch = 1

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def scorer(self, batch_size: int = 32):
        """This model as a :class:`~birdnet_tf.infer.engine.Scorer` of whole recordings (sliding windows of
        ``window_samples``; :class:`~birdnet_tf.infer.sliding.SlidingScorer`, TensorFlow-free)."""
        from birdnet_tf.infer.sliding import SlidingScorer

        return SlidingScorer(self, batch_size)

    def _fit(self, waveforms) -> np.ndarray:
        """``[batch, window_samples]`` float32: shorter rows looped, longer ones cut (as predict's windows)."""
        x = np.asarray(waveforms, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise BirdnetError(f"{self.path}: waveforms must be [batch, samples], got shape {x.shape}")
        n = self.window_samples
        if x.shape[1] == n:
            return np.ascontiguousarray(x)
        if x.shape[1] == 0:
            return np.zeros((len(x), n), np.float32)
        if x.shape[1] > n:
            return np.ascontiguousarray(x[:, :n])
        return np.stack([np.resize(row, n) for row in x])

    def __call__(self, waveforms) -> np.ndarray:
        """``float32 [batch, samples]`` → ``[batch, classes]`` scores.

        Rows of another length than ``window_samples`` are looped (shorter) or cut to their
        first window (longer). A batch-1 model runs once per row; a dynamic-batch one once.
        """
        x = self._fit(waveforms)
        if not len(x):
            return np.zeros((0, self.n_classes), np.float32)
        if self.dynamic_batch:
            if len(x) != self._batch:
                self._interp.resize_tensor_input(self._in, [len(x), self.window_samples])
                self._interp.allocate_tensors()
                self._batch = len(x)
            self._interp.set_tensor(self._in, x)
            self._interp.invoke()
            return self._interp.get_tensor(self._out).copy()
        rows = []
        for row in x:
            self._interp.set_tensor(self._in, row[None])
            self._interp.invoke()
            rows.append(self._interp.get_tensor(self._out)[0].copy())
        return np.stack(rows)


class FixedNet:
    """A flatbuffer with one input of fixed shape but for a dynamic batch (``-1``): ``y = net(x)``."""

    def __init__(self, path: Path, num_threads: int | None = None):
        if not path.is_file():
            raise BirdnetError(f"{path}: TFLite model file does not exist")
        self.path = path
        self._interp = load_interpreter(path.read_bytes(), path, num_threads)
        inp, out = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise BirdnetError(f"{path}: expected one input and one output, found {len(inp)} and {len(out)}")
        self._in, self._out = inp[0]["index"], out[0]["index"]
        self.shape = [int(d) for d in inp[0]["shape_signature"]]
        self._batch = int(inp[0]["shape"][0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if list(x.shape[1:]) != self.shape[1:]:
            raise BirdnetError(f"{self.path}: input of shape {list(x.shape)}, the model takes {self.shape}")
        if len(x) != self._batch:
            if self.shape[0] != -1:
                return np.concatenate([self(x[i:i + self._batch]) for i in range(0, len(x), self._batch)])
            self._interp.resize_tensor_input(self._in, [len(x), *self.shape[1:]])
            self._interp.allocate_tensors()
            self._batch = len(x)
        self._interp.set_tensor(self._in, x)
        self._interp.invoke()
        return self._interp.get_tensor(self._out).copy()


def _front(net: FixedNet, hop: int, n_fft: int):
    """``[1, samples]`` → ``[1, frames, bands]`` for any length, in chunks of the net's fixed input."""
    size = net.shape[1]
    chunk_frames = 1 + (size - n_fft) // hop

    def front(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)[0]
        total = 0 if len(x) < n_fft else 1 + (len(x) - n_fft) // hop
        parts = []
        for first in range(0, total, chunk_frames):
            seg = x[first * hop:first * hop + size]
            if len(seg) < size:
                seg = np.pad(seg, (0, size - len(seg)))
            parts.append(net(seg[None])[0, :min(chunk_frames, total - first)])
        return np.concatenate(parts)[None]

    return front


def _body(net: FixedNet, field: int, stride: int):
    """``[batch, frames, bands]`` → ``[batch, steps, classes]`` (or ``dim`` features, for the embedding half)
    for up to the net's fixed frames (zero-padded)."""
    size = net.shape[1]

    def body(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        n = x.shape[1]
        if n > size:
            raise BirdnetError(f"{net.path}: a segment of {n} frames is longer than the body's {size}")
        steps = 0 if n < field else 1 + (n - field) // stride
        if n < size:
            x = np.pad(x, [(0, 0), (0, size - n), (0, 0)])
        return net(x)[:, :steps]

    return body


def is_tflite_folder(path: str | os.PathLike) -> bool:
    """True for a ``birdnet-tf tflite`` output folder or one of its ``.tflite`` files."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".tflite"
    return p.is_dir() and any(p.glob("model_*.tflite"))


class LiteModel:
    """A ``birdnet-tf tflite`` output folder for :func:`birdnet_tf.infer.predict.predict`, without TensorFlow.

    Has what ``predict`` reads of an export: ``labels``, ``sample_rate_hz``, ``config``,
    ``extra["whole_recording"]`` (the halves' facts, when the folder has them),
    ``m(waveforms)`` (the window model, for ``--engine sliding``) and :meth:`whole_model`; and for
    ``birdnet-tf embed``/``search``, :meth:`embed_model` (the engine with the embedding half).

    Args:
        path: The folder (its float32 model, else float16, else int8) or one ``model_<q>.tflite``.
        num_threads: LiteRT CPU threads (default: LiteRT's choice).
    """

    metadata_encoder = None  # TFLite models are audio-only

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        p = Path(path)
        if p.is_dir():
            found = [q for q in PREFERRED if (p / f"model_{q}.tflite").is_file()]
            if not found:
                raise BirdnetError(f"{p}: no model_<quantization>.tflite in it (write one with "
                                   "'birdnet-tf tflite RUN_DIR --out DIR')")
            p = p / f"model_{found[0]}.tflite"
        self.path = p
        self.num_threads = num_threads
        self.window = TFLiteModel(p, num_threads=num_threads)
        self.labels, self.sample_rate_hz = self.window.labels, self.window.sample_rate_hz
        self.quantization = self.window.quantization
        self.config = self.window.config
        whole = self.window.meta.get("whole_recording")
        self.extra = {"whole_recording": whole} if whole else {}
        if whole and self.config is None:
            raise BirdnetError(f"{sidecar_path(p)}: sidecar has whole-recording halves but no config")

    def __call__(self, waveforms: np.ndarray, metadata=None) -> np.ndarray:
        """Scores of windows of exactly the window model's length (``--engine sliding``)."""
        x = np.asarray(waveforms, np.float32)
        if x.ndim == 2 and x.shape[1] != self.window.window_samples:
            raise BirdnetError(f"{self.path}: takes windows of {self.window.window_samples / self.sample_rate_hz:g} s "
                               f"only, not {x.shape[1] / self.sample_rate_hz:g} s; use --engine whole for others")
        return self.window(x)

    def whole_model(self, **kwargs):
        """The streaming whole-recording engine over the ``front``/``body`` flatbuffers."""
        facts = self.extra.get("whole_recording")
        if not facts:
            raise BirdnetError(f"{self.path}: no whole-recording halves (front/body) beside it; "
                               "write them again with a newer 'birdnet-tf tflite'")
        return whole_engine(self.path.parent, facts, self.config, self.num_threads, **kwargs)

    @property
    def has_embeddings(self) -> bool:
        """True when the folder's sidecar names an embedding half (``embed_<q>.tflite``)."""
        return bool(self.extra.get("whole_recording", {}).get("embed"))

    def embed_model(self, **kwargs):
        """The streaming engine with the embedding half: its ``embed(source, …)`` gives per-window vectors.

        Raises:
            BirdnetError: A folder written before TFLite embeddings (no ``embed_<q>.tflite`` in its
                sidecar), or a missing half file.
        """
        if not self.has_embeddings:
            raise BirdnetError(f"{self.path}: no embedding half (embed_{self.quantization}.tflite) in this TFLite "
                               "folder: it was written before TFLite embeddings; write it again with "
                               "'birdnet-tf tflite RUN_DIR --out DIR --force'")
        return whole_engine(self.path.parent, self.extra["whole_recording"], self.config, self.num_threads,
                            embeddings=True, **kwargs)

    def embedding_files(self) -> list[Path]:
        """The flatbuffers the embeddings depend on (the front and the embedding half)."""
        facts = self.extra.get("whole_recording", {})
        return [self.path.parent / facts[k] for k in ("front", "embed") if facts.get(k)]


def whole_engine(folder: Path, facts: dict, cfg, num_threads: int | None = None, embeddings: bool = False,
                 **kwargs):
    """:class:`~birdnet_tf.infer.whole.WholeRecordingModel` over the halves in ``folder`` that ``facts``
    (a sidecar's ``whole_recording``) names; ``kwargs`` go to it (``batch_size``, ``segment_s``…).
    ``embeddings``: also load the embedding half ``facts["embed"]`` (its ``embed`` method then works)."""
    from birdnet_tf.infer.whole import WholeRecordingModel
    from birdnet_tf.models.surgery import StepGeometry

    front = FixedNet(Path(folder) / facts["front"], num_threads)
    body = FixedNet(Path(folder) / facts["body"], num_threads)
    features = FixedNet(Path(folder) / facts["embed"], num_threads) if embeddings else None
    sr = cfg.audio.sample_rate_hz
    geo = StepGeometry(sr, int(facts["hop_samples"]), int(facts["n_fft"]), int(facts["stride_frames"]),
                       int(facts["field_frames"]))
    kwargs.setdefault("segment_s", int(facts["segment_steps"]) * geo.stride_samples / sr)
    kwargs.setdefault("front_s", int(facts["front_frames"]) * geo.hop / sr)
    kwargs.setdefault("numpy_pooling", True)
    if features is not None:
        kwargs["features"] = _body(features, geo.field, geo.stride)
    return WholeRecordingModel(_front(front, geo.hop, geo.n_fft), _body(body, geo.field, geo.stride), cfg, geo,
                               bool(facts["center"]), facts["pooling"], facts["activation"], **kwargs)
