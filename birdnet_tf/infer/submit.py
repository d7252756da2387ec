"""``birdnet-tf submit``: BirdCLEF 2018 run files from one exported model or an ensemble.

What the 2018 baseline's ``submission_monophone.py`` / ``submission_soundscape.py`` did,
from SavedModels (``birdnet-tf export``) instead of pickled Theano nets:

* **monophone** — per recording, up to ``max_windows`` windows (default
  ``chunks.max_chunks_per_file`` = the baseline's ``MAX_SPECS_PER_FILE``, 128, spread
  evenly over long files) of the model's excerpt length (``data.excerpt_s``) every
  ``data.eval_hop_s``; their scores ``[windows, classes]`` are pooled per file (default
  ``median``, the baseline's median-filtered pooling) and written as
  ``MediaId;ClassId;Probability;Rank`` lines, the top 100 classes per file
  (:func:`~birdnet_tf.infer.outputs.write_birdclef_monophone`).
* **soundscape** — 5-s windows every 5 s (``window_s``/``hop_s`` override) written as
  ``MediaId;HH:MM:SS-HH:MM:SS;ClassId;Probability`` lines, the top 100 classes per window
  (:func:`~birdnet_tf.infer.outputs.write_birdclef_soundscape`). Time stamps are the
  nominal windows of the grid (``00:00:05-00:00:10``…) even where the recording ends
  inside the last one; hours grow past ``01`` for long recordings.

**Ensembles.** Several export folders average their *window* scores (as the baseline
averaged its models' chunk predictions) before pooling. Members must predict the same
classes (the same order, or reorderable by name) at the same sample rate; every member
scores the same windows (those of the first model's excerpt and hop unless given). With
``weights`` (a ``weights.json`` of ``birdnet-tf ensemble``, :func:`read_submit_weights`)
the mean is weighted: the i-th model gets the weight of the i-th model listed in the file
(as ``birdnet-tf ensemble --weights`` applies them), the weights normalised to sum 1.

**Metadata-aware members.** An export trained with ``metadata.use`` only / combined also
takes each recording's date, time, latitude, longitude and elevation, read from the same
``metadata`` that gives the MediaIds (the XML files' ``Date``, ``Time``, ``Latitude``,
``Longitude``, ``Elevation`` tags, or the CSV's ``date``, ``time``, ... columns in any case;
:func:`read_recording_metadata`), matched to the audio files as the MediaIds are
(:func:`match_recording_metadata`) and encoded by each member's own encoder. Files without
any of these values (or all files, without ``metadata``) are scored with them unknown; one
warning gives the count. A combined member adds its metadata network's bias to every
window's pooled logits (whole engine) or takes the row with every window (sliding); a
metadata-only member reads no audio, so every window of a file gets its one score row (the
windows themselves still come from the recording's length), as ``birdnet-tf predict`` does.

**Engines.** ``whole`` (default) runs each member's network once over the streamed
recording through the export's ``front``/``body`` signatures and pools windows from its
per-step logits (:class:`~birdnet_tf.infer.whole.WholeRecordingModel`; window starts are
rounded to the model's step grid, 0.129 s by default); a member exported without those
signatures falls back to ``sliding``, which scores each window on its own through
``serving_default`` (the decoded recording is then held in memory).

**Noise class.** A trained class named like one of ``drop_classes`` (case-insensitive,
default ``noise``) is scored and pooled with the others and then left out of the run
file. The remaining scores are *not* renormalised (softmax scores of the species then
sum to less than 1 where the model heard noise), which keeps their ranking and their
comparability across files.

**Ids.** ``MediaId`` comes from ``metadata`` — a BirdCLEF XML folder (one ``<Audio>``
file per recording with ``MediaId`` and ``FileName``; the test sets' XML files have no
species, so this reads them directly, not as a dataset) or a CSV with a media id column
(``media_id``/``MediaId``) and a file name column (``filename``/``FileName``/``file``) —
matched by the audio file's name (or, when unambiguous, its stem); without metadata the
file's stem. ``ClassId`` comes from ``class_ids`` (CSV ``label,class_id``), else from the
first model's ``assets.extra/labels.csv`` (written by training on data with class ids,
e.g. from ``birdnet-tf sort``), else the label itself with a warning (BirdCLEF expects
class ids). Both mappings are checked before any audio is scored.

Unreadable audio is skipped with a warning and counted in the closing summary; an
existing output file is refused unless ``force``; the run file is written atomically.
"""

from __future__ import annotations

import os
import sys
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.data.metadata import FIELDS
from birdnet_tf.errors import AudioDecodeError, BirdnetError, about

