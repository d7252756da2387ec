"""Training / validation splits of a catalog.

Two ways to split, chosen by ``by``:

``"recordist"`` (group split)
    Every recording of a recordist lands on the same side, so validation
    measures how a model does on recordists (microphones, places, individual
    birds) it has not heard — what the held-out test of a benchmark does.
    Rows without a recordist are each a group of their own. Recordist names are
    compared after collapsing whitespace and case.

    The algorithm (deterministic for a given ``seed``):

    1. ``T = val_fraction × n_files``. A group may move to validation only if
       afterwards every class still has at least one training file
       ("feasible"). A class is *coverable* if its files come from at least
       two groups (otherwise moving its only group would empty its training
       side).
    2. Each of ``restarts`` attempts shuffles the groups (sorted by name,
       then permuted with ``numpy.random.default_rng(seed)``) and walks them
       twice:

       a. *coverage*: add a feasible group that brings a coverable class not
          yet in validation, as long as validation stays within
          ``1.25 × T`` files;
       b. *fill*: add a feasible group if it brings the number of validation
          files closer to ``T``.
    3. The attempt with the most coverable classes in validation wins, ties
       going to the one closest to ``T``, then to the earliest attempt.

    Every class keeps a training file by construction; covering every
    coverable class in validation is best-effort.

``"class"`` (stratified split)
    Per class, ``max(1, int(round(val_fraction × n)))`` files go to
    validation, but never all of them (a class with a single file stays in
    training). Files are shuffled per class with a generator seeded from
    ``seed`` and the class name, after sorting by ``key``, so the split of a
    class does not depend on the row order or on the other classes.

``"column"`` (fixed split)
    The catalog's own ``split`` column decides: ``train`` or ``val`` (any case,
    surrounding whitespace ignored); any other value, or a missing one, is an
    error naming the rows. A sorted dataset (``birdnet-tf sort``) has one.
    ``val_fraction`` and ``seed`` are not used.

``"auto"``
    ``"column"`` when the catalog has a ``split`` column with at least one
    non-missing value; else ``"recordist"`` when it has a ``recordist`` column
    with at least two distinct non-missing names; else ``"class"``.
"""

from __future__ import annotations

import zlib
from typing import Any, Literal

import numpy as np
import pandas as pd

from birdnet_tf.errors import CatalogError

__all__ = ["assert_no_leak", "describe_split", "recordist_groups", "split_catalog"]

SplitBy = Literal["auto", "recordist", "class", "column"]

SPLIT_COLUMN = "split"
"""Column of a fixed split (``by="column"``), and of the parts :func:`split_catalog` returns."""

SPLIT_VALUES = ("train", "val")
"""The values (compared case-insensitively) a fixed split's column may hold."""

_COVERAGE_CAP = 1.25
"""During the coverage pass, validation may grow to this multiple of the target."""


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and value != value:
        return True
    return not str(value).strip() or str(value).strip() == "?"


def _recordist_key(value: Any) -> str | None:
    """Normalised recordist name (whitespace collapsed, case-folded), None if missing."""
    if _is_missing(value):
        return None
    return " ".join(str(value).split()).casefold()


def _resolve_by(df: pd.DataFrame, by: str) -> str:
    if by not in ("auto", "recordist", "class", "column"):
        raise ValueError(f"by must be 'auto', 'recordist', 'class' or 'column', got {by!r}")
    if by != "auto":
        return by
    if SPLIT_COLUMN in df.columns and not all(_is_missing(v) for v in df[SPLIT_COLUMN].tolist()):
        return "column"
    if "recordist" in df.columns:
        names = {k for k in map(_recordist_key, df["recordist"].tolist()) if k is not None}
        if len(names) >= 2:
            return "recordist"
    return "class"


def recordist_groups(recordists: list[Any]) -> np.ndarray:
    """Group index per row: named recordists (normalised names, sorted) first, then one group
    of its own per row without a recordist."""
    names = sorted({k for k in map(_recordist_key, recordists) if k is not None})
    group_of_name = {name: i for i, name in enumerate(names)}
    row_group = np.empty(len(recordists), dtype=np.int64)
    next_group = len(group_of_name)
    for row, value in enumerate(recordists):
        key = _recordist_key(value)
        if key is None:
            row_group[row] = next_group
            next_group += 1
        else:
            row_group[row] = group_of_name[key]
    return row_group


