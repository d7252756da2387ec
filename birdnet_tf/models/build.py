"""Builds the full waveform → scores model for a config."""

from __future__ import annotations

import keras

from birdnet_tf.config import Config
from birdnet_tf.frontend import frontend_layers, spec_augment_layer
from birdnet_tf.models.layers import TemporalPooling
from birdnet_tf.models.registry import get_backbone


#: What :func:`build_model` starts from: a raw waveform, or the 2018 baseline's chunk images.
INPUT_KINDS = ("waveform", "image")


def build_model(cfg: Config, n_classes: int, name: str | None = None, input_kind: str = "waveform",
                n_metadata: int | None = None) -> keras.Model:
    """Functional model: ``waveform (batch, samples)`` → ``scores (batch, n_classes)``.

    Inside: frontend → SpecAugment (training only) → SpecTransforms (layer ``spec_transforms``,
    training only; present only when ``augment.stretch_prob``, ``freq_shift_prob`` or
    ``filter_prob`` > 0) → backbone → per-step logits (layer ``frame_logits``,
    ``(batch, steps, classes)``) → temporal pooling (layer ``temporal_pooling``; ``attention:K`` also takes the backbone's per-step features) → activation.
    The time axis is dynamic, so the model accepts any length of at least one
    receptive field (see :func:`min_samples`).

    With ``input_kind="image"`` (``frontend.kind=chunks`` only) the model starts at the
    baseline's 0..1 chunk images ``image (batch, chunks.width, chunks.height)`` — what
    ``birdnet-tf extract`` saves as PNG — and skips the ``ChunkSpectrogram`` frontend; every
    layer after it is the same, names included. :func:`waveform_model` puts the frontend
    back in front of such a model.

    ``metadata.use`` (:mod:`birdnet_tf.models.metadata`): ``only`` returns the metadata MLP
    ``{"metadata": (batch, F)}`` → ``scores``; ``combined`` takes ``{"waveform", "metadata"}``
    and adds the MLP's logits (``meta_logits``) to the pooled audio logits (layer
    ``combined_logits``) before ``scores``; every audio layer keeps its name. ``n_metadata``
    (``F``) defaults to the config's encoder size.
    """
    if n_classes < 1:
        raise ValueError("a model needs at least one class")
    from birdnet_tf.models import metadata as meta_models

    meta_models.check_metadata_config(cfg)
    if cfg.metadata.use == "only":
        return meta_models.build_metadata_model(cfg, n_classes, n_metadata, name=name)
    combined = cfg.metadata.use == "combined"
    if combined and input_kind != "waveform":
        from birdnet_tf.errors import ConfigError

        raise ConfigError("metadata.use=combined needs a waveform model (not one on chunk images)")
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, not {input_kind!r}")
    backbone = get_backbone(cfg.model.name)
    if input_kind == "image":
        if cfg.frontend.kind != "chunks":
            from birdnet_tf.errors import ConfigError

            raise ConfigError(f"a model on chunk images needs frontend.kind=chunks, not '{cfg.frontend.kind}'")
        wave = keras.Input(shape=(cfg.chunks.width, cfg.chunks.height), dtype="float32", name="image")
        x = wave
    else:
        wave = keras.Input(shape=(None,), dtype="float32", name="waveform")
        x = wave
        for layer in frontend_layers(cfg):
            x = layer(x)
    x = spec_augment_layer(cfg.augment)(x)
    from birdnet_tf.data.spec_augment import spec_transforms_layer

    transforms = spec_transforms_layer(cfg.augment)  # None unless an OFAI spectrogram augmentation is on
    if transforms is not None:
        x = transforms(x)
    if cfg.augment.image_augs:
        from birdnet_tf.data.image_augment import ImageAugment

        x = ImageAugment(cfg.augment.image_augs, cfg.augment.image_aug_prob, cfg.augment.image_aug_max,
                         seed=cfg.data.seed, name="image_augment")(x)
    feats = backbone(x, cfg)
    logits = keras.layers.Dense(n_classes, name="frame_logits")(feats)
    pooling = TemporalPooling(cfg.model.temporal_pooling, name="temporal_pooling")
    # attention heads weigh the steps by a projection of the backbone's per-step features
    pooled = pooling(logits, feats) if pooling.heads else pooling(logits)
    act = cfg.model.output_activation
    if act not in ("sigmoid", "softmax"):
        from birdnet_tf.errors import ConfigError

        raise ConfigError(f"model.output_activation must be sigmoid or softmax, not '{act}'")
    if combined:  # the metadata MLP's logits: a per-file bias on the pooled class logits
        meta = meta_models.metadata_input(cfg, n_metadata)
        bias = meta_models.metadata_logits(meta, cfg, n_classes, zero_init=True)
        pooled = keras.layers.Add(name="combined_logits")([pooled, bias])
    scores = keras.layers.Activation(act, dtype="float32", name="scores")(pooled)
    if combined:
        return keras.Model({"waveform": wave, meta_models.METADATA_INPUT: meta}, scores, name=name or cfg.model.name)
    return keras.Model(wave, scores, name=name or cfg.model.name)


