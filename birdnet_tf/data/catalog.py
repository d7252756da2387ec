"""The catalog: one table describing every recording of a dataset.

A dataset folder is read in one of two layouts, detected automatically:

* **metadata.csv** — a folder holding ``metadata.csv`` with at least the columns
  ``filename`` (path of the audio file relative to the folder) and
  ``primary_label``; the optional columns ``secondary_labels``, ``recordist``,
  ``date``, ``time``, ``latitude``, ``longitude``, ``elevation`` and any others
  are kept.
* **class folders** — a folder with one subfolder per class, each holding audio
  files (``.wav .flac .ogg .oga .mp3 .opus``, any case; searched recursively);
  the label is the name of the subfolder. Other files are ignored.

Either way :func:`load_catalog` returns a :class:`pandas.DataFrame` with one row
per recording:

=====================  ==========================================================
``key``                path relative to the dataset folder (POSIX, unique)
``path``               absolute path of the audio file
``primary_label``      the class (``str``)
``secondary_labels``   list of background species (``list[str]``, maybe empty)
``recordist``          ``str`` or ``pd.NA``
``date``, ``time``,    raw strings as entered, ``pd.NA`` where empty or ``?``
``latitude``, ...
other columns          passed through as strings, ``pd.NA`` where empty or ``?``
=====================  ==========================================================

Metadata values are not parsed here (that is a later stage); only empty values
and ``?`` become ``pd.NA``. Rows that cannot be used (empty label or filename,
missing audio file, repeated filename) are skipped with one summarising
:class:`CatalogWarning` and listed in ``df.attrs["skipped"]``.
"""

from __future__ import annotations

import ast
import os
import posixpath
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from birdnet_tf.fileio import atomic_path
from birdnet_tf.errors import CatalogError

__all__ = [
    "AUDIO_SUFFIXES",
    "CATALOG_COLUMNS",
    "CatalogWarning",
    "METADATA_FILENAME",
    "load_catalog",
    "parse_secondary_labels",
    "read_catalog",
    "save_catalog",
]

METADATA_FILENAME = "metadata.csv"
"""Name of the metadata table that marks a metadata.csv dataset."""

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus"})
"""Suffixes (lower case) of the files taken as audio in a class-folder dataset."""

REQUIRED_METADATA_COLUMNS = ("filename", "primary_label")
"""Columns metadata.csv must have."""

OPTIONAL_METADATA_COLUMNS = ("secondary_labels", "recordist", "date", "time", "latitude", "longitude", "elevation")
"""Columns every catalog has, filled with ``pd.NA`` (or empty lists) when absent."""

CATALOG_COLUMNS = ("key", "path", "primary_label", *OPTIONAL_METADATA_COLUMNS)
"""Leading columns of every catalog, in order; other metadata columns follow."""

MISSING_VALUES = frozenset({"", "?"})
"""Raw values (after stripping whitespace) that mean "unknown"."""

_MAX_EXAMPLES = 5
_SECONDARY_SEPARATOR = ";"


class CatalogWarning(UserWarning):
    """Some rows of a dataset were skipped or are suspicious."""


# --------------------------------------------------------------------------- parsing helpers


def _clean(value: Any) -> Any:
    """Returns a stripped string, or ``pd.NA`` for missing / empty / ``?`` values."""
    if value is None or value is pd.NA:
        return pd.NA
    if isinstance(value, float) and value != value:  # NaN
        return pd.NA
    text = str(value).strip()
    return pd.NA if text in MISSING_VALUES else text


def parse_secondary_labels(value: Any, primary: str | None = None) -> list[str]:
    """Parses a background-species field into a clean list.

    Accepted forms: ``"A b;C d"`` (xeno-canto / our CSV), ``"A b, C d"``
    (BirdCLEF XML), ``"['A b', 'C d']"`` (Kaggle BirdCLEF, a Python or JSON list
    literal), an actual list or tuple, and empty / ``?`` / ``[]`` / NA for none.

    Args:
        value: The raw field.
        primary: The recording's primary label; removed from the result if it
            is repeated there.

    Returns:
        Stripped, de-duplicated species names in their original order; never
        contains empty strings, ``?`` or ``primary``.
    """
    primary = primary if isinstance(primary, str) else None
    items: Iterable[Any]
    if isinstance(value, (list, tuple)):
        items = value
    else:
        text = _clean(value)
        if text is pd.NA:
            return []
        if text.startswith("[") or text.endswith("]"):
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                parsed = None
            if isinstance(parsed, (list, tuple)):
                items = parsed
            else:  # malformed list literal: strip brackets and quotes by hand
                items = [part.strip().strip("'\"") for part in text.strip("[]").split(",")]
        elif _SECONDARY_SEPARATOR in text:
            items = text.split(_SECONDARY_SEPARATOR)
        else:
            items = text.split(",")
    result: list[str] = []
    for item in items:
        name = _clean(item)
        if name is pd.NA or name == primary or name in result:
            continue
        result.append(name)
    return result


