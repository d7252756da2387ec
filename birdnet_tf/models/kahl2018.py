"""The 2018 BirdCLEF baseline's CNNs (Kahl et al., arXiv 1804.07177), in (time, frequency, channel) layout.

Two registered backbones, both ``spec (batch, frames, bands)`` → ``features (batch, steps, units)``
with ``steps = frames / 2^len(filters)`` (rounded down with max-pooling, up with strided
convolutions) and the frequency axis averaged away:

``kahl2018_baseline`` ("Baseline"): per entry ``f`` of ``model.filters`` one group
``conv f×3×3 → batch norm → nonlinearity → 2×2 max-pool → dropout`` (with
``downsample: strided`` the convolution has stride 2 and there is no pool), then a
``1×1 conv 2·filters[-1]`` with batch norm and no nonlinearity. ``units = 2·filters[-1]``.

``kahl2018_resnet`` ("ResNet", a wide pre-activation ResNet): a plain ``conv filters[0]×3×3``,
then per entry ``f`` a stack of ``model.resnet_n`` residual blocks of ``f·resnet_k`` filters,
the first one halving time and frequency; a block is ``BN → nonlinearity → conv 3×3
(stride 2 or + 2×2 max-pool in the first block) → BN → nonlinearity → dropout → conv 3×3``
plus a shortcut (the pre-activated input in a stack's first block, projected by a 1×1
convolution where the shape changes; the raw input otherwise); after the last stack
``BN → nonlinearity``. ``units = filters[-1]·resnet_k``.

The original ends both with global average pooling and a dense softmax layer. Here the
frequency average happens in the backbone and :func:`birdnet_tf.models.build.build_model`
adds the per-step dense logits; with ``model.temporal_pooling: mean`` the head is exactly
global average pooling followed by the dense layer (both are linear, so they commute).

Settings (``cfg.model``): ``filters``, ``resnet_k``, ``resnet_n``, ``nonlinearity``
(relu | lrelu (slope 0.01) | vlrelu (0.33) | elu), ``batch_norm``, ``downsample``
(maxpool | strided), ``dropout``. The baseline's final recipe used filters (16, 32, 64, 128),
RESNET_K = RESNET_N = 2, ReLU, batch norm, strided convolutions (``MAX_POOLING = False``)
and no dropout, on 256 × 128 images (1 s at 44.1 kHz, 128 mel bands).

Differences from the Lasagne code: kernels start from Keras' ``he_normal`` (a truncated
normal) for every nonlinearity, and "same" padding of strided convolutions is TensorFlow's
(the extra row/column goes to the end, not split).
"""

from __future__ import annotations

import keras

from birdnet_tf.config import Config
from birdnet_tf.errors import ConfigError
from birdnet_tf.models.registry import register

NONLINEARITIES = ("relu", "lrelu", "vlrelu", "elu")
DOWNSAMPLING = ("maxpool", "strided")
_INIT = "he_normal"


def _check(cfg: Config, bands: int | None) -> None:
    """Raises :class:`ConfigError` for settings these models cannot be built with."""
    m = cfg.model
    if not m.filters or any(int(f) < 1 for f in m.filters):
        raise ConfigError(f"model.filters must be one or more positive numbers, not {tuple(m.filters)!r}")
    if m.resnet_k < 1 or m.resnet_n < 1:
        raise ConfigError(f"model.resnet_k and model.resnet_n must be at least 1 (got {m.resnet_k}, {m.resnet_n})")
    if m.nonlinearity not in NONLINEARITIES:
        raise ConfigError(f"model.nonlinearity must be one of {', '.join(NONLINEARITIES)}, not '{m.nonlinearity}'")
    if m.downsample not in DOWNSAMPLING:
        raise ConfigError(f"model.downsample must be one of {', '.join(DOWNSAMPLING)}, not '{m.downsample}'")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), not {m.dropout}")
    halvings = len(m.filters)
    if m.downsample == "maxpool" and bands is not None and bands < 2 ** halvings:
        raise ConfigError(
            f"{m.name}: {bands} frequency bands are too few for {halvings} 2×2 max-pools "
            f"(model.filters has {halvings} entries; needs at least {2 ** halvings} bands, "
            "or model.downsample=strided)")


def _activation(x, kind: str, name: str):
    if kind == "relu":
        return keras.layers.ReLU(name=name)(x)
    if kind == "lrelu":
        return keras.layers.LeakyReLU(negative_slope=0.01, name=name)(x)
    if kind == "vlrelu":
        return keras.layers.LeakyReLU(negative_slope=0.33, name=name)(x)
    return keras.layers.ELU(name=name)(x)


