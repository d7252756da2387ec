"""Prediction outputs: detections above thresholds, species lists, merging and file formats.

Everything starts from a **score table** (what ``birdnet-tf predict`` computes): a
:class:`pandas.DataFrame` with columns ``file`` (path of the audio file), ``start_s`` and
``end_s`` (seconds; a per-file table has one row per file with start 0 and end = the
duration), then one float column per label in model order holding scores in [0, 1].

From it, :func:`select_detections` keeps the (window, label) pairs whose score reaches a
threshold (a global ``min_score``, overridden per species by ``thresholds``), restricted to
an ``include`` species list and minus an ``exclude`` list; :func:`merge_detections` joins
overlapping or nearly adjacent detections of one label in one file. :func:`write_output`
writes one of the :data:`FORMATS`:

* ``csv`` — the wide score table (label columns restricted by include/exclude).
* ``detections-csv`` — the selected detections, one row each.
* ``json`` — ``{"labels": [...], "files": [{"file", "detections": [...]}]}``.
* ``raven`` — a folder of Raven Pro selection tables, ``<stem>.selections.txt`` per file.
* ``audacity`` — a folder of Audacity label tracks, ``<stem>.labels.txt`` per file.
* ``birdclef-monophone`` — a BirdCLEF 2018 monophone run file
  (``MediaId;ClassId;Probability;Rank``, top 100 classes per file, no header line).
* ``birdclef-soundscape`` — a BirdCLEF 2018 soundscape run file
  (``MediaId;HH:MM:SS-HH:MM:SS;ClassId;Probability``, top 100 classes per window).

The BirdCLEF formats rank all scores: they ignore ``min_score``, ``thresholds`` and merging,
but honour ``include``/``exclude``. Every file is written atomically through
:mod:`birdnet_tf.fileio`; an existing output is refused unless ``force``. A folder output
is built beside its target and put in its place in one step, so an interrupted job leaves
the old folder or the new one, whole; ``force`` replaces only a folder ``predict`` wrote
(its :data:`PREDICTIONS_MARKER`), never someone else's files or a parent of outputs.

Pure numpy/pandas; nothing happens at import.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.errors import BirdnetError
from birdnet_tf.fileio import (check_replaceable, replace_folder, restore_folder, write_json_atomic,
                                write_text_atomic)

KEY_COLUMNS: tuple[str, ...] = ("file", "start_s", "end_s")
"""The non-label columns of a score table, in this order."""

DETECTION_COLUMNS: tuple[str, ...] = ("file", "start_s", "end_s", "label", "score")
"""Columns of :func:`select_detections`'s result (merging adds ``windows``)."""

RAVEN_HEADER: tuple[str, ...] = (
    "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
    "High Freq (Hz)", "Species", "Confidence", "Begin Path", "File Offset (s)",
)
"""Header of a Raven Pro selection table (tab-separated)."""

DEFAULT_HIGH_FREQ_HZ = 15000.0
"""Raven's upper frequency bound when neither ``high_freq_hz`` nor a sample rate is given."""

TOP_CLASSES = 100
"""How many classes per file (monophone) or window (soundscape) a BirdCLEF run lists."""

_TIME_TOL_S = 1e-6  # times are rounded to milliseconds upstream; absorbs float noise when merging

PathLike = str | os.PathLike


# --------------------------------------------------------------------------
# Label names: resolution, suggestions, species lists, thresholds
# --------------------------------------------------------------------------

def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()


class _LabelIndex:
    """Resolves user-written names to the model's labels (exact, else case/space-insensitive)."""

    def __init__(self, labels: list[str]):
        self.labels = list(labels)
        self.exact = set(self.labels)
        self.folded: dict[str, list[str]] = {}
        for label in self.labels:
            self.folded.setdefault(_fold(label), []).append(label)

    def resolve(self, name: str) -> str | None:
        """The label ``name`` means, or None. A BirdNET-style ``Genus species_Common Name``
        resolves through the part before the first ``_`` when the whole does not."""
        for candidate in _candidates(name):
            if candidate in self.exact:
                return candidate
            hits = self.folded.get(_fold(candidate), [])
            if len(hits) == 1:
                return hits[0]
        return None

    def suggest(self, name: str) -> str | None:
        """The closest label to ``name`` (difflib), or None when nothing is close."""
        folded = list(self.folded)
        for candidate in _candidates(name)[::-1]:
            close = difflib.get_close_matches(_fold(candidate), folded, n=1, cutoff=0.6)
            if close:
                return self.folded[close[0]][0]
        return None


def _candidates(name: str) -> list[str]:
    name = name.strip()
    out = [name]
    if "_" in name:
        out.append(name.split("_", 1)[0].strip())
    return out