def _normalise_key(filename: str) -> str:
    """Normalises a relative filename to a POSIX key (``./a\\b.wav`` → ``a/b.wav``)."""
    return posixpath.normpath(filename.replace("\\", "/"))


def _examples(items: list[Any]) -> str:
    shown = ", ".join(str(item) for item in items[:_MAX_EXAMPLES])
    return shown + (", ..." if len(items) > _MAX_EXAMPLES else "")


def _warn_skipped(source: Path, total: int, skipped: list[tuple[Any, str]]) -> None:
    """Emits one warning summarising all skipped rows, grouped by reason."""
    if not skipped:
        return
    by_reason: dict[str, list[Any]] = {}
    for where, reason in skipped:
        by_reason.setdefault(reason, []).append(where)
    parts = [f"{len(where)} {reason} ({_examples(where)})" for reason, where in by_reason.items()]
    warnings.warn(
        f"{source}: skipped {len(skipped)} of {total} recordings: " + "; ".join(parts),
        CatalogWarning,
        stacklevel=3,
    )


def _finish(rows: pd.DataFrame, extra_columns: list[str]) -> pd.DataFrame:
    """Puts the catalog columns in order with their final dtypes."""
    columns = list(CATALOG_COLUMNS) + [c for c in extra_columns if c not in CATALOG_COLUMNS]
    out = pd.DataFrame(index=pd.RangeIndex(len(rows)))
    for column in columns:
        if column == "secondary_labels":
            values = rows[column].tolist() if column in rows else [[] for _ in range(len(rows))]
            out[column] = pd.Series(values, index=out.index, dtype=object)
        elif column in rows:
            out[column] = pd.array(rows[column].tolist(), dtype="string")
        else:
            out[column] = pd.array([pd.NA] * len(rows), dtype="string")
    return out


# --------------------------------------------------------------------------- layouts