def _recordist_mask(
    recordists: list[Any], labels: list[str], val_fraction: float, seed: int, restarts: int
) -> np.ndarray:
    """Boolean validation mask of the group split (see the module docstring)."""
    n = len(labels)
    row_group = recordist_groups(recordists)
    n_groups = int(row_group.max()) + 1 if n else 0

    classes = sorted(set(labels))
    class_index = {c: i for i, c in enumerate(classes)}
    row_class = np.asarray([class_index[c] for c in labels], dtype=np.int64)
    counts = np.zeros((n_groups, len(classes)), dtype=np.int64)
    np.add.at(counts, (row_group, row_class), 1)
    total = counts.sum(axis=0)
    sizes = counts.sum(axis=1)
    coverable = (counts > 0).sum(axis=0) >= 2
    # sparse view per group: (class indices, counts) for quick feasibility checks
    group_classes = [np.flatnonzero(counts[g]) for g in range(n_groups)]
    group_counts = [counts[g, idx] for g, idx in enumerate(group_classes)]

    target = val_fraction * n
    cap = _COVERAGE_CAP * target
    rng = np.random.default_rng(seed)
    best_score: tuple[int, float] | None = None
    best_groups = np.zeros(n_groups, dtype=bool)

    def feasible(g: int, val_counts: np.ndarray) -> bool:
        idx = group_classes[g]
        return bool(np.all(total[idx] - val_counts[idx] - group_counts[g] >= 1))

    for _ in range(max(1, restarts)):
        order = rng.permutation(n_groups)
        in_val = np.zeros(n_groups, dtype=bool)
        val_counts = np.zeros(len(classes), dtype=np.int64)
        n_val = 0
        for g in order:  # coverage pass
            idx = group_classes[g]
            brings_new = bool(np.any(coverable[idx] & (val_counts[idx] == 0)))
            if brings_new and n_val + sizes[g] <= cap and feasible(g, val_counts):
                in_val[g] = True
                val_counts[idx] += group_counts[g]
                n_val += int(sizes[g])
        for g in order:  # fill pass
            if not in_val[g] and abs(n_val + sizes[g] - target) < abs(n_val - target) and feasible(g, val_counts):
                in_val[g] = True
                val_counts[group_classes[g]] += group_counts[g]
                n_val += int(sizes[g])
        score = (int(np.sum(coverable & (val_counts > 0))), -abs(n_val - target))
        if best_score is None or score > best_score:
            best_score, best_groups = score, in_val
    return best_groups[row_group]


def _class_mask(keys: list[str], labels: list[str], val_fraction: float, seed: int) -> np.ndarray:
    """Boolean validation mask of the stratified split (see the module docstring)."""
    mask = np.zeros(len(labels), dtype=bool)
    rows_of: dict[str, list[int]] = {}
    for row, label in enumerate(labels):
        rows_of.setdefault(label, []).append(row)
    for label, rows in rows_of.items():
        n = len(rows)
        n_val = min(max(1, int(round(val_fraction * n))), n - 1)
        if n_val <= 0:
            continue
        rows = sorted(rows, key=lambda r: keys[r])
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        chosen = rng.permutation(n)[:n_val]
        mask[[rows[i] for i in chosen]] = True
    return mask


def _column_mask(df: pd.DataFrame) -> np.ndarray:
    """Boolean validation mask of a fixed split (see the module docstring)."""
    if SPLIT_COLUMN not in df.columns:
        raise CatalogError(
            f"cannot split by column: the catalog has no '{SPLIT_COLUMN}' column "
            f"(columns: {', '.join(map(str, df.columns))}); use by='auto', 'recordist' or 'class'"
        )
    values = ["" if _is_missing(v) else str(v).strip().lower() for v in df[SPLIT_COLUMN].tolist()]
    bad = [row for row, value in enumerate(values) if value not in SPLIT_VALUES]
    if bad:
        names = [str(k) for k in df["key"].tolist()] if "key" in df.columns else [f"row {i}" for i in df.index]
        raw = df[SPLIT_COLUMN].tolist()
        examples = ", ".join(f"{names[r]} ({'missing' if _is_missing(raw[r]) else repr(str(raw[r]))})"
                             for r in bad[:5])
        raise CatalogError(
            f"the '{SPLIT_COLUMN}' column must be 'train' or 'val' in every row; {len(bad)} of {len(values)} "
            f"rows are not: {examples}{', ...' if len(bad) > 5 else ''}"
        )
    return np.asarray([value == "val" for value in values], dtype=bool)


