"""Reading teacher tables: per-window scores of an external teacher, mapped onto a student's labels.

:func:`read_teacher_table` detects the format of a file (or a folder of files):

* **birdnet-tf window CSV** — ``file,start_s,end_s,<label>...``, what ``birdnet-tf predict
  --window-s`` writes (``--format csv``) and what ``birdnet-tf teacher birdnet`` writes (columns
  named ``Genus species_Common name``; a sidecar ``TABLE.json`` records its settings). Every
  cell is a score, so the table is complete; an empty cell is unknown.
* **BirdNET-Analyzer CSV** — ``Start (s),End (s),Scientific name,Common name,Confidence[,File]``
  (a UTF-8 byte-order mark allowed), one row per detection. Without ``File`` (older versions,
  one result file per recording) the recording is named after the result file:
  ``XC1192.BirdNET.results.csv`` → ``XC1192``.
* **Raven selection tables** — tab-separated, ``Begin Time (s)``, ``End Time (s)``,
  ``Common Name`` (or ``Species``), ``Species Code``, ``Confidence``, ``Begin Path`` (or
  ``Begin File``); BirdNET-Analyzer writes them as ``<stem>.BirdNET.selection.table.txt``.

A folder is read as all the result files in it (recursively) of one format.

Species map onto the student's labels by scientific name (case, spacing and underscores
ignored), else by common name (:class:`~birdnet_tf.distill.names.SpeciesMatcher`); names
that map onto no label are reported once, with how many rows they had.

**Thresholded tables.** A detection table written with a confidence threshold (BirdNET-
Analyzer's default ``--min_conf 0.25``) lacks the low scores. A long table is taken as
complete only when every window holds a row for every species the table names and its lowest
confidence is below :data:`COMPLETE_MAX_MIN_CONFIDENCE`; otherwise one log line says that it
looks thresholded, and cells without a row are unknown (``known=False``), not zero. Windows
that hold no row at all are absent from a thresholded table (nothing is known about them).

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from birdnet_tf.distill.names import SpeciesMatcher
from birdnet_tf.distill.table import TeacherTable
from birdnet_tf.errors import BirdnetError

__all__ = [
    "COMPLETE_MAX_MIN_CONFIDENCE",
    "FORMATS",
    "read_teacher_table",
    "result_file_stem",
]

FORMATS = ("birdnet-tf-csv", "birdnet-analyzer-csv", "raven")
"""Formats :func:`read_teacher_table` recognises."""

COMPLETE_MAX_MIN_CONFIDENCE = 0.01
"""A long table whose lowest confidence is at or above this is taken as thresholded (sigmoid
scores of absent species are far below it: BirdNET's typical score of a species it does not
hear is 1e-4 or less)."""

WIDE_KEYS = ("file", "start_s", "end_s")
ANALYZER_COLUMNS = ("Start (s)", "End (s)", "Scientific name", "Common name", "Confidence")
RAVEN_TIMES = ("Begin Time (s)", "End Time (s)")
_RESULT_SUFFIXES = re.compile(
    r"(\.BirdNET)?(\.results(\.r|\.kaleidoscope|\.audacity)?\.(csv|txt)|\.selection\.table\.txt|\.selections\.txt"
    r"|\.csv|\.txt|\.tsv)$", re.IGNORECASE)
_TABLE_SUFFIXES = (".csv", ".txt", ".tsv")


def result_file_stem(name: str) -> str:
    """The recording a per-file result table is about, from the table's file name:
    ``XC1192.BirdNET.results.csv`` → ``XC1192``, ``XC1192.BirdNET.selection.table.txt`` → ``XC1192``."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    return _RESULT_SUFFIXES.sub("", base) or base


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            return f.readline()
    except OSError as e:
        raise BirdnetError(f"{path}: cannot read teacher table: {e.strerror or e}") from None


