"""Example sources: one per :class:`~birdnet_tf.runs.InputKind`, so training and evaluation never branch on it.

Each source knows, for its kind of input, how to

- refuse settings it cannot serve, before anything is written (:meth:`ExampleSource.check`);
- find a new run's labels and file split, or a resumed run's, and write ``labels.txt``,
  ``labels.csv``, ``split.csv`` and ``config.json`` (:meth:`ExampleSource.run_files`);
- make the training examples and the validation windows (:meth:`ExampleSource.training`);
- build the model that reads them and give its ``noise_chunk`` augmentation a noise bank;
- read a finished run's files of a split as evaluation windows (:meth:`ExampleSource.evaluation`).

The three sources: :class:`WaveformSource` (excerpts of prepared recordings; ``metadata.use=combined``
adds each file's metadata row), :class:`ChunkSource` (the 2018 baseline's PNG chunk images of a
``birdnet-tf extract`` folder) and :class:`MetadataSource` (``metadata.use=only``: one metadata row
per recording, no audio read). :func:`example_source` picks the one of a data folder,
:func:`run_source` the one of a run folder.

Teachers (``distill.*``) plug in only where they can: :class:`WaveformSource` loads them with the
training examples (soft-target tables, pseudo-labelled recordings) and wraps the student for
fitting (:meth:`ExampleSource.fit_model`); the other sources refuse them in :meth:`~ExampleSource.check`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from birdnet_tf.config import Config, save_config
from birdnet_tf.errors import BirdnetError, ConfigError
from birdnet_tf.runs import InputKind, Run, RunPaths, label_list, read_split


@dataclass
class RunFiles:
    """A run's classes and its training and validation files (catalog or chunk-file rows)."""

    labels: Any  # LabelSet
    train: pd.DataFrame
    val: pd.DataFrame
    init_weights: dict | None = None  # read_init_weights of a new run with train.init_weights
    train_meta: np.ndarray | None = None  # metadata features (metadata.use only / combined)
    val_meta: np.ndarray | None = None


@dataclass
class Examples:
    """What fitting needs from a source: the endless training dataset and the validation windows."""

    dataset: Any  # tf.data.Dataset of (inputs, targets) batches, repeated
    steps: int  # optimizer steps per epoch
    windows: Any  # WindowSet of the validation files
    val: pd.DataFrame  # the validation files the windows cover, in file_index order
    what: str  # "12 files", "340 chunks of 12 files", … for the log


def describe_model(cfg: Config) -> str:
    """``ismir2016``, ``ismir2016 + metadata MLP`` or ``a metadata MLP`` (for the log)."""
    from birdnet_tf.models.metadata import uses_metadata

    if cfg.metadata.use == "only":
        return "a metadata MLP"
    return cfg.model.name + (" + metadata MLP" if uses_metadata(cfg) else "")


class ExampleSource:
    """The common part of the sources; see the module docstring."""

    kind: InputKind

    def __init__(self, cfg: Config, data_dir: str | os.PathLike, workers: int = 2, log=print):
        self.cfg, self.data_dir, self.workers, self.log = cfg, Path(data_dir), workers, log

    # ------------------------------------------------------------------ training
    def check(self, val_keys=None) -> None:
        """Refuses what this source cannot train with (before anything is written)."""
        from birdnet_tf.distill.setup import uses_teachers

        if uses_teachers(self.cfg) and not self.takes_teachers:
            raise ConfigError("distill.teachers need a waveform model on a dataset of recordings "
                              "(not PNG chunks, not metadata.use only/combined)")

    @property
    def takes_teachers(self) -> bool:
        """True when distillation can teach a model of this source."""
        return False

    def run_files(self, paths: RunPaths, resume: bool, state: dict, cache_dir=None, val_keys=None) -> RunFiles:
        raise NotImplementedError

    def training(self, files: RunFiles) -> Examples:
        raise NotImplementedError

    def targets(self, rows: pd.DataFrame, labels) -> np.ndarray:
        """Training targets of ``rows``: primary 1, background ``data.background_weight``; rows sum
        to 1 for ``train.loss=cce``."""
        from birdnet_tf.data.labels import encode_targets

        targets = encode_targets(rows, labels, self.cfg.data.background_weight)
        if self.cfg.train.loss == "cce":
            targets = targets / np.maximum(targets.sum(axis=1, keepdims=True), 1e-6)
        return targets

    def build_model(self, n_classes: int):
        from birdnet_tf.models.build import build_model

        return build_model(self.cfg, n_classes)

    def fit_model(self, model):
        """The model that ``fit`` trains: ``model`` itself, or a wrapper around it (teachers)."""
        return model

    def set_noise_bank(self, model, files: RunFiles) -> int:
        """Gives the model's ``noise_chunk`` augmentation its bank; returns its size (0: none)."""
        return 0

    # ---------------------------------------------------------------- evaluation
    def evaluation(self, run: Run, split: str):
        """``(rows, windows)``: the run's ``split.csv`` rows of ``split`` (``secondary_labels`` as
        lists) and a :class:`~birdnet_tf.data.pipeline.WindowSet` of them, in file order."""
        raise NotImplementedError


