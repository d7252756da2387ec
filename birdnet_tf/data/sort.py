"""Sorting a dataset into ``train/`` and ``val/`` class folders (the 2018 baseline's first step).

``birdnet-tf sort SOURCE --out DIR`` reads any dataset :func:`~birdnet_tf.data.catalog.load_catalog`
reads — a BirdCLEF XML folder (one ``<Audio>`` XML file per recording), a
``metadata.csv`` folder or class folders — and writes::

    DIR/
      train/<label>/<file>        training files, one folder per class
      val/<label>/<file>          validation files
      metadata/<stem>.json        one per file: the baseline's keys ("sci-name", "species"
                                  = common name, "background", "filename", "classid") plus
                                  "common_name", "media_id", "split", "source" and, when
                                  known, date, time, latitude, longitude, elevation, recordist
      labels.csv                  label,class_id,common_name: the label set in label order
      metadata.csv                the sorted folder as a birdnet-tf dataset, with a ``split``
                                  column (train/val) that training honours (``split_by``
                                  ``auto``/``column``)
      sort.json                   the options and counts; written last (the "finished" marker)

The label is the scientific name (BirdCLEF: ``"Genus Species"``); its folder name is
the label with characters that are unsafe in file names replaced by ``_`` (the label
text itself is kept in ``metadata.csv`` and the JSON files).

The split, per class (deterministic for a given ``seed``, and independent of the
other classes and of the order of the source):

1. the class's files are sorted by key and shuffled with
   ``numpy.random.default_rng([seed, crc32(label)])``;
2. ``max_files`` keeps the first files of that order;
3. the first ``max(1, ⌈val_fraction × n⌉)`` files go to validation — what the
   baseline's ``index < max(1, 0.1 × n)`` does, without its float artefact that
   sends 4 of 30 files to validation — but never all of them: a class with a single
   file keeps it for training (the baseline would leave it no training file) and is
   listed in :attr:`SortResult.single_file`;
4. with ``oversample_to``, the training side is filled up to that many files by
   repeating its files in order, as ``<stem>_dupN<ext>`` (N = 1, 2, ...), recorded
   in ``metadata.csv``'s ``duplicate_of`` column. Validation is never oversampled.

Classes are selected first: ``classes`` (a whitelist of labels or class ids), then
classes with fewer than ``min_files`` files are dropped, then ``max_classes`` keeps
the classes with the most files (ties by label).

Nothing is overwritten: a non-empty ``out_dir`` is refused. Everything is written
into a hidden temporary folder beside ``out_dir`` that is renamed to ``out_dir``
only when complete, so an interrupted sort leaves no ``out_dir`` at all (and
``sort.json``, written last, marks a finished one). ``mode="move"`` validates and
writes everything else first and moves the audio last, journalling each move; if a
move fails (or the sort is interrupted), the files already moved are moved back
before the error is raised. Only if moving back fails too is the temporary folder
kept, and the error names it and its journal (``.moves.tsv``: destination, source).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from birdnet_tf.data.catalog import load_catalog
from birdnet_tf.data.labels import LabelSet, class_ids_from_catalog, write_labels_csv
from birdnet_tf.errors import BirdnetError
from birdnet_tf.fileio import atomic_path, write_json_atomic

__all__ = [
    "DEFAULT_SEED",
    "MARKER_NAME",
    "SORT_MODES",
    "SortResult",
    "read_class_list",
    "safe_folder_name",
    "sort_dataset",
]

SortMode = Literal["copy", "move", "symlink"]
SORT_MODES = ("copy", "move", "symlink")
"""How audio files get into the sorted folder."""

DEFAULT_SEED = 1337
"""The baseline's ``RANDOM_SEED``."""

MARKER_NAME = "sort.json"
"""Written last into a sorted folder: options and counts of the sort."""

JOURNAL_NAME = ".moves.tsv"
"""Journal of the moves of ``mode="move"`` (inside the temporary folder only)."""