def waveform_model(image_model: keras.Model, cfg: Config) -> keras.Model:
    """The waveform model of an image model (``build_model(..., input_kind="image")``).

    A new functional model ``waveform (batch, samples)`` → ``ChunkSpectrogram(cfg.chunks)``
    (layer ``chunk_spectrogram``) → the image model's own layers (the same layer objects, so
    the weights are shared, not copied) → ``scores``: the model that on-the-fly training of
    the same recipe builds, with the same layer names. It takes 1-s chunks at
    ``chunks.sample_rate_hz`` (zero-padded or cut to ``chunks.chunk_s``).
    """
    from birdnet_tf.frontend import ChunkSpectrogram

    if len(image_model.inputs) != 1 or tuple(image_model.inputs[0].shape[1:]) != (cfg.chunks.width, cfg.chunks.height):
        from birdnet_tf.errors import BirdnetError

        raise BirdnetError(f"model '{image_model.name}' does not take ({cfg.chunks.width}, {cfg.chunks.height}) "
                           f"chunk images (its input: {[tuple(t.shape) for t in image_model.inputs]})")
    wave = keras.Input(shape=(None,), dtype="float32", name="waveform")
    spec = ChunkSpectrogram(cfg.chunks, name="chunk_spectrogram")(wave)
    # re-calls the image model's own layers on ``spec`` (what keras.models.clone_model does with an
    # identity clone_function, whose Functional wrapper would cut the graph at ``spec``): one flat graph
    scores = image_model._run_through_graph(spec, operation_fn=lambda layer: layer)
    return keras.Model(wave, scores, name=image_model.name)


def min_samples(model: keras.Model, cfg: Config) -> int:
    """Smallest waveform length ``model`` accepts (one receptive field), in samples.

    Found by bisection over whole frames on symbolic shapes, so nothing is computed.
    A combined audio + metadata model is probed with its ``metadata`` input; a metadata-only
    model gives 0.
    """
    hop, n_fft = cfg.frontend.hop_length, cfg.frontend.n_fft
    from birdnet_tf.models.metadata import METADATA_INPUT, has_metadata_input, has_waveform_input

    if has_metadata_input(model):
        if not has_waveform_input(model):
            return 0  # a metadata-only model reads no audio
        n_meta = next(t.shape[-1] for t in model.inputs if t.name.split(":")[0] == METADATA_INPUT)

    def shape(samples: int):
        return {"waveform": (1, samples), METADATA_INPUT: (1, n_meta)} if has_metadata_input(model) else (1, samples)

    def ok(frames: int) -> bool:
        try:
            model.compute_output_shape(shape(n_fft + (frames - 1) * hop))
            return True
        except ValueError:
            return False

    lo, hi = 1, 1
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 20:
            raise RuntimeError("the model accepts no input length up to 2^20 frames")
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return n_fft + (hi - 1) * hop


def load_keras_model(path) -> keras.Model:
    """Loads a ``.keras`` model saved by birdnet-tf (registers the custom layers first)."""
    from pathlib import Path

    import birdnet_tf.frontend.layers  # noqa: F401 - registers the frontend layers
    import birdnet_tf.frontend.magnitudes  # noqa: F401 - and its magnitude layers (PCEN, MagnitudeScaling)
    import birdnet_tf.models.layers  # noqa: F401 - registers the head layers
    import birdnet_tf.data.image_augment  # noqa: F401 - registers the baseline's augmentation layer
    import birdnet_tf.data.spec_augment  # noqa: F401 - registers the OFAI spectrogram augmentation layer
    import birdnet_tf.models.metadata  # noqa: F401 - registers the metadata network's noise layer
    from birdnet_tf.train.losses import register_losses
    from birdnet_tf.train.trainer import register_schedules

    register_schedules()  # learning-rate schedules a compiled .keras may hold
    register_losses()  # and losses
    from birdnet_tf.errors import BirdnetError

    if not Path(path).is_file():
        raise BirdnetError(f"{path}: model file does not exist")
    try:
        return keras.models.load_model(str(path))
    except (ValueError, OSError, TypeError) as e:
        raise BirdnetError(f"{path}: cannot load model ({str(e).splitlines()[0][:200]})") from None