class RecordingSource(ExampleSource):
    """A dataset of recordings (raw or prepared): the common part of the waveform and metadata sources."""

    def run_files(self, paths: RunPaths, resume: bool, state: dict, cache_dir=None, val_keys=None) -> RunFiles:
        """Prepares the dataset; a new run's labels and split (``data.split_by`` or ``val_keys``), or
        the saved split of a resumed run; writes the run's label, split and config files when new."""
        from birdnet_tf.data.dataset import prepared_catalog
        from birdnet_tf.data.labels import LabelSet
        from birdnet_tf.train.loop import is_tty

        cfg, log = self.cfg, self.log
        catalog = prepared_catalog(self.data_dir, cfg.audio.sample_rate_hz, cache_dir, workers=self.workers,
                                   progress=is_tty(), log=log)
        if resume and paths.split.exists() and paths.labels.exists():
            labels = LabelSet.load(paths.labels)
            split = read_split(paths.split)
            side = dict(zip(split["key"], split["split"]))
            missing = set(side) - set(catalog["key"])
            if missing:
                raise BirdnetError(f"{paths.root}: resuming needs {len(missing)} file(s) of the saved split that "
                                   f"the dataset no longer has, e.g. {sorted(missing)[0]}")
            catalog = catalog[catalog["key"].isin(side)]
            log(f"resuming {paths.root} after epoch {state.get('epoch', 0)}")
            files = RunFiles(labels, catalog[catalog["key"].map(side) == "train"],
                             catalog[catalog["key"].map(side) == "val"])
        else:
            files = self.new_split(catalog, val_keys)
            self.write_run_files(paths, catalog, files)
        return files

    def new_split(self, catalog: pd.DataFrame, val_keys=None) -> RunFiles:
        from birdnet_tf.data.labels import LabelSet
        from birdnet_tf.data.split import split_catalog
        from birdnet_tf.train.init_weights import read_init_weights

        cfg = self.cfg
        labels = LabelSet.from_catalog(catalog)
        check_classes(labels, self.data_dir)
        if val_keys is None:
            train_df, val_df = split_catalog(catalog, cfg.data.val_fraction, cfg.data.seed, cfg.data.split_by)
        else:  # a given validation set (tune's folds)
            in_val = catalog["key"].astype(str).isin({str(k) for k in val_keys})
            if not in_val.any() or in_val.all():
                raise BirdnetError(f"{self.data_dir}: the given validation set leaves "
                                   f"{'no' if not in_val.any() else 'all'} of the {len(catalog)} files for validation")
            train_df, val_df = catalog[~in_val].copy(), catalog[in_val].copy()
            train_df["split"], val_df["split"] = "train", "val"
            val_df.attrs["split"] = {"by": "given validation set"}
        # checked before anything is written, applied once the model is built
        init = read_init_weights(cfg, len(labels), self.log) if cfg.train.init_weights else None
        return RunFiles(labels, train_df, val_df, init)

    def write_run_files(self, paths: RunPaths, catalog: pd.DataFrame, files: RunFiles) -> None:
        """``labels.txt``, ``labels.csv`` (BirdCLEF class ids, when the dataset has them), ``split.csv``
        (with each file's raw metadata for metadata runs) and ``config.json`` of a new run."""
        from birdnet_tf.models.metadata import uses_metadata

        cfg, labels, train_df, val_df = self.cfg, files.labels, files.train, files.val
        labels.save(paths.labels)
        write_class_ids(paths, catalog, labels, self.log)
        both = pd.concat([train_df, val_df])
        split = both[["key", "split", "primary_label", "wav_path", "duration_s"]]
        split["secondary_labels"] = [";".join(v) for v in both["secondary_labels"]]
        if "recordist" in train_df.columns:
            split["recordist"] = list(both["recordist"])
        meta_extra = {}
        if uses_metadata(cfg):  # the raw metadata travels with the run: evaluation needs no dataset
            from birdnet_tf.data.metadata import FIELDS
            from birdnet_tf.models.metadata import FEATURES_KEY, num_features

            for column in FIELDS:
                split[column] = list(both[column]) if column in both.columns else pd.NA
            meta_extra = {FEATURES_KEY: num_features(cfg)}
        split.to_csv(paths.split, index=False)
        save_config(cfg, paths.config, data_dir=str(self.data_dir.resolve()), n_classes=len(labels), **meta_extra)

    def add_features(self, paths: RunPaths, files: RunFiles) -> None:
        """The metadata features of the run's files (``metadata.use`` only / combined), in place."""
        from birdnet_tf.models.metadata import uses_metadata

        if uses_metadata(self.cfg):
            files.train_meta, files.val_meta = metadata_features(self.cfg, paths, files.train, files.val, self.log)

    def evaluation_rows(self, run: Run, split: str, need_audio: bool = True) -> pd.DataFrame:
        """The rows of ``split``; when their prepared WAVs are gone (the cache was removed or the run
        moved), the run's data folder is prepared again and the rows found there kept."""
        from birdnet_tf.data.dataset import prepared_catalog

        rows = run.split(split)
        if need_audio and not all(Path(p).is_file() for p in rows["wav_path"]):
            catalog = prepared_catalog(run.data_dir, self.cfg.audio.sample_rate_hz, log=self.log)
            where = dict(zip(catalog["key"], catalog["wav_path"]))
            rows = rows[rows["key"].isin(where)].copy()
            rows["wav_path"] = rows["key"].map(where)
        rows = rows.copy()
        rows["secondary_labels"] = [label_list(v) for v in rows["secondary_labels"]]
        return rows.reset_index(drop=True)