TASKS: tuple[str, ...] = ("monophone", "soundscape")
"""The BirdCLEF 2018 tasks a run file can be written for."""

SOUNDSCAPE_WINDOW_S = 5.0
"""Length (and default hop) of a soundscape window, as BirdCLEF 2018 scores them."""

DEFAULT_POOLING = "median"
"""Monophone per-file pooling: the 2018 baseline's median-filtered pooling."""

DEFAULT_DROP_CLASSES: tuple[str, ...] = ("noise", "Noise")
"""Class names (case-insensitive) left out of run files."""

_MEDIA_ID_COLUMNS = ("media_id", "mediaid")
_FILE_COLUMNS = ("filename", "file_name", "file", "path")
_MIN_WINDOW_S = 0.1  # a last soundscape window starting closer than this to the end is not scored


# --------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------

def soundscape_windows(n_samples: int, sample_rate_hz: int, window_s: float = SOUNDSCAPE_WINDOW_S,
                       hop_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Soundscape windows of a recording: ``(start_s, end_s)``, each ``float64 [windows]``, seconds.

    Windows of ``window_s`` every ``hop_s`` (default ``window_s``) from 0; a last window
    starting less than 0.1 s before the end is dropped (a recording shorter than that
    still gets one). Ends are nominal (``start + window_s``), also past the recording's
    end, so the time stamps stay on the grid.
    """
    if window_s <= 0 or (hop_s is not None and hop_s <= 0):
        raise BirdnetError("soundscape --window-s and --hop-s must be positive")
    hop = int(round((hop_s or window_s) * sample_rate_hz))
    starts = np.arange(0, max(int(n_samples), 1), max(1, hop), dtype=np.int64)
    starts = starts[(starts == 0) | (starts + _MIN_WINDOW_S * sample_rate_hz < n_samples)]
    start_s = starts / float(sample_rate_hz)
    return start_s, start_s + float(window_s)


def monophone_starts(n_samples: int, window: int, hop: int, max_windows: int | None) -> np.ndarray:
    """Start samples of a monophone recording's windows, ``int64 [windows]``.

    Windows of ``window`` samples every ``hop`` (the last aligned to the end), at most
    ``max_windows`` spread evenly (:func:`birdnet_tf.data.windows.window_starts`); a
    recording shorter than a window gets one (looped when scored).
    """
    from birdnet_tf.data.windows import window_starts

    return window_starts(int(n_samples), int(window), int(hop), max_windows)


# --------------------------------------------------------------------------
# Noise class
# --------------------------------------------------------------------------

def kept_labels(labels: Sequence[str], drop_classes: Iterable[str] | None = DEFAULT_DROP_CLASSES) -> list[str]:
    """``labels`` without those named (case-insensitively) in ``drop_classes``."""
    drop = {str(d).strip().casefold() for d in (drop_classes or ())}
    return [label for label in labels if label.strip().casefold() not in drop]


def drop_noise(table: pd.DataFrame, labels: Sequence[str],
               drop_classes: Iterable[str] | None = DEFAULT_DROP_CLASSES) -> tuple[pd.DataFrame, list[str]]:
    """Removes the columns of dropped classes from a score table; other scores stay as they are.

    Args:
        table: Score table (``file, start_s, end_s`` + one column per label).
        labels: Its label columns, in order.
        drop_classes: Class names to remove (case-insensitive).

    Returns:
        ``(table, kept)``: a copy without the dropped columns (scores *not*
        renormalised) and the kept labels in order.
    """
    kept = kept_labels(labels, drop_classes)
    dropped = [label for label in labels if label not in set(kept)]
    return table.drop(columns=dropped), kept


# --------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------

def _stem_keys(by_name: dict[str, str]) -> dict[str, str]:
    """``{file name: id}`` plus ``{stem: id}`` for stems that belong to one file name only."""
    stems: dict[str, set[str]] = {}
    for name, media in by_name.items():
        stems.setdefault(Path(name).stem, set()).add(media)
    out = dict(by_name)
    for stem, ids in stems.items():
        if len(ids) == 1 and stem not in out:
            out[stem] = next(iter(ids))
    return out


def _add_media_id(by_name: dict[str, str], source: str, filename: str, media: str) -> None:
    name = Path(str(filename).replace("\\", "/")).name
    media = str(media).strip()
    if not name or not media:
        return
    if by_name.get(name, media) != media:
        raise BirdnetError(f"{source}: file {name!r} has two MediaIds, {by_name[name]!r} and {media!r}")
    by_name[name] = media


def _xml_folder_records(path: Path) -> tuple[Path, int, list[tuple[str, dict[str, str]]], list[tuple[str, str]]]:
    """``(folder, number of XML files, [(xml name, {lower-case tag: text})], [(xml name, why skipped)])``.

    ``path`` is a folder of BirdCLEF XML files or one whose ``xml/`` subfolder holds them; a tag's
    text is its first non-empty occurrence, stripped.

    Raises:
        BirdnetError: The folder holds no ``*.xml`` files.
    """
    folder = path if any(path.glob("*.xml")) or not (path / "xml").is_dir() else path / "xml"
    files = sorted(p for p in folder.glob("*.xml") if p.is_file())
    if not files:
        raise BirdnetError(f"{path}: no *.xml files (expected one BirdCLEF XML file per recording)")
    records, bad = [], []
    for f in files:
        try:
            root = ElementTree.parse(f).getroot()
        except (ElementTree.ParseError, OSError, UnicodeDecodeError) as e:
            bad.append((f.name, f"does not parse ({e})"))
            continue
        fields: dict[str, str] = {}
        for child in root:
            if isinstance(child.tag, str) and child.text and child.text.strip():
                fields.setdefault(child.tag.strip().lower(), child.text.strip())
        records.append((f.name, fields))
    return folder, len(files), records, bad


def read_media_ids(metadata: str | os.PathLike) -> dict[str, str]:
    """``{audio file name: MediaId}`` (plus unambiguous stems) from BirdCLEF metadata.

    Args:
        metadata: A folder of BirdCLEF XML files (or a folder whose ``xml/`` subfolder
            holds them; tags ``MediaId`` and ``FileName``), or a CSV file with a media
            id column (``media_id``/``MediaId``) and a file name column
            (``filename``/``FileName``/``file``/``path``).

    Raises:
        BirdnetError: The path does not exist, holds no usable entries, lacks a column,
            or gives one file two MediaIds.
    """
    path = Path(metadata)
    by_name: dict[str, str] = {}
    if path.is_dir():
        folder, n_files, records, bad = _xml_folder_records(path)
        for name, fields in records:
            media, filename = fields.get("mediaid"), fields.get("filename")
            if media is None or filename is None:
                bad.append((name, "no MediaId or FileName"))
                continue
            _add_media_id(by_name, str(folder / name), filename, media)
        if bad:
            warnings.warn(f"{folder}: {len(bad)} of {n_files} XML files skipped "
                          f"(first: {bad[0][0]}: {bad[0][1]})", stacklevel=2)
    elif path.is_file():
        table = _read_csv_table(path)
        lower = {str(c).strip().lower(): c for c in table.columns}
        media_col = next((lower[c] for c in _MEDIA_ID_COLUMNS if c in lower), None)
        file_col = next((lower[c] for c in _FILE_COLUMNS if c in lower), None)
        if media_col is None or file_col is None:
            raise BirdnetError(f"{path}: needs a media id column (media_id or MediaId) and a file name column "
                               f"(filename or FileName); columns found: {', '.join(map(str, table.columns))}")
        for filename, media in zip(table[file_col], table[media_col]):
            _add_media_id(by_name, str(path), filename, media)
    else:
        raise BirdnetError(f"{path}: metadata does not exist (give a BirdCLEF XML folder or a metadata CSV)")
    if not by_name:
        raise BirdnetError(f"{path}: no (file name, MediaId) pairs found")
    return _stem_keys(by_name)


def _resolve_media_ids(files: list[str], mapping: dict[str, str], source) -> dict[str, str]:
    out, missing = {}, []
    for f in files:
        p = Path(f)
        media = mapping.get(p.name) or mapping.get(p.stem)
        if media is None:
            missing.append(f)
        else:
            out[f] = media
    if missing:
        raise BirdnetError(f"{source}: no MediaId for {len(missing)} of {len(files)} audio file(s) "
                           f"(first: {missing[0]}); matched by file name, then stem")
    return out


def _read_csv_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise BirdnetError(f"{path}: cannot be read as a CSV table ({e})") from None


def read_recording_metadata(metadata: str | os.PathLike) -> pd.DataFrame:
    """Each recording's date, time and place from the BirdCLEF metadata that gives its MediaId.

    Args:
        metadata: A folder of BirdCLEF XML files (or one whose ``xml/`` subfolder holds them):
            tags ``FileName``, ``Date``, ``Time``, ``Latitude``, ``Longitude``, ``Elevation``
            (any may be missing); or a CSV with a file name column (``filename``/``FileName``/
            ``file``/``path``, as :func:`read_media_ids` reads it) and any of ``date``, ``time``,
            ``latitude``, ``longitude``, ``elevation`` (names in any case).

    Returns:
        One row per entry with a file name: ``file`` (the file name, no folders) and the five
        fields as the raw strings (parsed by :mod:`birdnet_tf.data.metadata`; ``pd.NA`` where a
        tag or column is missing, empty cells stay empty strings: both count as unknown).

    Raises:
        BirdnetError: The path does not exist, is not a readable CSV or XML folder, or a CSV
            lacks a file name column.
    """
    path = Path(metadata)
    if path.is_dir():
        _, _, records, _ = _xml_folder_records(path)
        rows = [{"file": fields["filename"], **{f: fields.get(f, pd.NA) for f in FIELDS}}
                for _, fields in records if fields.get("filename")]
        table = pd.DataFrame(rows, columns=["file", *FIELDS])
    elif path.is_file():
        raw = _read_csv_table(path)
        lower = {str(c).strip().lower(): c for c in raw.columns}
        file_col = next((lower[c] for c in _FILE_COLUMNS if c in lower), None)
        if file_col is None:
            raise BirdnetError(f"{path}: needs a file name column (filename or FileName) to match the metadata "
                               f"to the audio; columns found: {', '.join(map(str, raw.columns))}")
        table = pd.DataFrame({"file": raw[file_col].astype(str),
                              **{f: raw[lower[f]] if f in lower else pd.NA for f in FIELDS}})
    else:
        raise BirdnetError(f"{path}: metadata does not exist (give a BirdCLEF XML folder or a metadata CSV)")
    table["file"] = [Path(str(v).strip().replace("\\", "/")).name for v in table["file"]]
    return table[table["file"] != ""].reset_index(drop=True)


def match_recording_metadata(files: Sequence[str], table: pd.DataFrame,
                             source: object = "metadata") -> tuple[pd.DataFrame, np.ndarray]:
    """The metadata row of each audio file: entries of one file name must agree, then files are
    matched as ``predict --metadata`` matches them (:func:`birdnet_tf.infer.predict.match_metadata`:
    by path, file name, or a stem no other entry shares).

    Args:
        files: Audio file paths.
        table: :func:`read_recording_metadata`'s table.
        source: Where the table came from (for messages).

    Returns:
        ``(rows, matched)``: ``rows`` has one row per file and the columns of :data:`FIELDS`
        (``pd.NA`` where unmatched); ``matched`` is a bool ``[files]`` array.

    Raises:
        BirdnetError: Two entries for one file name give different values.
    """
    def values_of(row) -> tuple:
        return tuple(None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
                     for v in (row.get(f, pd.NA) for f in FIELDS))

    from birdnet_tf.infer.predict import match_metadata

    by_name: dict[str, tuple] = {}
    for row in table.to_dict("records"):
        name, values = str(row["file"]), values_of(row)
        if by_name.get(name, values) != values:
            raise BirdnetError(f"{source}: file {name!r} has two metadata entries with different values "
                               f"({by_name[name]} and {values})")
        by_name[name] = values
    # one entry per file name, then predict's matching (path, file name, stem shared by no other entry)
    unique = pd.DataFrame([[name, *(pd.NA if v is None else v for v in values)] for name, values in by_name.items()],
                          columns=["file", *FIELDS], dtype=object)
    rows, matched = match_metadata(list(map(str, files)), unique)
    return rows[list(FIELDS)], matched


def member_metadata(members: Sequence[Member], files: Sequence[str], metadata: str | os.PathLike | None,
                    log=print) -> list[np.ndarray | None]:
    """Each member's encoded metadata of each file: ``float32 [files, F]`` per metadata-aware member, else None.

    Rows come from :func:`read_recording_metadata` (matched by :func:`match_recording_metadata`)
    and are encoded by the member's own encoder. Files with no usable date, time or place (no
    entry, or every field missing or unreadable), and all files without ``metadata``, get the
    all-unknown row; one warning gives their count.
    """
    aware = [i for i, m in enumerate(members) if getattr(m.exported, "metadata_encoder", None) is not None]
    if not aware:
        return [None] * len(members)
    names = ", ".join(str(members[i].path) for i in aware)
    if metadata is None:
        rows = pd.DataFrame(index=range(len(files)))
        log(f"warning: {names} use(s) recording metadata and no --metadata was given: all {len(files)} file(s) "
            "are scored with date, time and place unknown")
    else:
        rows, _ = match_recording_metadata(files, read_recording_metadata(metadata), metadata)
    out = [m.exported.metadata_encoder.transform(rows) if i in aware else None for i, m in enumerate(members)]
    if metadata is not None:
        first = out[aware[0]]
        indicators = [j for j, n in enumerate(members[aware[0]].exported.metadata_encoder.feature_names)
                      if n.endswith("_missing")]
        unknown = int(np.all(first[:, indicators] == 1, axis=1).sum()) if len(files) else 0
        if unknown:
            log(f"warning: {unknown} of {len(files)} file(s) have no date, time or place in {metadata} (no entry, "
                f"or every field missing or unreadable); {names} score(s) them with these unknown")
        else:
            log(f"recording metadata for {names} from {metadata} ({len(files)} file(s))")
    return out


def read_submit_weights(weights_file: str | os.PathLike, models: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[str]]:
    """Ensemble weights of ``models`` from a ``weights.json`` of ``birdnet-tf ensemble``, by position.

    The i-th model gets the weight of the i-th model listed in the file (as
    :func:`birdnet_tf.infer.ensemble.apply_weights` applies them).

    Returns:
        ``(weights, listed)``: float64 ``[models]`` summing to 1, and the file's model names in order.

    Raises:
        BirdnetError: The file is missing or not a weights file, lists another number of models
            than given, or holds a missing, negative, non-finite or all-zero weight.
    """
    from birdnet_tf.infer.ensemble import normalise_weights, read_weights

    doc = read_weights(weights_file)
    listed = [str(m) for m in doc["models"]]
    if len(listed) != len(models):
        raise BirdnetError(f"{weights_file}: has weights for {len(listed)} model(s) ({', '.join(listed)}) but "
                           f"{len(models)} MODEL(s) were given; the i-th MODEL gets the weight of the i-th model "
                           "listed in the file")
    missing = [m for m in listed if m not in doc["weights"]]
    if missing:
        raise BirdnetError(f"{weights_file}: no weight for the listed model {missing[0]!r}")
    try:
        raw = [float(doc["weights"][m]) for m in listed]
    except (TypeError, ValueError):
        raise BirdnetError(f"{weights_file}: weights must be numbers, got {list(doc['weights'].values())}") from None
    try:
        return normalise_weights(raw, len(raw)), listed
    except BirdnetError as e:
        raise BirdnetError(f"{weights_file}: {e}") from None


def resolve_class_ids(labels: Sequence[str], class_ids: str | os.PathLike | None, models: Sequence[Path],
                      log) -> tuple[dict[str, str] | None, str]:
    """``({label: ClassId} or None, where from)``; checks every label has one.

    ``class_ids`` (CSV ``label,class_id``) wins, then the first model's
    ``assets.extra/labels.csv``; ``None`` means the labels themselves (with a warning).
    """
    from birdnet_tf.data.labels import load_class_ids
    from birdnet_tf.export import EXTRA

    source = Path(class_ids) if class_ids is not None else None
    if source is None:
        source = next((m / EXTRA / "labels.csv" for m in models if (m / EXTRA / "labels.csv").is_file()), None)
    if source is None:
        log("warning: no class ids (pass --class-ids CSV label,class_id, or train on data with class ids); "
            "writing labels as ClassId, but BirdCLEF expects its class ids")
        return None, "labels"
    ids = load_class_ids(source)
    missing = [label for label in labels if label not in ids]
    if missing:
        raise BirdnetError(f"{source}: no class id for {len(missing)} label(s), e.g. "
                           f"{', '.join(repr(m) for m in missing[:3])}")
    return ids, str(source)


# --------------------------------------------------------------------------
# Ensemble members
# --------------------------------------------------------------------------

@dataclass
class Member:
    """One model of an ensemble: its export, its whole-recording engine (or None: sliding) and
    ``order``, the indices that put its score columns into the ensemble's label order."""

    path: Path
    exported: object
    whole: object | None
    order: np.ndarray


