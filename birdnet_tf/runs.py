"""A training run's folder: its paths, typed readers for its files, and its input kind.

A run folder (written by :func:`birdnet_tf.train.trainer.train`) holds::

    config.json      resolved config + package version + the run's facts (data_dir, n_classes,
                     input: "chunks" for a run on PNG chunks, metadata_features for metadata runs)
    labels.txt       class order of the model outputs (labels.csv: with class ids, when known)
    split.csv        which file went where (train/val), with its prepared WAV
    history.csv      one row per finished epoch (CSVLogger's columns; rewritten atomically each epoch)
    state.json       last finished epoch, best score and epoch
    checkpoints/     last.keras (model + optimizer, for resuming), epoch_NNN.weights.h5
    best.keras       the model of the best epoch by ``train.monitor``
    logs/            TensorBoard
    eval/            report.json and plots (written by evaluate at the end)
    metadata_encoder.json   runs with metadata.use only/combined: the feature encoder fitted on the
                     training files (split.csv then also holds their date, time, latitude,
                     longitude and elevation, so evaluation needs no dataset)

Every module that reads one of these files goes through the readers here (:func:`read_split`,
:func:`read_state`, :func:`open_run`), so a damaged file gives the same one-line message
everywhere. :class:`InputKind` is what a model reads — the one place that decides it.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from birdnet_tf.config import Config, read_config_json
from birdnet_tf.errors import BirdnetError, ConfigError


class InputKind(str, enum.Enum):
    """What a run's model reads; decided once, from the data folder (training) or the run (afterwards)."""

    WAVEFORM = "waveform"  #: excerpts of recordings (``metadata.use`` none or combined: plus their metadata)
    CHUNKS = "chunks"  #: the 2018 baseline's PNG chunk images of a ``birdnet-tf extract`` folder
    METADATA = "metadata"  #: ``metadata.use=only``: one row of recording metadata per file, no audio

    @classmethod
    def of_data(cls, cfg: Config, data_dir: str | os.PathLike) -> InputKind:
        """The kind a new run of ``cfg`` on ``data_dir`` trains on."""
        from birdnet_tf.data.pipeline import is_chunk_folder

        if is_chunk_folder(data_dir):
            return cls.CHUNKS
        return cls.METADATA if cfg.metadata.use == "only" else cls.WAVEFORM

    @classmethod
    def of_run(cls, cfg: Config, facts: dict[str, Any]) -> InputKind:
        """The kind of a run from its ``config.json`` (``cfg`` and the facts beside it)."""
        if facts.get("input") == cls.CHUNKS.value:
            return cls.CHUNKS
        return cls.METADATA if cfg.metadata.use == "only" else cls.WAVEFORM


@dataclass(frozen=True)
class RunPaths:
    """The files of a run folder ``root`` (nothing is read or created)."""

    root: Path

    @property
    def config(self) -> Path: return self.root / "config.json"
    @property
    def labels(self) -> Path: return self.root / "labels.txt"
    @property
    def labels_csv(self) -> Path: return self.root / "labels.csv"
    @property
    def split(self) -> Path: return self.root / "split.csv"
    @property
    def history(self) -> Path: return self.root / "history.csv"
    @property
    def state(self) -> Path: return self.root / "state.json"
    @property
    def checkpoints(self) -> Path: return self.root / "checkpoints"
    @property
    def last(self) -> Path: return self.root / "checkpoints" / "last.keras"
    @property
    def best(self) -> Path: return self.root / "best.keras"
    @property
    def logs(self) -> Path: return self.root / "logs"
    @property
    def eval(self) -> Path: return self.root / "eval"


#: Columns every ``split.csv`` has (training writes more: wav_path, duration_s, chunk counts, metadata).
SPLIT_COLUMNS = ("key", "split", "primary_label")
#: The values of its ``split`` column.
SPLITS = ("train", "val")
#: Columns read as text whatever they hold (a key or label of digits stays "0042", a blank stays "").
TEXT_COLUMNS = ("key", "split", "primary_label", "secondary_labels", "wav_path", "recordist")