def _parse(path: Path) -> tuple[str, pd.DataFrame]:
    """``(format, DataFrame of strings)`` of one table file."""
    first = _first_line(path)
    if not first.strip():
        raise BirdnetError(f"{path}: empty file, not a teacher table")
    sep = "\t" if first.count("\t") > first.count(",") else ","
    df = None
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=encoding)
            break
        except UnicodeDecodeError:
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as e:
            raise BirdnetError(f"{path}: cannot read teacher table: {str(e).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    cols = set(df.columns)
    if set(WIDE_KEYS) <= cols:
        return "birdnet-tf-csv", df
    if set(ANALYZER_COLUMNS) - {"Common name"} <= cols:
        return "birdnet-analyzer-csv", df
    if set(RAVEN_TIMES) <= cols and "Confidence" in cols and ({"Common Name", "Species", "Species Code"} & cols):
        return "raven", df
    shown = ", ".join(list(df.columns)[:8]) + (" ..." if len(df.columns) > 8 else "")
    raise BirdnetError(
        f"{path}: no recognised teacher-table columns (found: {shown}); expected birdnet-tf's "
        f"'{','.join(WIDE_KEYS)},<label>...', BirdNET-Analyzer's '{','.join(ANALYZER_COLUMNS)}[,File]' "
        f"or a Raven selection table with '{RAVEN_TIMES[0]}', '{RAVEN_TIMES[1]}', 'Common Name', 'Confidence'")


def _numbers(values: pd.Series, path: Path, column: str) -> np.ndarray:
    x = pd.to_numeric(values.str.strip(), errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BirdnetError(f"{path}: column '{column}' row {row + 2}: not a number: {values.iloc[row]!r}")
    return x


def _table_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _TABLE_SUFFIXES
                       and not p.name.startswith(".") and not p.name.endswith(".json"))
        if not found:
            raise BirdnetError(f"{path}: folder holds no teacher tables (*.csv, *.txt, *.tsv)")
        return found
    raise BirdnetError(f"{path}: teacher table not found")


def _long_rows(fmt: str, df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A long table's rows as ``file, start, end, sci, common, score``."""
    if fmt == "birdnet-analyzer-csv":
        start, end = _numbers(df["Start (s)"], path, "Start (s)"), _numbers(df["End (s)"], path, "End (s)")
        sci = df["Scientific name"]
        common = df["Common name"] if "Common name" in df.columns else pd.Series([""] * len(df))
        file_col = "File" if "File" in df.columns else None
    else:
        start = _numbers(df["Begin Time (s)"], path, "Begin Time (s)")
        end = _numbers(df["End Time (s)"], path, "End Time (s)")
        common = df["Common Name"] if "Common Name" in df.columns else (
            df["Species"] if "Species" in df.columns else pd.Series([""] * len(df)))
        sci = df["Species Code"] if "Species Code" in df.columns else pd.Series([""] * len(df))
        file_col = next((c for c in ("Begin Path", "Begin File") if c in df.columns), None)
    score = _numbers(df["Confidence"], path, "Confidence")
    files = (df[file_col].str.strip() if file_col else pd.Series([""] * len(df))).to_numpy(object)
    files = np.where(files == "", result_file_stem(path.name), files)
    return pd.DataFrame({"file": files, "start": start, "end": end, "sci": sci.to_numpy(object),
                         "common": common.to_numpy(object), "score": score, "fmt": fmt})


def _match_long(rows: pd.DataFrame, matcher: SpeciesMatcher) -> np.ndarray:
    """Label index per row (-1: unmapped), matching each distinct name pair once but counting rows."""
    keys = rows["sci"].astype(str) + "\x1f" + rows["common"].astype(str) + "\x1f" + rows["fmt"].astype(str)
    codes, uniques = pd.factorize(keys)
    counts = np.bincount(codes, minlength=len(uniques))
    found = np.empty(len(uniques), np.int64)
    for u, key in enumerate(uniques):
        sci, common, fmt = key.split("\x1f")
        if fmt == "raven":  # Raven: common name first; the species code may be the label itself
            i = matcher.match(None, common, count=0) if common.strip() else None
            if i is None:
                i = matcher.match(sci or None, common or None, count=int(counts[u]))
        else:
            i = matcher.match(sci, common, count=int(counts[u]))
        found[u] = -1 if i is None else i
    return found[codes]


def _from_long(rows: pd.DataFrame, labels: list[str], matcher: SpeciesMatcher, source: str,
               log: Callable[[str], None]) -> TeacherTable:
    label_idx = _match_long(rows, matcher)
    species = rows["sci"].astype(str) + "\x1f" + rows["common"].astype(str)
    n_species = species.nunique()
    windows = rows[["file", "start", "end"]].drop_duplicates().reset_index(drop=True)
    n_windows = len(windows)
    pairs = pd.DataFrame({"w": rows["file"].astype(str) + "\x1f" + rows["start"].astype(str) + "\x1f"
                          + rows["end"].astype(str), "s": species}).drop_duplicates()
    min_conf = float(rows["score"].min()) if len(rows) else 1.0
    complete = len(pairs) == n_windows * n_species and min_conf < COMPLETE_MAX_MIN_CONFIDENCE
    if not complete:
        log(f"{source}: looks thresholded (lowest confidence {min_conf:.3g}; {len(pairs)} of the "
            f"{n_windows * n_species} window-species cells present): cells without a row are treated as unknown, "
            "not as zero; write the table with a minimum confidence of 0 for a complete one")
    file_names = list(dict.fromkeys(windows["file"].tolist()))
    fidx = {f: i for i, f in enumerate(file_names)}
    windows = windows.assign(fi=windows["file"].map(fidx)).sort_values(["fi", "start", "end"], kind="stable")
    windows = windows.reset_index(drop=True)
    wkey = {k: w for w, k in enumerate(zip(windows["file"], windows["start"], windows["end"], strict=True))}
    w_of_row = np.fromiter((wkey[k] for k in zip(rows["file"], rows["start"], rows["end"], strict=True)),
                           np.int64, len(rows))
    scores = np.zeros((n_windows, len(labels)), np.float32)
    known = np.zeros((n_windows, len(labels)), bool)
    ok = label_idx >= 0
    np.maximum.at(scores, (w_of_row[ok], label_idx[ok]), rows["score"].to_numpy(np.float32)[ok])
    known[w_of_row[ok], label_idx[ok]] = True
    if complete:
        mapped = np.zeros(len(labels), bool)
        mapped[label_idx[ok]] = True
        known[:, mapped] = True
    return TeacherTable(labels=labels, files=file_names, file_index=windows["fi"].to_numpy(np.int64),
                        start_s=windows["start"].to_numpy(np.float64), end_s=windows["end"].to_numpy(np.float64),
                        scores=scores, known=known, complete=complete, source=source)


def _from_wide(frames: list[tuple[Path, pd.DataFrame]], labels: list[str], matcher: SpeciesMatcher, source: str,
               log: Callable[[str], None]) -> TeacherTable:
    parts = []
    for path, df in frames:
        cols = [c for c in df.columns if c not in WIDE_KEYS]
        idx = {c: matcher.match(c) for c in cols}
        part = pd.DataFrame({"file": df["file"].astype(str), "start": _numbers(df["start_s"], path, "start_s"),
                             "end": _numbers(df["end_s"], path, "end_s")})
        s = np.zeros((len(df), len(labels)), np.float32)
        k = np.zeros((len(df), len(labels)), bool)
        for c, i in idx.items():
            if i is None:
                continue
            raw = df[c].str.strip()
            blank = (raw == "").to_numpy()
            x = pd.to_numeric(raw.where(~(raw == ""), "nan"), errors="coerce").to_numpy(np.float64)
            bad = ~np.isfinite(x) & ~blank
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise BirdnetError(f"{path}: column '{c}' row {r + 2}: not a number: {df[c].iloc[r]!r}")
            s[:, i] = np.maximum(s[:, i], np.where(blank, 0.0, x).astype(np.float32))
            k[:, i] |= ~blank
        part_scores, part_known = s, k
        parts.append((part, part_scores, part_known))
    table = pd.concat([p for p, _, _ in parts], ignore_index=True)
    scores = np.concatenate([s for _, s, _ in parts])
    known = np.concatenate([k for _, _, k in parts])
    mapped = known.any(axis=0)
    complete = bool(known[:, mapped].all()) if len(known) else True
    if not complete:
        log(f"{source}: {int((~known[:, mapped]).sum())} empty cells: treated as unknown, not as zero")
    file_names = list(dict.fromkeys(table["file"].tolist()))
    fidx = table["file"].map({f: i for i, f in enumerate(file_names)}).to_numpy(np.int64)
    order = np.lexsort((table["end"].to_numpy(), table["start"].to_numpy(), fidx))
    return TeacherTable(labels=labels, files=file_names, file_index=fidx[order],
                        start_s=table["start"].to_numpy(np.float64)[order],
                        end_s=table["end"].to_numpy(np.float64)[order], scores=scores[order],
                        known=known[order], complete=complete, source=source)


def read_teacher_table(path: str | os.PathLike, student_labels: Sequence[str], log: Callable[[str], None] = print,
                       *, common_names: dict[str, str] | None = None) -> TeacherTable:
    """Reads a teacher table (file or folder; format detected) onto a student's labels.

    Args:
        path: A table file, or a folder of per-recording result files of one format.
        student_labels: The student's labels, in model order.
        log: Receives the one-line notes (unmapped species, thresholded table).
        common_names: Optional ``{student label: common name}`` for the common-name fallback.

    Returns:
        A :class:`~birdnet_tf.distill.table.TeacherTable` (windows sorted by file, then time).

    Raises:
        BirdnetError: The path is missing or unreadable; a file has no recognised columns or
            a non-numeric time or score; a folder mixes formats; no species of the table maps
            onto any of the student's labels.
    """
    path = Path(path)
    labels = list(student_labels)
    if not labels:
        raise BirdnetError("read_teacher_table: the student has no labels")
    files = _table_files(path)
    parsed = [(p, *_parse(p)) for p in files]
    formats = {fmt for _, fmt, _ in parsed}
    if len(formats) > 1:
        raise BirdnetError(f"{path}: mixes teacher-table formats ({', '.join(sorted(formats))}); "
                           "give one format per folder")
    fmt = formats.pop()
    source = f"{path} ({fmt}{f', {len(files)} files' if len(files) > 1 else ''})"
    matcher = SpeciesMatcher(labels, common_names)
    if fmt == "birdnet-tf-csv":
        table = _from_wide([(p, df) for p, _, df in parsed], labels, matcher, source, log)
        sidecar = Path(str(path) + ".json")
        if path.is_file() and sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            if meta.get("teacher"):
                table.source = f"{source}, {meta['teacher']}"
    else:
        rows = pd.concat([_long_rows(f, df, p) for p, f, df in parsed], ignore_index=True)
        table = _from_long(rows, labels, matcher, source, log)
    summary = matcher.unmapped_summary("columns" if fmt == "birdnet-tf-csv" else "rows")
    if not table.class_known.any():
        names = [n for n, _ in matcher.unmapped()][:5]
        raise BirdnetError(f"{path}: none of the table's species ({', '.join(names) or 'none'}"
                           f"{' ...' if len(matcher.unmapped()) > 5 else ''}) matches any of the student's "
                           f"{len(labels)} labels ({', '.join(labels[:5])}{' ...' if len(labels) > 5 else ''})")
    if summary:
        log(f"{path}: {summary}")
    return table