#: metadata.csv columns, in order; other source columns follow
METADATA_COLUMNS = (
    "filename", "primary_label", "secondary_labels", "class_id", "common_name", "media_id", "recordist",
    "date", "time", "latitude", "longitude", "elevation", "split", "duplicate_of", "source_key",
)
_NOT_PASSED_THROUGH = frozenset({*METADATA_COLUMNS, "key", "path", "wav_path"})
_OPTIONAL_JSON = ("date", "time", "latitude", "longitude", "elevation", "recordist")
_UNSAFE_CHARS = frozenset('<>:"/\\|?*')
_RESERVED_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                             *(f"LPT{i}" for i in range(1, 10))})
_MAX_SHOWN = 5


@dataclass
class SortResult:
    """What :func:`sort_dataset` did.

    Attributes:
        out_dir: The sorted folder.
        mode: ``copy``, ``move`` or ``symlink``.
        labels: The classes sorted, in label order.
        catalog: The rows of ``out_dir/metadata.csv`` (``secondary_labels`` as
            lists), one per written audio file.
        n_train: Training files, duplicates included.
        n_val: Validation files.
        n_duplicates: Extra training files made by oversampling.
        dropped: ``{label: reason}`` of the classes left out by ``min_files`` or
            ``max_classes``.
        not_whitelisted: Classes of the source not in ``classes``.
        unknown_classes: Entries of ``classes`` that match no class (also warned
            about when the sort starts).
        single_file: Classes with one file, kept for training without a
            validation file.
        skipped: ``(where, reason)`` of the source recordings that could not be
            read (from the catalog).
        elapsed_s: Wall time in seconds.
    """

    out_dir: Path
    mode: str
    labels: tuple[str, ...]
    catalog: pd.DataFrame
    n_train: int
    n_val: int
    n_duplicates: int
    dropped: dict[str, str] = field(default_factory=dict)
    not_whitelisted: list[str] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)
    single_file: list[str] = field(default_factory=list)
    skipped: list[tuple[Any, str]] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        """A few human-readable lines: classes, files per side, what was left out and why."""
        dups = f" (incl. {self.n_duplicates} oversampling duplicates)" if self.n_duplicates else ""
        lines = [
            f"sorted {len(self.labels)} classes into {self.out_dir} ({self.mode}, {self.elapsed_s:.1f} s): "
            f"train {self.n_train} files{dups}, val {self.n_val} files"
        ]
        if self.dropped:
            shown = "; ".join(f"{label}: {why}" for label, why in list(self.dropped.items())[:_MAX_SHOWN])
            more = "; ..." if len(self.dropped) > _MAX_SHOWN else ""
            lines.append(f"dropped {len(self.dropped)} classes: {shown}{more}")
        if self.not_whitelisted:
            lines.append(f"{len(self.not_whitelisted)} classes of the source are not in the class list")
        if self.single_file:
            lines.append(f"{len(self.single_file)} classes have a single file, kept for training without a "
                         f"validation file: {_shown(self.single_file)}")
        if self.skipped:
            reasons = Counter(reason for _, reason in self.skipped)
            lines.append(f"skipped {len(self.skipped)} source recordings: "
                         + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()))
        else:
            lines.append("skipped 0 source recordings")
        return "\n".join(lines)


def _shown(items: list[str]) -> str:
    return ", ".join(items[:_MAX_SHOWN]) + (", ..." if len(items) > _MAX_SHOWN else "")


# --------------------------------------------------------------------------- helpers