class WaveformSource(RecordingSource):
    """Excerpts of prepared recordings (``metadata.use=combined``: each with its file's metadata row)."""

    kind = InputKind.WAVEFORM

    def __init__(self, cfg: Config, data_dir, workers: int = 2, log=print):
        super().__init__(cfg, data_dir, workers, log)
        self.teachers = None  # distill.setup.Teachers, loaded with the training examples

    @property
    def takes_teachers(self) -> bool:
        from birdnet_tf.models.metadata import uses_metadata

        return not uses_metadata(self.cfg)

    def training(self, files: RunFiles) -> Examples:
        from birdnet_tf.data import pipeline
        from birdnet_tf.distill.setup import uses_teachers
        from birdnet_tf.models.metadata import uses_metadata

        cfg, log, train_df = self.cfg, self.log, files.train
        targets = self.targets(train_df, files.labels)
        durations = train_df["duration_s"].to_numpy(float)
        steps = cfg.train.steps_per_epoch or pipeline.steps_in_epoch(durations, cfg)
        tables = None
        if uses_teachers(cfg):  # teachers plug in here: soft-target tables read with the excerpts
            from birdnet_tf.distill.setup import load_teachers, training_targets

            self.teachers = load_teachers(cfg, list(files.labels), log)
            tables = training_targets(cfg, self.teachers, list(train_df["key"]), list(train_df["wav_path"]), log)
        unlabeled = self.unlabeled() if cfg.distill.unlabeled else None
        dataset = pipeline.training_dataset(list(train_df["wav_path"]), targets, durations, cfg, repeat=True,
                                            metadata=files.train_meta, tables=tables, unlabeled=unlabeled)
        windows = pipeline.evaluation_windows(list(files.val["wav_path"]), cfg, metadata=files.val_meta)
        what = f"{len(train_df)} files"
        if uses_metadata(cfg):
            what += f" with {files.train_meta.shape[1]} metadata features"
        return Examples(dataset, steps, windows, files.val, what)

    def unlabeled(self):
        """Pseudo-labels: recordings without labels, taught by the teachers (``distill.unlabeled``)."""
        from birdnet_tf.data import pipeline
        from birdnet_tf.distill.pseudo import unlabeled_catalog
        from birdnet_tf.distill.targets import TableTargets

        cfg, log, teachers = self.cfg, self.log, self.teachers
        u = unlabeled_catalog(cfg.distill.unlabeled, cfg.audio.sample_rate_hz, workers=self.workers, log=log)
        unlabeled = (list(u["wav_path"]), u["duration_s"].to_numpy(float), TableTargets(
            teachers.tables, list(u["key"]), list(u["wav_path"]), cfg.distill.temperature, log)
            if teachers.tables else None)
        log(f"pseudo-labels: {len(u)} unlabelled recordings, "
            f"{pipeline.unlabeled_per_batch(cfg.distill.pseudo_ratio, cfg.data.batch_size)} "
            f"of every {cfg.data.batch_size} excerpts, teacher confidence >= {cfg.distill.pseudo_min_confidence:g}")
        return unlabeled

    def fit_model(self, model):
        """The student learns from its teachers' soft targets: a distiller around ``model``, compiled
        with its optimizer (build it inside the strategy scope, as the model)."""
        if self.teachers is None:
            return model
        from birdnet_tf.distill.teachers import make_distiller

        cfg, teachers = self.cfg, self.teachers
        fit_model = make_distiller(model, teachers.models, len(teachers.tables), teachers.weights,
                                   cfg.distill.alpha, cfg.model.output_activation, cfg.audio.sample_rate_hz,
                                   cfg.distill.pseudo_min_confidence, teachers.feature_dims,
                                   cfg.distill.feature_weight, cfg.train.learning_rate)
        # a SavedModel teacher's call is kept out of XLA (jit_compile "auto" turns XLA on with a GPU)
        exports = any(t.kind == "export" for t in teachers.models)
        fit_model.compile(optimizer=model.optimizer, jit_compile=False if exports else "auto")
        self.log(f"distilling from {len(teachers.tables)} teacher table(s) and {len(teachers.models)} model "
                 f"teacher(s), alpha {cfg.distill.alpha:g}, weights {np.round(teachers.weights, 3).tolist()}")
        return fit_model

    def set_noise_bank(self, model, files: RunFiles) -> int:
        from birdnet_tf.train.noise_bank import set_noise_bank

        return set_noise_bank(model, list(files.train["wav_path"]), self.cfg, self.log)

    def evaluation(self, run: Run, split: str):
        from birdnet_tf.data.pipeline import evaluation_windows

        cfg = self.cfg
        rows = self.evaluation_rows(run, split)
        # every window of each file; the 2018 baseline's models: at most MAX_SPECS_PER_FILE, spread evenly
        cap = cfg.chunks.max_chunks_per_file if cfg.frontend.kind == "chunks" else None
        meta = run_metadata_features(run, rows, self.log) if cfg.metadata.use == "combined" else None
        return rows, evaluation_windows(list(rows["wav_path"]), cfg, max_windows=cap, metadata=meta)


