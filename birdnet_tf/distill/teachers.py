"""Teachers of a distillation run and the soft-target loss.

A teacher is one of:

- a **run folder** (``config.json`` + ``labels.txt`` + ``best.keras``): its Keras model, frozen;
- an **export** (``saved_model.pb`` + ``assets.extra/``): its ``serving_default`` (waveform → scores);
- a **teacher table** (a file: BirdNET-Analyzer CSV, Raven selection table, ``predict --window-s``
  CSV; or a folder of per-recording result files), read by :func:`birdnet_tf.distill.tables.read_teacher_table` and pooled per excerpt in
  ``tf.data`` (:mod:`birdnet_tf.distill.targets`).

Model teachers score the same augmented batch the student sees, inside the training step
(:class:`Distiller`), so on the GPU when there is one; a teacher at another sample rate gets the
waveform resampled (:func:`resample`). Teacher classes are matched to the student's labels by
name; a student class a teacher lacks is *unknown* to it (masked), never a zero score.

Targets (per class ``c``): with the teachers' weighted mean ``t_c`` over the teachers that know
``c`` and ``m_c`` = some teacher knows ``c``::

    target_c = m_c · (alpha · t_c + (1 − alpha) · label_c) + (1 − m_c) · label_c

A softmax student fits the (renormalised) target by cross-entropy, a sigmoid student by the
per-class binary cross-entropy (:func:`distill_loss`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from birdnet_tf.errors import BirdnetError

#: What a teacher is: a Keras run, a SavedModel export, or a table of window scores.
KINDS = ("run", "export", "table")


@dataclass
class ModelTeacher:
    """A frozen model teacher mapped onto the student's labels.

    Attributes:
        path: The run or export folder.
        kind: ``run`` or ``export``.
        labels: The teacher's own labels.
        sample_rate_hz: The rate its waveform input expects.
        columns: int32 ``[C_student]``: the teacher column of each student class (0 where unknown).
        known: float32 ``[C_student]``: 1 for student classes the teacher has.
        fn: ``waveform [B, samples] (its rate) → scores [B, teacher classes]`` (TF).
    """

    path: str
    kind: str
    labels: list[str]
    sample_rate_hz: int
    columns: np.ndarray
    known: np.ndarray
    fn: object = field(repr=False)


def teacher_kind(path) -> str:
    """``run``, ``export`` or ``table`` for a teacher path.

    Raises:
        BirdnetError: It does not exist, or is a folder that is neither a run nor an export.
    """
    p = Path(path)
    if p.is_file():
        return "table"
    if not p.is_dir():
        raise BirdnetError(f"{p}: teacher does not exist (give a run folder, an export folder or a teacher table)")
    if (p / "saved_model.pb").is_file():
        return "export"
    if (p / "config.json").is_file() and (p / "labels.txt").is_file():
        return "run"
    if any(f.is_file() and is_table_name(f.name) for f in p.rglob("*")):
        return "table"  # a folder of per-recording result files (BirdNET-Analyzer writes one per recording)
    raise BirdnetError(f"{p}: teacher folder is neither a birdnet-tf run (config.json, labels.txt, best.keras) "
                       "nor an export (saved_model.pb) nor a folder of teacher tables (*.csv, *.selection.table.txt)")


def is_table_name(name: str) -> bool:
    """Whether a file name looks like a teacher table: a CSV or a Raven selection table."""
    low = name.lower()
    return low.endswith(".csv") or low.endswith(".selection.table.txt")


def map_labels(teacher_labels, student_labels, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Student → teacher columns by name (case, spacing and ``_`` insensitive): ``(columns int32 [C], known float32 [C])``.

    Raises:
        BirdnetError: The teacher shares no label with the student.
    """
    def norm(label) -> str:  # case, spacing and underscores do not matter
        return " ".join(str(label).replace("_", " ").lower().split())

    position = {}
    for i, label in enumerate(teacher_labels):
        position.setdefault(norm(label), i)
    columns = np.array([position.get(norm(label), 0) for label in student_labels], np.int32)
    known = np.array([norm(label) in position for label in student_labels], np.float32)
    if not known.any():
        raise BirdnetError(f"{source}: the teacher's {len(position)} labels (e.g. {', '.join(list(position)[:3])}) "
                           f"share none with the student's (e.g. {', '.join(map(str, list(student_labels)[:3]))})")
    return columns, known


