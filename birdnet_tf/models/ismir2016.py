"""The OFAI "ismir2016" CNN (Schlüter, BirdCLEF 2018), in (time, frequency, channel) layout.

``conv 32×3×3, conv 32×3×3, pool 3×3, conv 32×3×3, conv 32×3×3,
conv 64×3×(all remaining bands), pool 3×1, dense-as-conv 256 over 9 frames,
dense-as-conv 256 1×1`` with batch norm, leaky ReLU and dropout; valid padding,
so the receptive field of one output step is ~103 frames (1.5 s at 70 frames/s).
"""

from __future__ import annotations

import keras

from birdnet_tf.config import Config
from birdnet_tf.models.registry import register


def conv_block(x, filters, kernel, name, dropout=0.0):
    """Conv (no bias) → batch norm → leaky ReLU (→ dropout)."""
    x = keras.layers.Conv2D(filters, kernel, padding="valid", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.LeakyReLU(negative_slope=0.01, name=f"{name}_act")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


@register("ismir2016")
def ismir2016(spec, cfg: Config):
    """``spec`` ``(batch, frames, bands)`` → features ``(batch, steps, dense_units)``."""
    m = cfg.model
    w = lambda n: max(1, int(round(n * m.width)))  # noqa: E731
    x = keras.layers.Reshape((-1, spec.shape[-1], 1), name="add_channel")(spec)
    x = conv_block(x, w(32), 3, "c1")
    x = conv_block(x, w(32), 3, "c2")
    x = keras.layers.MaxPooling2D((3, 3), name="pool1")(x)
    x = conv_block(x, w(32), 3, "c3")
    x = conv_block(x, w(32), 3, "c4")
    bands = x.shape[2]
    x = conv_block(x, w(64), (3, bands), "c5")  # spans all remaining bands
    x = keras.layers.MaxPooling2D((3, 1), name="pool2")(x)
    x = keras.layers.Dropout(m.dropout, name="pool2_drop")(x)
    x = conv_block(x, m.dense_units, (9, 1), "fc1", dropout=m.dropout)
    x = conv_block(x, m.dense_units, 1, "fc2", dropout=m.dropout)
    return keras.layers.Reshape((-1, m.dense_units), name="steps")(x)
