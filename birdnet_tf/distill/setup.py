"""The ``distill`` section of a run: its teachers resolved, checked and loaded for training."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from birdnet_tf.config import Config
from birdnet_tf.errors import BirdnetError, ConfigError


def uses_teachers(cfg: Config) -> bool:
    """True when the run distils from teachers (``distill.teachers`` or ``distill.features`` set)."""
    return bool(cfg.distill.teachers or cfg.distill.features)


def with_teachers(cfg: Config, teachers) -> Config:
    """``cfg`` with ``teachers`` added to ``distill.teachers`` (repeatable ``--teacher``; duplicates dropped)."""
    if not teachers:
        return cfg
    merged = list(cfg.distill.teachers) + [t for t in teachers if t not in cfg.distill.teachers]
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teachers=tuple(merged)))


def resolve_paths(cfg: Config) -> Config:
    """``cfg`` with teacher, weights and unlabelled paths made absolute (as the run's config.json records them)."""
    d = cfg.distill
    if not (d.teachers or d.weights or d.unlabeled or d.features):
        return cfg
    absolute = lambda p: str(Path(p).expanduser().resolve())  # noqa: E731
    return dataclasses.replace(cfg, distill=dataclasses.replace(
        d, teachers=tuple(absolute(t) for t in d.teachers), weights=absolute(d.weights) if d.weights else "",
        unlabeled=tuple(absolute(u) for u in d.unlabeled), features=absolute(d.features) if d.features else ""))


def check_distill_config(cfg: Config) -> None:
    """Refuses bad ``distill`` settings and missing teachers before anything is written.

    Raises:
        ConfigError: alpha outside [0, 1], temperature <= 0, pseudo settings out of range.
        BirdnetError: A teacher that does not exist or is a folder that is neither run nor export.
    """
    from birdnet_tf.distill.teachers import teacher_kind

    d = cfg.distill
    if not 0.0 <= d.alpha <= 1.0:
        raise ConfigError(f"distill.alpha must be within [0, 1], not {d.alpha}")
    if not d.temperature > 0:
        raise ConfigError(f"distill.temperature must be > 0, not {d.temperature}")
    if not 0.0 <= d.pseudo_ratio < 1.0:
        raise ConfigError(f"distill.pseudo_ratio must be within [0, 1), not {d.pseudo_ratio}")
    if d.generations < 1:
        raise ConfigError(f"distill.generations must be >= 1, not {d.generations}")
    for t in d.teachers:
        teacher_kind(t)
    if d.features:
        if not d.feature_weight >= 0:
            raise ConfigError(f"distill.feature_weight must be >= 0, not {d.feature_weight}")
        if d.feature_dims < 0:
            raise ConfigError(f"distill.feature_dims must be >= 0 (0: all dimensions), not {d.feature_dims}")
        if not Path(d.features).is_file():
            raise BirdnetError(f"{d.features}: distill.features embedding table does not exist (make one with "
                               "'birdnet-tf teacher birdnet DATA --embeddings --out FILE.npz')")
        if d.unlabeled:
            raise ConfigError("distill.features cannot be combined with distill.unlabeled recordings yet")
    if d.weights and not Path(d.weights).is_file():
        raise BirdnetError(f"{d.weights}: distill.weights file does not exist")
    if d.unlabeled and not d.teachers:
        raise ConfigError("distill.unlabeled recordings need teachers to label them (distill.teachers / --teacher)")
    if d.unlabeled and cfg.data.excerpt_max_s > cfg.data.excerpt_s:
        raise ConfigError("distill.unlabeled needs fixed-length excerpts (data.excerpt_max_s = 0), "
                          "not bucketed ones")


@dataclass
class Teachers:
    """A run's loaded teachers: tables (pooled in tf.data) and frozen models (called in the step)."""

    tables: list = field(default_factory=list)  # TeacherTable, in distill.teachers order
    models: list = field(default_factory=list)  # ModelTeacher, in distill.teachers order
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # tables' first, then models'
    feature_dims: int = 0  # the feature target's size (distill.features), 0 without one

    @property
    def any(self) -> bool:
        return bool(self.tables or self.models)


def load_teachers(cfg: Config, student_labels, log=print) -> Teachers:
    """Reads every teacher of ``cfg.distill.teachers`` onto the student's labels.

    Raises:
        BirdnetError: A table or model teacher that cannot be read, or shares no label with the student.
    """
    from birdnet_tf.distill.teachers import load_model_teacher, teacher_kind, teacher_weights

    d = cfg.distill
    weights = teacher_weights(list(d.teachers), d.weights)
    tables, models, tw, mw = [], [], [], []
    for path, w in zip(d.teachers, weights):
        if teacher_kind(path) == "table":
            table = read_table(path, list(student_labels), log)
            if not table.class_known.any():
                raise BirdnetError(f"{path}: the teacher table's species share none with the student's labels")
            tables.append(table)
            tw.append(w)
        else:
            models.append(load_model_teacher(path, list(student_labels), d.temperature, log))
            mw.append(w)
    return Teachers(tables, models, np.asarray(tw + mw, np.float32))


def read_table(path, student_labels, log=print):
    """A teacher table file (any format :func:`birdnet_tf.distill.tables.read_teacher_table` reads)."""
    try:
        from birdnet_tf.distill.tables import read_teacher_table
    except ImportError:
        raise BirdnetError(f"{path}: this birdnet-tf cannot read teacher tables yet "
                           "(birdnet_tf.distill.tables is missing)") from None
    return read_teacher_table(path, student_labels, log=log)


def training_targets(cfg: Config, teachers: Teachers, keys, paths, log=print):
    """What the training pipeline pools per excerpt (its ``tables`` argument): the score tables'
    :class:`~birdnet_tf.distill.targets.TableTargets`, joined by the embedding targets of
    ``distill.features`` (:class:`~birdnet_tf.distill.features.WithFeatures`; sets
    ``teachers.feature_dims``), or None when the run has neither.

    Args:
        keys, paths: The training files (dataset keys and prepared paths), in pipeline order.

    Raises:
        BirdnetError: The embedding table is unreadable or holds none of the training files.
    """
    from birdnet_tf.distill.targets import TableTargets

    d = cfg.distill
    tables = TableTargets(teachers.tables, keys, paths, d.temperature, log) if teachers.tables else None
    if not d.features:
        return tables
    from birdnet_tf.distill.features import FeatureTargets, WithFeatures, read_embedding_table

    features = FeatureTargets(read_embedding_table(d.features), keys, paths, d.feature_dims, log=log)
    teachers.feature_dims = features.dims
    log(f"feature distillation: {d.features}, {features.dims} principal components of the training "
        f"windows, weight {d.feature_weight:g}")
    return WithFeatures(tables, features)