def read_split(path: str | os.PathLike, split: str = "all") -> pd.DataFrame:
    """The rows of a run's ``split.csv`` in ``split`` (``train``, ``val`` or ``all``), index 0..n-1.

    Text columns (:data:`TEXT_COLUMNS`) are strings and blanks stay ``""`` (never NaN); other
    columns (durations, chunk counts, metadata) are parsed by pandas without turning blanks into
    NaN, as training wrote them.

    Raises:
        BirdnetError: The file is missing, unreadable, lacks a column of :data:`SPLIT_COLUMNS`,
            has a ``split`` other than train/val, or no row in ``split``; one line naming the file.
    """
    p = Path(path)
    if split not in ("all", *SPLITS):
        raise BirdnetError(f"{p}: no files in split '{split}' (choose val, train or all)")
    if not p.is_file():
        raise BirdnetError(f"{p}: missing; not a finished birdnet-tf run folder (training writes split.csv first)")
    try:
        table = pd.read_csv(p, keep_default_na=False, dtype={c: str for c in TEXT_COLUMNS})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise BirdnetError(f"{p}: cannot read it as a table ({str(e).splitlines()[0][:160]})") from None
    missing = [c for c in SPLIT_COLUMNS if c not in table.columns]
    if missing:
        raise BirdnetError(f"{p}: lacks column(s) {', '.join(missing)} (has {', '.join(map(str, table.columns))})")
    bad = ~table["split"].isin(SPLITS)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise BirdnetError(f"{p}: row {row + 2} has split '{table['split'].iloc[row]}'; every row must be train or val")
    rows = table if split == "all" else table[table["split"] == split]
    if rows.empty:
        raise BirdnetError(f"{p}: no files in split '{split}' (choose val, train or all)")
    return rows.reset_index(drop=True)


def label_list(value) -> list[str]:
    """A ``;``-separated label cell of ``split.csv`` (``secondary_labels``) as a list; blanks give ``[]``."""
    return [s for s in str(value).split(";") if s]


def read_state(path: str | os.PathLike, required: bool = False) -> dict[str, Any]:
    """A run's ``state.json`` (last finished epoch, best score and epoch, …).

    A missing file gives ``{}`` (no epoch finished yet) unless ``required``.

    Raises:
        BirdnetError: Missing and ``required``, or not a JSON object; one line naming the file.
    """
    p = Path(path)
    if not p.is_file():
        if required:
            raise BirdnetError(f"{p}: missing; the run has not finished an epoch yet")
        return {}
    try:
        state = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BirdnetError(f"{p}: not valid JSON ({e}); a damaged run state") from None
    if not isinstance(state, dict):
        raise BirdnetError(f"{p}: holds {type(state).__name__}, not a JSON object of the run's state")
    return state


@dataclass
class Run:
    """A run folder opened by :func:`open_run`: its config, the facts beside it and its input kind."""

    paths: RunPaths
    cfg: Config
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.paths.root

    @property
    def kind(self) -> InputKind:
        return InputKind.of_run(self.cfg, self.facts)

    @property
    def data_dir(self) -> str:
        """The dataset (or chunks) folder the run was trained on, as recorded; ``""`` when unknown."""
        return str(self.facts.get("data_dir") or "")

    def labels(self):
        """The run's :class:`~birdnet_tf.data.labels.LabelSet` (``labels.txt``)."""
        from birdnet_tf.data.labels import LabelSet

        return LabelSet.load(self.paths.labels)

    def split(self, split: str = "all") -> pd.DataFrame:
        return read_split(self.paths.split, split)

    def state(self, required: bool = False) -> dict[str, Any]:
        return read_state(self.paths.state, required)


def open_run(run_dir: str | os.PathLike) -> Run:
    """Opens a run folder: reads its ``config.json``.

    Raises:
        BirdnetError: No ``config.json`` there ("not a run folder") or it cannot be read.
    """
    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        raise BirdnetError(f"{paths.root}: not a run folder (no config.json)")
    try:
        cfg, facts = read_config_json(paths.config)
    except json.JSONDecodeError as e:
        raise BirdnetError(f"{paths.config}: not valid JSON ({e})") from None
    except ConfigError:
        raise
    return Run(paths, cfg, facts)