class MetadataSource(RecordingSource):
    """``metadata.use=only``: the metadata MLP learns from one row of recording metadata per file."""

    kind = InputKind.METADATA

    def training(self, files: RunFiles) -> Examples:
        from birdnet_tf.data import pipeline
        from birdnet_tf.models.metadata import metadata_training_dataset, metadata_windows

        cfg, train_df = self.cfg, files.train
        targets = self.targets(train_df, files.labels)
        durations = train_df["duration_s"].to_numpy(float)
        steps = cfg.train.steps_per_epoch or pipeline.steps_in_epoch(durations, cfg)
        dataset = metadata_training_dataset(files.train_meta, targets, durations, cfg, repeat=True)
        return Examples(dataset, steps, metadata_windows(files.val_meta, cfg), files.val,
                        f"{len(train_df)} files with {files.train_meta.shape[1]} metadata features")

    def evaluation(self, run: Run, split: str):
        from birdnet_tf.models.metadata import metadata_windows

        rows = self.evaluation_rows(run, split, need_audio=False)
        return rows, metadata_windows(run_metadata_features(run, rows, self.log), self.cfg)


class ChunkSource(ExampleSource):
    """The 2018 baseline's PNG chunk images of a ``birdnet-tf extract`` folder.

    The model takes the chunk images (``build_model(..., input_kind="image")``); the training
    examples are the training files' signal chunks within ``chunks.s2n_interval``; a run's
    ``config.json`` records ``input: chunks``.
    """

    kind = InputKind.CHUNKS

    def __init__(self, cfg: Config, data_dir, workers: int = 2, log=print):
        from birdnet_tf.data.pipeline import read_chunk_index

        super().__init__(cfg, data_dir, workers, log)
        # the folder's checked index: a bad chunk folder fails here, before anything is written
        self.index = read_chunk_index(self.data_dir, cfg)

    def check(self, val_keys=None) -> None:
        from birdnet_tf.models.metadata import uses_metadata

        if val_keys is not None:
            raise ConfigError(f"{self.data_dir}: a given validation set (tune --folds) needs a dataset of "
                              "recordings, not a folder of PNG chunks")
        if uses_metadata(self.cfg):
            raise ConfigError(f"{self.data_dir}: metadata.use={self.cfg.metadata.use} needs a dataset of "
                              "recordings, not a folder of PNG chunks")
        super().check(val_keys)

    def run_files(self, paths: RunPaths, resume: bool, state: dict, cache_dir=None, val_keys=None) -> RunFiles:
        """Labels and the file-level split; writes the run's ``labels.txt``, ``labels.csv`` (when the
        extract's source has class ids), ``split.csv`` (files with their chunk counts) and
        ``config.json`` (``input: chunks``) for a new run. The file tables are
        :func:`~birdnet_tf.data.pipeline.chunk_file_table` rows with ``split`` = train / val."""
        from birdnet_tf.data import pipeline
        from birdnet_tf.data.labels import LabelSet
        from birdnet_tf.data.split import split_catalog
        from birdnet_tf.train.init_weights import read_init_weights

        cfg, log, index, data_dir = self.cfg, self.log, self.index, self.data_dir
        files = pipeline.chunk_file_table(index)
        if resume and paths.split.exists() and paths.labels.exists():
            labels = LabelSet.load(paths.labels)
            side = dict(zip(*(read_split(paths.split)[c] for c in ("key", "split"))))
            missing = set(side) - set(files["key"])
            if missing:
                raise BirdnetError(f"{paths.root}: resuming needs {len(missing)} file(s) of the saved split that "
                                   f"the chunks folder no longer has, e.g. {sorted(missing)[0]}")
            files = files[files["key"].isin(side)].copy()
            files["split"] = files["key"].map(side)
            log(f"resuming {paths.root} after epoch {state.get('epoch', 0)}")
            return RunFiles(labels, files[files["split"] == "train"], files[files["split"] == "val"])
        labels = LabelSet.from_catalog(files)
        check_classes(labels, data_dir)
        # extract writes split "all" when its dataset had no split: then split the files here
        table = files.drop(columns="split") if (files["split"] == "all").all() else files
        train_df, val_df = split_catalog(table, cfg.data.val_fraction, cfg.data.seed, cfg.data.split_by)
        n_train = int(train_df["s2n_chunks"].sum())
        if n_train == 0:
            lo, hi = cfg.chunks.s2n_interval
            signal = index[(index["kind"] == "signal") & index["key"].isin(set(train_df["key"]))]
            seen = f"; theirs range from {signal['s2n'].min()} to {signal['s2n'].max()}" if len(signal) else ""
            raise BirdnetError(f"{data_dir}: no training chunk has a signal/noise score × 1e4 within "
                               f"chunks.s2n_interval [{lo:g}, {hi:g}] ({len(signal)} signal chunks of {len(train_df)} "
                               f"training files{seen}); widen chunks.s2n_interval")
        init_weights = read_init_weights(cfg, len(labels), log) if cfg.train.init_weights else None
        labels.save(paths.labels)
        source = index.attrs.get("extract_config", {}).get("source")
        if source and Path(source).is_dir():  # the dataset the chunks were extracted from
            try:
                from birdnet_tf.data.catalog import load_catalog

                write_class_ids(paths, load_catalog(source, check_files=False), labels, log, strict=True)
            except BirdnetError as e:
                log(f"warning: no labels.csv with class ids from {source}: {e}")
        both = pd.concat([train_df, val_df])
        split = both[["key", "split", "primary_label"]].copy()
        split["secondary_labels"] = [";".join(v) for v in both["secondary_labels"]]
        for column in ("signal_chunks", "s2n_chunks", "noise_chunks"):
            split[column] = both[column].to_numpy()
        split.to_csv(paths.split, index=False)
        save_config(cfg, paths.config, data_dir=str(data_dir.resolve()), n_classes=len(labels),
                    input=InputKind.CHUNKS.value)
        log(f"chunks: {len(index)} PNGs of {len(files)} files in {data_dir}; {n_train} training chunks within "
            f"chunks.s2n_interval {list(cfg.chunks.s2n_interval)}")
        return RunFiles(labels, train_df, val_df, init_weights)

    def add_features(self, paths: RunPaths, files: RunFiles) -> None:
        return None  # chunk runs have no metadata (refused in check)

    def training(self, files: RunFiles) -> Examples:
        from birdnet_tf.data import pipeline

        cfg, index, train_df = self.cfg, self.index, files.train
        # examples = the training files' signal chunks within chunks.s2n_interval
        train_rows, _ = pipeline.select_chunks(index[index["in_s2n_interval"]], list(train_df["key"]))
        targets = self.targets(train_rows, files.labels)
        steps = cfg.train.steps_per_epoch or max(1, math.ceil(len(train_rows) / cfg.data.batch_size))
        dataset = pipeline.chunk_training_dataset(list(train_rows["png"]), targets, cfg, repeat=True)
        windows, val = pipeline.chunk_file_windows(index, files.val, cfg, cfg.data.max_eval_windows, self.log)
        return Examples(dataset, steps, windows, val, f"{len(train_rows)} chunks of {len(train_df)} files")

    def build_model(self, n_classes: int):
        from birdnet_tf.models.build import build_model

        return build_model(self.cfg, n_classes, input_kind="image")

    def set_noise_bank(self, model, files: RunFiles) -> int:
        from birdnet_tf.train.noise_bank import set_chunk_noise_bank

        index = self.index  # the extract's noise/ chunks of the training files
        noise = index[(index["kind"] == "noise") & index["key"].isin(set(files.train["key"]))]
        return set_chunk_noise_bank(model, list(noise["png"]), self.cfg, self.log)

    def evaluation(self, run: Run, split: str):
        """The files of ``split`` and a WindowSet of their signal chunks (at most
        ``chunks.max_chunks_per_file`` = MAX_SPECS_PER_FILE per file); files without a signal chunk
        are left out (and counted in the log)."""
        from birdnet_tf.data.pipeline import chunk_file_windows

        rows = run.split(split)
        windows, rows = chunk_file_windows(self.index, rows, self.cfg, self.cfg.chunks.max_chunks_per_file, self.log)
        rows = rows.copy()
        rows["secondary_labels"] = [label_list(v) for v in rows["secondary_labels"]]
        return rows.reset_index(drop=True), windows


