"""OFAI 2018's metadata network: date, time and place of a recording as model input.

The features are those of :class:`birdnet_tf.data.metadata.MetadataEncoder` (float32
``[files, F]``: circular date and time codes, standardised latitude, longitude and elevation,
a ``*_missing`` indicator per field), fitted on a run's training files. Two models use them
(``metadata.use`` in the config):

* ``only`` — :func:`build_metadata_model`: ``metadata (batch, F)`` → ``MetadataNoise``
  (training only) → input dropout → per ``metadata.hidden`` size: Dense → batch norm →
  leaky ReLU → dropout → ``meta_logits`` (Dense, classes) → ``scores`` (the model's output
  activation). No audio at all.
* ``combined`` — :func:`birdnet_tf.models.build.build_model` builds the audio model with its
  usual layer names up to its pooled logits (layer ``temporal_pooling``) and adds the metadata
  MLP's ``meta_logits`` to them (layer ``combined_logits``), a per-file bias on the class logits,
  before ``scores``. Inputs ``{"waveform": (batch, samples), "metadata": (batch, F)}``. Since
  the audio layers keep their names, ``train.init_weights`` can start it from an audio run's
  ``best.keras``; ``meta_logits`` starts at zero there, so such a model starts as the audio model.

Data for ``only`` runs (no audio is read): :func:`metadata_training_dataset` and
:func:`metadata_windows` (one "window" per file, so file-level validation works unchanged).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from birdnet_tf.config import Config
from birdnet_tf.errors import ConfigError
from birdnet_tf.models.layers import PACKAGE

#: ``metadata.use`` values.
USES = ("none", "only", "combined")

#: Name of the metadata input of the models (and of the export's ``serving_default`` input).
METADATA_INPUT = "metadata"

#: ``config.json`` key of a run / export that records the number of metadata features.
FEATURES_KEY = "metadata_features"


def uses_metadata(cfg: Config) -> bool:
    """True when ``cfg`` trains a metadata-only or combined model."""
    return cfg.metadata.use != "none"


def check_metadata_config(cfg: Config) -> None:
    """Checks the ``metadata`` section.

    Raises:
        ConfigError: An unknown ``use``, date/time sizes other than 3 or 12, a hidden size < 1,
            a negative ``noise_std`` or a dropout outside [0, 1).
    """
    from birdnet_tf.data.metadata import CIRCULAR_SIZES

    m = cfg.metadata
    if m.use not in USES:
        raise ConfigError(f"metadata.use must be one of {', '.join(USES)}, not '{m.use}'")
    for name, size in (("date_size", m.date_size), ("time_size", m.time_size)):
        if size not in CIRCULAR_SIZES:
            raise ConfigError(f"metadata.{name} must be 3 or 12, not {size}")
    if any(h < 1 for h in m.hidden):
        raise ConfigError(f"metadata.hidden sizes must be >= 1, not {list(m.hidden)}")
    if not m.noise_std >= 0:
        raise ConfigError(f"metadata.noise_std must be >= 0, not {m.noise_std}")
    for name, rate in (("input_dropout", m.input_dropout), ("dropout", m.dropout)):
        if not 0 <= rate < 1:
            raise ConfigError(f"metadata.{name} must be in [0, 1), not {rate}")


def make_encoder(cfg: Config):
    """An unfitted :class:`~birdnet_tf.data.metadata.MetadataEncoder` of the config's sizes."""
    from birdnet_tf.data.metadata import MetadataEncoder

    return MetadataEncoder(date_size=cfg.metadata.date_size, time_size=cfg.metadata.time_size)


def feature_names(cfg: Config) -> list[str]:
    """Names of the metadata features of ``cfg``, in column order."""
    return make_encoder(cfg).feature_names


def num_features(cfg: Config) -> int:
    """Number of metadata features ``F`` of ``cfg`` (``date_size + time_size + 8``)."""
    return len(feature_names(cfg))


def indicator_index(names: list[str]) -> list[int]:
    """For each feature column: the column of its field's ``*_missing`` indicator, or -1 for an indicator.

    ``date_3`` → the column of ``date_missing``; ``latitude`` → ``latitude_missing``;
    ``time_missing`` → -1. A value column without an indicator also gets -1 (no noise then).
    """
    position = {name: i for i, name in enumerate(names)}
    out = []
    for name in names:
        if name.endswith("_missing"):
            out.append(-1)
            continue
        field = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
        out.append(position.get(f"{field}_missing", -1))
    return out


def has_metadata_input(model) -> bool:
    """True when the Keras model takes a ``metadata`` input."""
    return any(getattr(t, "name", "").split(":")[0] == METADATA_INPUT for t in model.inputs)


