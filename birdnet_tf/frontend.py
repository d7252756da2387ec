"""Spectrogram frontend as Keras layers in TensorFlow ops.

Shape contract: ``(batch, samples)`` float32 waveform in [-1, 1] at the model's rate →
``(batch, frames, mels)`` float32, ``frames = 1 + (max(samples, n_fft) - n_fft) // hop``.

Because the frontend is part of the model it runs wherever the model runs (on the
GPU when there is one), and an exported SavedModel takes a raw waveform. All layers
here compute in float32 even under a mixed-precision policy: an STFT in float16
loses the quiet bands birds live in.

The OFAI 2018 system's learnable frontends (REFERENCE §2) are here too: a mel filterbank
whose triangle positions train (``MelSpectrogram(learnable=True)``, optionally stretched at
random per example in training), per-band learnable magnitude scalings
(:class:`MagnitudeScaling` ``log1p_learn`` / ``pow_learn``) and :class:`PCEN`. Each starts
exactly where its fixed counterpart is, and stores its parameters as offsets from that
start, so the optimizer's (decoupled) weight decay pulls a learned frontend back towards
the fixed one rather than towards zero. All are pointwise in time except PCEN, whose
smoother is recursive over frames.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from birdnet_tf.config import AugmentConfig, Config, FrontendConfig

PACKAGE = "birdnet_tf"

#: HTK mel scale as ``tf.signal.linear_to_mel_weight_matrix`` uses it: ``mel = Q · ln(1 + f / BREAK)``.
MEL_Q = 1127.0
MEL_BREAK_HZ = 700.0


def hz_to_mel(f_hz):
    """HTK mel of frequencies in Hz (the exact ops of ``tf.signal.linear_to_mel_weight_matrix``)."""
    return MEL_Q * tf.math.log(1.0 + f_hz / MEL_BREAK_HZ)


def mel_to_hz(mel):
    """Inverse of :func:`hz_to_mel`."""
    return MEL_BREAK_HZ * (tf.exp(mel / MEL_Q) - 1.0)


def triangular_filterbank(positions_mel, bins_mel, min_width_mel: float = 1e-3):
    """Triangular filters from their corner positions: ``(..., n + 2)`` mel → ``(..., bins + 1, n)`` weights.

    Filter ``i`` rises linearly in mel from ``positions[i]`` to 1 at ``positions[i + 1]`` and
    falls to 0 at ``positions[i + 2]`` (neighbouring filters share corners), exactly as
    ``tf.signal.linear_to_mel_weight_matrix`` draws them (the same ops, so the same float32
    values for its positions). Differentiable in ``positions_mel``.

    Args:
        positions_mel: ``(n + 2,)`` or ``(batch, n + 2)`` corner positions in mel, ascending.
        bins_mel: ``(bins,)`` mel of the rFFT bins 1 … n_fft/2 (the DC bin gets weight 0, as HTK).
        min_width_mel: Floor of each half-triangle's width, so corners that cross in training
            cannot divide by zero (never active for a sane bank: mel bands are tens of mel wide).

    Returns:
        ``(bins + 1, n)`` or ``(batch, bins + 1, n)`` float32 weights (no area normalisation).
    """
    p = positions_mel[..., None, :]  # (..., 1, n + 2)
    lower, center, upper = p[..., :-2], p[..., 1:-1], p[..., 2:]
    b = bins_mel[:, None]  # (bins, 1)
    lower_slopes = (b - lower) / tf.maximum(center - lower, min_width_mel)
    upper_slopes = (upper - b) / tf.maximum(upper - center, min_width_mel)
    weights = tf.maximum(0.0, tf.minimum(lower_slopes, upper_slopes))
    pad = [[0, 0]] * (len(weights.shape) - 2) + [[1, 0], [0, 0]]
    return tf.pad(weights, pad)


def frame_blocks(x, n_fft: int, hop: int, n_frames):
    """``(batch, samples)`` → ``(batch, n_frames, n_fft)``, frame ``i`` starting at sample ``i · hop``.

    Built from hop-sized blocks: frame ``i`` is blocks ``i … i+k-1`` side by side, the last
    one cut short. Reshapes, slices and one concat — several times faster on a CPU than
    ``tf.signal.frame``, which gathers when the hop does not divide the frame length. ``x``
    is zero-padded when it holds fewer than ``(n_frames - 1) · hop + n_fft`` samples.
    """
    k = -(-n_fft // hop)  # blocks per frame
    rest = n_fft - (k - 1) * hop  # samples used from the last block
    need = (n_frames - 1 + k) * hop
    x = tf.pad(x, [[0, 0], [0, tf.maximum(need - tf.shape(x)[1], 0)]])[:, :need]
    blocks = tf.reshape(x, [tf.shape(x)[0], n_frames - 1 + k, hop])
    parts = [blocks[:, j:j + n_frames] for j in range(k - 1)]
    parts.append(blocks[:, k - 1:k - 1 + n_frames, :rest])
    return tf.concat(parts, axis=-1)


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
class MagnitudeScaling(keras.layers.Layer):
    """Pointwise compression of mel energies ``(batch, frames, bands)`` → same.

    Fixed: ``log`` (log(x + offset)), ``log1p`` or ``none``. Learnable per band (OFAI), with
    one weight ``a`` of shape ``(bands,)``, initially 0:

    - ``log1p_learn``: ``log(1 + e^a · x)`` — starts as ``log1p``;
    - ``pow_learn``: ``max(x, POW_FLOOR)^sigmoid(a)`` — starts as the square root. The floor
      (1e-12, about 170 dB below a full-scale tone's power) keeps the gradient of the
      exponent finite on digital silence.
    """

    KINDS = ("log", "log1p", "none", "log1p_learn", "pow_learn")
    LEARNABLE = ("log1p_learn", "pow_learn")
    POW_FLOOR = 1e-12

    def __init__(self, kind="log", offset=1e-6, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if kind not in self.KINDS:
            raise ValueError(f"unknown magnitude scaling '{kind}'; choose one of {', '.join(self.KINDS)}")
        self.kind = kind
        self.offset = float(offset)
        self.a = None

    def build(self, input_shape):
        if self.kind in self.LEARNABLE and self.a is None:
            bands = input_shape[-1]
            if bands is None:
                raise ValueError(f"magnitude scaling '{self.kind}' needs a known number of bands")
            self.a = self.add_weight(name="a", shape=(int(bands),), initializer="zeros", trainable=True,
                                     dtype="float32")
        super().build(input_shape)

    def call(self, x):
        if self.kind == "log":
            return tf.math.log(x + self.offset)
        if self.kind == "log1p":
            return tf.math.log1p(x)
        if self.kind == "log1p_learn":
            return tf.math.log1p(tf.exp(tf.convert_to_tensor(self.a)) * x)
        if self.kind == "pow_learn":
            return tf.pow(tf.maximum(x, self.POW_FLOOR), tf.sigmoid(tf.convert_to_tensor(self.a)))
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "offset": self.offset}


def pcen_smoothing_coefficient(time_constant_s: float, frame_rate_hz: float) -> float:
    """librosa's default smoothing coefficient ``b`` for a time constant at a frame rate.

    ``t = time_constant_s · frame_rate_hz`` frames; ``b = (sqrt(1 + 4 t²) − 1) / (2 t²)``
    (``librosa.pcen`` with ``b=None``): 0.0351 for 0.4 s at 70 frames/s.
    """
    t = float(time_constant_s) * float(frame_rate_hz)
    return float((math.sqrt(1.0 + 4.0 * t * t) - 1.0) / (2.0 * t * t))


@keras.saving.register_keras_serializable(package=PACKAGE)
class PCEN(keras.layers.Layer):
    """Per-channel energy normalisation with per-band learnable parameters: ``(batch, frames, bands)`` → same.

    As ``librosa.pcen`` (``max_size=1``)::

        M[t] = (1 − s) · M[t−1] + s · E[t]          (M[−1] = E[0]: steady state at the first frame)
        out  = (E / (eps + M)^α + δ)^r − δ^r

    computed in librosa's stable form ``δ^r · expm1(r · log1p(E · (eps + M)^−α / δ))``.
    ``s``, ``α``, ``δ``, ``r`` are per band and learnable, each stored as ``log(p / p_init)``
    (weights ``log_s``, ``log_alpha``, ``log_delta``, ``log_r``, initially 0): positive by
    construction, and weight decay pulls them back to the initial values; ``s`` is capped at 1.
    The initial values are librosa's defaults at this frame rate: ``s`` from a 0.4-s time
    constant (:func:`pcen_smoothing_coefficient`), α 0.98, δ 2, r 0.5, eps 1e-6. (librosa's own
    default starts its filter at ``M[−1] = 1``; pass ``zi = (1 − s) · E[0]`` to match this layer.)

    The smoother is the exact IIR recursion, run with ``tf.scan`` over frames (sequential
    in time, parallel over batch and bands) rather than a truncated FIR approximation: it
    equals librosa to float rounding, the truncation of an FIR kernel would depend on
    the learned ``s`` (at s = 0.035 the response needs about 200 frames to fall to 0.1 %),
    and any input length works. Being recursive, the layer is not pointwise in time
    (``pointwise_in_time = False``): whole-recording inference refuses such models
    (:func:`birdnet_tf.models.surgery.split_model`) and windows are scored one by one.

    Args:
        frame_rate_hz: Frames per second of the input (sample rate / hop).
        time_constant_s: Initial smoother time constant.
        alpha, delta, r: Initial gain exponent, bias and root.
        eps: Floor of the smoothed energy (fixed).
    """

    pointwise_in_time = False

    def __init__(self, frame_rate_hz=22050 / 315, time_constant_s=0.4, alpha=0.98, delta=2.0, r=0.5,
                 eps=1e-6, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.frame_rate_hz = float(frame_rate_hz)
        self.time_constant_s = float(time_constant_s)
        self.alpha, self.delta, self.r, self.eps = float(alpha), float(delta), float(r), float(eps)
        if min(self.frame_rate_hz, self.time_constant_s, self.alpha, self.delta, self.r, self.eps) <= 0:
            raise ValueError("PCEN's frame rate, time constant, alpha, delta, r and eps must all be > 0")
        self.s_init = pcen_smoothing_coefficient(self.time_constant_s, self.frame_rate_hz)
        self.log_s = self.log_alpha = self.log_delta = self.log_r = None

    def build(self, input_shape):
        bands = input_shape[-1]
        if bands is None:
            raise ValueError("PCEN needs a known number of bands")
        for name in ("log_s", "log_alpha", "log_delta", "log_r"):
            if getattr(self, name) is None:
                setattr(self, name, self.add_weight(name=name, shape=(int(bands),), initializer="zeros",
                                                    trainable=True, dtype="float32"))
        super().build(input_shape)

    def parameters(self):
        """Current per-band ``(s, alpha, delta, r)``, each ``(bands,)`` float32."""
        def value(weight, init):
            return init * tf.exp(tf.convert_to_tensor(weight))

        return (tf.minimum(value(self.log_s, self.s_init), 1.0), value(self.log_alpha, self.alpha),
                value(self.log_delta, self.delta), value(self.log_r, self.r))

    def smooth(self, x, s):
        """The IIR smoother ``M`` of ``x`` ``(batch, frames, bands)`` with coefficients ``s`` ``(bands,)``."""
        xt = tf.transpose(x, [1, 0, 2])  # (frames, batch, bands): scan runs over frames
        m = tf.scan(lambda prev, e: prev + s * (e - prev), xt, initializer=xt[0])
        return tf.transpose(m, [1, 0, 2])

    def call(self, x):
        x = tf.cast(x, tf.float32)
        s, alpha, delta, r = self.parameters()
        m = self.smooth(x, s)
        gain = tf.exp(-alpha * (math.log(self.eps) + tf.math.log1p(m / self.eps)))  # (eps + M)^-alpha
        return tf.exp(r * tf.math.log(delta)) * tf.math.expm1(r * tf.math.log1p(x * gain / delta))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "frame_rate_hz": self.frame_rate_hz,
                "time_constant_s": self.time_constant_s, "alpha": self.alpha, "delta": self.delta, "r": self.r,
                "eps": self.eps}


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


FILTERBANKS = ("mel", "mel_learn")


def frontend_layers(cfg: Config) -> list[keras.layers.Layer]:
    """The frontend stack for a config: mel → magnitude scaling → (band centring) → per-band standardisation.

    The mel layer is named ``mel`` (fixed or learnable filterbank), the magnitude layer
    ``magnitude`` whatever its kind (:class:`MagnitudeScaling` or :class:`PCEN`): whole-recording
    inference splits models there, and ``frontend.frontend_lr_scale`` finds the frontend's
    parameters by these names.
    """
    fe: FrontendConfig = cfg.frontend
    if fe.kind == "chunks":
        from birdnet_tf.errors import ConfigError

        if cfg.audio.sample_rate_hz != cfg.chunks.sample_rate_hz:
            raise ConfigError(f"frontend.kind=chunks needs audio.sample_rate_hz = chunks.sample_rate_hz "
                              f"({cfg.audio.sample_rate_hz} != {cfg.chunks.sample_rate_hz})")
        if abs(cfg.data.excerpt_s - cfg.chunks.chunk_s) > 1e-6:
            raise ConfigError(f"frontend.kind=chunks needs data.excerpt_s = chunks.chunk_s "
                              f"({cfg.data.excerpt_s} != {cfg.chunks.chunk_s})")
        return [ChunkSpectrogram(cfg.chunks, name="chunk_spectrogram")]
    if fe.kind != "mel":
        from birdnet_tf.errors import ConfigError

        raise ConfigError(f"frontend.kind must be mel or chunks, not '{fe.kind}'")
    check_learnable_frontend(fe)
    if fe.magnitude == "pcen":
        magnitude = PCEN(cfg.frames_per_second, name="magnitude")
    else:
        magnitude = MagnitudeScaling(fe.magnitude, fe.log_offset, name="magnitude")
    layers = [
        MelSpectrogram(cfg.audio.sample_rate_hz, fe.n_fft, fe.hop_length, fe.n_mels,
                       fe.fmin_hz, fe.fmax_hz, fe.power, learnable=fe.filterbank == "mel_learn",
                       stretch=fe.filterbank_stretch, name="mel"),
        magnitude,
    ]
    if fe.center_bands:
        layers.append(BandCentering(name="band_centering"))
    if fe.band_norm:
        # OFAI: batch normalisation without scale and shift = standardisation per band
        layers.append(keras.layers.BatchNormalization(axis=-1, center=False, scale=False,
                                                      dtype="float32", name="band_norm"))
    return layers


def check_learnable_frontend(fe: FrontendConfig) -> None:
    """Raises :class:`~birdnet_tf.errors.ConfigError` naming the first bad filterbank / magnitude setting."""
    from birdnet_tf.errors import ConfigError

    kinds = (*MagnitudeScaling.KINDS, "pcen")
    if fe.filterbank not in FILTERBANKS:
        raise ConfigError(f"frontend.filterbank must be one of {', '.join(FILTERBANKS)}, not '{fe.filterbank}'")
    if fe.magnitude not in kinds:
        raise ConfigError(f"frontend.magnitude must be one of {', '.join(kinds)}, not '{fe.magnitude}'")
    if not 0.0 <= fe.filterbank_stretch < 1.0:
        raise ConfigError(f"frontend.filterbank_stretch must be in [0, 1), not {fe.filterbank_stretch}")
    if not fe.frontend_lr_scale > 0:
        raise ConfigError(f"frontend.frontend_lr_scale must be > 0, not {fe.frontend_lr_scale}")


def spec_augment_layer(aug: AugmentConfig) -> SpecAugment:
    return SpecAugment(aug.mask_prob, aug.freq_masks, aug.freq_mask_bins, aug.time_masks,
                       aug.time_mask_frames, name="spec_augment")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChunkSpectrogram(keras.layers.Layer):
    """Waveform chunks → the 2018 baseline's 0..1 spectrogram images (what ``birdnet-tf extract`` saves).

    ``(batch, samples)`` float32 at ``cfg.sample_rate_hz`` (one chunk of ``chunk_s`` each,
    zero-padded or cut to that length) → ``(batch, width, height)`` float32 in 0..1, time
    along axis 1, frequency along axis 2 with the lowest band first; see
    :func:`birdnet_tf.data.spectrograms.chunk_spectrogram`. A model starting with this
    layer takes 1-s waveform chunks at 44.1 kHz (the defaults), and so does its export.

    Args:
        cfg: The ``chunks`` settings: a :class:`~birdnet_tf.config.ChunkConfig` or its
            dict (as :meth:`get_config` returns it); ``None`` = the defaults.
    """

    def __init__(self, cfg=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        from birdnet_tf.data.spectrograms import _chunk_config, check_chunk_config

        self.cfg = _chunk_config(cfg)
        check_chunk_config(self.cfg)

    def call(self, waveform):
        from birdnet_tf.data.spectrograms import chunk_spectrogram

        return chunk_spectrogram(waveform, self.cfg)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.cfg.width, self.cfg.height)

    def get_config(self):
        import dataclasses

        return {**super().get_config(), "cfg": dataclasses.asdict(self.cfg)}
