"""The 2018 baseline's image augmentations for spectrogram chunks: pure TF functions and a Keras layer.

Images are ``float32 (batch, width, height)`` (or one ``(width, height)`` image) in 0..1,
time along ``width`` (axis 1) and frequency along ``height`` (axis 2, band 0 = lowest) —
the layout of :mod:`birdnet_tf.frontend`'s ``(batch, frames, bands)``, but in the value
range of the baseline's PNG chunks: anything outside 0..1 (a standardised log-mel) would
be clipped. Every function is vectorised over the batch (one random draw per example,
selected with ``tf.where``), graph-compatible (``tf.data.Dataset.map``, ``tf.function``,
inside a Keras layer, XLA) and returns float32 clipped to 0..1.

Randomness is stateless: ``seed`` is a shape-``[2]`` integer tensor (as for
``tf.random.stateless_uniform``), a Python int, or None (a seed is then drawn from TF's
global generator). The same seed and input give the same output.

Each augmentation ``fn(images, seed=None, prob=0.5, **params, return_mask=False)``
changes each example with probability ``prob`` and leaves the others bit-for-bit
untouched, so it is exactly the identity at ``prob=0``; with ``return_mask=True`` it
also returns the boolean ``(batch,)`` mask of the examples it changed.

Augmentations (names in :data:`DEFAULTS`; the baseline's ``config.py`` keys are aliases,
see :data:`ALIASES`), with the baseline's defaults (its ``IM_AUGMENTATION`` values):

=================  ==================================================================
vertical_roll      circular shift along frequency by up to ±``max_fraction`` (0.15) of the
                   bands (at least one band; the baseline's final recipe)
horizontal_roll    circular shift along time by up to ±``max_fraction`` (0.5) of the frames
noise_chunk        blends in a random chunk of a noise bank ``(N, width, height)`` — the
                   chunks the signal/noise rule rejected — as the baseline's ``add`` does:
                   ``(img·w1 + noise·w2) / (w1 + w2)``, ``w1, w2`` uniform in
                   [``min_weight``, ``max_weight``] = [1, 2] (so the image keeps 1/3..2/3)
crop               crops up to ``max_fraction`` (0.1, the baseline's default; its config's
                   example cut frequency only), at least one cell, from each of the four
                   sides and resizes back (bilinear; the baseline: bicubic)
gaussian_noise     adds N(0, σ²) per cell, σ uniform in [0, √``amount``] (amount 0.05)
brightness         multiplies the image by one factor uniform in 1 ± ``amount`` (0.15)
dropout            sets each cell to 0 with probability ``amount`` (0.25)
blackout           sets a random time span of ``fraction`` (0.1) of the width to 0
blur               ``kernel_size`` (3) box blur, reflected borders (OpenCV's ``blur``)
zoom               zooms in about the centre by 1 + uniform(0, ``amount``) (0.25)
rotate             rotates about the centre by uniform ±``max_degrees`` (10), zero fill
multiply           multiplies each cell by its own factor uniform in 1 ± ``amount`` (0.25)
=================  ==================================================================

:func:`apply_augmentations` combines them as the baseline does: ``max_augs`` tries per
example, each succeeding with probability ``prob``; each success applies one enabled
augmentation not yet applied to that example, chosen uniformly. So at most ``max_augs``
(default 2, the baseline's ``AUGMENTATION_COUNT``) are applied, Binomial(max_augs, prob)
of them (capped at the number enabled), and none at ``prob=0``. The chosen ones are
applied in the order of ``names`` (the baseline: in the order chosen).
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import tensorflow as tf

from birdnet_tf.errors import ConfigError

PACKAGE = "birdnet_tf"

#: Every augmentation with its parameters and their defaults (the baseline's values).
DEFAULTS: dict[str, dict[str, float]] = {
    "vertical_roll": {"max_fraction": 0.15},
    "horizontal_roll": {"max_fraction": 0.5},
    "noise_chunk": {"min_weight": 1.0, "max_weight": 2.0},
    "crop": {"max_fraction": 0.1},
    "gaussian_noise": {"amount": 0.05},
    "brightness": {"amount": 0.15},
    "dropout": {"amount": 0.25},
    "blackout": {"fraction": 0.1},
    "blur": {"kernel_size": 3},
    "zoom": {"amount": 0.25},
    "rotate": {"max_degrees": 10.0},
    "multiply": {"amount": 0.25},
}

#: The 2018 baseline's names (``IM_AUGMENTATION`` keys) → ours.
ALIASES = {"roll_v": "vertical_roll", "roll_h": "horizontal_roll", "add": "noise_chunk",
           "noise": "gaussian_noise"}

_INT32_MAX = 2**31 - 1


# ------------------------------------------------------------------ helpers
def _seed(seed) -> tf.Tensor:
    """Any accepted ``seed`` → an int32 tensor of shape ``[2]`` for the stateless ops."""
    if seed is None:
        return tf.random.uniform([2], 0, _INT32_MAX, dtype=tf.int32)
    if isinstance(seed, (int, np.integer)):
        return tf.constant([int(seed) % _INT32_MAX, 0], tf.int32)
    seed = tf.convert_to_tensor(seed)
    if seed.dtype != tf.int32:  # e.g. int64 from keras.random.SeedGenerator: fold into int32 as Keras does
        seed = tf.cast(tf.math.floormod(tf.cast(seed, tf.int64), _INT32_MAX - 1), tf.int32)
    return tf.reshape(seed, [2])


def _split(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    seeds = tf.random.experimental.stateless_split(seed, num=n)
    return [seeds[i] for i in range(n)]


def _uniform(shape, seed, lo=0.0, hi=1.0) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi, dtype=tf.float32)


def _randint(shape, seed, lo, hi) -> tf.Tensor:
    """Integers uniform in ``[lo, hi)`` (``hi > lo``), int32."""
    return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi, dtype=tf.int32)


def _dims(x: tf.Tensor):
    """``(batch, width, height)`` as int32 scalars."""
    s = tf.shape(x)
    return s[0], s[1], s[2]


def _canonical(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in DEFAULTS:
        known = ", ".join(list(DEFAULTS) + [f"{a} (= {b})" for a, b in ALIASES.items()])
        raise ConfigError(f"unknown image augmentation '{name}'; known: {known}")
    return name


def _params(name: str, overrides: dict | None) -> dict[str, float]:
    params = dict(DEFAULTS[name])
    for key, value in (overrides or {}).items():
        if key not in params:
            raise ConfigError(f"image augmentation '{name}' has no parameter '{key}'; "
                              f"it has {', '.join(params)}")
        params[key] = float(value)
    _validate(name, params)
    return params


def _validate(name: str, p: dict[str, float]) -> None:
    bad = None
    if any(not math.isfinite(v) or v < 0 for v in p.values()):
        bad = "parameters must be finite and not negative"
    elif name == "noise_chunk" and not 0 < p["max_weight"] >= p["min_weight"]:
        bad = "needs 0 <= min_weight <= max_weight and max_weight > 0"
    elif name == "blur" and (p["kernel_size"] != int(p["kernel_size"]) or int(p["kernel_size"]) % 2 == 0):
        bad = "kernel_size must be an odd whole number"
    elif name in ("crop", "blackout", "dropout") and next(iter(p.values())) >= 1:
        bad = f"{next(iter(p))} must be below 1"
    if bad:
        raise ConfigError(f"image augmentation '{name}': {bad} (got {p})")


# ---------------------------------------------- the augmentations (whole batch)
# Each returns the augmented version of every example; masking and clipping are done by _apply.
def _roll(x, seed, max_fraction, axis):
    n = tf.shape(x)[axis]
    max_shift = tf.maximum(1, tf.cast(tf.math.floor(tf.cast(n, tf.float32) * max_fraction), tf.int32))
    s1, s2 = _split(seed, 2)
    batch = tf.shape(x)[0]
    shift = _randint([batch], s1, 1, max_shift + 1)
    shift = tf.where(_uniform([batch], s2) < 0.5, -shift, shift)
    idx = tf.math.floormod(tf.range(n)[None, :] - shift[:, None], n)  # np.roll: out[i] = in[i - shift]
    return tf.gather(x, idx, axis=axis, batch_dims=1)


def _vertical_roll(x, seed, max_fraction):
    return _roll(x, seed, max_fraction, axis=2)


def _horizontal_roll(x, seed, max_fraction):
    return _roll(x, seed, max_fraction, axis=1)


def _noise_chunk(x, seed, min_weight, max_weight, noise_bank=None):
    if noise_bank is None:
        raise ConfigError("image augmentation 'noise_chunk' needs a noise bank (noise chunks of shape "
                          "(N, width, height)); none was given")
    bank = tf.convert_to_tensor(noise_bank, tf.float32)
    batch, width, height = _dims(x)
    s1, s2, s3 = _split(seed, 3)
    chunk = tf.gather(bank, _randint([batch], s1, 0, tf.shape(bank)[0]))
    if not (bank.shape[1:].is_fully_defined() and x.shape[1:].is_fully_defined()
            and tuple(bank.shape[1:]) == tuple(x.shape[1:])):
        chunk = tf.image.resize(chunk[..., None], tf.stack([width, height]), method="bilinear")[..., 0]
    w1 = _uniform([batch, 1, 1], s2, min_weight, max_weight)
    w2 = _uniform([batch, 1, 1], s3, min_weight, max_weight)
    return (x * w1 + chunk * w2) / (w1 + w2)


def _affine(x, t_coef, f_coef):
    """Bilinear resampling of each image at affine source coordinates, 0 outside the image.

    Output cell ``(t, f)`` of example ``b`` reads the input at time
    ``t_coef[b] · (t, f, 1)`` and frequency ``f_coef[b] · (t, f, 1)`` (coefficients
    ``(batch, 3)``). Gathers only, so it also compiles with XLA (``crop_and_resize`` and
    ``ImageProjectiveTransformV3`` do not).
    """
    batch, width, height = _dims(x)
    t = tf.cast(tf.range(width), tf.float32)[None, :, None]
    f = tf.cast(tf.range(height), tf.float32)[None, None, :]

    def coords(c):
        c = tf.reshape(c, [-1, 3, 1, 1])
        return c[:, 0] * t + c[:, 1] * f + c[:, 2]

    ts, fs = coords(t_coef), coords(f_coef)
    t0, f0 = tf.floor(ts), tf.floor(fs)
    wt, wf = ts - t0, fs - f0
    t0, f0 = tf.cast(t0, tf.int32), tf.cast(f0, tf.int32)
    flat = tf.reshape(x, [batch, width * height])

    def tap(ti, fi):
        inside = (ti >= 0) & (ti < width) & (fi >= 0) & (fi < height)
        idx = tf.clip_by_value(ti, 0, width - 1) * height + tf.clip_by_value(fi, 0, height - 1)
        values = tf.reshape(tf.gather(flat, tf.reshape(idx, [batch, -1]), batch_dims=1), tf.shape(x))
        return tf.where(inside, values, 0.0)

    return ((1 - wt) * (1 - wf) * tap(t0, f0) + (1 - wt) * wf * tap(t0, f0 + 1)
            + wt * (1 - wf) * tap(t0 + 1, f0) + wt * wf * tap(t0 + 1, f0 + 1))


def _crop(x, seed, max_fraction):
    batch, width, height = _dims(x)
    w = tf.cast(width, tf.float32)
    h = tf.cast(height, tf.float32)
    cuts = _uniform([batch, 4], seed, 0.0, max_fraction)  # start/end of time, start/end of frequency
    cut = tf.maximum(1.0, tf.floor(cuts * tf.stack([w, w, h, h])))  # cells, at least one per side as in the baseline
    zero = tf.zeros([batch])
    # output 0..size-1 maps linearly onto cut_start..size-1-cut_end
    t_scale = (w - 1 - cut[:, 0] - cut[:, 1]) / tf.maximum(w - 1, 1)
    f_scale = (h - 1 - cut[:, 2] - cut[:, 3]) / tf.maximum(h - 1, 1)
    return _affine(x, tf.stack([t_scale, zero, cut[:, 0]], axis=1), tf.stack([zero, f_scale, cut[:, 2]], axis=1))


def _zoom(x, seed, amount):
    batch, width, height = _dims(x)
    inv = 1.0 / (1.0 + _uniform([batch], seed, 0.0, amount))
    ct = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cf = (tf.cast(height, tf.float32) - 1.0) / 2.0
    zero = tf.zeros([batch])
    # about the centre: source = centre + (output - centre) / zoom
    return _affine(x, tf.stack([inv, zero, ct * (1 - inv)], axis=1), tf.stack([zero, inv, cf * (1 - inv)], axis=1))


def _rotate(x, seed, max_degrees):
    batch, width, height = _dims(x)
    angle = _uniform([batch], seed, -max_degrees, max_degrees) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    ct = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cf = (tf.cast(height, tf.float32) - 1.0) / 2.0
    # source = centre + R(angle) · (output - centre), in cells
    t_coef = tf.stack([cos, sin, ct - cos * ct - sin * cf], axis=1)
    f_coef = tf.stack([-sin, cos, cf + sin * ct - cos * cf], axis=1)
    return _affine(x, t_coef, f_coef)


def _gaussian_noise(x, seed, amount):
    s1, s2 = _split(seed, 2)
    sigma = _uniform([tf.shape(x)[0], 1, 1], s1, 0.0, math.sqrt(amount))
    return x + sigma * tf.random.stateless_normal(tf.shape(x), s2, dtype=tf.float32)


def _brightness(x, seed, amount):
    return x * _uniform([tf.shape(x)[0], 1, 1], seed, 1.0 - amount, 1.0 + amount)


def _dropout(x, seed, amount):
    return tf.where(_uniform(tf.shape(x), seed) < amount, 0.0, x)


def _blackout(x, seed, fraction):
    batch, width, _ = _dims(x)
    span = tf.maximum(1, tf.cast(tf.cast(width, tf.float32) * fraction, tf.int32))
    start = _randint([batch], seed, 0, tf.maximum(width - span, 0) + 1)
    t = tf.range(width)[None, :]
    covered = (t >= start[:, None]) & (t < start[:, None] + span)
    return tf.where(covered[:, :, None], 0.0, x)


def _blur(x, seed, kernel_size):
    del seed  # deterministic
    k = int(kernel_size)
    if k == 1:
        return x
    r = k // 2
    padded = tf.pad(x[..., None], [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    kernel = tf.ones([k, k, 1, 1], tf.float32) / float(k * k)
    return tf.nn.conv2d(padded, kernel, strides=1, padding="VALID")[..., 0]


def _multiply(x, seed, amount):
    return x * _uniform(tf.shape(x), seed, 1.0 - amount, 1.0 + amount)


_IMPLS = {
    "vertical_roll": _vertical_roll,
    "horizontal_roll": _horizontal_roll,
    "noise_chunk": _noise_chunk,
    "crop": _crop,
    "gaussian_noise": _gaussian_noise,
    "brightness": _brightness,
    "dropout": _dropout,
    "blackout": _blackout,
    "blur": _blur,
    "zoom": _zoom,
    "rotate": _rotate,
    "multiply": _multiply,
}


# ------------------------------------------------------------ composition
def _as_batch(images) -> tuple[tf.Tensor, bool]:
    x = tf.convert_to_tensor(images)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    if x.shape.rank == 2:
        return x[None], True
    if x.shape.rank != 3:
        raise ValueError(f"image augmentations take (batch, width, height) or (width, height) images, "
                         f"not shape {x.shape}")
    return x, False


def _apply(name: str, x: tf.Tensor, seed: tf.Tensor, mask: tf.Tensor, params: dict, noise_bank=None) -> tf.Tensor:
    """``x`` with augmentation ``name`` applied where ``mask (batch,)`` is True (untouched elsewhere)."""
    kwargs = dict(params)
    if name == "noise_chunk":
        kwargs["noise_bank"] = noise_bank

    def augmented():
        out = tf.clip_by_value(_IMPLS[name](x, seed, **kwargs), 0.0, 1.0)
        return tf.where(mask[:, None, None], out, x)

    return tf.cond(tf.reduce_any(mask), augmented, lambda: tf.identity(x))


def _single(name, images, seed, prob, return_mask, noise_bank=None, **params):
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"{name}: probability must be in [0, 1], not {prob}")
    params = _params(name, params)
    x, single = _as_batch(images)
    coin_seed, op_seed = _split(_seed(seed), 2)
    mask = _uniform([tf.shape(x)[0]], coin_seed) < prob
    out = _apply(name, x, op_seed, mask, params, noise_bank) if prob > 0 else x
    if single:
        out, mask = out[0], mask[0]
    return (out, mask) if return_mask else out


def vertical_roll(images, seed=None, prob=0.5, max_fraction=0.15, return_mask=False):
    """Rolls each image along frequency by a random non-zero shift of up to ±``max_fraction`` of the bands."""
    return _single("vertical_roll", images, seed, prob, return_mask, max_fraction=max_fraction)


def horizontal_roll(images, seed=None, prob=0.5, max_fraction=0.5, return_mask=False):
    """Rolls each image along time by a random non-zero shift of up to ±``max_fraction`` of the frames."""
    return _single("horizontal_roll", images, seed, prob, return_mask, max_fraction=max_fraction)


def noise_chunk(images, noise_bank, seed=None, prob=0.5, min_weight=1.0, max_weight=2.0, return_mask=False):
    """Blends each image with a random chunk of ``noise_bank (N, width, height)`` (0..1).

    ``(img·w1 + noise·w2) / (w1 + w2)`` with ``w1, w2`` uniform in [min_weight, max_weight],
    as the baseline's ``add``. Bank chunks of another size are resized (bilinear) to the images'.
    """
    return _single("noise_chunk", images, seed, prob, return_mask, noise_bank=noise_bank,
                   min_weight=min_weight, max_weight=max_weight)


def crop(images, seed=None, prob=0.5, max_fraction=0.1, return_mask=False):
    """Crops 1 cell to ``max_fraction`` from each side of each image and resizes it back (bilinear)."""
    return _single("crop", images, seed, prob, return_mask, max_fraction=max_fraction)


def gaussian_noise(images, seed=None, prob=0.5, amount=0.05, return_mask=False):
    """Adds Gaussian noise with a standard deviation uniform in [0, √amount] per image."""
    return _single("gaussian_noise", images, seed, prob, return_mask, amount=amount)


def brightness(images, seed=None, prob=0.5, amount=0.15, return_mask=False):
    """Multiplies each image by one factor uniform in [1 - amount, 1 + amount]."""
    return _single("brightness", images, seed, prob, return_mask, amount=amount)


def dropout(images, seed=None, prob=0.5, amount=0.25, return_mask=False):
    """Sets each cell of an image to 0 with probability ``amount``."""
    return _single("dropout", images, seed, prob, return_mask, amount=amount)


def blackout(images, seed=None, prob=0.5, fraction=0.1, return_mask=False):
    """Sets a random time span of ``fraction`` of the width (at least one frame) to 0."""
    return _single("blackout", images, seed, prob, return_mask, fraction=fraction)


def blur(images, seed=None, prob=0.5, kernel_size=3, return_mask=False):
    """Box blur of odd ``kernel_size`` with reflected borders."""
    return _single("blur", images, seed, prob, return_mask, kernel_size=kernel_size)


def zoom(images, seed=None, prob=0.5, amount=0.25, return_mask=False):
    """Zooms into the centre by a factor uniform in [1, 1 + amount] (bilinear)."""
    return _single("zoom", images, seed, prob, return_mask, amount=amount)


def rotate(images, seed=None, prob=0.5, max_degrees=10.0, return_mask=False):
    """Rotates about the centre by an angle uniform in ±``max_degrees`` (in cells), filling with 0."""
    return _single("rotate", images, seed, prob, return_mask, max_degrees=max_degrees)


def multiply(images, seed=None, prob=0.5, amount=0.25, return_mask=False):
    """Multiplies each cell by its own factor uniform in [1 - amount, 1 + amount]."""
    return _single("multiply", images, seed, prob, return_mask, amount=amount)


def resolve(names, params: dict | None = None) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Checks augmentation names (aliases allowed) and parameter overrides.

    Returns the canonical names and every one's full parameters; raises :class:`ConfigError`
    for an unknown name or parameter, a name given twice, or an invalid value.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    canon = [_canonical(str(n).strip()) for n in names]
    if len(set(canon)) != len(canon):
        raise ConfigError(f"image augmentations: a name is listed twice in {list(names)}")
    overrides = {_canonical(k): v for k, v in (params or {}).items()}
    for key in overrides:
        if key not in canon:
            raise ConfigError(f"image augmentation parameters given for '{key}', which is not enabled "
                              f"(enabled: {', '.join(canon) or 'none'})")
    return canon, {n: _params(n, overrides.get(n)) for n in canon}


def apply_augmentations(images, names, prob=0.5, max_augs=2, noise_bank=None, params=None, seed=None,
                        return_mask=False):
    """Applies up to ``max_augs`` of the augmentations ``names`` per example, the baseline's way.

    Args:
        images: ``float32 (batch, width, height)`` (or ``(width, height)``) in 0..1.
        names: Enabled augmentations (see :data:`DEFAULTS`, :data:`ALIASES`), a list or a
            comma-separated string.
        prob: Probability that each of the ``max_augs`` tries per example applies one more.
        max_augs: Tries per example (the most augmentations one example gets).
        noise_bank: ``(N, width, height)`` noise chunks in 0..1; needed by ``noise_chunk``.
        params: ``{name: {parameter: value}}`` overrides of :data:`DEFAULTS`.
        seed: Shape-``[2]`` int tensor, an int, or None (drawn from TF's global generator).
        return_mask: Also return which augmentations each example got.

    Returns:
        The images, float32 in 0..1, same shape; with ``return_mask`` also a boolean
        ``(batch, len(names))`` mask (``(len(names),)`` for one image), columns in the order of ``names``.
    """
    canon, full = resolve(names, params)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"augmentation probability must be in [0, 1], not {prob}")
    if max_augs < 0:
        raise ValueError(f"max_augs must not be negative, not {max_augs}")
    if "noise_chunk" in canon and noise_bank is None:
        raise ConfigError("image augmentation 'noise_chunk' is enabled but no noise bank was given")
    x, single = _as_batch(images)
    batch = tf.shape(x)[0]
    n = len(canon)
    if n == 0 or prob <= 0 or max_augs == 0:
        mask = tf.zeros([batch, n], tf.bool)
    else:
        seeds = _split(_seed(seed), 2 + n)
        successes = tf.reduce_sum(tf.cast(_uniform([batch, int(max_augs)], seeds[0]) < prob, tf.int32), axis=1)
        # a random order of the enabled augmentations per example; the first `successes` of it are applied
        rank = tf.argsort(tf.argsort(_uniform([batch, n], seeds[1]), axis=1), axis=1)
        mask = rank < successes[:, None]
        for i, name in enumerate(canon):
            x = _apply(name, x, seeds[2 + i], mask[:, i], full[name], noise_bank)
    if single:
        x, mask = x[0], mask[0]
    return (x, mask) if return_mask else x


# ---------------------------------------------------------------- the layer
@keras.saving.register_keras_serializable(package=PACKAGE)
class ImageAugment(keras.layers.Layer):
    """The baseline's image augmentations on ``(batch, width, height)`` 0..1 images; training only.

    The identity when ``training`` is false. Randomness comes from a
    ``keras.random.SeedGenerator`` (``seed``), so a seeded layer repeats its sequence.

    The noise bank of ``noise_chunk`` is set with :meth:`set_noise_bank` before training
    (before the first training call, which traces it into the graph). It is not saved
    with the model — it would bloat every checkpoint and inference never uses it — so a
    loaded model needs ``set_noise_bank`` again to keep training with it; until then
    ``noise_chunk`` is left out (with a warning) and the others are drawn from.

    Args:
        names: Enabled augmentations (see :data:`DEFAULTS`).
        prob: Probability of each of the ``max_augs`` tries per example.
        max_augs: Most augmentations per example.
        params: ``{name: {parameter: value}}`` overrides.
        seed: Int seed of the layer's random sequence, or None.
    """

    def __init__(self, names=(), prob=0.5, max_augs=2, params=None, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.names, full = resolve(names, params)
        self.params = {n: dict(p) for n, p in (params or {}).items()}
        self._full = full
        if not 0.0 <= float(prob) <= 1.0:
            raise ConfigError(f"image augmentation probability must be in [0, 1], not {prob}")
        if int(max_augs) < 0:
            raise ConfigError(f"image augmentation max_augs must not be negative, not {max_augs}")
        self.prob = float(prob)
        self.max_augs = int(max_augs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._noise_bank = None
        self._warned = False

    def set_noise_bank(self, bank) -> None:
        """Sets the noise chunks ``(N, width, height)`` (0..1) that ``noise_chunk`` blends in; None clears."""
        if bank is None:
            self._noise_bank = None
            return
        arr = np.asarray(bank, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[0] == 0:
            raise ValueError(f"a noise bank is (N, width, height) with N >= 1 chunks, not shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("the noise bank holds NaN or infinite values")
        self._noise_bank = tf.constant(np.clip(arr, 0.0, 1.0))

    @property
    def noise_bank(self):
        return self._noise_bank

    def call(self, x, training=None):
        if not training or not self.names or self.prob <= 0 or self.max_augs == 0:
            return x
        names = list(self.names)
        if "noise_chunk" in names and self._noise_bank is None:
            if not self._warned:
                warnings.warn(f"{self.name}: 'noise_chunk' has no noise bank (call set_noise_bank); "
                              "training without it", stacklevel=2)
                self._warned = True
            names.remove("noise_chunk")
        params = {n: self._full[n] for n in names}
        return apply_augmentations(x, names, self.prob, self.max_augs, self._noise_bank, params,
                                   seed=self.seed_generator.next())

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "names": list(self.names), "prob": self.prob,
                "max_augs": self.max_augs, "params": self.params, "seed": self.seed}