def split_catalog(
    df: pd.DataFrame,
    val_fraction: float = 0.2,
    seed: int = 0,
    by: SplitBy = "auto",
    *,
    restarts: int = 200,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits a catalog into training and validation parts.

    Args:
        df: A catalog with ``primary_label`` (and ``key``, ``recordist`` where
            available).
        val_fraction: Wanted share of validation files, in (0, 1).
        seed: Seed of the shuffles; the same seed gives the same split.
        by: ``"recordist"``, ``"class"``, ``"column"`` or ``"auto"`` (see the
            module docstring).
        restarts: Attempts of the recordist split; more attempts find splits
            closer to the target at a linear cost in time.

    Returns:
        ``(train, val)``: copies of the rows, original index and order kept,
        with a ``split`` column (``"train"`` / ``"val"``) and
        ``attrs["split"] = {"by", "seed", "val_fraction"}``.

    Raises:
        CatalogError: The catalog is empty, lacks ``primary_label`` (or
            ``recordist`` for ``by="recordist"``, ``split`` for
            ``by="column"``), a fixed split has values other than train/val or
            no validation row, or no file can go to validation without leaving
            a class without training files.
        ValueError: ``val_fraction`` outside (0, 1) or an unknown ``by``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if "primary_label" not in df.columns:
        raise CatalogError(f"catalog has no 'primary_label' column (columns: {', '.join(map(str, df.columns))})")
    if len(df) == 0:
        raise CatalogError("cannot split an empty catalog")
    method = _resolve_by(df, by)
    labels = [str(v) for v in df["primary_label"].tolist()]
    if method == "column":
        mask = _column_mask(df)
    elif method == "recordist":
        if "recordist" not in df.columns:
            raise CatalogError("cannot split by recordist: the catalog has no 'recordist' column; use by='class'")
        mask = _recordist_mask(df["recordist"].tolist(), labels, val_fraction, seed, restarts)
    else:
        keys = [str(k) for k in df["key"].tolist()] if "key" in df.columns else [str(i) for i in df.index]
        mask = _class_mask(keys, labels, val_fraction, seed)
    if method == "column" and not mask.any():
        raise CatalogError(f"the '{SPLIT_COLUMN}' column marks none of the {len(df)} files as 'val'")
    if not mask.any():
        raise CatalogError(
            f"cannot make a validation set by {method}: every candidate would leave a class without "
            f"training files ({len(df)} files, {len(set(labels))} classes)"
            + ("; try by='class'" if method == "recordist" else "")
        )
    info = {"by": method, "seed": seed, "val_fraction": val_fraction}
    parts = []
    for name, rows in (("train", ~mask), ("val", mask)):
        part = df.loc[rows].copy()
        part["split"] = name
        part.attrs["split"] = dict(info)
        parts.append(part)
    return parts[0], parts[1]


def assert_no_leak(train: pd.DataFrame, val: pd.DataFrame, *, check_recordists: bool = True) -> None:
    """Asserts that no recording (and no recordist) is on both sides.

    Args:
        train: Training part.
        val: Validation part.
        check_recordists: Also require that no (non-missing) recordist has files
            on both sides; skipped when either part lacks a ``recordist`` column.

    Raises:
        AssertionError: Naming up to five shared keys, paths or recordists.
    """
    for column in ("key", "path"):
        if column in train.columns and column in val.columns:
            shared = sorted(set(map(str, train[column].tolist())) & set(map(str, val[column].tolist())))
            assert not shared, f"{len(shared)} {column}s on both sides: {shared[:5]}"
    if check_recordists and "recordist" in train.columns and "recordist" in val.columns:
        train_names = {k for k in map(_recordist_key, train["recordist"].tolist()) if k is not None}
        val_names = {k for k in map(_recordist_key, val["recordist"].tolist()) if k is not None}
        shared = sorted(train_names & val_names)
        assert not shared, f"{len(shared)} recordists on both sides: {shared[:5]}"


def describe_split(train: pd.DataFrame, val: pd.DataFrame) -> str:
    """A short human-readable summary of a split.

    Returns:
        Several lines: files, classes and recordists per side, and the classes
        without validation files.
    """
    n_total = len(train) + len(val)
    train_classes = set(map(str, train["primary_label"].tolist()))
    val_classes = set(map(str, val["primary_label"].tolist()))
    all_classes = train_classes | val_classes

    def recordists(part: pd.DataFrame) -> str:
        if "recordist" not in part.columns:
            return ""
        names = [_recordist_key(v) for v in part["recordist"].tolist()]
        named = len({k for k in names if k is not None})
        missing = sum(k is None for k in names)
        return f", {named} recordists" + (f" (+{missing} files without one)" if missing else "")

    share = len(val) / n_total if n_total else 0.0
    by = val.attrs.get("split", {}).get("by")
    lines = [
        f"split{f' by {by}' if by else ''}: {n_total} files, {len(all_classes)} classes",
        f"  train: {len(train)} files ({1 - share:.1%}), {len(train_classes)} classes{recordists(train)}",
        f"  val:   {len(val)} files ({share:.1%}), {len(val_classes)} of {len(all_classes)} classes{recordists(val)}",
    ]
    missing_val = sorted(all_classes - val_classes)
    if missing_val:
        lines.append(f"  classes without validation files: {', '.join(missing_val)}")
    missing_train = sorted(all_classes - train_classes)
    if missing_train:
        lines.append(f"  classes without training files: {', '.join(missing_train)}")
    return "\n".join(lines)
