"""The OFAI "ismir2016" CNN (Schlüter, BirdCLEF 2018), in (time, frequency, channel) layout.

``conv 32×3×3, conv 32×3×3, pool 3×3, conv 32×3×3, conv 32×3×3,
conv 64×3×(all remaining bands), pool 3×1, dense-as-conv 256 over 9 frames,
dense-as-conv 256 1×1`` with batch norm, leaky ReLU and dropout; valid padding,
so the receptive field of one output step is ~103 frames (1.5 s at 70 frames/s).

Knobs (``model.*``): ``width`` multiplies the conv filters (1.0 = OFAI's 32/64),
``dense_units`` sets the two dense-as-conv layers (OFAI: 256, or 1024 in the large variant),
``conv_groups`` makes the 3×3 convolutions ``c2``–``c5`` grouped (``Conv2D(groups=g)``:
``g`` times fewer weights; ``c1`` sees one channel and is never grouped), and ``preset``
names a set of those values (:data:`PRESETS`; ``wide`` = OFAI's large network). The
defaults build the same layers, names and parameters as before the knobs existed.
"""

from __future__ import annotations

import keras

from birdnet_tf.config import Config, ModelConfig
from birdnet_tf.errors import ConfigError
from birdnet_tf.models.registry import register

#: ``model.preset`` → the knob values it sets.
PRESETS: dict[str, dict[str, float | int]] = {
    "wide": {"width": 1.0, "dense_units": 1024},  # OFAI's full-width convs and 1024-unit dense layers
}


def resolve_knobs(m: ModelConfig) -> tuple[float, int, int]:
    """``(width, dense_units, conv_groups)`` of ``m`` after its preset.

    Raises:
        ConfigError: Unknown preset, a knob set both by the preset and (to another value
            than its default) explicitly, or ``conv_groups`` not dividing the grouped
            layers' channels.
    """
    width, dense = m.width, m.dense_units
    if m.preset:
        if m.preset not in PRESETS:
            raise ConfigError(f"unknown model.preset '{m.preset}'; choose one of {', '.join(PRESETS)} or ''")
        defaults = ModelConfig()
        for key, value in PRESETS[m.preset].items():
            mine = getattr(m, key)
            if mine != getattr(defaults, key) and mine != value:
                raise ConfigError(f"model.preset={m.preset} sets model.{key}={value}, but model.{key}={mine} "
                                  "was also given; drop one of them")
        width, dense = PRESETS[m.preset].get("width", width), int(PRESETS[m.preset].get("dense_units", dense))
    groups = int(m.conv_groups)
    if groups < 1:
        raise ConfigError(f"model.conv_groups must be >= 1, got {m.conv_groups}")
    w = lambda n: max(1, int(round(n * width)))  # noqa: E731
    if groups > 1 and (w(32) % groups or w(64) % groups):
        raise ConfigError(f"model.conv_groups={groups} must divide the grouped convolutions' channels "
                          f"({w(32)} and {w(64)} at model.width={width})")
    return width, dense, groups


def conv_block(x, filters, kernel, name, dropout=0.0, groups=1):
    """Conv (no bias; ``groups`` > 1: grouped) → batch norm → leaky ReLU (→ dropout)."""
    x = keras.layers.Conv2D(filters, kernel, padding="valid", use_bias=False, groups=groups,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.LeakyReLU(negative_slope=0.01, name=f"{name}_act")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


@register("ismir2016")
def ismir2016(spec, cfg: Config):
    """``spec`` ``(batch, frames, bands)`` → features ``(batch, steps, dense_units)``."""
    m = cfg.model
    width, dense, g = resolve_knobs(m)
    w = lambda n: max(1, int(round(n * width)))  # noqa: E731
    x = keras.layers.Reshape((-1, spec.shape[-1], 1), name="add_channel")(spec)
    x = conv_block(x, w(32), 3, "c1")
    x = conv_block(x, w(32), 3, "c2", groups=g)
    x = keras.layers.MaxPooling2D((3, 3), name="pool1")(x)
    x = conv_block(x, w(32), 3, "c3", groups=g)
    x = conv_block(x, w(32), 3, "c4", groups=g)
    bands = x.shape[2]
    x = conv_block(x, w(64), (3, bands), "c5", groups=g)  # spans all remaining bands
    x = keras.layers.MaxPooling2D((3, 1), name="pool2")(x)
    x = keras.layers.Dropout(m.dropout, name="pool2_drop")(x)
    x = conv_block(x, dense, (9, 1), "fc1", dropout=m.dropout)
    x = conv_block(x, dense, 1, "fc2", dropout=m.dropout)
    return keras.layers.Reshape((-1, dense), name="steps")(x)
