"""The frontend: signal processing from waveform to spectrogram, as NumPy / TF ops and Keras layers.

Modules (each imports only the ones above it, and nothing of the package above
``errors``, ``config`` and ``fileio``; see :mod:`birdnet_tf` for the layering):

* :mod:`~birdnet_tf.frontend.mel` - HTK mel (TF ops), Slaney mel and linear filterbanks (NumPy);
* :mod:`~birdnet_tf.frontend.stft` - framing for the STFTs;
* :mod:`~birdnet_tf.frontend.chunks` - the 2018 baseline's chunks: settings, cutting, chunk spectrogram;
* :mod:`~birdnet_tf.frontend.signal_noise` - the baseline's signal/noise score of a chunk spectrogram;
* :mod:`~birdnet_tf.frontend.layers` - Keras layers: ``MelSpectrogram``, ``SpecAugment``,
  ``BandCentering``, ``ChunkSpectrogram``;
* :mod:`~birdnet_tf.frontend.magnitudes` - Keras layers: ``MagnitudeScaling``, ``PCEN``;
* :mod:`~birdnet_tf.frontend.stack` - the frontend stack of a config (:func:`frontend_layers`).

Every public name of those modules is importable from here (``from birdnet_tf.frontend import
MelSpectrogram``), loaded on first use: the NumPy chunk code (``extract``'s parent process)
never imports TensorFlow or Keras. For the same reason ``import birdnet_tf.frontend`` alone
registers no Keras layer: call :func:`register_layers` (or import ``layers`` and ``magnitudes``)
before loading a saved model.
"""

from __future__ import annotations

import importlib

#: Public name → the submodule that defines it.
_EXPORTS = {
    **dict.fromkeys(("MEL_BREAK_HZ", "MEL_Q", "hz_to_mel", "linear_filterbank_matrix", "mel_to_hz",
                     "slaney_mel_filterbank", "triangular_filterbank"), "mel"),
    "frame_blocks": "stft",
    **dict.fromkeys(("AMIN", "ChunkSpectrogramSpec", "check_chunk_config", "chunk_config", "chunk_spectrogram",
                     "chunk_starts", "compiled_chunk_spectrogram", "cut_at", "cut_chunks", "linear_filterbank",
                     "mel_filterbank", "reference_chunk_spectrogram", "spec_params"), "chunks"),
    **dict.fromkeys(("COLUMN_FACTOR", "ROW_FACTOR", "signal_noise_score", "signal_noise_score_tf"),
                    "signal_noise"),
    **dict.fromkeys(("PACKAGE", "BandCentering", "ChunkSpectrogram", "MelSpectrogram", "SpecAugment"), "layers"),
    **dict.fromkeys(("PCEN", "MagnitudeScaling", "pcen_smoothing_coefficient"), "magnitudes"),
    **dict.fromkeys(("FILTERBANKS", "check_learnable_frontend", "frontend_layers", "spec_augment_layer"), "stack"),
}

__all__ = sorted([*_EXPORTS, "register_layers"])


def register_layers() -> None:
    """Registers every frontend Keras layer (``birdnet_tf>MelSpectrogram``, ...) for loading saved models."""
    for module in ("layers", "magnitudes"):
        importlib.import_module(f"{__name__}.{module}")


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