def load_members(models: Sequence[str | os.PathLike], engine: str = "whole", log=print) -> tuple[list[Member], list[str]]:
    """Loads export folders as ensemble members; returns ``(members, labels)`` (the first model's order).

    Raises:
        BirdnetError: Not an export; a member's classes or sample rate differ from the first's.
    """
    from birdnet_tf.export import ExportedModel
    from birdnet_tf.infer.whole import WholeRecordingModel

    if engine not in ("whole", "sliding"):
        raise BirdnetError(f"unknown engine '{engine}'; choose whole or sliding")
    if not models:
        raise BirdnetError("give at least one exported MODEL folder")
    members: list[Member] = []
    labels: list[str] = []
    rate = None
    for i, path in enumerate(Path(m) for m in models):
        exported = ExportedModel(path)
        if len(set(exported.labels)) != len(exported.labels):
            raise BirdnetError(f"{path}: labels.txt repeats a label")
        if i == 0:
            labels, rate, first = list(exported.labels), exported.sample_rate_hz, path
        else:
            if exported.sample_rate_hz != rate:
                raise BirdnetError(f"{path}: takes {exported.sample_rate_hz} Hz audio but {first} takes {rate} Hz; "
                                   "an ensemble needs one sample rate")
            if set(exported.labels) != set(labels):
                missing = sorted(set(labels) - set(exported.labels))
                extra = sorted(set(exported.labels) - set(labels))
                raise BirdnetError(f"{path}: its classes differ from {first}'s (missing {missing[:5]}, "
                                   f"extra {extra[:5]}); an ensemble needs the same classes")
        index = {label: j for j, label in enumerate(exported.labels)}
        whole = None
        if not exported.uses_waveform:
            log(f"note: {path} is a metadata-only model: it reads no audio, so every window of a file gets the "
                "same scores (from the file's date, time and place)")
        elif engine == "whole":
            try:
                whole = WholeRecordingModel.from_export(exported)
            except BirdnetError as e:
                log(f"warning: {e}; scoring it with sliding windows")
        members.append(Member(path, exported, whole, np.array([index[label] for label in labels], np.int64)))
    return members, labels