def read_class_list(spec: str) -> list[str]:
    """Parses a class whitelist given as a file or a comma-separated list.

    Args:
        spec: Path of a UTF-8 text file with one class per line (blank lines
            and lines starting with ``#`` ignored), or, if no such file
            exists, a comma-separated list such as ``"Turdus plumbeus,amavit"``.

    Returns:
        The stripped, non-empty entries in order.

    Raises:
        BirdnetError: The file cannot be read, or the list is empty.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise BirdnetError(f"{path}: cannot read the class list: {exc}") from None
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        where = str(path)
    else:
        entries = [part.strip() for part in spec.split(",") if part.strip()]
        where = repr(spec)
    if not entries:
        raise BirdnetError(f"{where}: the class list is empty")
    return entries


def safe_folder_name(label: str) -> str:
    """A folder name for ``label`` that every common file system accepts.

    Characters ``<>:"/\\|?*`` and control characters become ``_``; trailing dots
    and spaces are dropped; ``.``, ``..``, the empty name and Windows device
    names (``CON``, ``NUL``, ...) get a ``_`` appended. Scientific names
    (``"Turdus plumbeus"``) come through unchanged.
    """
    name = "".join("_" if ch in _UNSAFE_CHARS or ord(ch) < 32 else ch for ch in label).rstrip(". ")
    if not name or name.split(".")[0].upper() in _RESERVED_NAMES:
        name += "_"
    return name


def _unique(name: str, taken: set[str], suffix: str = "") -> str:
    """``name`` (+ ``suffix``), or ``name_2``, ``name_3``, ... not yet in ``taken`` (compared case-folded)."""
    candidate, number = name, 1
    while (candidate + suffix).casefold() in taken:
        number += 1
        candidate = f"{name}_{number}"
    taken.add((candidate + suffix).casefold())
    return candidate


def _n_val(n: int, val_fraction: float) -> int:
    if n <= 1:
        return 0
    return min(max(1, math.ceil(val_fraction * n - 1e-9)), n - 1)


def _value(row: dict[str, Any], column: str) -> Any:
    value = row.get(column, pd.NA)
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return pd.NA
    text = str(value).strip()
    return text if text else pd.NA


def _json_value(value: Any) -> Any:
    return None if value is pd.NA else value


def _check_options(mode: str, val_fraction: float, min_files: int, max_files: int | None,
                   max_classes: int | None, oversample_to: int | None) -> None:
    if mode not in SORT_MODES:
        raise BirdnetError(f"sort mode must be one of {', '.join(SORT_MODES)}, got {mode!r}")
    if not 0.0 < val_fraction < 1.0:
        raise BirdnetError(f"the validation fraction must lie between 0 and 1 (exclusive), got {val_fraction}")
    if min_files < 1:
        raise BirdnetError(f"the minimum number of files per class must be at least 1, got {min_files}")
    for name, value in (("maximum number of files per class", max_files), ("maximum number of classes", max_classes),
                        ("oversampling target", oversample_to)):
        if value is not None and value < 1:
            raise BirdnetError(f"the {name} must be at least 1, got {value}")


def _check_out_dir(out: Path, source: Path) -> None:
    if out.is_symlink():
        raise BirdnetError(f"{out}: is a symbolic link; sort writes a new folder (choose another --out)")
    if out.exists():
        if not out.is_dir():
            raise BirdnetError(f"{out}: exists and is not a folder; sort writes a new folder (choose another --out)")
        if any(out.iterdir()):
            raise BirdnetError(f"{out}: already exists and is not empty; sort never overwrites "
                               f"(choose another --out, or remove the folder)")
    if out.resolve() == source.resolve():
        raise BirdnetError(f"{out}: is the source folder itself; choose another --out")


# --------------------------------------------------------------------------- planning


@dataclass
class _Item:
    """One audio file to write."""

    row: dict[str, Any]  # the source catalog row
    label: str
    split: str  # train | val
    rel: str  # path relative to out_dir (POSIX)
    source: Path  # file to copy / link / move
    duplicate_of: str | None = None  # rel of the original, for oversampling duplicates


def _select_classes(
    rows_of: dict[str, list[dict[str, Any]]],
    class_ids: dict[str, str],
    classes: Iterable[str] | None,
    min_files: int,
    max_classes: int | None,
) -> tuple[list[str], dict[str, str], list[str], list[str]]:
    """Returns (selected labels, dropped {label: reason}, not whitelisted, unknown whitelist entries)."""
    labels = sorted(rows_of)
    not_whitelisted: list[str] = []
    unknown: list[str] = []
    if classes is not None:
        wanted = [str(c).strip() for c in classes if str(c).strip()]
        by_name = {label: label for label in labels}
        by_name.update({class_id: label for label, class_id in class_ids.items() if class_id not in by_name})
        chosen = {by_name[w] for w in wanted if w in by_name}
        unknown = [w for w in wanted if w not in by_name]
        not_whitelisted = [label for label in labels if label not in chosen]
        labels = [label for label in labels if label in chosen]
        if not labels:
            raise BirdnetError(f"none of the {len(wanted)} classes of the class list is in the source "
                               f"(e.g. {_shown(wanted)}); classes are matched by label or class id")
    dropped: dict[str, str] = {}
    for label in labels:
        if len(rows_of[label]) < min_files:
            dropped[label] = f"{len(rows_of[label])} file(s), fewer than the minimum {min_files}"
    labels = [label for label in labels if label not in dropped]
    if max_classes is not None and len(labels) > max_classes:
        ranked = sorted(labels, key=lambda label: (-len(rows_of[label]), label))
        for label in ranked[max_classes:]:
            dropped[label] = f"{len(rows_of[label])} file(s), not among the {max_classes} classes with the most files"
        labels = sorted(ranked[:max_classes])
    if not labels:
        raise BirdnetError(f"no class is left to sort: {len(dropped)} classes dropped "
                           f"({_shown([f'{k}: {v}' for k, v in dropped.items()])})")
    return labels, dropped, not_whitelisted, unknown


def _plan(
    rows_of: dict[str, list[dict[str, Any]]],
    labels: list[str],
    val_fraction: float,
    seed: int,
    max_files: int | None,
    oversample_to: int | None,
) -> tuple[list[_Item], list[str]]:
    """Splits every selected class and names its output files; returns (items, single-file classes)."""
    items: list[_Item] = []
    single: list[str] = []
    folders: set[str] = set()
    stems: set[str] = set()
    for label in labels:
        folder = _unique(safe_folder_name(label), folders)
        rows = sorted(rows_of[label], key=lambda r: str(r["key"]))
        order = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))]).permutation(len(rows))
        chosen = sorted(order[:max_files].tolist())  # named in key order, so clashes resolve the same way
        n_val = _n_val(len(chosen), val_fraction)
        if len(chosen) == 1:
            single.append(label)
        in_val = set(order[:n_val].tolist())
        originals: list[_Item] = []
        for index in chosen:
            row = rows[index]
            split = "val" if index in in_val else "train"
            name = Path(str(row["key"])).name
            suffix = Path(name).suffix
            stem = _unique(name[: len(name) - len(suffix)] if suffix else name, stems)
            originals.append(_Item(row, label, split, f"{split}/{folder}/{stem}{suffix}", Path(row["path"])))
        items.extend(originals)
        train = [item for item in originals if item.split == "train"]
        if oversample_to is not None and train and len(train) < oversample_to:
            for j in range(oversample_to - len(train)):
                original = train[j % len(train)]
                rel = Path(original.rel)
                stem = _unique(f"{rel.stem}_dup{j // len(train) + 1}", stems)
                items.append(_Item(original.row, label, "train", f"train/{folder}/{stem}{rel.suffix}",
                                   original.source, duplicate_of=original.rel))
    return items, single


def _metadata_row(item: _Item, class_ids: dict[str, str], common_names: dict[str, str],
                  extra: list[str]) -> dict[str, Any]:
    row = item.row
    record: dict[str, Any] = {
        "filename": item.rel,
        "primary_label": item.label,
        "secondary_labels": list(row.get("secondary_labels") or []),
        "class_id": _value(row, "class_id"),
        "common_name": _value(row, "common_name"),
        "media_id": _value(row, "media_id"),
    }
    if record["class_id"] is pd.NA and item.label in class_ids:
        record["class_id"] = class_ids[item.label]
    if record["common_name"] is pd.NA and item.label in common_names:
        record["common_name"] = common_names[item.label]
    for column in ("recordist", "date", "time", "latitude", "longitude", "elevation"):
        record[column] = _value(row, column)
    record["split"] = item.split
    record["duplicate_of"] = item.duplicate_of if item.duplicate_of else pd.NA
    record["source_key"] = str(row["key"])
    for column in extra:
        record[column] = _value(row, column)
    return record


def _metadata_json(record: dict[str, Any]) -> dict[str, Any]:
    """The baseline's metadata JSON of one file (its keys first), plus what is known."""
    data: dict[str, Any] = {
        "sci-name": record["primary_label"],
        "species": _json_value(record["common_name"]),
        "background": list(record["secondary_labels"]),
        "filename": Path(record["filename"]).name,
        "classid": _json_value(record["class_id"]),
        "common_name": _json_value(record["common_name"]),
        "media_id": _json_value(record["media_id"]),
        "split": record["split"],
        "source": record["source_key"],
    }
    for column in _OPTIONAL_JSON:
        if record[column] is not pd.NA:
            data[column] = record[column]
    if record["duplicate_of"] is not pd.NA:
        data["duplicate_of"] = Path(record["duplicate_of"]).name
    return data


