"""Class lists and target matrices.

A :class:`LabelSet` fixes the order of the classes a model predicts; it is built
from the primary labels of a training catalog (background-only species are not
classes), saved next to every model as ``labels.txt`` and loaded back.

Where a dataset has class ids besides its labels (BirdCLEF's ``ClassId``, which
submissions use), ``labels.csv`` maps one to the other: columns
:data:`LABELS_CSV_COLUMNS`, one row per label in label order
(:func:`write_labels_csv`, :func:`load_class_ids`, :func:`class_ids_from_catalog`).

Targets are multi-hot: the primary species of a recording is 1.0 and background
species that are classes get ``background_weight``; background species outside
the label set stay in the catalog but are ignored here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from birdnet_tf.fileio import atomic_path
from birdnet_tf.data.catalog import CatalogWarning, parse_secondary_labels
from birdnet_tf.errors import CatalogError

__all__ = [
    "LABELS_CSV_COLUMNS",
    "LabelSet",
    "UnknownLabelError",
    "background_matrix",
    "class_ids_from_catalog",
    "encode_targets",
    "filter_known",
    "load_class_ids",
    "primary_indices",
    "write_labels_csv",
]

LABELS_CSV_COLUMNS = ("label", "class_id", "common_name")
"""Columns of ``labels.csv``: the label set with each label's class id and common name."""

_MAX_EXAMPLES = 5


class UnknownLabelError(CatalogError, KeyError):
    """A label is not in the label set (also a :class:`KeyError`)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class LabelSet:
    """An immutable, ordered list of class names.

    Args:
        labels: Class names in model-output order; each a non-empty string
            without line breaks or surrounding whitespace, none repeated.

    Raises:
        CatalogError: A label is empty, not a string, has a line break or
            surrounding whitespace, or is repeated; or there are no labels.

    Example:
        >>> labels = LabelSet(["Turdus plumbeus", "Amazona vittata"])
        >>> labels.index("Amazona vittata")
        1
    """

    __slots__ = ("_index", "_labels")

    _labels: tuple[str, ...]
    _index: dict[str, int]

    def __init__(self, labels: Iterable[str]) -> None:
        values = tuple(labels)
        if not values:
            raise CatalogError("a label set needs at least one class")
        index: dict[str, int] = {}
        for position, label in enumerate(values):
            if not isinstance(label, str) or not label or label != label.strip() or "\n" in label or "\r" in label:
                raise CatalogError(f"invalid class label {label!r} at position {position}")
            if label in index:
                raise CatalogError(f"class label {label!r} is repeated (positions {index[label]} and {position})")
            index[label] = position
        object.__setattr__(self, "_labels", values)
        object.__setattr__(self, "_index", index)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("LabelSet is immutable")

    @classmethod
    def from_catalog(cls, df: pd.DataFrame) -> LabelSet:
        """Builds the label set of a catalog: its sorted unique primary labels.

        Args:
            df: A catalog with a ``primary_label`` column.

        Raises:
            CatalogError: The catalog has no ``primary_label`` column or no
                non-missing primary labels.
        """
        if "primary_label" not in df.columns:
            raise CatalogError(f"catalog has no 'primary_label' column (columns: {', '.join(map(str, df.columns))})")
        labels = sorted({str(v).strip() for v in df["primary_label"].tolist() if not _is_missing(v)} - {""})
        if not labels:
            raise CatalogError("catalog has no primary labels")
        return cls(labels)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LabelSet:
        """Reads a label file written by :meth:`save` (one label per line, UTF-8).

        Blank lines and surrounding whitespace are ignored.

        Raises:
            CatalogError: The file is missing, not UTF-8, empty or repeats a label.
        """
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise CatalogError(f"{source}: label file does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"{source}: cannot read label file: {exc}") from None
        labels = [line.strip() for line in text.splitlines() if line.strip()]
        if not labels:
            raise CatalogError(f"{source}: label file is empty")
        try:
            return cls(labels)
        except CatalogError as exc:
            raise CatalogError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes one label per line (UTF-8, ``\\n``), atomically."""
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
                handle.write("".join(f"{label}\n" for label in self._labels))

    @property
    def labels(self) -> tuple[str, ...]:
        """The class names in order."""
        return self._labels

    def index(self, label: str) -> int:
        """Returns the position of ``label``.

        Raises:
            UnknownLabelError: ``label`` is not a class.
        """
        try:
            return self._index[label]
        except (KeyError, TypeError):
            raise UnknownLabelError(f"label {label!r} is not in the label set ({len(self)} classes)") from None

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str) and label in self._index

    def __len__(self) -> int:
        return len(self._labels)

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __getitem__(self, position: int) -> str:
        return self._labels[position]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelSet):
            return NotImplemented
        return self._labels == other._labels

    def __hash__(self) -> int:
        return hash(self._labels)

    def __repr__(self) -> str:
        shown = ", ".join(repr(label) for label in self._labels[:3])
        more = f", ... ({len(self)} classes)" if len(self) > 3 else ""
        return f"LabelSet([{shown}{more}])"