def _load_metadata_csv(data_dir: Path, check_files: bool) -> pd.DataFrame:
    csv_path = data_dir / METADATA_FILENAME
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise CatalogError(
            f"{csv_path}: the file is empty (expected a header with columns 'filename', 'primary_label')"
        ) from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise CatalogError(f"{csv_path}: cannot be read as a UTF-8 CSV table: {exc}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    for column in REQUIRED_METADATA_COLUMNS:
        if column not in raw.columns:
            raise CatalogError(
                f"{csv_path}: required column '{column}' is missing; "
                f"columns found: {', '.join(repr(c) for c in raw.columns)}"
            )
    if len(raw) == 0:
        raise CatalogError(f"{csv_path}: empty dataset (the table has no rows)")

    extra = [c for c in raw.columns if c not in ("filename", "key", "path")]
    records: list[dict[str, Any]] = []
    skipped: list[tuple[Any, str]] = []
    seen: set[str] = set()
    for row_number, row in enumerate(raw.to_dict("records"), start=1):
        filename = _clean(row["filename"])
        label = _clean(row["primary_label"])
        if filename is pd.NA:
            skipped.append((row_number, "empty filename"))
            continue
        key = _normalise_key(filename)
        if label is pd.NA:
            skipped.append((key, "empty primary_label"))
            continue
        if key in seen:
            skipped.append((key, "duplicate filename"))
            continue
        path = Path(key) if Path(key).is_absolute() else data_dir / key
        if check_files and not path.is_file():
            skipped.append((key, "audio file not found"))
            continue
        seen.add(key)
        record = {c: _clean(row[c]) for c in extra}
        record.update(key=key, path=os.path.abspath(path), primary_label=label)
        record["secondary_labels"] = parse_secondary_labels(row.get("secondary_labels"), primary=label)
        records.append(record)
    _warn_skipped(csv_path, len(raw), skipped)
    if not records:
        reasons = Counter(reason for _, reason in skipped)
        summary = ", ".join(f"{count} {reason}" for reason, count in reasons.items())
        raise CatalogError(f"{csv_path}: empty dataset: all {len(raw)} rows were skipped ({summary})")
    catalog = _finish(pd.DataFrame.from_records(records), extra)
    catalog.attrs["skipped"] = skipped
    catalog.attrs["source"] = str(csv_path)
    return catalog


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _load_class_folders(data_dir: Path) -> pd.DataFrame:
    class_dirs = sorted(p for p in data_dir.iterdir() if p.is_dir() and not _is_hidden(p.name))
    if not class_dirs:
        raise CatalogError(
            f"{data_dir}: no {METADATA_FILENAME} and no class folders; expected either a "
            f"{METADATA_FILENAME} table or one subfolder per class holding audio files"
        )
    records: list[dict[str, Any]] = []
    for class_dir in class_dirs:
        for root, dirs, files in os.walk(class_dir, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
            for name in sorted(files):
                if _is_hidden(name) or Path(name).suffix.lower() not in AUDIO_SUFFIXES:
                    continue
                path = Path(root) / name
                key = path.relative_to(data_dir).as_posix()
                records.append(
                    {"key": key, "path": os.path.abspath(path), "primary_label": class_dir.name, "secondary_labels": []}
                )
    if not records:
        raise CatalogError(
            f"{data_dir}: empty dataset: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) "
            f"in its {len(class_dirs)} class folders ({_examples([d.name for d in class_dirs])})"
        )
    catalog = _finish(pd.DataFrame.from_records(records), [])
    catalog.attrs["skipped"] = []
    catalog.attrs["source"] = str(data_dir)
    return catalog


def load_catalog(data_dir: str | os.PathLike[str], *, check_files: bool = True) -> pd.DataFrame:
    """Reads a dataset folder into a catalog table.

    The layout is detected: a folder holding ``metadata.csv`` is read as a
    metadata table, any other folder as one subfolder per class.

    Args:
        data_dir: The dataset folder.
        check_files: Whether rows of ``metadata.csv`` whose audio file does not
            exist are skipped (the default). Class-folder datasets only list
            files that exist.

    Returns:
        One row per recording, columns :data:`CATALOG_COLUMNS` followed by the
        other metadata columns (see the module docstring). ``df.attrs["skipped"]``
        lists ``(key or 1-based row number, reason)`` for every skipped row, and
        ``df.attrs["source"]`` names the file or folder read.

    Raises:
        CatalogError: ``data_dir`` is missing or not a folder; ``metadata.csv``
            lacks a required column; the dataset holds no usable recordings; a
            class-folder dataset has no class folders.

    Warns:
        CatalogWarning: Once, summarising the rows that were skipped.
    """
    folder = Path(data_dir).expanduser()
    if not folder.exists():
        raise CatalogError(f"{folder}: dataset folder does not exist")
    if not folder.is_dir():
        raise CatalogError(
            f"{folder}: not a folder (expected a dataset folder holding {METADATA_FILENAME} or class folders)"
        )
    if (folder / METADATA_FILENAME).is_file():
        return _load_metadata_csv(folder, check_files)
    return _load_class_folders(folder)


# --------------------------------------------------------------------------- saving


def save_catalog(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Writes a catalog as UTF-8 CSV (atomically).

    ``secondary_labels`` lists are written as ``;``-joined strings and missing
    values as empty fields, so :func:`read_catalog` gives the table back.

    Args:
        df: A catalog, e.g. from :func:`load_catalog`.
        path: The CSV file to write; its folder must exist.
    """
    target = Path(path)
    out = df.copy()
    if "secondary_labels" in out:
        out["secondary_labels"] = [
            _SECONDARY_SEPARATOR.join(parse_secondary_labels(v)) for v in out["secondary_labels"].tolist()
        ]
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            out.to_csv(handle, index=False)


def read_catalog(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Reads a catalog written by :func:`save_catalog`.

    Args:
        path: The CSV file.

    Returns:
        The catalog with ``secondary_labels`` as lists and empty fields as
        ``pd.NA``; the files are not checked.

    Raises:
        CatalogError: The file is missing, unreadable or lacks ``key``,
            ``path`` or ``primary_label``.
    """
    source = Path(path)
    if not source.is_file():
        raise CatalogError(f"{source}: catalog file does not exist")
    try:
        raw = pd.read_csv(source, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise CatalogError(f"{source}: the catalog file is empty") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise CatalogError(f"{source}: cannot be read as a UTF-8 CSV table: {exc}") from None
    for column in ("key", "path", "primary_label"):
        if column not in raw.columns:
            raise CatalogError(
                f"{source}: required catalog column '{column}' is missing; "
                f"columns found: {', '.join(repr(c) for c in raw.columns)}"
            )
    rows = pd.DataFrame({c: [_clean(v) for v in raw[c].tolist()] for c in raw.columns if c != "secondary_labels"})
    secondary = raw["secondary_labels"].tolist() if "secondary_labels" in raw else [""] * len(raw)
    rows["secondary_labels"] = pd.Series(
        [parse_secondary_labels(v, primary=p) for v, p in zip(secondary, rows["primary_label"].tolist())],
        index=rows.index,
        dtype=object,
    )
    catalog = _finish(rows, [c for c in raw.columns])
    catalog.attrs["skipped"] = []
    catalog.attrs["source"] = str(source)
    return catalog