SOURCES: dict[InputKind, type[ExampleSource]] = {
    InputKind.WAVEFORM: WaveformSource, InputKind.CHUNKS: ChunkSource, InputKind.METADATA: MetadataSource}


def example_source(cfg: Config, data_dir: str | os.PathLike, workers: int = 2, log=print) -> ExampleSource:
    """The source a new run of ``cfg`` trains from on ``data_dir`` (:meth:`InputKind.of_data`)."""
    return SOURCES[InputKind.of_data(cfg, data_dir)](cfg, data_dir, workers=workers, log=log)


def run_source(run: Run, log=print) -> ExampleSource:
    """The source of a finished or running run (:attr:`Run.kind`), on the data folder it recorded."""
    return SOURCES[run.kind](run.cfg, run.data_dir, log=log)


# ------------------------------------------------------------------ shared parts
def check_classes(labels, data_dir: Path) -> None:
    """Refuses a dataset of one class: a classifier needs two (one softmax output scores 1.0 always)."""
    if len(labels) < 2:
        raise BirdnetError(f"{data_dir}: the dataset has {len(labels)} class ({', '.join(labels) or 'none'}); "
                           "a classifier needs at least two — add recordings of another species")


def write_class_ids(paths: RunPaths, catalog: pd.DataFrame, labels, log=print, strict: bool = False) -> None:
    """``labels.csv``: BirdCLEF class ids (XML / birdnet-tf sort data) of the catalog, with common names.

    Written when the catalog has class ids (for every label when ``strict``); a catalog whose
    class ids cannot be read is logged as a warning (raised when ``strict``).
    """
    from birdnet_tf.data.labels import class_ids_from_catalog, write_labels_csv

    try:
        class_ids = class_ids_from_catalog(catalog)
    except BirdnetError as e:
        if strict:
            raise
        log(f"warning: no labels.csv with class ids: {e}")
        return
    if not class_ids or (strict and not all(label in class_ids for label in labels)):
        return
    names = {} if "common_name" not in catalog.columns else {
        label: str(name) for label, name in zip(catalog["primary_label"], catalog["common_name"])
        if isinstance(name, str) and name.strip()}
    write_labels_csv(paths.labels_csv, labels, {k: class_ids[k] for k in labels} if strict else class_ids, names)