def resample(x, rate_in: int, rate_out: int):
    """Band-limited resampling of ``x [B, samples]`` by FFT (TF): the spectrum is cut or zero-padded
    to the new length; ``rate_in == rate_out`` returns ``x``."""
    import tensorflow as tf

    if int(rate_in) == int(rate_out):
        return x
    n = tf.shape(x)[1]
    m = tf.cast(tf.math.round(tf.cast(n, tf.float64) * float(rate_out) / float(rate_in)), tf.int32)
    spec = tf.signal.rfft(tf.cast(x, tf.float32))
    bins = m // 2 + 1
    have = tf.shape(spec)[1]
    spec = tf.cond(bins <= have, lambda: spec[:, :bins],
                   lambda: tf.pad(spec, [[0, 0], [0, bins - have]]))
    y = tf.signal.irfft(spec, fft_length=[m])
    return y * (tf.cast(m, tf.float32) / tf.cast(tf.maximum(n, 1), tf.float32))


def load_model_teacher(path, student_labels, temperature: float = 1.0, log=print) -> ModelTeacher:
    """A run or export folder as a frozen :class:`ModelTeacher` on the student's labels.

    ``temperature`` divides a run's logits (the input of its ``scores`` activation) before the
    activation; an export exposes only scores, so its temperature is 1 (logged when asked otherwise).

    Raises:
        BirdnetError: Not a run or export, no trained model, metadata input, or no shared label.
    """
    import tensorflow as tf

    p = Path(path)
    kind = teacher_kind(p)
    if kind == "table":
        raise BirdnetError(f"{p}: is a file (a teacher table), not a model teacher")
    if kind == "run":
        from birdnet_tf.export import load_run

        model, cfg, labels, _ = load_run(p)
        if isinstance(model.input, dict) or cfg.metadata.use != "none":
            raise BirdnetError(f"{p}: a teacher that needs recording metadata (metadata.use={cfg.metadata.use}) "
                               "cannot score training excerpts")
        model.trainable = False
        if temperature != 1.0:
            import keras

            act = cfg.model.output_activation
            logits = keras.Model(model.input, model.get_layer("scores").input)
            logits.trainable = False
            t = float(temperature)
            fn = (lambda x: tf.nn.softmax(logits(x, training=False) / t)) if act == "softmax" else \
                (lambda x: tf.sigmoid(logits(x, training=False) / t))
        else:
            fn = lambda x: model(x, training=False)  # noqa: E731
        rate = cfg.audio.sample_rate_hz
    else:
        from birdnet_tf.export import ExportedModel

        exported = ExportedModel(p)
        if exported.uses_metadata:
            raise BirdnetError(f"{p}: an export that takes recording metadata cannot be a teacher of excerpts")
        if temperature != 1.0:
            log(f"note: {p}: an export exposes scores, not logits; distill.temperature is not applied to it")
        serving = exported.signature("serving_default")
        fn = lambda x: serving(waveform=x)["scores"]  # noqa: E731
        labels, rate = exported.labels, exported.sample_rate_hz
        fn.keep = exported  # the loaded SavedModel must outlive the function
    columns, known = map_labels(labels, student_labels, str(p))
    n_known = int(known.sum())
    log(f"teacher {p} ({kind}, {rate} Hz): knows {n_known} of the student's {len(student_labels)} classes"
        + (f"; the other {len(student_labels) - n_known} learn from labels alone" if n_known < len(student_labels) else ""))
    return ModelTeacher(str(p), kind, list(labels), int(rate), columns, known, fn)


