"""Model registry: architecture name → functional backbone builder.

A backbone takes the spectrogram tensor ``(batch, frames, bands)`` and returns
per-time-step features ``(batch, steps, channels)``. :func:`build_model` wraps it
between the frontend and the classification head (per-step logits → temporal
pooling → output activation), so every architecture gets the same waveform-in,
scores-out contract.
"""

from __future__ import annotations

from typing import Callable

from birdnet_tf.errors import ConfigError

_BACKBONES: dict[str, Callable] = {}


def register(name: str):
    """Decorator: registers ``fn(spec, cfg) -> features`` under ``name``."""

    def deco(fn):
        if name in _BACKBONES:
            raise ValueError(f"model '{name}' is registered twice")
        _BACKBONES[name] = fn
        return fn

    return deco


def get_backbone(name: str) -> Callable:
    _load_builtin()
    if name not in _BACKBONES:
        raise ConfigError(f"unknown model '{name}'; registered models: {', '.join(sorted(_BACKBONES))}")
    return _BACKBONES[name]


def available() -> list[str]:
    _load_builtin()
    return sorted(_BACKBONES)


def _load_builtin() -> None:
    # importing the modules registers their builders
    from birdnet_tf.models import ismir2016  # noqa: F401
    from birdnet_tf.models import kahl2018  # noqa: F401