def _unknown_names_error(source: str, unknown: list[tuple[str, int | None]], index: _LabelIndex) -> BirdnetError:
    """One error naming ``source`` and every unknown name (first 5), with line numbers and suggestions."""
    parts = []
    for name, line in unknown[:5]:
        notes = [f"line {line}"] if line is not None else []
        suggestion = index.suggest(name)
        if suggestion is not None:
            notes.append(f"did you mean {suggestion!r}?")
        parts.append(repr(name) + (f" ({'; '.join(notes)})" if notes else ""))
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    noun = "name is not a label" if len(unknown) == 1 else "names are not labels"
    return BirdnetError(f"{source}: {len(unknown)} {noun} of the model: {', '.join(parts)}{more}")


def _read_lines(path: PathLike, what: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise BirdnetError(f"{p}: {what} file not found")
    if p.is_dir():
        raise BirdnetError(f"{p}: is a folder, not a {what} file")
    try:
        return p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise BirdnetError(f"{p}: {what} file is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise BirdnetError(f"{p}: cannot read {what} file: {e.strerror or e}") from None


def _strip_comment(line: str) -> str:
    return line.split("#", 1)[0].strip()


def _report_unknown(err: BirdnetError, strict: bool) -> None:
    if strict:
        raise err
    warnings.warn(f"{err} (ignored)", stacklevel=3)


def load_species_list(path: PathLike, labels: Iterable[str], *, strict: bool = True) -> list[str]:
    """Reads a species list: one label per line.

    ``#`` starts a comment (whole line or trailing); blank lines are skipped; names match
    the labels exactly or up to case and repeated spaces. A BirdNET-style line
    ``Genus species_Common Name`` is matched through the part before the first ``_``.

    Args:
        path: The text file (UTF-8, a byte-order mark is fine).
        labels: The model's labels.
        strict: If True (default) names that are not labels raise; if False they are
            skipped with a :class:`UserWarning` (for regional lists covering more species
            than the model).

    Returns:
        The labels named, in the file's order, each once.

    Raises:
        BirdnetError: the file is missing or unreadable, names no species, or (strict)
            names unknown labels — all of them are listed, with line numbers and the
            closest label.
    """
    index = _LabelIndex(list(labels))
    found: list[str] = []
    unknown: list[tuple[str, int | None]] = []
    for number, raw in enumerate(_read_lines(path, "species list"), start=1):
        name = _strip_comment(raw)
        if not name:
            continue
        label = index.resolve(name)
        if label is None:
            unknown.append((name, number))
        elif label not in found:
            found.append(label)
    if unknown:
        _report_unknown(_unknown_names_error(str(path), unknown, index), strict)
    if not found:
        raise BirdnetError(f"{path}: species list names no label of the model")
    return found


def load_thresholds(path: PathLike, labels: Iterable[str], *, strict: bool = True) -> dict[str, float]:
    """Reads per-species score thresholds.

    Either CSV ``label,threshold`` (a header line such as ``label,threshold`` is recognised
    by its non-numeric second field and skipped) or tab-separated ``label<TAB>threshold``;
    the first data line decides which. ``#`` comments and blank lines are allowed. Labels
    resolve as in :func:`load_species_list`.

    Args:
        path: The text file (UTF-8).
        labels: The model's labels.
        strict: As in :func:`load_species_list`.

    Returns:
        ``{label: threshold}`` with thresholds in [0, 1].

    Raises:
        BirdnetError: a missing/unreadable file, a line without two fields, a value that is
            not a number in [0, 1] or a label given twice with different values (each
            naming the line number), or (strict) unknown labels.
    """
    index = _LabelIndex(list(labels))
    thresholds: dict[str, float] = {}
    first_line: dict[str, int] = {}
    unknown: list[tuple[str, int | None]] = []
    delimiter = None
    for number, raw in enumerate(_read_lines(path, "thresholds"), start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        first = delimiter is None
        if first:
            delimiter = "\t" if "\t" in line else ","
        fields = [f.strip() for f in next(csv.reader([line], delimiter=delimiter))]
        while len(fields) > 2 and not fields[-1]:
            fields.pop()
        where = f"{path} line {number}"
        if len(fields) != 2 or not fields[0]:
            sep = "<TAB>" if delimiter == "\t" else ","
            raise BirdnetError(f"{where}: expected 'label{sep}threshold', got {raw.strip()!r}")
        name, text = fields
        try:
            value = float(text)
        except ValueError:
            if first:
                continue  # a header line
            raise BirdnetError(f"{where}: threshold {text!r} is not a number") from None
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise BirdnetError(f"{where}: threshold must be in [0, 1], got {text}")
        label = index.resolve(name)
        if label is None:
            unknown.append((name, number))
            continue
        if label in thresholds and thresholds[label] != value:
            raise BirdnetError(f"{where}: {label!r} given twice with different thresholds "
                               f"({thresholds[label]:g} on line {first_line[label]}, {value:g} here)")
        thresholds[label] = value
        first_line.setdefault(label, number)
    if unknown:
        _report_unknown(_unknown_names_error(str(path), unknown, index), strict)
    return thresholds


def _resolve_names(names, labels: list[str], what: str) -> list[str]:
    """A species list given as a path (loaded) or as names (resolved strictly)."""
    if isinstance(names, (str, os.PathLike)):
        return load_species_list(names, labels)
    index = _LabelIndex(labels)
    found, unknown = [], []
    for name in names:
        label = index.resolve(str(name))
        if label is None:
            unknown.append((str(name), None))
        elif label not in found:
            found.append(label)
    if unknown:
        raise _unknown_names_error(what, unknown, index)
    return found


def _resolve_thresholds(thresholds, labels: list[str]) -> dict[str, float]:
    if thresholds is None:
        return {}
    if isinstance(thresholds, (str, os.PathLike)):
        return load_thresholds(thresholds, labels)
    index = _LabelIndex(labels)
    out, unknown = {}, []
    for name, value in thresholds.items():
        label = index.resolve(str(name))
        if label is None:
            unknown.append((str(name), None))
            continue
        value = float(value)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise BirdnetError(f"thresholds: threshold of {label!r} must be in [0, 1], got {value:g}")
        out[label] = value
    if unknown:
        raise _unknown_names_error("thresholds", unknown, index)
    return out


def restrict_labels(labels: Iterable[str], include=None, exclude=None) -> list[str]:
    """The labels kept by an include and an exclude list, in model order.

    Args:
        labels: The model's labels.
        include: None (all labels), names, or the path of a species list
            (:func:`load_species_list`).
        exclude: None, names, or the path of a species list; exclusion wins over inclusion.

    Raises:
        BirdnetError: names that are not labels (naming the list file, or ``include`` /
            ``exclude`` for names given directly).
    """
    labels = list(labels)
    kept = set(labels if include is None else _resolve_names(include, labels, "include"))
    if exclude is not None:
        kept -= set(_resolve_names(exclude, labels, "exclude"))
    return [label for label in labels if label in kept]


# --------------------------------------------------------------------------
# Score table → detections
# --------------------------------------------------------------------------

def _check_table(table: pd.DataFrame, labels: Iterable[str]) -> list[str]:
    """Validates a score table against ``labels``; returns the labels as a list."""
    labels = [str(label) for label in labels]
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"score table must be a pandas DataFrame, got {type(table).__name__}")
    if len(set(labels)) != len(labels):
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        raise BirdnetError(f"score table: labels are not unique: {', '.join(dupes)}")
    missing = [c for c in [*KEY_COLUMNS, *labels] if c not in table.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BirdnetError(f"score table lacks columns: {shown}")
    for column in ("start_s", "end_s", *labels):
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise BirdnetError(f"score table: column {column!r} is not numeric")
    if labels and len(table):
        scores = table[labels].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(scores)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise BirdnetError(f"score table: {int(bad.sum())} missing or non-finite scores "
                               f"(first: {table['file'].iloc[row]}, {labels[col]!r})")
    return labels


def _empty_detections() -> pd.DataFrame:
    return pd.DataFrame({"file": pd.Series([], dtype=object), "start_s": pd.Series([], dtype=np.float64),
                         "end_s": pd.Series([], dtype=np.float64), "label": pd.Series([], dtype=object),
                         "score": pd.Series([], dtype=np.float64)})


def _sort_detections(dets: pd.DataFrame, label_rank: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Sorted by file, start_s, score descending; ties by label (model order when known)."""
    rank = dets["label"].map(label_rank) if label_rank is not None else dets["label"]
    keyed = dets.assign(_rank=rank)
    keyed = keyed.sort_values(["file", "start_s", "score", "_rank"], ascending=[True, True, False, True],
                              kind="mergesort")
    return keyed.drop(columns="_rank").reset_index(drop=True)


def select_detections(table: pd.DataFrame, labels: Iterable[str], min_score: float = 0.0,
                      thresholds=None, include=None, exclude=None) -> pd.DataFrame:
    """The (window, label) pairs whose score reaches its threshold, in long format.

    Args:
        table: Score table (``file``, ``start_s``, ``end_s``, one column per label).
        labels: The label columns, in model order.
        min_score: Global threshold in [0, 1]; a score ``>=`` it is a detection.
        thresholds: Per-species thresholds overriding ``min_score``: ``{label: t}`` or the
            path of a thresholds file (:func:`load_thresholds`).
        include: Only these labels (names or a species-list path); None keeps all.
        exclude: Never these labels (names or a species-list path); wins over ``include``.

    Returns:
        DataFrame with columns ``file, start_s, end_s, label, score`` (one row per
        detection), sorted by file, start_s, then score descending (ties in model order).

    Raises:
        BirdnetError: an invalid ``min_score``/threshold, unknown labels in the lists
            (naming the source file and suggesting close labels), or a malformed table.
    """
    labels = _check_table(table, labels)
    min_score = float(min_score)
    if not (math.isfinite(min_score) and 0.0 <= min_score <= 1.0):
        raise BirdnetError(f"--min-score must be in [0, 1], got {min_score:g}")
    per_label = _resolve_thresholds(thresholds, labels)
    kept = restrict_labels(labels, include, exclude)
    if not kept or not len(table):
        return _empty_detections()
    scores = table[kept].to_numpy(dtype=np.float64)  # [windows, kept labels]
    limits = np.array([per_label.get(label, min_score) for label in kept])  # [kept labels]
    rows, cols = np.nonzero(scores >= limits)
    dets = pd.DataFrame({
        "file": table["file"].astype(str).to_numpy(dtype=object)[rows],
        "start_s": table["start_s"].to_numpy(dtype=np.float64)[rows],
        "end_s": table["end_s"].to_numpy(dtype=np.float64)[rows],
        "label": np.array(kept, dtype=object)[cols],
        "score": scores[rows, cols],
    })
    return _sort_detections(dets, {label: i for i, label in enumerate(labels)})


def merge_detections(dets: pd.DataFrame, max_gap_s: float = 0.0) -> pd.DataFrame:
    """Merges detections of one label in one file that overlap or lie at most ``max_gap_s`` apart.

    Chains merge transitively (A–B and B–C make one). The input need not be sorted.

    Args:
        dets: Detections (``file, start_s, end_s, label, score``; a ``windows`` column, as
            from an earlier merge, is summed).
        max_gap_s: Largest gap in seconds between one detection's end and the next one's
            start that still merges; 0 merges overlapping and touching windows only.

    Returns:
        DataFrame ``file, start_s, end_s, label, score, windows`` — start = min, end = max,
        score = max, windows = how many detections were merged — sorted by file, start_s,
        then score descending.
    """
    max_gap_s = float(max_gap_s)
    if not (math.isfinite(max_gap_s) and max_gap_s >= 0):
        raise BirdnetError(f"merge gap must be a non-negative number of seconds, got {max_gap_s:g}")
    missing = [c for c in DETECTION_COLUMNS if c not in dets.columns]
    if missing:
        raise BirdnetError(f"detections lack columns: {', '.join(missing)}")
    d = dets.loc[:, list(DETECTION_COLUMNS)].copy()
    d["windows"] = dets["windows"].astype(np.int64) if "windows" in dets.columns else 1
    if d.empty:
        return _sort_detections(_empty_detections().assign(windows=pd.Series([], dtype=np.int64)))
    d["file"] = d["file"].astype(str)
    d = d.sort_values(["file", "label", "start_s", "end_s"], kind="mergesort").reset_index(drop=True)
    # a detection opens a new event when it starts a new (file, label) group or begins after
    # the furthest end reached so far in its group plus the gap
    group = d.groupby(["file", "label"], sort=False).ngroup().to_numpy()
    reach = d.groupby(group)["end_s"].cummax().to_numpy()
    first = np.r_[True, group[1:] != group[:-1]]
    opens = first | (d["start_s"].to_numpy() > np.r_[-np.inf, reach[:-1]] + max_gap_s + _TIME_TOL_S)
    out = d.groupby(np.cumsum(opens), sort=False).agg(
        file=("file", "first"), start_s=("start_s", "min"), end_s=("end_s", "max"), label=("label", "first"),
        score=("score", "max"), windows=("windows", "sum")).reset_index(drop=True)
    return _sort_detections(out)


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def _refuse_existing_file(out: Path, force: bool) -> None:
    if out.is_dir():
        raise BirdnetError(f"{out}: is a folder; this format writes one file, choose a file name for --out")
    if out.exists() and not force:
        raise BirdnetError(f"{out}: already exists; choose another --out or pass --force")


def _write_file(out: PathLike, text: str, force: bool) -> list[Path]:
    out = Path(out)
    _refuse_existing_file(out, force)
    try:
        write_text_atomic(out, text)
    except OSError as e:
        raise BirdnetError(f"{out}: cannot write: {e.strerror or e}") from None
    return [out]


PREDICTIONS_MARKER = ".birdnet_tf_predictions.json"
"""The file by which a folder output (:data:`FOLDER_FORMATS`) is recognised as written by
``predict``: ``--force`` replaces only such a folder (:func:`birdnet_tf.fileio.check_replaceable`)."""


def check_folder_output(out_dir: PathLike, force: bool) -> None:
    """Raises :class:`BirdnetError` unless ``out_dir`` may receive a folder output: it does not
    exist, is an empty folder, or (with ``force``) is a predictions folder this package wrote."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BirdnetError(f"{out}: exists and is not a folder; this format writes a folder of files")
    check_replaceable(out, (PREDICTIONS_MARKER,), "predictions folder", force)


def _write_folder(out_dir: PathLike, contents: dict[str, str], force: bool, fmt: str = "") -> list[Path]:
    """Writes ``{file name: text}`` into the folder ``out_dir``, with its marker file.

    The folder is built beside its target and put in its place in one step, so a failure
    or a kill leaves either the old folder or the new one, whole. A non-empty ``out_dir``
    is replaced only with ``force`` and only when it is a predictions folder this package
    wrote (:func:`check_folder_output`) — never someone else's files or a parent of outputs.
    """
    from birdnet_tf import __version__

    out = Path(out_dir)
    check_folder_output(out, force)
    restore_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        os.mkdir(tmp)
    except OSError as e:
        raise BirdnetError(f"{out}: cannot create folder: {e.strerror or e}") from None
    name = None
    try:
        for name, text in contents.items():
            (tmp / name).write_text(text, encoding="utf-8")
        name = PREDICTIONS_MARKER
        write_json_atomic(tmp / PREDICTIONS_MARKER, {"birdnet_tf_version": __version__, "format": fmt,
                                                     "files": list(contents)})
        name = None
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        replace_folder(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        target = out / name if name is not None else out
        raise BirdnetError(f"{target}: cannot write: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name for name in contents]


def _file_order(table: pd.DataFrame) -> list[str]:
    """Distinct files of a table in order of first appearance."""
    return list(dict.fromkeys(table["file"].astype(str)))


def unique_stems(files: Iterable[str]) -> dict[str, str]:
    """A distinct output stem per audio file: its own stem, ``_2``, ``_3``… added on collisions.

    Stems compare case-insensitively (as on macOS and Windows file systems). Files whose
    stem is unique keep it; of colliding files the first keeps the plain stem.
    """
    files = list(dict.fromkeys(str(f) for f in files))
    natural = {f: Path(f).stem or "audio" for f in files}
    counts: dict[str, int] = {}
    for stem in natural.values():
        counts[stem.casefold()] = counts.get(stem.casefold(), 0) + 1
    used = {stem.casefold() for stem in natural.values() if counts[stem.casefold()] == 1}
    out = {}
    for f in files:
        stem = natural[f]
        if counts[stem.casefold()] == 1:
            out[f] = stem
            continue
        candidate, k = stem, 1
        while candidate.casefold() in used:
            k += 1
            candidate = f"{stem}_{k}"
        used.add(candidate.casefold())
        out[f] = candidate
    return out


def _by_file(dets: pd.DataFrame, files: list[str]) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """Files (given order, then any only in ``dets``) and each file's detections sorted by time."""
    files = list(dict.fromkeys([*map(str, files), *dets["file"].astype(str)]))
    groups = {str(f): g for f, g in dets.groupby("file", sort=False)}
    empty = dets.iloc[:0]
    return files, {f: groups.get(f, empty).sort_values(["start_s", "score"], ascending=[True, False],
                                                        kind="mergesort") for f in files}


def write_csv(table: pd.DataFrame, labels: Iterable[str], out: PathLike, *, force: bool = False) -> list[Path]:
    """The wide score table as CSV: ``file, start_s, end_s`` and the ``labels`` columns (``%.6f``).

    Returns:
        ``[out]``.
    """
    labels = _check_table(table, labels)
    text = table[[*KEY_COLUMNS, *labels]].to_csv(index=False, float_format="%.6f", lineterminator="\n")
    return _write_file(out, text, force)


def write_detections_csv(dets: pd.DataFrame, out: PathLike, *, force: bool = False) -> list[Path]:
    """Detections as CSV ``file, start_s, end_s, label, score`` (plus ``windows`` when merged).

    Returns:
        ``[out]``.
    """
    columns = [*DETECTION_COLUMNS, *(["windows"] if "windows" in dets.columns else [])]
    text = dets[columns].to_csv(index=False, float_format="%.6f", lineterminator="\n")
    return _write_file(out, text, force)


def write_json(dets: pd.DataFrame, labels: Iterable[str], files: Iterable[str], out: PathLike, *,
               force: bool = False) -> list[Path]:
    """Detections as JSON ``{"labels": [...], "files": [{"file", "detections": [...]}]}``.

    Every file in ``files`` is listed, with an empty ``detections`` list when it has none.
    A detection is ``{"start_s", "end_s", "label", "score"}`` (plus ``"windows"`` when
    merged), in time order; scores are rounded to 6 decimals.

    Returns:
        ``[out]``.
    """
    files, per_file = _by_file(dets, list(files))
    merged = "windows" in dets.columns
    doc = {"labels": [str(label) for label in labels], "files": []}
    for f in files:
        entries = []
        for row in per_file[f].itertuples(index=False):
            entry = {"start_s": round(float(row.start_s), 6), "end_s": round(float(row.end_s), 6),
                     "label": str(row.label), "score": round(float(row.score), 6)}
            if merged:
                entry["windows"] = int(row.windows)
            entries.append(entry)
        doc["files"].append({"file": f, "detections": entries})
    out = Path(out)
    _refuse_existing_file(out, force)
    try:
        write_json_atomic(out, doc)
    except OSError as e:
        raise BirdnetError(f"{out}: cannot write: {e.strerror or e}") from None
    return [out]


def _seconds(x: float) -> str:
    return f"{x:.3f}"


def write_raven(dets: pd.DataFrame, files: Iterable[str], out_dir: PathLike, *, sample_rate_hz: float | None = None,
                low_freq_hz: float | None = None, high_freq_hz: float | None = None,
                force: bool = False) -> list[Path]:
    """Raven Pro selection tables, one ``<stem>.selections.txt`` per audio file in ``out_dir``.

    Tab-separated with header :data:`RAVEN_HEADER`; one selection per detection in time
    order, numbered from 1; ``View`` "Spectrogram 1", ``Channel`` 1; times in seconds (3
    decimals), ``File Offset (s)`` = begin time, ``Begin Path`` = absolute path of the
    audio file, ``Confidence`` with 4 decimals. Files without detections get a header-only
    table. Colliding stems are disambiguated by :func:`unique_stems`.

    Args:
        dets: Detections (:func:`select_detections` / :func:`merge_detections`).
        files: Every audio file to write a table for, in order.
        out_dir: Output folder (created; a non-empty one needs ``force``).
        sample_rate_hz: When given, the default upper frequency is its Nyquist.
        low_freq_hz: Lower frequency of every selection; default 0.
        high_freq_hz: Upper frequency; default the Nyquist, else 15000 Hz.
        force: Replace a folder of tables this command wrote earlier (whole).

    Returns:
        The written tables, in file order.
    """
    low = 0.0 if low_freq_hz is None else float(low_freq_hz)
    if high_freq_hz is not None:
        high = float(high_freq_hz)
    elif sample_rate_hz is not None:
        high = float(sample_rate_hz) / 2
    else:
        high = DEFAULT_HIGH_FREQ_HZ
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
        raise BirdnetError(f"Raven frequencies must satisfy 0 <= low < high, got low {low:g} Hz, high {high:g} Hz")
    files, per_file = _by_file(dets, list(files))
    stems = unique_stems(files)
    header = "\t".join(RAVEN_HEADER)
    contents = {}
    for f in files:
        path = os.path.abspath(f)
        lines = [header]
        for i, row in enumerate(per_file[f].itertuples(index=False), start=1):
            lines.append("\t".join([
                str(i), "Spectrogram 1", "1", _seconds(row.start_s), _seconds(row.end_s), f"{low:.1f}",
                f"{high:.1f}", str(row.label), f"{row.score:.4f}", path, _seconds(row.start_s),
            ]))
        contents[f"{stems[f]}.selections.txt"] = "\n".join(lines) + "\n"
    return _write_folder(out_dir, contents, force, "raven")


def write_audacity(dets: pd.DataFrame, files: Iterable[str], out_dir: PathLike, *,
                   force: bool = False) -> list[Path]:
    """Audacity label tracks, one ``<stem>.labels.txt`` per audio file in ``out_dir``.

    One line per detection in time order: ``start<TAB>end<TAB>label (score)`` with times
    in seconds to 3 decimals and the score to 3 decimals. Files without detections get an
    empty track. Colliding stems are disambiguated by :func:`unique_stems`.

    Returns:
        The written tracks, in file order.
    """
    files, per_file = _by_file(dets, list(files))
    stems = unique_stems(files)
    contents = {}
    for f in files:
        lines = [f"{_seconds(r.start_s)}\t{_seconds(r.end_s)}\t{r.label} ({r.score:.3f})"
                 for r in per_file[f].itertuples(index=False)]
        contents[f"{stems[f]}.labels.txt"] = "".join(line + "\n" for line in lines)
    return _write_folder(out_dir, contents, force, "audacity")


def _check_id(value: str, what: str, of: str) -> str:
    value = str(value)
    if not value or any(c in value for c in ";\r\n"):
        raise BirdnetError(f"{what} of {of!r} must be non-empty without ';' or line breaks, got {value!r}")
    return value


def _media_ids(files: list[str], media_ids: Mapping[str, str] | None) -> dict[str, str]:
    """MediaId per file: ``media_ids`` looked up by the path, its file name, then its stem;
    by default the stem. Distinct files must get distinct ids."""
    out, missing = {}, []
    for f in files:
        p = Path(f)
        if media_ids is None:
            out[f] = p.stem
            continue
        for key in (f, p.name, p.stem):
            if key in media_ids:
                out[f] = _check_id(media_ids[key], "MediaId", f)
                break
        else:
            missing.append(f)
    if missing:
        raise BirdnetError(f"media ids: no MediaId for {len(missing)} files (first: {missing[0]})")
    seen: dict[str, str] = {}
    for f, media in out.items():
        if media in seen:
            raise BirdnetError(f"media ids: {seen[media]} and {f} both get MediaId {media!r}; "
                               "give distinct media ids")
        seen[media] = f
    return out


def _class_ids(labels: list[str], class_ids: Mapping[str, str] | None) -> list[str]:
    if class_ids is None:
        return [_check_id(label, "ClassId", label) for label in labels]
    missing = [label for label in labels if label not in class_ids]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise BirdnetError(f"class ids: no ClassId for {len(missing)} labels: {shown}")
    return [_check_id(class_ids[label], "ClassId", label) for label in labels]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """``[rows, min(k, classes)]`` column indices by descending score (ties in label order)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def hhmmss(seconds: float) -> str:
    """``HH:MM:SS`` of a time rounded to the nearest whole second (half up); hours have at
    least two digits and grow past 99."""
    total = int(math.floor(float(seconds) + 0.5))
    if total < 0:
        raise BirdnetError(f"time stamp of a negative time: {seconds:g} s")
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def soundscape_timestamp(start_s: float, end_s: float) -> str:
    """``HH:MM:SS-HH:MM:SS`` of a window, both ends rounded to whole seconds (so windows on a
    5-s grid give ``00:00:00-00:00:05``, ``00:00:05-00:00:10``, …); a window shorter than half
    a second still spans one second."""
    start = int(math.floor(float(start_s) + 0.5))
    end = max(int(math.floor(float(end_s) + 0.5)), start + 1)
    return f"{hhmmss(start)}-{hhmmss(end)}"


def write_birdclef_monophone(table: pd.DataFrame, labels: Iterable[str], out: PathLike, *,
                             class_ids: Mapping[str, str] | None = None,
                             media_ids: Mapping[str, str] | None = None, force: bool = False) -> list[Path]:
    """A BirdCLEF 2018 monophone run file: ``MediaId;ClassId;Probability;Rank`` lines.

    Per file (in table order) the top :data:`TOP_CLASSES` of ``labels`` (all when fewer)
    by descending score, ranked 1..N, probability with 6 decimals; no header line (as the
    2018 baseline's run files). A file with several rows (windows) is pooled by the
    maximum over its windows.

    Args:
        table: Score table.
        labels: The labels to rank (pass the include/exclude-restricted list).
        out: Output file.
        class_ids: ``{label: ClassId}``; default the label itself.
        media_ids: ``{file: MediaId}`` (keys may also be the file's name or stem); default
            the file's stem.
        force: Replace an existing file.

    Returns:
        ``[out]``.
    """
    labels = _check_table(table, labels)
    classes = _class_ids(labels, class_ids)
    files = _file_order(table)
    media = _media_ids(files, media_ids)
    lines = []
    if labels and files:
        pooled = table.assign(file=table["file"].astype(str)).groupby("file", sort=False)[labels].max()
        scores = pooled.loc[files].to_numpy(dtype=np.float64)  # [files, labels]
        for f, row, top in zip(files, scores, _top(scores, TOP_CLASSES)):
            lines += [f"{media[f]};{classes[c]};{row[c]:.6f};{rank}" for rank, c in enumerate(top, start=1)]
    return _write_file(out, "".join(line + "\n" for line in lines), force)


def write_birdclef_soundscape(table: pd.DataFrame, labels: Iterable[str], out: PathLike, *,
                              class_ids: Mapping[str, str] | None = None,
                              media_ids: Mapping[str, str] | None = None, force: bool = False) -> list[Path]:
    """A BirdCLEF 2018 soundscape run file: ``MediaId;HH:MM:SS-HH:MM:SS;ClassId;Probability`` lines.

    Per window (files in table order, windows by start time) the top :data:`TOP_CLASSES`
    of ``labels`` by descending score, probability with 6 decimals; time stamps from
    :func:`soundscape_timestamp`; no header line. ``class_ids``/``media_ids`` as in
    :func:`write_birdclef_monophone`.

    Returns:
        ``[out]``.
    """
    labels = _check_table(table, labels)
    classes = _class_ids(labels, class_ids)
    files = _file_order(table)
    media = _media_ids(files, media_ids)
    lines = []
    if labels and files:
        t = table.assign(file=table["file"].astype(str), _order=table["file"].astype(str).map(
            {f: i for i, f in enumerate(files)}))
        t = t.sort_values(["_order", "start_s"], kind="mergesort")
        scores = t[labels].to_numpy(dtype=np.float64)  # [windows, labels]
        for f, start, end, row, top in zip(t["file"], t["start_s"], t["end_s"], scores, _top(scores, TOP_CLASSES)):
            prefix = f"{media[f]};{soundscape_timestamp(start, end)};"
            lines += [f"{prefix}{classes[c]};{row[c]:.6f}" for c in top]
    return _write_file(out, "".join(line + "\n" for line in lines), force)


FORMATS: dict[str, Callable[..., list[Path]]] = {
    "csv": write_csv,
    "detections-csv": write_detections_csv,
    "json": write_json,
    "raven": write_raven,
    "audacity": write_audacity,
    "birdclef-monophone": write_birdclef_monophone,
    "birdclef-soundscape": write_birdclef_soundscape,
}
"""Output format name → its writer (signatures differ; :func:`write_output` calls them)."""

FOLDER_FORMATS = frozenset({"raven", "audacity"})
"""Formats whose ``out`` is a folder of one file per audio file."""

DETECTION_FORMATS = frozenset({"detections-csv", "json", "raven", "audacity"})
"""Formats written from thresholded (and optionally merged) detections."""


def describe_formats() -> str:
    """One line for ``--help`` naming every output format."""
    return ("csv: wide score table; detections-csv: one row per detection; json: detections per file; "
            "raven: folder of Raven selection tables; audacity: folder of Audacity label tracks; "
            "birdclef-monophone, birdclef-soundscape: BirdCLEF 2018 run files (top 100, no thresholds)")


def write_output(table: pd.DataFrame, labels: Iterable[str], out: PathLike, fmt: str, *, min_score: float = 0.0,
                 thresholds=None, include=None, exclude=None, merge_gap_s: float | None = None,
                 class_ids: Mapping[str, str] | None = None, media_ids: Mapping[str, str] | None = None,
                 sample_rate_hz: float | None = None, low_freq_hz: float | None = None,
                 high_freq_hz: float | None = None, force: bool = False) -> list[Path]:
    """Writes a score table in one of the :data:`FORMATS`.

    * ``csv``: the wide table, label columns restricted by include/exclude; thresholds and
      merging do not apply.
    * ``detections-csv``, ``json``, ``raven``, ``audacity``: :func:`select_detections` with
      ``min_score``/``thresholds``/``include``/``exclude``, then :func:`merge_detections`
      when ``merge_gap_s`` is not None.
    * ``birdclef-monophone``, ``birdclef-soundscape``: every score of the included labels is
      ranked; ``min_score``, ``thresholds`` and ``merge_gap_s`` are ignored.

    Args:
        table: Score table (``file``, ``start_s``, ``end_s``, label columns).
        labels: The label columns in model order.
        out: Output file, or folder for :data:`FOLDER_FORMATS`.
        fmt: A key of :data:`FORMATS`.
        min_score, thresholds, include, exclude: See :func:`select_detections`.
        merge_gap_s: None (no merging) or the largest gap in seconds that still merges.
        class_ids, media_ids: BirdCLEF ids (see :func:`write_birdclef_monophone`).
        sample_rate_hz, low_freq_hz, high_freq_hz: Raven frequency bounds (see
            :func:`write_raven`).
        force: Replace an existing output file / a predictions folder written earlier.

    Returns:
        The paths written.

    Raises:
        BirdnetError: an unknown format, invalid options or lists, or an existing output
            without ``force``.
    """
    if fmt not in FORMATS:
        raise BirdnetError(f"unknown output format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    labels = _check_table(table, labels)
    kept = restrict_labels(labels, include, exclude)
    if fmt == "csv":
        return write_csv(table, kept, out, force=force)
    if fmt == "birdclef-monophone":
        return write_birdclef_monophone(table, kept, out, class_ids=class_ids, media_ids=media_ids, force=force)
    if fmt == "birdclef-soundscape":
        return write_birdclef_soundscape(table, kept, out, class_ids=class_ids, media_ids=media_ids, force=force)
    dets = select_detections(table, labels, min_score=min_score, thresholds=thresholds, include=kept)
    if merge_gap_s is not None:
        dets = merge_detections(dets, merge_gap_s)
    files = _file_order(table)
    if fmt == "detections-csv":
        return write_detections_csv(dets, out, force=force)
    if fmt == "json":
        return write_json(dets, kept, files, out, force=force)
    if fmt == "raven":
        return write_raven(dets, files, out, sample_rate_hz=sample_rate_hz, low_freq_hz=low_freq_hz,
                           high_freq_hz=high_freq_hz, force=force)
    return write_audacity(dets, files, out, force=force)


def read_score_table(path: PathLike) -> tuple[pd.DataFrame, list[str]]:
    """Reads a score table written by the ``csv`` format (e.g. for ``birdnet-tf submit``).

    Returns:
        ``(table, labels)``: labels are the columns after ``file, start_s, end_s``.

    Raises:
        BirdnetError: the file is missing or unreadable or lacks the key columns.
    """
    p = Path(path)
    if not p.is_file():
        raise BirdnetError(f"{p}: score table not found" if not p.exists() else f"{p}: is a folder, not a CSV file")
    try:
        table = pd.read_csv(p, dtype={"file": str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise BirdnetError(f"{p}: cannot read score table: {e}") from None
    missing = [c for c in KEY_COLUMNS if c not in table.columns]
    if missing:
        raise BirdnetError(f"{p}: not a score table, lacks columns {', '.join(missing)} "
                           "(expected the csv output of birdnet-tf predict)")
    labels = [str(c) for c in table.columns if c not in KEY_COLUMNS]
    try:
        return table, _check_table(table, labels)
    except BirdnetError as e:
        raise BirdnetError(f"{p}: {e}") from None
