"""The catalog: one table describing every recording of a dataset.

A dataset folder is read in one of three layouts, detected automatically:

* **metadata.csv** — a folder holding ``metadata.csv`` with at least the columns
  ``filename`` (path of the audio file relative to the folder) and
  ``primary_label``; the optional columns ``secondary_labels``, ``recordist``,
  ``date``, ``time``, ``latitude``, ``longitude``, ``elevation`` and any others
  are kept.
* **class folders** — a folder with one subfolder per class, each holding audio
  files (``.wav .flac .ogg .oga .mp3 .opus``, any case; searched recursively);
  the label is the name of the subfolder. Other files are ignored.
* **BirdCLEF XML** — a folder without ``metadata.csv`` holding one ``*.xml`` file
  per recording with an ``<Audio>`` root (the BirdCLEF 2017/2018 training set;
  tags ``MediaId, FileName, ClassId, Date, Time, Latitude, Longitude,
  Elevation, Author, BackgroundSpecies, Genus, Species, VernacularNames``, ...),
  or a folder whose ``xml/`` subfolder is one; see :func:`load_birdclef_xml`.
  The label is the scientific name ``"Genus Species"``; the catalog also gets
  ``class_id`` (``ClassId``), ``common_name`` (the first of the comma separated
  ``VernacularNames``) and ``media_id`` (``MediaId``), and ``recordist`` is
  ``Author``.

Whatever the layout, :func:`load_catalog` returns a :class:`pandas.DataFrame` with one row
per recording:

=====================  ==========================================================
``key``                path relative to the dataset folder (POSIX, unique)
``path``               absolute path of the audio file
``primary_label``      the class (``str``)
``secondary_labels``   list of background species (``list[str]``, maybe empty)
``recordist``          ``str`` or ``pd.NA``
``date``, ``time``,    raw strings as entered, ``pd.NA`` where empty or ``?``
``latitude``, ...
``class_id``,          BirdCLEF XML only: ``ClassId``, the first
``common_name``,       ``VernacularNames`` entry, ``MediaId``, ``Locality``,
``media_id``, ...      ``Quality`` (strings, ``pd.NA`` where empty or ``?``)
other columns          passed through as strings, ``pd.NA`` where empty or ``?``
=====================  ==========================================================

Metadata values are not parsed here (that is a later stage); only empty values
and ``?`` become ``pd.NA``. Rows that cannot be used (empty label or filename,
missing audio file, repeated filename; for XML also a file that does not parse
or lacks ``Genus``/``Species``/``FileName``) are skipped with one summarising
:class:`CatalogWarning` and listed in ``df.attrs["skipped"]``.
"""

from __future__ import annotations

import ast
import os
import posixpath
import warnings
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from birdnet_tf.fileio import atomic_path, entry_problem
from birdnet_tf.errors import CatalogError