def _counted(blocks: Iterator[np.ndarray], total: list[int]) -> Iterator[np.ndarray]:
    for block in blocks:
        total[0] += len(block)
        yield block


def score_file(members: Sequence[Member], path: str, task: str, window_s: float, hop_s: float,
               max_windows: int | None = None, batch_size: int = 32, log=print,
               weights: Sequence[float] | None = None,
               metadata: Sequence[np.ndarray | None] | None = None) -> dict:
    """Scores one recording with every member and averages their window scores.

    Args:
        members, path, task: The ensemble (:func:`load_members`), the recording, the task.
        window_s, hop_s, max_windows: The windows (see :func:`submit`).
        batch_size: Windows per call of a sliding-window member.
        log: Where warnings of decoding go.
        weights: ``[members]`` weights summing to 1 (default: the plain mean).
        metadata: Per member, the recording's encoded metadata ``float32 [F]`` for a member
            with metadata input (None: unknown); ignored for audio-only members.

    Returns:
        ``n_samples`` (decoded length at the models' rate), ``start_s``, ``end_s``
        ``[windows]`` and ``scores [windows, classes]`` (the ensemble's (weighted) mean, in
        the first member's label order).

    Raises:
        AudioDecodeError, BirdnetError: The recording cannot be decoded or is empty.
    """
    from birdnet_tf.data.audio import iter_audio, load_audio
    from birdnet_tf.infer.predict import score_recording
    from birdnet_tf.infer.whole import _expected, _prefetched

    sr = members[0].exported.sample_rate_hz
    window = int(round(window_s * sr))
    hop = int(round(hop_s * sr))
    metadata = list(metadata) if metadata is not None else [None] * len(members)
    x, n_true, logits = None, None, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m in members:
            if not m.exported.uses_waveform:  # metadata-only: the windows come from the others or the length
                logits.append(None)
                continue
            if m.whole is None:
                if x is None:
                    x, _ = load_audio(path, sr)
                n_true = len(x)
                logits.append(None)
                continue
            total = [0]
            try:
                spec, _ = m.whole.spectrogram(_counted(_prefetched(iter_audio(path, sr)), total), min_samples=window,
                                              expected_samples=_expected(path, sr))
            except BirdnetError as e:  # decoding errors name the file already
                raise type(e)(str(e) if str(path) in str(e) else f"{path}: {e}") from None
            logits.append(m.whole.step_logits([m.whole.centre(spec)])[0])
            n_true = total[0]
        if n_true is None:  # metadata-only members alone: the recording's length still lays out the windows
            x, _ = load_audio(path, sr)
            n_true = len(x)
    seen = set()
    for w in caught:
        if str(w.message) not in seen:
            seen.add(str(w.message))
            log(f"warning: {w.message}")
    if task == "soundscape":
        start_s, end_s = soundscape_windows(n_true, sr, window_s, hop_s)
        starts = np.round(start_s * sr).astype(np.int64)
    else:
        starts = monophone_starts(n_true, window, hop, max_windows)
        start_s, end_s = starts / sr, np.minimum(starts + window, max(n_true, window)) / sr
    total_scores = None
    for i, (m, lg, row) in enumerate(zip(members, logits, metadata)):
        row = None if row is None or not m.exported.uses_metadata else np.asarray(row, np.float32)
        if not m.exported.uses_waveform:  # one score row per file (it reads only the batch size)
            one = m.exported(np.zeros((1, 1), np.float32), None if row is None else row[None])
            s = np.repeat(np.asarray(one), len(starts), axis=0)
        elif lg is None:
            s = score_recording(m.exported, x, window, starts, batch_size, metadata=row)
        else:
            s = m.whole.window_scores(lg, starts, window, None if row is None else _metadata_bias(m, row))
        s = np.asarray(s, np.float64)[:, m.order]
        if weights is not None:
            s = float(weights[i]) * s
        total_scores = s if total_scores is None else total_scores + s
    scores = total_scores if weights is not None else total_scores / len(members)
    return {"n_samples": n_true, "start_s": start_s, "end_s": end_s, "scores": scores}


