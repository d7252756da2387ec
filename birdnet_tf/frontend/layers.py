"""The frontend's Keras layers in TensorFlow ops: waveform → spectrogram, and its augmentation.

Shape contract of the mel path: ``(batch, samples)`` float32 waveform in [-1, 1] at the
model's rate → ``(batch, frames, mels)`` float32, ``frames = 1 + (max(samples, n_fft) -
n_fft) // hop``.

Because the frontend is part of the model it runs wherever the model runs (on the
GPU when there is one), and an exported SavedModel takes a raw waveform. All layers
here compute in float32 even under a mixed-precision policy: an STFT in float16
loses the quiet bands birds live in.

The OFAI 2018 system's learnable mel filterbank is here (``MelSpectrogram(learnable=True)``,
optionally stretched at random per example in training); its learnable magnitude scalings
and PCEN are in :mod:`birdnet_tf.frontend.magnitudes`. Each starts exactly where its fixed
counterpart is, and stores its parameters as offsets from that start, so the optimizer's
(decoupled) weight decay pulls a learned frontend back towards the fixed one rather than
towards zero. :class:`ChunkSpectrogram` wraps the 2018 baseline's chunk spectrogram
(:mod:`birdnet_tf.frontend.chunks`). Every layer registers with Keras under the package
name ``birdnet_tf`` when this module is imported.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from birdnet_tf.frontend.chunks import check_chunk_config, chunk_config, chunk_spectrogram
from birdnet_tf.frontend.mel import hz_to_mel, mel_to_hz, triangular_filterbank
from birdnet_tf.frontend.stft import frame_blocks

__all__ = ["PACKAGE", "BandCentering", "ChunkSpectrogram", "MelSpectrogram", "SpecAugment"]

#: Keras registration package of the frontend's layers (saved models name them ``birdnet_tf>Class``).
PACKAGE = "birdnet_tf"


@keras.saving.register_keras_serializable(package=PACKAGE)
class MelSpectrogram(keras.layers.Layer):
    """Waveform → mel spectrogram (HTK mel scale, triangular filters without area normalisation).

    Matches ``librosa.feature.melspectrogram(htk=True, norm=None, center=False)``
    with a periodic Hann window.

    Args:
        sample_rate_hz: Sampling rate of the input waveform.
        n_fft: STFT frame length and FFT size in samples.
        hop_length: Samples between frames.
        n_mels: Number of mel bands.
        fmin_hz, fmax_hz: Edges of the filterbank.
        power: 1 for magnitude, 2 for power.
        quantization_safe: Computes the same spectrogram (equal up to float32 rounding) in a
            form that survives TFLite weight quantization (see :meth:`call`); slower on a
            CPU, so training leaves it off and :mod:`birdnet_tf.tflite` turns it on.
        learnable: OFAI's ``mel_learn``: the ``n_mels + 2`` corner positions of the triangles
            (in mel; corner ``i + 1`` is the centre of band ``i``) are trainable, stored as the
            weight ``mel_offsets`` (mel, relative to the fixed bank's HTK positions, initially 0,
            so the layer starts exactly at the fixed bank). The filters are recomputed from
            the positions on every call (:func:`triangular_filterbank`).
        stretch: In training only, the whole bank is stretched in frequency (every corner's
            Hz multiplied) by a random factor uniform in ``[1 - stretch, 1 + stretch]`` per
            example — pitch augmentation. 0 = off; the identity in inference. Works with the
            fixed bank too. Filters stretched beyond Nyquist lose the part above it.
    """

    def __init__(self, sample_rate_hz=22050, n_fft=1024, hop_length=315, n_mels=80,
                 fmin_hz=150.0, fmax_hz=10000.0, power=2.0, quantization_safe=False,
                 learnable=False, stretch=0.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0 <= fmin_hz < fmax_hz <= sample_rate_hz / 2:
            raise ValueError(
                f"mel band edges must satisfy 0 <= fmin ({fmin_hz}) < fmax ({fmax_hz}) <= "
                f"sample_rate/2 ({sample_rate_hz / 2})")
        self.sample_rate_hz = int(sample_rate_hz)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.fmin_hz = float(fmin_hz)
        self.fmax_hz = float(fmax_hz)
        self.power = float(power)
        self.quantization_safe = bool(quantization_safe)
        self.learnable = bool(learnable)
        self.stretch = float(stretch)
        if not 0.0 <= self.stretch < 1.0:
            raise ValueError(f"filterbank stretch must be in [0, 1), not {stretch}")
        self.mel_matrix = tf.signal.linear_to_mel_weight_matrix(
            num_mel_bins=self.n_mels, num_spectrogram_bins=self.n_fft // 2 + 1,
            sample_rate=self.sample_rate_hz, lower_edge_hertz=self.fmin_hz,
            upper_edge_hertz=self.fmax_hz, dtype=tf.float32)
        # the same corners and bin positions as linear_to_mel_weight_matrix, computed with its ops
        f32 = tf.float32
        self.base_positions_mel = tf.linspace(hz_to_mel(tf.constant(self.fmin_hz, f32)),
                                              hz_to_mel(tf.constant(self.fmax_hz, f32)), self.n_mels + 2)
        self.bins_mel = hz_to_mel(tf.linspace(tf.constant(0.0, f32), tf.cast(self.sample_rate_hz, f32) / 2.0,
                                              self.n_fft // 2 + 1)[1:])
        self.mel_offsets = None

    def build(self, input_shape=None):
        if self.learnable and self.mel_offsets is None:
            self.mel_offsets = self.add_weight(name="mel_offsets", shape=(self.n_mels + 2,), initializer="zeros",
                                               trainable=True, dtype="float32")
        super().build(input_shape)

    def positions_mel(self):
        """``(n_mels + 2,)`` current corner positions of the triangles, in mel."""
        if self.learnable:
            return self.base_positions_mel + tf.convert_to_tensor(self.mel_offsets)
        return self.base_positions_mel

    def filterbank(self):
        """``(n_fft // 2 + 1, n_mels)`` current filter weights (the fixed matrix unless learnable)."""
        if self.learnable:
            return triangular_filterbank(self.positions_mel(), self.bins_mel)
        return self.mel_matrix

    def frames(self, x):
        """``(batch, samples)`` → ``(batch, frames, n_fft)`` overlapping frames (no padding at the end)."""
        return frame_blocks(x, self.n_fft, self.hop_length, 1 + (tf.shape(x)[1] - self.n_fft) // self.hop_length)

    def hann_in_frequency_domain(self, frames):
        """Real and imaginary parts of the rFFT of Hann-windowed ``frames``, windowed after the FFT.

        For the periodic Hann window ``w[n] = 0.5 - 0.5 cos(2πn/N)`` of the FFT's length,
        windowing is exactly ``X_w[k] = 0.5 X[k] - 0.25 (X[k-1] + X[k+1])`` (indices circular;
        the neighbours outside ``0 … N//2`` are the conjugates of bins inside). That is
        ``tf.signal.hann_window(N)`` for even ``N`` only (for odd ``N`` it is the symmetric
        window), so :meth:`call` uses this for even ``n_fft`` only. Its three taps
        are exact in float16 and int8, so a quantized model keeps the window exact. (Rounded
        to float16, the window's sidelobes beyond 50 bins rise from about -160 dB to about
        -110 dB (median), and quiet bands fill with leakage from loud ones.)
        """
        stft = tf.signal.rfft(frames, fft_length=[self.n_fft])
        last = self.n_fft // 2  # index of the last rFFT bin
        mirror = self.n_fft - last - 1  # X[last + 1] = conj(X[mirror])
        parts = []
        for v, sign in ((tf.math.real(stft), 1.0), (tf.math.imag(stft), -1.0)):
            below = tf.concat([sign * v[..., 1:2], v[..., :-1]], axis=-1)  # X[k-1]; X[-1] = conj(X[1])
            above = tf.concat([v[..., 1:], sign * v[..., mirror:mirror + 1]], axis=-1)  # X[k+1]
            parts.append(0.5 * v - 0.25 * (below + above))
        return parts[0], parts[1]

    def call(self, waveform, training=None):
        """``(batch, samples)`` → ``(batch, frames, n_mels)``.

        With ``quantization_safe`` two things differ, neither changing the values beyond
        float32 rounding: the Hann window is applied in the frequency domain (even
        ``n_fft``; :meth:`hann_in_frequency_domain`), so there is no window constant for float16
        weights to round (a rounded window leaks loud bands into quiet ones: up to 1.6 in
        log-mel on real recordings); and the mel filterbank is the LEFT operand of its
        matmul, so dynamic-range int8 quantization (which quantizes right-hand constant
        weights and then the other operand per frame to 8 bits) leaves it in float32 —
        8 bits per frame cannot hold a power spectrum's range and wipe out the quiet bands.
        """
        x = tf.cast(waveform, tf.float32)
        # Inputs shorter than one frame are zero-padded to a single frame.
        short = tf.maximum(self.n_fft - tf.shape(x)[-1], 0)
        x = tf.pad(x, [[0, 0], [0, short]])
        if self.quantization_safe and self.n_fft % 2 == 0:  # tf's "periodic" Hann is symmetric for odd n_fft
            re, im = self.hann_in_frequency_domain(self.frames(x))
        else:
            window = tf.signal.hann_window(self.n_fft, dtype=tf.float32)
            stft = tf.signal.rfft(self.frames(x) * window, fft_length=[self.n_fft])
            re, im = tf.math.real(stft), tf.math.imag(stft)
        spec = tf.square(re) + tf.square(im)  # power, without a sqrt
        if self.power == 1.0:
            spec = tf.sqrt(spec)
        elif self.power != 2.0:
            spec = tf.pow(spec, self.power / 2.0)
        if training and self.stretch > 0:
            factor = tf.random.uniform((tf.shape(spec)[0], 1), 1.0 - self.stretch, 1.0 + self.stretch)
            positions = hz_to_mel(mel_to_hz(self.positions_mel())[None, :] * factor)  # (batch, n_mels + 2)
            return tf.matmul(spec, triangular_filterbank(positions, self.bins_mel))  # per-example banks
        matrix = self.filterbank()
        if self.quantization_safe:
            return tf.transpose(tf.matmul(matrix, spec, transpose_a=True, transpose_b=True), [0, 2, 1])
        return tf.matmul(spec, matrix)

    def compute_output_shape(self, input_shape):
        n = input_shape[-1]
        frames = None if n is None else 1 + (max(n, self.n_fft) - self.n_fft) // self.hop_length
        return (input_shape[0], frames, self.n_mels)

    def get_config(self):
        return {**super().get_config(), "sample_rate_hz": self.sample_rate_hz, "n_fft": self.n_fft,
                "hop_length": self.hop_length, "n_mels": self.n_mels, "fmin_hz": self.fmin_hz,
                "fmax_hz": self.fmax_hz, "power": self.power, "quantization_safe": self.quantization_safe,
                "learnable": self.learnable, "stretch": self.stretch}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpecAugment(keras.layers.Layer):
    """SpecAugment-style frequency and time masks on ``(batch, frames, bands)``; training only.

    With probability ``prob`` per example, ``freq_masks`` bands of up to ``freq_mask_bins``
    and ``time_masks`` spans of up to ``time_mask_frames`` are set to the example's mean.
    The identity when ``training`` is false or ``prob`` is 0.
    """

    def __init__(self, prob=0.5, freq_masks=2, freq_mask_bins=8, time_masks=2, time_mask_frames=25, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.prob = float(prob)
        self.freq_masks = int(freq_masks)
        self.freq_mask_bins = int(freq_mask_bins)
        self.time_masks = int(time_masks)
        self.time_mask_frames = int(time_mask_frames)

    def _masks(self, batch, length, count, width):
        """Boolean ``(batch, length)``: True where any of ``count`` random spans covers."""
        pos = tf.range(length)[None, :]
        covered = tf.zeros((batch, length), tf.bool)
        for _ in range(count):
            w = tf.random.uniform((batch, 1), 0, width + 1, dtype=tf.int32)
            room = tf.cast(tf.maximum(length - w, 0) + 1, tf.float32)
            start = tf.cast(tf.floor(tf.random.uniform((batch, 1)) * room), tf.int32)
            covered = covered | ((pos >= start) & (pos < start + w))
        return covered

    def call(self, x, training=None):
        if not training or self.prob <= 0 or (self.freq_masks + self.time_masks) == 0:
            return x
        shape = tf.shape(x)
        batch, frames, bands = shape[0], shape[1], shape[2]
        apply = tf.random.uniform((batch, 1, 1)) < self.prob
        fmask = self._masks(batch, bands, self.freq_masks, self.freq_mask_bins)[:, None, :]
        tmask = self._masks(batch, frames, self.time_masks, self.time_mask_frames)[:, :, None]
        mask = (fmask | tmask) & apply
        fill = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        return tf.where(mask, fill, x)

    def get_config(self):
        return {**super().get_config(), "prob": self.prob, "freq_masks": self.freq_masks,
                "freq_mask_bins": self.freq_mask_bins, "time_masks": self.time_masks,
                "time_mask_frames": self.time_mask_frames}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BandCentering(keras.layers.Layer):
    """Subtracts each band's mean over time, per example: ``(batch, frames, bands)`` → same.

    On log magnitudes this removes a recording's stationary spectral colouring (microphone,
    recorder gain, steady background), which differs between recordists.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, x):
        return x - tf.reduce_mean(x, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChunkSpectrogram(keras.layers.Layer):
    """Waveform chunks → the 2018 baseline's 0..1 spectrogram images (what ``birdnet-tf extract`` saves).

    ``(batch, samples)`` float32 at ``cfg.sample_rate_hz`` (one chunk of ``chunk_s`` each,
    zero-padded or cut to that length) → ``(batch, width, height)`` float32 in 0..1, time
    along axis 1, frequency along axis 2 with the lowest band first; see
    :func:`birdnet_tf.frontend.chunks.chunk_spectrogram`. A model starting with this
    layer takes 1-s waveform chunks at 44.1 kHz (the defaults), and so does its export.

    Args:
        cfg: The ``chunks`` settings: a :class:`~birdnet_tf.config.ChunkConfig` or its
            dict (as :meth:`get_config` returns it); ``None`` = the defaults.
    """

    def __init__(self, cfg=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.cfg = chunk_config(cfg)
        check_chunk_config(self.cfg)

    def call(self, waveform):
        return chunk_spectrogram(waveform, self.cfg)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.cfg.width, self.cfg.height)

    def get_config(self):
        return {**super().get_config(), "cfg": dataclasses.asdict(self.cfg)}