# --------------------------------------------------------------------------- helpers


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and value != value


def _keys(df: pd.DataFrame) -> list[str]:
    """Names for rows in messages: the ``key`` column, else the index."""
    if "key" in df.columns:
        return [str(k) for k in df["key"].tolist()]
    return [f"row {i}" for i in df.index.tolist()]


def _primary_list(df: pd.DataFrame) -> list[Any]:
    if "primary_label" not in df.columns:
        raise CatalogError(f"catalog has no 'primary_label' column (columns: {', '.join(map(str, df.columns))})")
    return [v if _is_missing(v) else str(v).strip() for v in df["primary_label"].tolist()]


def _unknown_rows(primaries: list[Any], labels: LabelSet) -> list[int]:
    return [i for i, label in enumerate(primaries) if label not in labels]


def _unknown_message(df: pd.DataFrame, primaries: list[Any], unknown: list[int], labels: LabelSet) -> str:
    keys = _keys(df)
    examples = ", ".join(f"{primaries[i]!s} ({keys[i]})" for i in unknown[:_MAX_EXAMPLES])
    more = ", ..." if len(unknown) > _MAX_EXAMPLES else ""
    distinct = sorted({str(primaries[i]) for i in unknown})
    return (
        f"{len(unknown)} of {len(primaries)} recordings have a primary label that is not in the "
        f"label set of {len(labels)} classes ({len(distinct)} distinct: {', '.join(distinct[:_MAX_EXAMPLES])}"
        f"{', ...' if len(distinct) > _MAX_EXAMPLES else ''}); e.g. {examples}{more}"
    )


def _check_known(df: pd.DataFrame, labels: LabelSet, primaries: list[Any]) -> None:
    unknown = _unknown_rows(primaries, labels)
    if unknown:
        raise UnknownLabelError(_unknown_message(df, primaries, unknown, labels))


# --------------------------------------------------------------------------- public functions


def primary_indices(df: pd.DataFrame, labels: LabelSet) -> np.ndarray:
    """Class index of every row's primary label.

    Args:
        df: A catalog.
        labels: The classes.

    Returns:
        ``int64 [n]``.

    Raises:
        UnknownLabelError: A primary label is not a class (names the label and
            the row's key, and how many rows are affected).
    """
    primaries = _primary_list(df)
    _check_known(df, labels, primaries)
    return np.asarray([labels.index(p) for p in primaries], dtype=np.int64)


def background_matrix(df: pd.DataFrame, labels: LabelSet) -> np.ndarray:
    """Which classes are background species of each row.

    Background species outside the label set are ignored, and the primary
    species is never marked as background.

    Args:
        df: A catalog; ``secondary_labels`` as lists or strings (absent = none).
        labels: The classes.

    Returns:
        ``bool [n, len(labels)]``.
    """
    primaries = _primary_list(df)
    matrix = np.zeros((len(df), len(labels)), dtype=bool)
    if "secondary_labels" not in df.columns:
        return matrix
    for row, (value, primary) in enumerate(zip(df["secondary_labels"].tolist(), primaries)):
        for name in parse_secondary_labels(value, primary=primary if isinstance(primary, str) else None):
            if name in labels:
                matrix[row, labels.index(name)] = True
    return matrix


def encode_targets(
    df: pd.DataFrame,
    labels: LabelSet,
    background_weight: float = 0.5,
    unknown: Literal["error", "skip"] = "error",
) -> np.ndarray:
    """Multi-hot training targets.

    Args:
        df: A catalog.
        labels: The classes.
        background_weight: Target of background species that are classes, in
            [0, 1]; it never lowers a primary's 1.0.
        unknown: What to do with a primary label that is not a class:
            ``"error"`` raises; ``"skip"`` leaves the primary out (the row then
            holds only its background species, or zeros). Use
            :func:`filter_known` to drop such rows beforehand.

    Returns:
        ``float32 [n, len(labels)]``.

    Raises:
        UnknownLabelError: With ``unknown="error"``, a primary label is not a
            class (names the label, the row's key and how many rows).
        ValueError: ``background_weight`` outside [0, 1] or ``unknown`` invalid.
    """
    if not 0.0 <= background_weight <= 1.0:
        raise ValueError(f"background_weight must lie in [0, 1], got {background_weight}")
    if unknown not in ("error", "skip"):
        raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
    primaries = _primary_list(df)
    if unknown == "error":
        _check_known(df, labels, primaries)
    targets = background_matrix(df, labels).astype(np.float32) * np.float32(background_weight)
    for row, primary in enumerate(primaries):
        if primary in labels:
            targets[row, labels.index(primary)] = 1.0
    return targets