def _metadata_bias(member: Member, row: np.ndarray) -> np.ndarray | None:
    """A combined member's metadata logits ``float64 [classes]`` of one encoded row (its ``metadata_logits``
    signature), the bias the whole-recording engine adds to each window's pooled logits; None when it has none."""
    import tensorflow as tf

    if not member.whole.uses_metadata:
        return None
    fn = member.exported.signature("metadata_logits")
    return np.asarray(fn(metadata=tf.constant(row[None]))["logits"].numpy(), np.float64)[0]


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------

def submit(task: str, models: str | os.PathLike | Sequence[str | os.PathLike], audio: str | os.PathLike | Sequence,
           out: str | os.PathLike, *, metadata: str | os.PathLike | None = None,
           class_ids: str | os.PathLike | None = None, pooling: str | None = None, window_s: float | None = None,
           hop_s: float | None = None, max_windows: int | None = None,
           drop_classes: Iterable[str] | None = DEFAULT_DROP_CLASSES, engine: str = "whole", force: bool = False,
           log=print, progress: bool = True, weights: str | os.PathLike | None = None) -> Path:
    """Writes a BirdCLEF 2018 run file (see the module docstring).

    Args:
        task: ``monophone`` or ``soundscape``.
        models: One export folder or several (an ensemble averaging window scores).
        audio: An audio folder (searched recursively) or audio files.
        out: The run file to write.
        metadata: BirdCLEF XML folder or metadata CSV giving each file's MediaId
            (default: the file's stem) and, for members with metadata input, its date,
            time, latitude, longitude and elevation (see the module docstring).
        class_ids: CSV ``label,class_id`` (default: the first model's
            ``assets.extra/labels.csv``, else the labels).
        pooling: Monophone per-file pooling of window scores (default ``median``);
            ``mean``, ``max``, ``logmeanexp[:a]`` also work. Ignored for soundscapes.
        window_s, hop_s: Window length and hop in seconds (monophone default: the first
            model's ``data.excerpt_s`` and ``data.eval_hop_s``; soundscape: 5 s and the
            window).
        max_windows: Monophone windows per file, spread evenly (default the first
            model's ``chunks.max_chunks_per_file``, 128).
        drop_classes: Class names left out of the file (case-insensitive); scores of
            the others are not renormalised.
        engine: ``whole`` or ``sliding`` (see the module docstring).
        force: Replace an existing ``out``.
        log: Where messages go.
        progress: Show a progress bar.
        weights: A ``weights.json`` of ``birdnet-tf ensemble``: the window scores are
            combined by the weighted mean, the i-th model getting the weight of the i-th
            model listed in the file (:func:`read_submit_weights`); default the plain mean.

    Returns:
        ``out``.

    Raises:
        BirdnetError: A bad argument, model, metadata, weights or class-id file; ``out``
            exists without ``force``; no recording could be scored.
    """
    from tqdm.auto import tqdm

    from birdnet_tf.evaluate.pooling import pool
    from birdnet_tf.infer.outputs import write_birdclef_monophone, write_birdclef_soundscape
    from birdnet_tf.infer.predict import expand_inputs

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if task not in TASKS:
        raise BirdnetError(f"unknown task '{task}'; choose monophone or soundscape")
    out = Path(out)
    if out.is_dir():
        raise BirdnetError(f"{out}: is a folder; choose a file name for --out")
    if out.exists() and not force:
        raise BirdnetError(f"{out}: already exists; choose another --out or pass --force")
    if window_s is not None and window_s <= 0 or hop_s is not None and hop_s <= 0:
        raise BirdnetError("--window-s and --hop-s must be positive")
    if max_windows is not None and max_windows < 1:
        raise BirdnetError(f"--max-windows must be at least 1, got {max_windows}")
    pooling = pooling or DEFAULT_POOLING
    pool(np.zeros((1, 1)), pooling)  # validates the name before any work
    model_paths = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    member_weights = None
    if weights is not None:
        member_weights, listed = read_submit_weights(weights, model_paths)
        log(f"ensemble weights from {weights} (by position): "
            + ", ".join(f"{m} {w:.4f}" + (f" ({name})" if str(name) != str(m) else "")
                        for m, w, name in zip(model_paths, member_weights, listed)))
    inputs = [audio] if isinstance(audio, (str, os.PathLike)) else list(audio)
    files, problems = expand_inputs([str(i) for i in inputs])
    if not files:
        detail = "; ".join(f"{p}: {r}" for p, r in problems[:3])
        raise BirdnetError(f"no audio files to score ({detail or 'no inputs given'})")

    media_ids = _resolve_media_ids(files, read_media_ids(metadata), metadata) if metadata is not None else None
    members, labels = load_members(model_paths, engine, log)
    kept = kept_labels(labels, drop_classes)
    if not kept:
        raise BirdnetError(f"every class of the model is in the dropped classes {sorted(set(drop_classes or ()))}")
    if len(kept) < len(labels):
        log(f"dropping the class(es) {', '.join(x for x in labels if x not in kept)} from the run file "
            "(other scores are not renormalised)")
    ids, ids_from = resolve_class_ids(kept, class_ids, [m.path for m in members], log)
    features = member_metadata(members, files, metadata, log)

    cfg = members[0].exported.config
    if task == "soundscape":
        window_s = window_s or SOUNDSCAPE_WINDOW_S
        hop_s = hop_s or window_s
    else:
        window_s = window_s or cfg.data.excerpt_s
        hop_s = hop_s or (cfg.data.eval_hop_s if window_s == cfg.data.excerpt_s else window_s)
        max_windows = max_windows or cfg.chunks.max_chunks_per_file
        excerpts = {m.exported.config.data.excerpt_s for m in members}
        if len(excerpts) > 1:
            log(f"warning: the models were trained on excerpts of {sorted(excerpts)} s; "
                f"every model scores the same {window_s:g}-s windows")
    for path, reason in problems:
        log(f"skipped: {about(path, reason)}")
    failures = list(problems)
    rows: list[list] = []
    for index, path in enumerate(tqdm(files, desc=f"submit {task}", unit="file",
                                      disable=not progress or len(files) < 2)):
        try:
            res = score_file(members, path, task, window_s, hop_s, max_windows, log=log, weights=member_weights,
                             metadata=[None if f is None else f[index] for f in features])
        except (AudioDecodeError, BirdnetError) as e:
            reason = str(e)
            log(f"skipped: {reason}")
            failures.append((path, reason))
            continue
        if task == "monophone":
            rows.append([path, 0.0, round(res["n_samples"] / members[0].exported.sample_rate_hz, 3),
                         *pool(res["scores"], pooling)])
        else:
            rows += [[path, float(s), float(e), *row] for s, e, row in zip(res["start_s"], res["end_s"], res["scores"])]
    if not rows:
        detail = "; ".join(f"{p}: {r}" for p, r in failures[:3])
        raise BirdnetError(f"no recording could be scored ({len(failures)} skipped: {detail})")
    table, kept = drop_noise(pd.DataFrame(rows, columns=["file", "start_s", "end_s", *labels]), labels, drop_classes)
    writer = write_birdclef_monophone if task == "monophone" else write_birdclef_soundscape
    writer(table, kept, out, class_ids=ids, media_ids=media_ids, force=force)
    n_files = table["file"].nunique()
    n_lines = n_files * min(len(kept), 100) if task == "monophone" else len(table) * min(len(kept), 100)
    what = f"ensemble of {len(members)} models" if len(members) > 1 else str(members[0].path)
    if member_weights is not None:
        what += f", weights from {weights}"
    log(f"wrote {out}: BirdCLEF {task} run, {n_files} file(s), {n_lines} lines ({what}; "
        f"{'pooling ' + pooling + ', ' if task == 'monophone' else ''}"
        f"{window_s:g}-s windows every {hop_s:g} s; ClassId from {ids_from}; "
        f"MediaId from {metadata if metadata is not None else 'file stems'})"
        + (f"; {len(failures)} input(s) skipped:" if failures else ""))
    for path, reason in failures:
        log(f"  {reason}" if str(path) in reason else f"  {path}: {reason}")
    return out
