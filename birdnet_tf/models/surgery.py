"""Model surgery: a trained model cut at its temporal pooling for whole-recording inference.

:func:`split_model` splits a :func:`~birdnet_tf.models.build.build_model` model into its
``front`` (waveform → mel frames, pointwise in time) and ``body`` (frames → per-step
logits, fully convolutional in time); :func:`probe_geometry` finds how the body's output
steps map to frames (:class:`StepGeometry`). The streaming engine
(:mod:`birdnet_tf.infer.whole`) and the export's whole-recording signatures
(:mod:`birdnet_tf.export`) both build on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from birdnet_tf.config import Config, split_kind
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


def pooled_classes(width: int, method: str) -> int:
    """Classes in a body output with ``width`` values per step (see :func:`split_model`)."""
    from birdnet_tf.models.pooling_np import attention_heads

    return width // (1 + attention_heads(method))


def split_model(model, features: bool = False):
    """Splits a :func:`~birdnet_tf.models.build.build_model` model: ``(front, body, facts)``.

    With ``features`` the body gives the backbone's per-step features instead of logits (the
    input of the ``frame_logits`` layer, ``[batch, steps, dim]``: what embeddings average), and
    ``facts`` has ``dim``.

    ``front``: waveform ``[batch, samples]`` → magnitude-scaled mel frames ``[batch, frames, bands]``;
    ``body``: (band-centred) frames → per-step logits ``[batch, steps, classes]``; ``facts``:
    ``center`` (bool), ``pooling`` (the temporal pooling method), ``activation``, and for a
    combined audio + metadata model ``metadata: True`` (its bias comes from :func:`metadata_bias_model`).

    With ``attention:K`` pooling the body also gives each step's attention logits (a
    projection of that step's features only), packed after the class logits:
    ``[batch, steps, classes + K·classes]`` (``[..., classes + k·classes + c]`` is head
    ``k``'s logit for class ``c``); :func:`birdnet_tf.models.layers.pool_packed` unpacks it.
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
    if with_metadata and split_kind(model.get_layer("temporal_pooling").method)[0] == "noisy-or":
        raise BirdnetError("noisy-or pooling does not commute with the metadata network's bias, so a combined "
                           "audio + metadata model with it is scored window by window")
    wave_in = next((t for t in model.inputs if t.name.split(":")[0] == "waveform"), None) \
        if len(model.inputs) > 1 else model.input
    front = keras.Model(wave_in, front_out, name="front")
    pooling = model.get_layer("temporal_pooling")
    if features:
        body_out = model.get_layer("frame_logits").input
    elif getattr(pooling, "heads", 0):
        ins = pooling.input if isinstance(pooling.input, (list, tuple)) else [pooling.input]
        body_out = _pack_attention(pooling, name="packed_attention")(*ins)
    else:
        body_out = model.get_layer("frame_logits").output
    body = keras.Model(body_in, body_out, name="body")
    facts = {"center": center, "pooling": pooling.method,
             "activation": model.get_layer("scores").get_config()["activation"]}
    if with_metadata:
        facts["metadata"] = True
    if features:
        facts["dim"] = int(body_out.shape[-1])
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