def metadata_features(cfg: Config, paths: RunPaths, train_df: pd.DataFrame, val_df: pd.DataFrame,
                      log=print) -> tuple[np.ndarray, np.ndarray]:
    """The metadata features of a run's training and validation files (``metadata.use`` only / combined).

    The encoder (:class:`~birdnet_tf.data.metadata.MetadataEncoder` of ``metadata.date_size`` /
    ``time_size``) is fitted on the training rows and saved as ``metadata_encoder.json`` in the
    run folder, or read from there when the run resumes. How many values of each field parsed,
    were missing or could not be parsed is logged.

    Returns:
        ``(train float32 [train files, F], val float32 [val files, F])``.

    Raises:
        BirdnetError: A saved encoder is unreadable or has other sizes than the config.
    """
    from birdnet_tf.data.metadata import METADATA_ENCODER_FILENAME, MetadataEncoder, describe
    from birdnet_tf.models.metadata import make_encoder

    path = paths.root / METADATA_ENCODER_FILENAME
    if path.is_file():
        encoder = MetadataEncoder.load(path)
        if (encoder.date_size, encoder.time_size) != (cfg.metadata.date_size, cfg.metadata.time_size):
            raise BirdnetError(f"{path}: has date/time sizes {encoder.date_size}/{encoder.time_size}, the config "
                               f"{cfg.metadata.date_size}/{cfg.metadata.time_size}")
        log(f"metadata encoder: {path} (saved)")
    else:
        encoder = make_encoder(cfg).fit(train_df)
        encoder.save(path)
        log(f"metadata encoder fitted on the {len(train_df)} training files: {path}")
    for name, rows in (("training", train_df), ("validation", val_df)):
        log(f"{name} " + describe(rows))
    return encoder.transform(train_df), encoder.transform(val_df)