def has_waveform_input(model) -> bool:
    """True when the Keras model takes a ``waveform`` input."""
    return any(getattr(t, "name", "").split(":")[0] == "waveform" for t in model.inputs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MetadataNoise(keras.layers.Layer):
    """Gaussian noise on the known metadata values; training only.

    Adds ``N(0, stddev²)`` to every value column whose field is present in that row
    (its ``*_missing`` indicator is 0); indicator columns and the zeros of missing fields
    stay exact, so "missing" never looks like a noisy value. The identity in inference.

    Args:
        stddev: Noise standard deviation (on the encoded / standardised scale).
        indicators: Per column, the index of its field's indicator column, or -1 for columns
            that get no noise (the indicators themselves); see :func:`indicator_index`.
    """

    def __init__(self, stddev: float = 0.1, indicators=(), **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.stddev = float(stddev)
        self.indicators = [int(i) for i in indicators]

    def call(self, x, training=None):
        if not training or self.stddev <= 0 or not self.indicators:
            return x
        x = tf.convert_to_tensor(x)
        idx = np.asarray(self.indicators, np.int64)
        noisy_column = tf.constant((idx >= 0).astype(np.float32))  # [F]
        missing = tf.gather(x, np.maximum(idx, 0), axis=1)  # [B, F]: each column's indicator value
        present = noisy_column[None, :] * (1.0 - tf.cast(missing, tf.float32))
        noise = tf.random.normal(tf.shape(x), stddev=self.stddev, dtype=tf.float32) * present
        return x + tf.cast(noise, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "indicators": list(self.indicators)}


def metadata_logits(features, cfg: Config, n_classes: int, zero_init: bool = False):
    """The metadata MLP on a ``(batch, F)`` tensor: class logits ``(batch, classes)`` (layer ``meta_logits``).

    Layers: ``meta_noise`` (:class:`MetadataNoise`), ``meta_input_dropout``, then per hidden
    size ``k`` (1-based): ``meta_dense_k``, ``meta_bn_k`` (with ``metadata.batch_norm``),
    ``meta_act_k`` (leaky ReLU), ``meta_dropout_k``; finally ``meta_logits``.

    Args:
        zero_init: Start ``meta_logits`` at zero (the combined model: it then starts as its audio part).
    """
    m = cfg.metadata
    names = feature_names(cfg)
    if features.shape[-1] is not None and features.shape[-1] != len(names):
        raise ConfigError(f"the metadata input has {features.shape[-1]} features, metadata.date_size="
                          f"{m.date_size} and time_size={m.time_size} give {len(names)}")
    x = MetadataNoise(m.noise_std, indicator_index(names), name="meta_noise")(features)
    x = keras.layers.Dropout(m.input_dropout, name="meta_input_dropout")(x)
    for k, units in enumerate(m.hidden, start=1):
        x = keras.layers.Dense(units, use_bias=not m.batch_norm, name=f"meta_dense_{k}")(x)
        if m.batch_norm:
            x = keras.layers.BatchNormalization(name=f"meta_bn_{k}")(x)
        x = keras.layers.LeakyReLU(negative_slope=0.01, name=f"meta_act_{k}")(x)
        x = keras.layers.Dropout(m.dropout, name=f"meta_dropout_{k}")(x)
    init = "zeros" if zero_init else "glorot_uniform"
    return keras.layers.Dense(n_classes, kernel_initializer=init, name="meta_logits")(x)


def metadata_input(cfg: Config, n_features: int | None = None):
    """The ``metadata`` input ``(batch, F)`` float32 (``F`` from the config unless given)."""
    return keras.Input(shape=(n_features or num_features(cfg),), dtype="float32", name=METADATA_INPUT)


def build_metadata_model(cfg: Config, n_classes: int, n_features: int | None = None,
                         name: str | None = None) -> keras.Model:
    """Metadata-only model: ``{"metadata": (batch, F)}`` → ``scores (batch, n_classes)`` (see module docstring)."""
    if n_classes < 1:
        raise ValueError("a model needs at least one class")
    check_metadata_config(cfg)
    meta = metadata_input(cfg, n_features)
    logits = metadata_logits(meta, cfg, n_classes)
    act = cfg.model.output_activation
    if act not in ("sigmoid", "softmax"):
        raise ConfigError(f"model.output_activation must be sigmoid or softmax, not '{act}'")
    scores = keras.layers.Activation(act, dtype="float32", name="scores")(logits)
    return keras.Model({METADATA_INPUT: meta}, scores, name=name or "metadata_mlp")


# ------------------------------------------------------------------ data of metadata-only runs
def metadata_training_dataset(features: np.ndarray, targets: np.ndarray, durations_s: np.ndarray, cfg: Config,
                              repeat: bool = False):
    """Batches of ``({"metadata": (B, F)}, targets (B, classes))`` for a metadata-only run.

    One pass = one epoch: each file's row appears as often as
    :func:`~birdnet_tf.data.pipeline.excerpts_per_file` draws excerpts of it in an audio run
    (so epochs are comparable), in a new random order each pass. Noise and dropout happen
    inside the model.
    """
    from birdnet_tf.data.pipeline import AUTOTUNE, excerpts_per_file

    features = np.asarray(features, np.float32)
    targets = np.asarray(targets, np.float32)
    if len(features) != len(targets) or len(features) != len(durations_s):
        raise ValueError(f"features ({len(features)}), targets ({len(targets)}) and durations "
                         f"({len(durations_s)}) must have one row per file")
    idx = np.repeat(np.arange(len(features)), excerpts_per_file(durations_s, cfg))
    ds = tf.data.Dataset.from_tensor_slices(({METADATA_INPUT: features[idx]}, targets[idx]))
    ds = ds.shuffle(max(1, len(idx)), seed=cfg.data.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(cfg.data.batch_size, drop_remainder=False).prefetch(AUTOTUNE)


def metadata_windows(features: np.ndarray, cfg: Config, batch_size: int | None = None):
    """A :class:`~birdnet_tf.data.pipeline.WindowSet` with one "window" per file: its metadata row.

    ``dataset`` yields ``{"metadata": (B, F)}`` batches in file order, ``file_index = arange(files)``
    and ``start_s = 0``, so :func:`~birdnet_tf.evaluate.run.score_windows` and file-level
    validation work as for audio.
    """
    from birdnet_tf.data.pipeline import AUTOTUNE, WindowSet

    features = np.asarray(features, np.float32)
    batch = batch_size or cfg.data.batch_size
    ds = tf.data.Dataset.from_tensor_slices({METADATA_INPUT: features}).batch(batch)
    ds = ds.apply(tf.data.experimental.assert_cardinality(int(math.ceil(len(features) / batch))))
    return WindowSet(ds.prefetch(AUTOTUNE), np.arange(len(features), dtype=np.int64), np.zeros(len(features)))