def teacher_weights(teachers: list[str], weights_json: str) -> np.ndarray:
    """One weight per teacher (normalised to sum 1): equal, or from a ``birdnet-tf ensemble`` weights.json
    (models matched by path as given, resolved path, folder name).

    Raises:
        BirdnetError: weights.json unreadable, or a teacher it does not name.
    """
    if not weights_json:
        return np.full(len(teachers), 1.0 / max(1, len(teachers)))
    p = Path(weights_json)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BirdnetError(f"{p}: unreadable weights.json ({e})") from None
    table = data.get("weights", data) if isinstance(data, dict) else None
    if isinstance(table, list):  # [{"model": ..., "weight": ...}, ...]
        table = {str(row.get("model")): row.get("weight") for row in table if isinstance(row, dict)}
    if not isinstance(table, dict):
        raise BirdnetError(f"{p}: holds no model → weight mapping")
    lookup = {}
    for name, w in table.items():
        for k in (str(name), str(Path(name).resolve()), Path(str(name).rstrip("/")).name):
            lookup.setdefault(k, w)
    out = []
    for t in teachers:
        for k in (str(t), str(Path(t).resolve()), Path(str(t).rstrip("/")).name):
            if k in lookup:
                out.append(float(lookup[k]))
                break
        else:
            raise BirdnetError(f"{p}: has no weight for teacher {t} (it names {', '.join(list(table)[:5])})")
    w = np.asarray(out, np.float64)
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise BirdnetError(f"{p}: weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w / w.sum()


# ------------------------------------------------------------------------- targets and loss
def combine_teachers(scores, known, weights):
    """Weighted mean of teachers per class over the teachers that know it (TF or numpy-like via TF).

    Args:
        scores, known: ``[B, K, C]`` teacher scores and 0/1 masks.
        weights: ``[K]`` teacher weights.

    Returns:
        ``(teacher [B, C], mask [B, C])``; mask 1 where some teacher with weight > 0 knows the class.
    """
    import tensorflow as tf

    w = tf.cast(tf.reshape(weights, [1, -1, 1]), tf.float32) * tf.cast(known, tf.float32)
    total = tf.reduce_sum(w, axis=1)
    t = tf.math.divide_no_nan(tf.reduce_sum(w * tf.cast(scores, tf.float32), axis=1), total)
    return t, tf.cast(total > 0, tf.float32)


def soft_target(labels, teacher, mask, alpha: float):
    """``mask · (alpha · teacher + (1 − alpha) · labels) + (1 − mask) · labels``."""
    return mask * (alpha * teacher + (1.0 - alpha) * labels) + (1.0 - mask) * labels


def distill_loss(target, y_pred, activation: str, class_weight=None):
    """Per-example loss of scores ``y_pred [B, C]`` against soft targets ``[B, C]``.

    softmax: cross-entropy to the target renormalised to sum 1; sigmoid: binary cross-entropy per
    class, averaged over classes (weighted by ``class_weight [B, C]`` when given: 0 = no loss).
    Both use the logits behind the activation when Keras kept them (finite for saturated scores).
    """
    import keras
    import tensorflow as tf

    target = tf.cast(target, y_pred.dtype)
    if activation == "softmax":
        t = tf.math.divide_no_nan(target, tf.reduce_sum(target, axis=-1, keepdims=True))
        return keras.ops.categorical_crossentropy(t, y_pred)
    bce = keras.ops.binary_crossentropy(target, y_pred)
    if class_weight is None:
        return tf.reduce_mean(bce, axis=-1)
    cw = tf.cast(class_weight, bce.dtype)
    return tf.reduce_sum(cw * bce, axis=-1) / tf.cast(tf.shape(bce)[-1], bce.dtype)


def make_distiller(student, model_teachers: list[ModelTeacher], table_count: int, weights: np.ndarray,
                   alpha: float, activation: str, student_rate: int, min_confidence: float = 0.0,
                   feature_dims: int = 0, feature_weight: float = 1.0, feature_lr: float = 1e-3):
    """A :class:`keras.Model` training ``student`` on its teachers' soft targets (see the module docstring).

    ``weights [table_count + len(model_teachers)]``: the tables' first, then the model teachers'.
    Batches carry ``y`` as labels ``[B, C]`` or ``{"labels", "table" [B, T, C], "known" [B, T, C],
    "labelled" [B]}``; an unlabelled example (``labelled`` 0, pseudo-labels) is taught by the teachers
    alone, on the classes they know, and only when their highest score is at least ``min_confidence``.
    The distiller calls the student (``distiller.student``), and its trainable weights are the
    student's; checkpoints save the student (:func:`plain_model`).

    ``feature_dims`` > 0 (feature distillation, :mod:`birdnet_tf.distill.features`): the batches'
    ``table``/``known`` carry ``feature_dims`` more columns after the classes (the excerpt's projected
    teacher embedding); an auxiliary head of the distiller (the student's time-averaged backbone
    features → ``feature_dims``) fits it by a cosine loss times ``feature_weight``, and the metric
    ``feature_cosine`` logs their mean cosine. The head is not part of the student and trains with its
    own optimizer (Adam at ``feature_lr``), so the shared one (saved with the student) stays the
    student's; a resumed run starts a new head.
    """
    import keras
    import tensorflow as tf

    class Distiller(keras.Model):
        def __init__(self):
            super().__init__(name="distiller")
            self.student = student
            self._teachers = list(model_teachers)  # plain objects: not tracked, never trained or saved
            self._weights = np.asarray(weights, np.float32)
            self._alpha, self._activation = float(alpha), activation
            self._tables, self._rate, self._min_conf = int(table_count), int(student_rate), float(min_confidence)
            self._feature_dims, self._feature_weight = int(feature_dims), float(feature_weight)
            self._n_classes = int(student.output.shape[-1])
            if self._feature_dims:
                from birdnet_tf.distill.features import feature_layer

                steps = feature_layer(student)
                self._with_features = keras.Model(student.inputs, [student.output, steps])
                # the head trains with its own optimizer, so the student's optimizer (saved with the
                # student, restored on resume) holds the student's variables only
                self.feature_head = keras.layers.Dense(self._feature_dims, name="feature_head")
                self.feature_head.build((None, int(steps.shape[-1])))
                self._head_optimizer = keras.optimizers.Adam(float(feature_lr))
                self._head_optimizer.build(self.feature_head.trainable_variables)
                self.feature_cosine = keras.metrics.Mean(name="feature_cosine")

        @property
        def trainable_weights(self):
            """The student's: what the shared optimizer trains (the feature head has its own)."""
            return self.student.trainable_weights

        def call(self, x, training=False):
            if not (self._feature_dims and training):
                return self.student(x, training=training)
            scores, steps = self._with_features(x, training=training)
            return scores, tf.reduce_mean(tf.cast(steps, tf.float32), axis=1)

        def teacher_scores(self, x, y):
            """``(scores [B, K, C], known [B, K, C])`` of every teacher for batch ``x``."""
            scores, known = [], []
            if isinstance(y, dict) and "table" in y and self._tables:
                scores.append(y["table"][:, :, :self._n_classes])
                known.append(y["known"][:, :, :self._n_classes])
            b = tf.shape(x)[0]
            for t in self._teachers:
                s = tf.stop_gradient(tf.cast(t.fn(resample(x, self._rate, t.sample_rate_hz)), tf.float32))
                scores.append(tf.gather(s, t.columns, axis=1)[:, None])
                known.append(tf.tile(tf.constant(t.known)[None, None], [b, 1, 1]))
            if not scores:  # feature distillation alone: no teacher scores any class
                return tf.zeros([b, 0, self._n_classes]), tf.zeros([b, 0, self._n_classes])
            return tf.concat(scores, axis=1), tf.concat(known, axis=1)

        def targets(self, x, y):
            """``(target [B, C], class_weight [B, C] or None)`` of a batch."""
            labels = y["labels"] if isinstance(y, dict) else y
            labels = tf.cast(labels, tf.float32)
            scores, known = self.teacher_scores(x, y)
            teacher, mask = combine_teachers(scores, known, self._weights)
            target = soft_target(labels, teacher, mask, self._alpha)
            if not (isinstance(y, dict) and "labelled" in y):
                return target, None
            labelled = tf.cast(y["labelled"], tf.float32)[:, None]
            confident = tf.cast(tf.reduce_max(teacher * mask, axis=-1, keepdims=True) >= self._min_conf, tf.float32)
            target = labelled * target + (1 - labelled) * teacher * mask
            weight = labelled + (1 - labelled) * confident * mask
            return target, weight

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            # Keras' own losses divide by the replicas in sync (their gradients are summed over the
            # replicas), and the loss tracker multiplies back; a loss computed here must do the same
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            pooled = None
            if isinstance(y_pred, (tuple, list)):
                y_pred, pooled = y_pred
            target, weight = self.targets(x, y)
            if weight is not None and self._activation == "softmax":
                per_example = distill_loss(target, y_pred, "softmax") * tf.reduce_max(weight, axis=-1)
            else:
                per_example = distill_loss(target, y_pred, self._activation, weight)
            loss = tf.reduce_mean(per_example)
            if pooled is not None:
                from birdnet_tf.distill.features import cosine_loss

                c = self._n_classes
                mask = tf.cast(y["known"][:, 0, c], tf.float32)
                head = self.feature_head.trainable_variables
                with tf.GradientTape() as head_tape:  # the head's own step; the student's comes from fit
                    per = cosine_loss(y["table"][:, 0, c:], self.feature_head(pooled), mask)
                    feature_loss = tf.math.divide_no_nan(tf.reduce_sum(per), tf.reduce_sum(mask))
                    replica_loss = feature_loss / replicas
                self._head_optimizer.apply(head_tape.gradient(replica_loss, head), head)
                self.feature_cosine.update_state(1.0 - feature_loss)
                loss = loss + tf.cast(self._feature_weight, loss.dtype) * tf.cast(feature_loss, loss.dtype)
            if self.losses:
                loss = loss + tf.add_n([tf.cast(v, loss.dtype) for v in self.losses])
            return loss / tf.cast(replicas, loss.dtype) if replicas > 1 else loss

    return Distiller()


def plain_model(model):
    """The student of a :class:`Distiller` (what checkpoints and validation use); any other model itself."""
    return getattr(model, "student", model)