def _conv(x, filters: int, kernel: int, name: str, strides: int = 1, use_bias: bool = True):
    return keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=use_bias,
                               kernel_initializer=_INIT, name=name)(x)


def _norm(x, cfg: Config, name: str):
    """Batch norm when ``model.batch_norm`` is on, else the identity."""
    return keras.layers.BatchNormalization(name=name)(x) if cfg.model.batch_norm else x


def _dropout(x, cfg: Config, name: str):
    return keras.layers.Dropout(cfg.model.dropout, name=name)(x) if cfg.model.dropout > 0 else x


def _to_steps(x, name_prefix: str = ""):
    """``(batch, steps, freq, C)`` → ``(batch, steps, C)``: average over the frequency axis."""
    x = keras.layers.AveragePooling2D(pool_size=(1, x.shape[2]), name=f"{name_prefix}freq_pool")(x)
    return keras.layers.Reshape((-1, x.shape[-1]), name="steps")(x)


def _add_channel(spec):
    return keras.layers.Reshape((-1, spec.shape[-1], 1), name="add_channel")(spec)


@register("kahl2018_baseline")
def kahl2018_baseline(spec, cfg: Config):
    """The baseline's plain CNN: ``spec (batch, frames, bands)`` → ``(batch, frames/2^G, 2·filters[-1])``.

    ``G = len(cfg.model.filters)`` groups of conv → BN → nonlinearity → downsampling → dropout,
    then a 1×1 convolution with batch norm and no nonlinearity, averaged over frequency.
    """
    _check(cfg, spec.shape[-1])
    m = cfg.model
    bn = m.batch_norm
    pool = m.downsample == "maxpool"
    x = _add_channel(spec)
    for i, f in enumerate(m.filters, start=1):
        x = _conv(x, int(f), 3, f"g{i}_conv", strides=1 if pool else 2, use_bias=not bn)
        x = _norm(x, cfg, f"g{i}_bn")
        x = _activation(x, m.nonlinearity, f"g{i}_act")
        if pool:
            x = keras.layers.MaxPooling2D(2, name=f"g{i}_pool")(x)
        x = _dropout(x, cfg, f"g{i}_drop")
    x = _conv(x, 2 * int(m.filters[-1]), 1, "final_conv", use_bias=not bn)
    x = _norm(x, cfg, "final_bn")
    return _to_steps(x)


def _resblock(x_in, filters: int, stride: int, preactivated: bool, cfg: Config, name: str):
    """One pre-activation residual block (see the module docstring)."""
    m = cfg.model
    pool = m.downsample == "maxpool"
    s = 1 if pool else stride
    pre = _activation(_norm(x_in, cfg, f"{name}_pre_bn"), m.nonlinearity, f"{name}_pre_act")
    shortcut = pre if preactivated else x_in
    x = _conv(pre, filters, 3, f"{name}_conv1", strides=s, use_bias=not m.batch_norm)
    x = _norm(x, cfg, f"{name}_bn1")
    x = _activation(x, m.nonlinearity, f"{name}_act1")
    if pool and stride > 1:
        x = keras.layers.MaxPooling2D(stride, name=f"{name}_pool")(x)
    x = _dropout(x, cfg, f"{name}_drop")
    x = _conv(x, filters, 3, f"{name}_conv2")
    if stride > 1 or shortcut.shape[-1] != filters:
        shortcut = _conv(shortcut, filters, 1, f"{name}_shortcut", strides=s, use_bias=False)
        if pool and stride > 1:
            shortcut = keras.layers.MaxPooling2D(stride, name=f"{name}_shortcut_pool")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([x, shortcut])


@register("kahl2018_resnet")
def kahl2018_resnet(spec, cfg: Config):
    """The baseline's wide ResNet: ``spec (batch, frames, bands)`` → ``(batch, frames/2^G, filters[-1]·k)``.

    A 3×3 convolution, ``G = len(cfg.model.filters)`` stacks of ``resnet_n`` pre-activation
    residual blocks (``filters[i]·resnet_k`` filters, the first block of each stack halves
    time and frequency), a final BN → nonlinearity, averaged over frequency.
    """
    _check(cfg, spec.shape[-1])
    m = cfg.model
    x = _add_channel(spec)
    x = _conv(x, int(m.filters[0]), 3, "stem_conv")
    for i, f in enumerate(m.filters, start=1):
        width = int(f) * m.resnet_k
        x = _resblock(x, width, 2, True, cfg, f"s{i}b1")
        for j in range(2, m.resnet_n + 1):
            x = _resblock(x, width, 1, False, cfg, f"s{i}b{j}")
    x = _norm(x, cfg, "post_bn")
    x = _activation(x, m.nonlinearity, "post_act")
    return _to_steps(x)