def filter_known(
    df: pd.DataFrame,
    labels: LabelSet,
    on_unknown: Literal["error", "warn", "ignore"] = "warn",
) -> pd.DataFrame:
    """Drops rows whose primary label is not a class.

    Args:
        df: A catalog.
        labels: The classes.
        on_unknown: ``"warn"`` drops them with one :class:`CatalogWarning`
            (count and examples); ``"ignore"`` drops them silently; ``"error"``
            raises instead.

    Returns:
        A copy of the known rows (index kept).

    Raises:
        UnknownLabelError: With ``on_unknown="error"`` and unknown labels.
    """
    if on_unknown not in ("error", "warn", "ignore"):
        raise ValueError(f"on_unknown must be 'error', 'warn' or 'ignore', got {on_unknown!r}")
    primaries = _primary_list(df)
    unknown = _unknown_rows(primaries, labels)
    if unknown:
        message = _unknown_message(df, primaries, unknown, labels)
        if on_unknown == "error":
            raise UnknownLabelError(message)
        if on_unknown == "warn":
            warnings.warn(f"{message}; these rows are dropped", CatalogWarning, stacklevel=2)
    keep = np.ones(len(df), dtype=bool)
    keep[unknown] = False
    return df.loc[keep].copy()


# --------------------------------------------------------------------------- class ids


def class_ids_from_catalog(df: pd.DataFrame) -> dict[str, str] | None:
    """The class id of every label, from a catalog's ``class_id`` column.

    Args:
        df: A catalog with ``primary_label`` and maybe ``class_id``.

    Returns:
        ``{label: class_id}`` sorted by label, for the labels that have an id;
        None when there is no ``class_id`` column or it is empty throughout.

    Raises:
        CatalogError: A label has two different class ids (names both and a
            recording with each).
    """
    if "class_id" not in df.columns:
        return None
    keys = _keys(df)
    found: dict[str, tuple[str, str]] = {}  # label -> (class id, key of the first row with it)
    for row, (label, class_id) in enumerate(zip(_primary_list(df), df["class_id"].tolist())):
        if _is_missing(label) or _is_missing(class_id) or not str(class_id).strip():
            continue
        class_id = str(class_id).strip()
        first = found.setdefault(label, (class_id, keys[row]))
        if first[0] != class_id:
            raise CatalogError(
                f"label {label!r} has two class ids: {first[0]!r} ({first[1]}) and {class_id!r} ({keys[row]})"
            )
    return {label: found[label][0] for label in sorted(found)} or None


def write_labels_csv(
    path: str | os.PathLike[str],
    labels: LabelSet,
    class_ids: dict[str, str] | None = None,
    common_names: dict[str, str] | None = None,
) -> Path:
    """Writes ``labels.csv`` (columns :data:`LABELS_CSV_COLUMNS`, UTF-8), atomically.

    Args:
        path: The file to write.
        labels: The classes; one row each, in their order.
        class_ids: Class id per label; labels without one get an empty field.
        common_names: Common name per label; likewise.

    Returns:
        ``path``.
    """
    class_ids, common_names = class_ids or {}, common_names or {}
    table = pd.DataFrame(
        {
            "label": list(labels),
            "class_id": [class_ids.get(label, "") for label in labels],
            "common_name": [common_names.get(label, "") for label in labels],
        },
        columns=list(LABELS_CSV_COLUMNS),
    )
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            table.to_csv(handle, index=False)
    return Path(path)


def load_class_ids(path: str | os.PathLike[str]) -> dict[str, str]:
    """Reads the label → class id mapping of a ``labels.csv``.

    Args:
        path: A ``labels.csv`` (see :func:`write_labels_csv`), e.g. of a sorted
            dataset.

    Returns:
        ``{label: class_id}`` in the file's order, for the labels whose
        ``class_id`` is not empty.

    Raises:
        CatalogError: The file is missing or unreadable, lacks the ``label`` or
            ``class_id`` column, has an empty label, or repeats a label.
    """
    source = Path(path)
    if not source.is_file():
        raise CatalogError(f"{source}: labels file does not exist")
    try:
        table = pd.read_csv(source, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise CatalogError(f"{source}: the labels file is empty (expected columns 'label', 'class_id')") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise CatalogError(f"{source}: cannot be read as a UTF-8 CSV table: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    for column in ("label", "class_id"):
        if column not in table.columns:
            raise CatalogError(
                f"{source}: required column '{column}' is missing; "
                f"columns found: {', '.join(repr(c) for c in table.columns)}"
            )
    result: dict[str, str] = {}
    seen: set[str] = set()
    for line, (label, class_id) in enumerate(zip(table["label"], table["class_id"]), start=2):
        label, class_id = label.strip(), class_id.strip()
        if not label:
            raise CatalogError(f"{source}: line {line}: empty label")
        if label in seen:
            raise CatalogError(f"{source}: line {line}: label {label!r} is repeated")
        seen.add(label)
        if class_id:
            result[label] = class_id
    return result