__all__ = [
    "AUDIO_SUFFIXES",
    "CATALOG_COLUMNS",
    "CatalogWarning",
    "METADATA_FILENAME",
    "is_birdclef_xml_dir",
    "load_birdclef_xml",
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


def _shown(name: str, limit: int = 60) -> str:
    """A file name cut to ``limit`` characters for a message."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _is_file(path: Path) -> bool:
    """``path.is_file()`` that answers False for any name the system refuses (too long, a link loop)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


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
        problem = entry_problem(filename)
        if problem is not None:
            skipped.append((_shown(filename), f"unsafe filename: {problem}"))
            continue
        key = _normalise_key(filename)
        if label is pd.NA:
            skipped.append((key, "empty primary_label"))
            continue
        if key in seen:
            skipped.append((key, "duplicate filename"))
            continue
        path = data_dir / key
        if check_files and not _is_file(path):
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
    skipped: list[tuple[Any, str]] = []
    for class_dir in class_dirs:
        seen_dirs: set[tuple[int, int]] = set()  # linked folders are followed, each real folder once
        for root, dirs, files in os.walk(class_dir, followlinks=True):
            try:
                st = os.stat(root)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:
                dirs[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
            for name in sorted(files):
                if _is_hidden(name) or Path(name).suffix.lower() not in AUDIO_SUFFIXES:
                    continue
                path = Path(root) / name
                if not _is_file(path):  # a broken link, a link loop, a FIFO
                    skipped.append((path.relative_to(data_dir).as_posix(), "not a readable file"))
                    continue
                key = path.relative_to(data_dir).as_posix()
                problem = entry_problem(key)  # e.g. a name that is no text: it could not be written to a table
                if problem:
                    skipped.append((key, problem))
                    continue
                records.append(
                    {"key": key, "path": os.path.abspath(path), "primary_label": class_dir.name, "secondary_labels": []}
                )
    if not records:
        raise CatalogError(
            f"{data_dir}: empty dataset: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) "
            f"in its {len(class_dirs)} class folders ({_examples([d.name for d in class_dirs])})"
        )
    _warn_skipped(data_dir, len(records) + len(skipped), skipped)
    catalog = _finish(pd.DataFrame.from_records(records), [])
    catalog.attrs["skipped"] = skipped
    catalog.attrs["source"] = str(data_dir)
    return catalog


XML_SUFFIX = ".xml"
"""Suffix (lower case) of the per-recording metadata files of a BirdCLEF XML dataset."""

XML_ROOT_TAG = "Audio"
"""Root element of a BirdCLEF recording's XML file."""

XML_AUDIO_FOLDERS = ("audio", "wav")
"""Sibling folders of an XML folder searched for the audio (BirdCLEF ships ``xml/`` beside ``wav/``)."""

XML_EXTRA_COLUMNS = ("class_id", "common_name", "media_id", "locality", "quality")
"""Columns a BirdCLEF XML catalog has beyond :data:`CATALOG_COLUMNS`, in order."""

_XML_SNIFF_FILES = 5
_XML_MISSING_VALUES = frozenset({"None"})  # besides MISSING_VALUES: what Python writers leave for "no value"
_XML_TAGS = {  # catalog column -> XML tag
    "recordist": "Author",
    "date": "Date",
    "time": "Time",
    "latitude": "Latitude",
    "longitude": "Longitude",
    "elevation": "Elevation",
    "class_id": "ClassId",
    "media_id": "MediaId",
    "locality": "Locality",
    "quality": "Quality",
}


def _xml_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() == XML_SUFFIX and not _is_hidden(p.name) and p.is_file()
    )


def _xml_root_tag(path: Path) -> str | None:
    """The tag of an XML file's root element, read without parsing the rest; None if unreadable."""
    try:
        for _, element in ElementTree.iterparse(path, events=("start",)):
            return element.tag
    except (ElementTree.ParseError, OSError, UnicodeDecodeError, ValueError):
        return None
    return None


def is_birdclef_xml_dir(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a BirdCLEF XML dataset.

    True when it is a folder without ``metadata.csv`` that holds ``*.xml`` files
    and one of the first few (by name) has an ``<Audio>`` root element.
    """
    folder = Path(folder)
    if not folder.is_dir() or (folder / METADATA_FILENAME).is_file():
        return False
    try:
        files = _xml_files(folder)
    except OSError:
        return False
    return any(_xml_root_tag(p) == XML_ROOT_TAG for p in files[:_XML_SNIFF_FILES])


def _read_xml_record(path: Path) -> dict[str, Any] | str:
    """The child elements of one ``<Audio>`` record as ``{tag (lower case): cleaned text}``, or why not."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        return f"XML does not parse ({exc})"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"XML cannot be read ({exc})"
    if root.tag != XML_ROOT_TAG:
        return f"XML root is <{root.tag}>, not <{XML_ROOT_TAG}>"
    fields: dict[str, Any] = {}
    for child in root:
        if isinstance(child.tag, str):
            value = _clean(child.text)
            if isinstance(value, str) and value in _XML_MISSING_VALUES:
                value = pd.NA
            fields.setdefault(child.tag.strip().lower(), value)
    return fields


def load_birdclef_xml(
    xml_dir: str | os.PathLike[str], audio_dir: str | os.PathLike[str] | None = None
) -> pd.DataFrame:
    """Reads a BirdCLEF XML dataset (one ``<Audio>`` XML file per recording) into a catalog.

    Each file's ``FileName`` is looked up in ``audio_dir`` when given, else next
    to the XML files, then in a sibling ``audio/`` or ``wav/`` folder (BirdCLEF
    ships ``xml/`` beside ``wav/``). The label is ``"Genus Species"`` (the
    scientific name); ``BackgroundSpecies`` is a comma-separated list (a missing
    or empty tag, as in the 2017 set, means none); ``Author`` becomes
    ``recordist``; missing or empty tags and the values ``?`` and ``None``
    become ``pd.NA``.

    Args:
        xml_dir: The folder of ``*.xml`` files (not searched recursively).
        audio_dir: Where the audio files are, if not in one of the default places.

    Returns:
        A catalog (see the module docstring) with the extra columns
        :data:`XML_EXTRA_COLUMNS`, one row per usable XML file in file-name
        order. ``key`` is ``FileName`` (relative to the folder it was found in),
        prefixed with ``audio/`` or ``wav/`` when found in a sibling folder.
        ``attrs["skipped"]`` lists ``(XML file name, reason)``.

    Raises:
        CatalogError: ``xml_dir`` (or ``audio_dir``) is not a folder, holds no
            ``*.xml`` files, or none of them is usable.

    Warns:
        CatalogWarning: Once, summarising the skipped XML files: files that do not
            parse or have another root than ``<Audio>``, lack ``Genus``,
            ``Species`` or ``FileName``, name an unsafe path (absolute or with
            ``..``), repeat another file's ``FileName``, or whose audio is missing.
    """
    folder = Path(xml_dir).expanduser()
    if not folder.is_dir():
        raise CatalogError(f"{folder}: XML folder does not exist or is not a folder")
    if audio_dir is not None:
        audio_root = Path(audio_dir).expanduser()
        if not audio_root.is_dir():
            raise CatalogError(f"{audio_root}: audio folder does not exist or is not a folder")
        places = [(audio_root, "")]
    else:
        places = [(folder, "")] + [(folder.parent / name, f"{name}/") for name in XML_AUDIO_FOLDERS]
        places = [(place, prefix) for place, prefix in places if place.is_dir()]
    files = _xml_files(folder)
    if not files:
        raise CatalogError(f"{folder}: no *{XML_SUFFIX} files (expected one BirdCLEF XML file per recording)")

    records: list[dict[str, Any]] = []
    skipped: list[tuple[Any, str]] = []
    seen: set[str] = set()
    for xml_path in files:
        fields = _read_xml_record(xml_path)
        if isinstance(fields, str):
            skipped.append((xml_path.name, fields if fields.startswith("XML root") else fields.split(" (")[0]))
            continue
        genus, species, filename = fields.get("genus", pd.NA), fields.get("species", pd.NA), fields.get("filename", pd.NA)
        if genus is pd.NA or species is pd.NA:
            skipped.append((xml_path.name, "no Genus/Species"))
            continue
        if filename is pd.NA:
            skipped.append((xml_path.name, "no FileName"))
            continue
        problem = entry_problem(filename)
        if problem is not None:
            skipped.append((xml_path.name, "unsafe FileName"))
            continue
        name = _normalise_key(filename)
        if name in seen:
            skipped.append((xml_path.name, "FileName repeated"))
            continue
        found = next(((place / name, prefix) for place, prefix in places if _is_file(place / name)), None)
        if found is None:
            skipped.append((xml_path.name, "audio file not found"))
            continue
        seen.add(name)
        label = " ".join(f"{genus} {species}".split())
        vernacular = fields.get("vernacularnames", pd.NA)
        record = {column: fields.get(tag.lower(), pd.NA) for column, tag in _XML_TAGS.items()}
        record.update(
            key=found[1] + name,
            path=os.path.abspath(found[0]),
            primary_label=label,
            secondary_labels=parse_secondary_labels(fields.get("backgroundspecies", pd.NA), primary=label),
            common_name=pd.NA if vernacular is pd.NA else _clean(vernacular.split(",")[0]),
        )
        records.append(record)
    _warn_skipped(folder, len(files), skipped)
    if not records:
        reasons = Counter(reason for _, reason in skipped)
        summary = ", ".join(f"{count} {reason}" for reason, count in reasons.items())
        raise CatalogError(f"{folder}: empty dataset: all {len(files)} XML files were skipped ({summary})")
    catalog = _finish(pd.DataFrame.from_records(records), list(XML_EXTRA_COLUMNS))
    catalog.attrs["skipped"] = skipped
    catalog.attrs["source"] = str(folder)
    return catalog


def load_catalog(data_dir: str | os.PathLike[str], *, check_files: bool = True) -> pd.DataFrame:
    """Reads a dataset folder into a catalog table.

    The layout is detected: a folder holding ``metadata.csv`` is read as a
    metadata table; a folder without one that holds BirdCLEF XML files (``*.xml``
    with an ``<Audio>`` root), or whose ``xml/`` subfolder does, is read with
    :func:`load_birdclef_xml` (audio next to the XML files or in a sibling
    ``audio/`` or ``wav/`` folder); any other folder as one subfolder per class.

    Args:
        data_dir: The dataset folder.
        check_files: Whether rows of ``metadata.csv`` whose audio file does not
            exist are skipped (the default). Class-folder and XML datasets only
            list files that exist.

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
    for xml_dir in (folder, folder / "xml"):
        if is_birdclef_xml_dir(xml_dir):
            return load_birdclef_xml(xml_dir)
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