def _common_names(catalog: pd.DataFrame) -> dict[str, str]:
    """The most frequent common name of every label (ties: alphabetical), where the catalog has them."""
    if "common_name" not in catalog.columns:
        return {}
    counts: dict[str, Counter] = {}
    for label, name in zip(catalog["primary_label"].tolist(), catalog["common_name"].tolist()):
        name = _value({"n": name}, "n")
        if name is not pd.NA:
            counts.setdefault(str(label), Counter())[name] += 1
    return {label: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for label, c in counts.items()}


# --------------------------------------------------------------------------- writing


def _write_tables(tmp: Path, records: list[dict[str, Any]], labels: LabelSet, class_ids: dict[str, str],
                  common_names: dict[str, str], extra: list[str]) -> pd.DataFrame:
    (tmp / "metadata").mkdir()
    for record in records:
        write_json_atomic(tmp / "metadata" / f"{Path(record['filename']).stem}.json", _metadata_json(record))
    write_labels_csv(tmp / "labels.csv", labels, class_ids, common_names)
    table = pd.DataFrame.from_records(records, columns=[*METADATA_COLUMNS, *extra])
    out = table.copy()
    out["secondary_labels"] = [";".join(v) for v in out["secondary_labels"]]
    with atomic_path(tmp / "metadata.csv") as part:
        with open(part, "w", encoding="utf-8", newline="") as handle:
            out.to_csv(handle, index=False)
    return table