def run_metadata_features(run: Run, rows: pd.DataFrame, log=print) -> np.ndarray:
    """Metadata features of ``rows`` (``split.csv`` rows) with the run's saved encoder: float32 ``[rows, F]``.

    The raw date, time, latitude, longitude and elevation come from ``split.csv`` (written there
    by training); a ``split.csv`` without them is completed from the run's dataset
    (``data_dir`` of its config), matched by ``key``.

    Raises:
        BirdnetError: The run has no ``metadata_encoder.json``.
    """
    from birdnet_tf.data.metadata import FIELDS, METADATA_ENCODER_FILENAME, MetadataEncoder

    path = run.root / METADATA_ENCODER_FILENAME
    if not path.is_file():
        raise BirdnetError(f"{path}: missing; this metadata run cannot be evaluated without its encoder")
    encoder = MetadataEncoder.load(path)
    if not all(column in rows.columns for column in FIELDS):
        from birdnet_tf.data.catalog import load_catalog

        catalog = load_catalog(run.data_dir, check_files=False).set_index("key")
        rows = rows.copy()
        for column in FIELDS:
            if column not in rows.columns:
                rows[column] = rows["key"].map(catalog[column]) if column in catalog.columns else pd.NA
        log(f"metadata of the files read from {run.data_dir} (split.csv has none)")
    return encoder.transform(rows)
