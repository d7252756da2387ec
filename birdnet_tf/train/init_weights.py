"""Pretrained initialisation (``train.init_weights``): a new run's layers from a ``.keras`` or ``.weights.h5`` file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from birdnet_tf.config import Config
from birdnet_tf.errors import BirdnetError


def read_init_weights(cfg: Config, n_classes: int, log=print) -> dict[str, list[np.ndarray]]:
    """Reads ``train.init_weights`` for a new model of ``cfg`` with ``n_classes`` outputs.

    A ``.keras`` model's layers are matched to the new model's by name and weight shapes.
    A ``.weights.h5`` file (e.g. ``checkpoints/epoch_NNN.weights.h5``) holds no layer names:
    it is loaded, layer by layer in Keras' order, into a model of ``cfg``'s architecture and
    the layers whose shapes fit are kept. With ``train.init_skip_output`` the output layer
    ``frame_logits`` is never taken, so a model trained on other classes can be fine-tuned.

    Args:
        cfg: The new run's config (``train.init_weights``, ``train.init_skip_output``, model).
        n_classes: Classes of the new model.
        log: Where the counts of loaded and skipped layers are reported.

    Returns:
        ``{layer name: weights}`` to ``set_weights`` on the new model's layers.

    Raises:
        BirdnetError: The file does not exist or cannot be read, no layer matches, or (without
            ``train.init_skip_output``) its number of classes differs from ``n_classes``.
    """
    from birdnet_tf.models.build import build_model
    from birdnet_tf.models.objects import load_model

    path, skip_output = Path(cfg.train.init_weights), cfg.train.init_skip_output
    if not path.is_file():
        raise BirdnetError(f"{path}: train.init_weights file does not exist")
    target = build_model(cfg, n_classes)
    mine = {layer.name: layer for layer in target.layers if layer.weights}
    hint = "set train.init_skip_output=true to fine-tune on new classes"
    if path.name.endswith(".keras"):
        source = load_model(path)
        theirs = {layer.name: layer.get_weights() for layer in source.layers if layer.weights}
        if "frame_logits" in theirs and not skip_output and "frame_logits" in mine:
            n_theirs = theirs["frame_logits"][-1].shape[-1]
            if n_theirs != n_classes:
                raise BirdnetError(f"{path}: has {n_theirs} classes, this run {n_classes}; {hint}")
    elif path.name.endswith(".weights.h5"):
        before = {name: [np.array(w) for w in layer.get_weights()] for name, layer in mine.items()}
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                target.load_weights(str(path), skip_mismatch=True)
        except Exception as e:  # noqa: BLE001 - any reader error becomes one clear message
            raise BirdnetError(f"{path}: cannot read weights for a {cfg.model.name} model "
                               f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
        theirs = {}
        for name, layer in mine.items():
            now = layer.get_weights()
            if any(not np.array_equal(a, b) for a, b in zip(before[name], now)):
                theirs[name] = now
        if "frame_logits" not in theirs and not skip_output and len(theirs) > 0:
            raise BirdnetError(f"{path}: its output layer frame_logits does not fit this run's {n_classes} "
                               f"classes (a different number of classes); {hint}")
    else:
        raise BirdnetError(f"{path}: train.init_weights must be a .keras model or a .weights.h5 file")
    loaded, skipped = {}, []
    for name, layer in mine.items():
        weights = theirs.get(name)
        if (skip_output and name == "frame_logits") or weights is None or \
                [tuple(w.shape) for w in layer.weights] != [tuple(np.shape(w)) for w in weights]:
            skipped.append(name)
        else:
            loaded[name] = weights
    if not loaded:
        raise BirdnetError(f"{path}: none of its layers matches the {cfg.model.name} model of this config "
                           "by name and shape; nothing to start from")
    log(f"init weights from {path}: {len(loaded)} layer(s) loaded, {len(skipped)} skipped"
        f"{' (' + ', '.join(skipped[:8]) + (' …' if len(skipped) > 8 else '') + ')' if skipped else ''}")
    return loaded


def apply_init_weights(model, weights: dict[str, list[np.ndarray]]) -> None:
    """Sets the layers of ``model`` named in ``weights`` (from :func:`read_init_weights`)."""
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