def _place(item: _Item, target: Path, mode: str) -> None:
    if mode == "symlink":
        os.symlink(os.path.abspath(item.source), target)
    else:
        shutil.copy2(item.source, target)


def _move(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError:  # another file system: copy, then remove the source
        shutil.move(str(source), str(target))


def _roll_back(tmp: Path, moved: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Moves files back to their sources; returns the (target, source) pairs that could not be."""
    failed = []
    for target, source in reversed(moved):
        try:
            if source.exists():
                raise FileExistsError(source)
            _move(target, source)
        except OSError:
            failed.append((target, source))
    return failed


def _check_movable(items: list[_Item]) -> None:
    """Before anything is moved: every source is a file in a writable folder, none listed twice."""
    seen: dict[str, str] = {}
    for item in items:
        if item.duplicate_of:
            continue
        if not item.source.is_file():
            raise BirdnetError(f"{item.source}: source file has disappeared; nothing was moved")
        if not os.access(item.source.parent, os.W_OK):
            raise BirdnetError(f"{item.source.parent}: folder is not writable, so its files cannot be moved "
                               f"(use --mode copy or symlink); nothing was moved")
        real = os.path.realpath(item.source)
        if real in seen:
            raise BirdnetError(f"{item.source}: the same file as {seen[real]}; cannot move one file twice "
                               f"(use --mode copy or symlink); nothing was moved")
        seen[real] = str(item.source)


def _finish(tmp: Path, out: Path) -> None:
    """Renames the complete temporary folder to ``out`` (which may exist only as an empty folder)."""
    if out.is_dir() and not out.is_symlink():
        try:
            out.rmdir()
        except OSError:
            raise BirdnetError(f"{out}: was created and filled while sorting; sort never overwrites "
                               f"(choose another --out)") from None
    try:
        os.rename(tmp, out)
    except OSError as exc:
        raise BirdnetError(f"{out}: cannot create the sorted folder: {exc}") from None


# --------------------------------------------------------------------------- the command


def sort_dataset(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    mode: SortMode = "copy",
    val_fraction: float = 0.1,
    seed: int = DEFAULT_SEED,
    classes: Iterable[str] | None = None,
    max_classes: int | None = None,
    min_files: int = 1,
    max_files: int | None = None,
    oversample_to: int | None = None,
    log: Callable[[str], Any] = print,
    progress: bool = True,
) -> SortResult:
    """Sorts a dataset into ``out_dir/train/<label>/`` and ``out_dir/val/<label>/`` (see the module docstring).

    Args:
        source: A BirdCLEF XML folder, or any folder :func:`load_catalog` reads.
        out_dir: The sorted folder to create; must not exist or be empty.
        mode: ``"copy"`` the audio, ``"move"`` it (the source loses the sorted
            files; moved back if the sort fails) or ``"symlink"`` to it
            (absolute links; the source must stay where it is).
        val_fraction: Share of each class's files that go to validation, in
            (0, 1); at least one file, never all.
        seed: Seed of the per-class shuffles; the same seed and options give
            the same split.
        classes: Whitelist of labels or class ids (None: all classes).
        max_classes: Keep at most this many classes, those with the most files.
        min_files: Drop classes with fewer files than this.
        max_files: Use at most this many files per class (chosen at random).
        oversample_to: Repeat training files of a class until it has this many.
        log: Receives progress messages (one line each).
        progress: Show a progress bar (on a terminal) while placing files.

    Returns:
        A :class:`SortResult`; ``result.summary()`` is a short report.

    Raises:
        BirdnetError: An invalid option; ``out_dir`` exists and is not an empty
            folder; the source cannot be read or holds no usable recordings (a
            :class:`~birdnet_tf.errors.CatalogError`); a label has two class
            ids; no class is left after selection; a file cannot be written,
            linked or moved (the partial output is removed; moved files are
            moved back).

    Warns:
        CatalogWarning: Once, summarising source recordings that were skipped.
        UserWarning: Entries of ``classes`` that match no class.
    """
    from tqdm.auto import tqdm

    t0 = time.monotonic()
    classes = None if classes is None else [str(c) for c in classes]
    _check_options(mode, val_fraction, min_files, max_files, max_classes, oversample_to)
    src, out = Path(source).expanduser(), Path(out_dir).expanduser()
    _check_out_dir(out, src)
    catalog = load_catalog(src)
    skipped = list(catalog.attrs.get("skipped", []))
    class_ids = class_ids_from_catalog(catalog) or {}
    common_names = _common_names(catalog)

    rows_of: dict[str, list[dict[str, Any]]] = {}
    for row in catalog.to_dict("records"):
        rows_of.setdefault(str(row["primary_label"]), []).append(row)
    labels, dropped, not_whitelisted, unknown = _select_classes(rows_of, class_ids, classes, min_files, max_classes)
    items, single = _plan(rows_of, labels, val_fraction, seed, max_files, oversample_to)
    if mode == "move":
        _check_movable(items)
    extra = [c for c in catalog.columns if c not in _NOT_PASSED_THROUGH]
    label_set = LabelSet(labels)
    kept_ids = {label: class_ids[label] for label in labels if label in class_ids}
    kept_names = {label: common_names[label] for label in labels if label in common_names}
    records = [_metadata_row(item, kept_ids, kept_names, extra) for item in items]
    if unknown:
        warnings.warn(f"{len(unknown)} of the {len(classes or [])} entries of the class list match no class "
                      f"(by label or class id): {_shown(unknown)}", stacklevel=2)
    n_dups = sum(item.duplicate_of is not None for item in items)
    log(f"sorting {len(items) - n_dups} recordings of {len(labels)} classes from {src} into {out} ({mode})")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.sort-{os.getpid()}-{secrets.token_hex(4)}.part"
    tmp.mkdir()
    moved: list[tuple[Path, Path]] = []
    keep_tmp = False
    try:
        for split in ("train", "val"):
            for folder in sorted({Path(item.rel).parts[1] for item in items}):
                (tmp / split / folder).mkdir(parents=True, exist_ok=True)
        table = _write_tables(tmp, records, label_set, kept_ids, kept_names, extra)
        bar = tqdm(total=len(items), desc="sort", unit="file", leave=True, disable=None if progress else True)
        try:
            originals = [item for item in items if item.duplicate_of is None]
            duplicates = [item for item in items if item.duplicate_of is not None]
            if mode == "move":
                with open(tmp / JOURNAL_NAME, "w", encoding="utf-8") as journal:
                    for item in originals:
                        target = tmp / item.rel
                        journal.write(f"{target}\t{item.source}\n")
                        journal.flush()
                        _move(item.source, target)
                        moved.append((target, item.source))
                        bar.update(1)
                for item in duplicates:  # copies of files already moved in
                    shutil.copy2(tmp / item.duplicate_of, tmp / item.rel)
                    bar.update(1)
                (tmp / JOURNAL_NAME).unlink()
            else:
                for item in [*originals, *duplicates]:
                    _place(item, tmp / item.rel, mode)
                    bar.update(1)
        finally:
            bar.close()
        result = SortResult(
            out_dir=out, mode=mode, labels=label_set.labels, catalog=table,
            n_train=sum(item.split == "train" for item in items), n_val=sum(item.split == "val" for item in items),
            n_duplicates=n_dups, dropped=dropped, not_whitelisted=not_whitelisted, unknown_classes=unknown,
            single_file=single, skipped=skipped,
        )
        write_json_atomic(tmp / MARKER_NAME, {
            "source": str(src.resolve()), "mode": mode, "val_fraction": val_fraction, "seed": seed,
            "classes": classes, "max_classes": max_classes,
            "min_files": min_files, "max_files": max_files, "oversample_to": oversample_to,
            "n_classes": len(labels), "n_train": result.n_train, "n_val": result.n_val,
            "n_duplicates": n_dups, "dropped": dropped, "single_file": single,
            "skipped": [[str(where), reason] for where, reason in skipped], "complete": True,
        })
        _finish(tmp, out)
    except BaseException as exc:
        failed = _roll_back(tmp, moved) if moved else []
        if failed:
            keep_tmp = True
            raise BirdnetError(
                f"{out}: sorting failed ({exc}) after moving {len(moved)} files, and {len(failed)} of them could "
                f"not be moved back (e.g. {failed[0][0]} to {failed[0][1]}); they are in {tmp}, whose journal "
                f"{tmp / JOURNAL_NAME} lists destination and source of every move"
            ) from exc
        restored = f"; the {len(moved)} files moved so far were moved back" if moved else ""
        if isinstance(exc, (OSError, BirdnetError)):
            raise BirdnetError(f"{out}: sorting failed, nothing was written{restored}: {exc}") from exc
        if moved and isinstance(exc, KeyboardInterrupt):
            log(f"interrupted{restored}")
        raise
    finally:
        if not keep_tmp and tmp.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    result.elapsed_s = time.monotonic() - t0
    return result
