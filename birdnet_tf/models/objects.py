"""Every custom Keras object a saved birdnet-tf model may name, registered in one place.

A ``.keras`` file names its classes by their registered name (``birdnet_tf>ClassName``):
the frontend's layers, the head's pooling layer, the augmentation layers, the metadata
network's noise layer, and — in a compiled file such as ``last.keras`` — the learning-rate
schedules, the frontend-learning-rate optimizers and the ``ce_bgtopk`` loss. Each class
registers itself when its module is imported; :func:`custom_objects` imports them all, and
:func:`load_model` loads any model the package saved.

Layering: these classes live in ``frontend``, ``data`` (augmentation layers) and ``models``
(layers, schedules, optimizers, losses), never in ``train/``: training only *chooses* among them
(:mod:`birdnet_tf.train.optim`, :mod:`birdnet_tf.train.losses`), so everything that loads a model
(evaluate, export, inference, teachers) depends on ``models`` and nothing above it.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from birdnet_tf.errors import BirdnetError


def custom_objects() -> dict[str, type]:
    """Imports (and so registers) every custom class; returns them by registered name."""
    import birdnet_tf.data.image_augment  # noqa: F401 - the baseline's augmentation layer
    import birdnet_tf.data.spec_augment  # noqa: F401 - the OFAI spectrogram augmentation layer
    import birdnet_tf.models.frontend_lr  # noqa: F401 - the frontend-learning-rate optimizers
    import birdnet_tf.models.layers  # noqa: F401 - the head layers
    import birdnet_tf.models.losses  # noqa: F401 - the ce_bgtopk loss
    import birdnet_tf.models.metadata  # noqa: F401 - the metadata network's noise layer
    import birdnet_tf.models.schedules  # noqa: F401 - the learning-rate schedules
    from birdnet_tf.frontend import register_layers

    register_layers()  # the frontend layers (the package loads its names lazily)

    return {name: obj for name, obj in keras.saving.get_custom_objects().items() if name.startswith("birdnet_tf>")}


def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a ``.keras`` model saved by birdnet-tf (registers the custom objects first).

    Raises:
        BirdnetError: The file does not exist or Keras cannot read it (one line naming the file).
    """
    custom_objects()
    if not Path(path).is_file():
        raise BirdnetError(f"{path}: model file does not exist")
    try:
        return keras.models.load_model(str(path))
    except (ValueError, OSError, TypeError) as e:
        raise BirdnetError(f"{path}: cannot load model ({str(e).splitlines()[0][:200]})") from None
