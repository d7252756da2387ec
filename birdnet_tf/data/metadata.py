"""Recording metadata (date, time, place, elevation) parsed and encoded as model features.

The catalog (:mod:`birdnet_tf.data.catalog`) keeps ``date``, ``time``, ``latitude``,
``longitude`` and ``elevation`` as the raw strings people typed (``"7.30 am"``,
``"11:00 AST"``, ``"ca. 500 m"``, ``"2009-05-00"``) or ``pd.NA``. This module turns them
into a fixed-size float32 feature vector for a metadata network, following the OFAI
BirdCLEF 2018 system (Schlüter 2018): date and time as circular encodings, latitude,
longitude and elevation standardised, every group with a "missing" indicator.

Parsers (never raise; junk gives NaN):

* :func:`parse_date` -> ``(year, day_of_year)``
* :func:`parse_time` -> hours in ``[0, 24)``
* :func:`parse_coordinate` -> decimal degrees
* :func:`parse_elevation` -> metres

Encoding (:class:`MetadataEncoder`), per row, in the order of ``feature_names``:

* **date** — ``date_size`` features ``date_0 .. date_{k-1}`` and ``date_missing``.
  The day of year ``d`` (1 = Jan 1) becomes the angle ``theta = 2 pi (d - 1) / 365.25``;
  feature ``j`` is a von Mises bump centred at ``c_j = 2 pi j / k``:
  ``exp(kappa * (cos(theta - c_j) - 1))`` with ``kappa = (k / (2 pi))**2`` (bump width
  about one spacing), so values lie in ``(0, 1]``, the nearest centre gives 1, and
  Dec 31 and Jan 1 are encoded almost identically. ``k = 3`` is a smooth (nearly
  cosine) code equivalent to sine/cosine plus a constant; ``k = 12`` gives one bump
  per month. Unknown day of year (missing, unparseable, month ``00``) -> all ``k``
  features 0 and ``date_missing`` 1. The year is parsed but not encoded.
* **time** — the same with ``time_size`` bumps over 24 h
  (``theta = 2 pi hours / 24``), ``time_0 .. time_{k-1}`` and ``time_missing``.
* **latitude, longitude, elevation** — ``(x - mean) / std`` with mean and std of
  the parsed training values (std 1 where it is 0 or undefined), then ``<name>_missing``;
  a missing value gives 0 and indicator 1.

Intended use (not wired into training yet): fit on the *training* rows of a catalog,
save next to the run (``metadata_encoder.json``), and at evaluation / predict time
load it and transform the catalog rows of the files being scored::

    enc = MetadataEncoder(date_size=12, time_size=12).fit(train_df)
    enc.save(run_dir / METADATA_ENCODER_FILENAME)
    x_train = enc.transform(train_df)            # float32 [rows, enc.num_features]
    ...
    enc = MetadataEncoder.load(run_dir / METADATA_ENCODER_FILENAME)
    x = enc.transform(catalog_of_new_files)      # missing columns -> indicators 1

Gaussian noise and dropout on these features (OFAI's training augmentation) belong
to the metadata model, not here. :func:`describe` reports how well each field parsed.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from birdnet_tf.errors import BirdnetError
from birdnet_tf.fileio import write_json_atomic

__all__ = [
    "CIRCULAR_SIZES",
    "FIELDS",
    "METADATA_ENCODER_FILENAME",
    "MetadataEncoder",
    "circular_encoding",
    "describe",
    "parse_coordinate",
    "parse_date",
    "parse_elevation",
    "parse_time",
]

METADATA_ENCODER_FILENAME = "metadata_encoder.json"
"""Name of the fitted encoder's file in a run folder."""

FIELDS = ("date", "time", "latitude", "longitude", "elevation")
"""Catalog columns the encoder reads."""

CIRCULAR_SIZES = (3, 12)
"""Allowed sizes of the date and time encodings."""

DAYS_PER_YEAR = 365.25
_FORMAT_VERSION = 1
_MISSING_STRINGS = frozenset({"", "?", "??", "-", "--", "na", "n/a", "nan", "none", "null", "unknown", "<na>"})
_MAX_ELEVATION_M = 9000.0
_MIN_ELEVATION_M = -500.0
_FEET_TO_M = 0.3048
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_NAN = float("nan")


# --------------------------------------------------------------------------- helpers


def _text(value: Any) -> str | None:
    """Stripped lower-case text, or None for a missing value (NA, NaN, empty, ``?``, ...)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value).strip().lower()
    return None if text in _MISSING_STRINGS else text


def _is_missing(value: Any) -> bool:
    return _text(value) is None


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# --------------------------------------------------------------------------- parsers

_DATE_RE = re.compile(r"^(\d{4})(?:\s*[-/.\s]\s*(\d{1,2})(?:\s*[-/.\s]\s*(\d{1,2}))?)?(?:[ t].*)?$")
_DATE_DMY_RE = re.compile(r"^(\d{1,2})\s*[-/.]\s*(\d{1,2})\s*[-/.]\s*(\d{4})$")


def parse_date(s: Any) -> tuple[float, float]:
    """Parses a recording date.

    Accepted: ``YYYY-MM-DD`` with ``-``, ``/``, ``.`` or a space as separator, an
    optional trailing time (``2012-03-29 00:00:00``, ``2012-03-29T...``), ``YYYY-MM``,
    ``YYYY``, and ``DD.MM.YYYY`` / ``DD/MM/YYYY`` (day first). Day ``00`` (unknown day)
    means the 15th of the month; month ``00`` (or no month) leaves the day of year
    unknown but keeps the year.

    Args:
        s: The raw value (string, NA, ...).

    Returns:
        ``(year, day_of_year)`` as floats; day of year is 1-based (Jan 1 = 1,
        Dec 31 = 365 or 366). Either is NaN where unknown or invalid (month > 12,
        day past the month's end, year before 1800 or after 2200).
    """
    text = _text(s)
    if text is None:
        return _NAN, _NAN
    match = _DATE_RE.match(text)
    if match:
        year, month, day = match.group(1), match.group(2), match.group(3)
    else:
        match = _DATE_DMY_RE.match(text)
        if not match:
            return _NAN, _NAN
        day, month, year = match.group(1), match.group(2), match.group(3)
    y = int(year)
    if not 1800 <= y <= 2200:
        return _NAN, _NAN
    m = int(month) if month else 0
    d = int(day) if day else 0
    if m == 0:
        return float(y), _NAN
    if m > 12:
        return _NAN, _NAN
    days_in_month = _DAYS_IN_MONTH[m - 1] + (1 if m == 2 and _is_leap(y) else 0)
    if d == 0:
        d = 15
    elif d > days_in_month:
        return _NAN, _NAN
    doy = sum(_DAYS_IN_MONTH[: m - 1]) + (1 if m > 2 and _is_leap(y) else 0) + d
    return float(y), float(doy)


_CLOCK_RE = re.compile(
    r"^(\d{1,2})(?:\s*[:.h]\s*(\d{2})(?:\s*[:.]\s*(\d{2}))?)?\s*(a\.?\s?m\.?|p\.?\s?m\.?)?$"
)
_COMPACT_CLOCK_RE = re.compile(r"^(\d{2})(\d{2})\s*(a\.?\s?m\.?|p\.?\s?m\.?)?$")
_TZ_RE = re.compile(
    r"\s*\(?\b(?:(?:utc|gmt)\s*(?:[+-]\d{1,2}(?::?\d{2})?)?|[a-z]{2,4}t|z|local|hrs?|hours?|uhr)\)?\s*$"
)
_RANGE_RE = re.compile(r"\s*(?:-|–|—|\bto\b)\s*")
_WORD_TIMES = {"noon": 12.0, "midday": 12.0, "midnight": 0.0}


def _parse_clock(text: str, meridiem: str | None = None) -> float:
    """Hours of one clock reading (no range), or NaN."""
    text = text.strip()
    if text in _WORD_TIMES:
        return _WORD_TIMES[text]
    match = _CLOCK_RE.match(text) or _COMPACT_CLOCK_RE.match(text)
    if not match:
        return _NAN
    groups = match.groups()
    hour = int(groups[0])
    minute = int(groups[1]) if len(groups) > 2 and groups[1] else 0
    second = int(groups[2]) if len(groups) > 3 and groups[2] else 0
    suffix = groups[-1] or meridiem
    if minute >= 60 or second >= 60:
        return _NAN
    if suffix:
        if not 1 <= hour <= 12:
            return _NAN
        pm = suffix.startswith("p")
        hour = hour % 12 + (12 if pm else 0)
    elif hour > 24 or (hour == 24 and (minute or second)):
        return _NAN
    return (hour + minute / 60.0 + second / 3600.0) % 24.0


def parse_time(s: Any) -> float:
    """Parses a time of day.

    Accepted: ``9:30``, ``09:30:00``, ``9.30``, ``9h30``, ``0930``, ``05`` (whole hour),
    with an optional ``am``/``pm``/``a.m.``/``p.m.`` (``12 am`` = 0, ``12 pm`` = 12),
    ``noon``/``midday``/``midnight``, a trailing time-zone word (``AST``, ``UTC``,
    ``h``, ``hrs``; ignored, times are taken as local) and ranges ``7:00-8:00`` /
    ``7-8 am`` / ``7:00 to 8:00`` (the midpoint; a range over midnight wraps).

    Args:
        s: The raw value.

    Returns:
        Hours in ``[0, 24)`` (``24:00`` becomes 0), or NaN for a missing or
        unparseable value (``?``, ``am``, ``25:00``, ``9:75``, text).
    """
    text = _text(s)
    if text is None:
        return _NAN
    text = _TZ_RE.sub("", text).strip()
    parts = [p for p in _RANGE_RE.split(text) if p.strip()] if _RANGE_RE.search(text) else [text]
    if len(parts) == 1:
        return _parse_clock(parts[0])
    if len(parts) != 2:
        return _NAN
    meridiem_match = re.search(r"(a\.?\s?m\.?|p\.?\s?m\.?)$", parts[1])
    start = _parse_clock(parts[0], meridiem_match.group(1) if meridiem_match else None)
    end = _parse_clock(parts[1])
    if math.isnan(start) or math.isnan(end):
        return _NAN
    if end < start:
        end += 24.0
    return ((start + end) / 2.0) % 24.0


_DMS_RE = re.compile(
    r"^([nsew])?\s*([+-]?\d+(?:[.,]\d+)?)\s*(?:°|º|d|deg)?\s*"
    r"(?:(\d+(?:[.,]\d+)?)\s*(?:'|′|m|min)\s*)?"
    r"(?:(\d+(?:[.,]\d+)?)\s*(?:\"|″|''|s|sec)\s*)?([nsew])?$"
)


def parse_coordinate(s: Any, kind: str) -> float:
    """Parses a latitude or longitude.

    Accepted: decimal degrees (``18.1432``, ``-66.996``, ``18,1432``), optionally with
    a degree sign and a hemisphere letter before or after (``18.14 N``, ``W 66.99``;
    S and W negate), and degrees-minutes-seconds (``18°08'35"N``).

    Args:
        s: The raw value.
        kind: ``"latitude"`` or ``"longitude"`` (also ``"lat"`` / ``"lon"``).

    Returns:
        Decimal degrees, or NaN where missing, unparseable, out of range
        (``|lat| > 90``, ``|lon| > 180``) or with a hemisphere letter of the wrong kind.

    Raises:
        ValueError: ``kind`` is not one of the names above (a programming error).
    """
    kinds = {"latitude": "latitude", "lat": "latitude", "longitude": "longitude", "lon": "longitude"}
    if kind not in kinds:
        raise ValueError(f"kind must be 'latitude' or 'longitude', not {kind!r}")
    kind = kinds[kind]
    if isinstance(s, (int, float, np.integer, np.floating)) and not isinstance(s, bool):
        value = float(s)
    else:
        text = _text(s)
        if text is None:
            return _NAN
        match = _DMS_RE.match(text)
        if not match:
            return _NAN
        before, deg, minutes, seconds, after = match.groups()
        if before and after:
            return _NAN
        hemisphere = before or after
        try:
            degrees = float(deg.replace(",", "."))
            minute_v = float(minutes.replace(",", ".")) if minutes else 0.0
            second_v = float(seconds.replace(",", ".")) if seconds else 0.0
        except ValueError:
            return _NAN
        if minute_v >= 60 or second_v >= 60:
            return _NAN
        value = abs(degrees) + minute_v / 60.0 + second_v / 3600.0
        if degrees < 0 or deg.startswith("-"):
            value = -value
        if hemisphere:
            if (hemisphere in "ns") != (kind == "latitude") or value < 0:
                return _NAN
            if hemisphere in "sw":
                value = -value
    limit = 90.0 if kind == "latitude" else 180.0
    if not math.isfinite(value) or abs(value) > limit:
        return _NAN
    return value


_NUMBER = r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)"
_ELEVATION_RE = re.compile(
    r"^(?:c\.|ca\.?|circa|approx\.?|about|~|±|\+/-|<|>)?\s*"
    rf"(-)?{_NUMBER}(?:\s*(?:-|–|—|to)\s*{_NUMBER})?\s*"
    r"(m|m\.|masl|m\.?a\.?s\.?l\.?|meters?|metres?|ft|ft\.|feet|')?\s*(?:asl|a\.s\.l\.)?$"
)


def parse_elevation(s: Any) -> float:
    """Parses an elevation.

    Accepted: ``150``, ``150 m``, ``ca. 500 m``, ``~500m``, ``1,200 m`` (thousands
    separator), ``500-700`` / ``500 to 700 m`` (the midpoint), ``2000 ft`` / ``2000'``
    (converted, 1 ft = 0.3048 m), ``-5`` (below sea level), ``m asl`` suffixes.

    Args:
        s: The raw value.

    Returns:
        Metres, or NaN where missing, unparseable or outside [-500, 9000] m.
    """
    if isinstance(s, (int, float, np.integer, np.floating)) and not isinstance(s, bool):
        value = float(s)
    else:
        text = _text(s)
        if text is None:
            return _NAN
        match = _ELEVATION_RE.match(text)
        if not match:
            return _NAN
        sign, first, second, unit = match.groups()
        low = float(first.replace(",", ""))
        value = (low + float(second.replace(",", ""))) / 2.0 if second else low
        if sign:
            if second:
                return _NAN
            value = -value
        if unit and (unit.startswith("f") or unit == "'"):
            value *= _FEET_TO_M
    if not math.isfinite(value) or not _MIN_ELEVATION_M <= value <= _MAX_ELEVATION_M:
        return _NAN
    return value


def _parse_column(field: str, values: Any) -> np.ndarray:
    """Parsed float64 values of one field (day of year for ``date``), NaN where unknown."""
    parser = _FIELD_PARSERS[field]
    return np.array([parser(v) for v in values], dtype=np.float64)


_FIELD_PARSERS: dict[str, Callable[[Any], float]] = {
    "date": lambda v: parse_date(v)[1],
    "time": parse_time,
    "latitude": lambda v: parse_coordinate(v, "latitude"),
    "longitude": lambda v: parse_coordinate(v, "longitude"),
    "elevation": parse_elevation,
}


# --------------------------------------------------------------------------- encoding


def circular_encoding(angle_rad: np.ndarray, size: int) -> np.ndarray:
    """Encodes angles as ``size`` evenly spaced von Mises bumps.

    Args:
        angle_rad: Angles in radians, shape ``[n]``; NaN gives a row of zeros.
        size: Number of bumps ``k``; centres ``2 pi j / k``, concentration
            ``kappa = (k / (2 pi))**2``.

    Returns:
        float32 ``[n, size]`` with values in ``(0, 1]`` (0 for NaN rows).
    """
    angle = np.asarray(angle_rad, dtype=np.float64).reshape(-1, 1)
    centres = 2.0 * np.pi * np.arange(size, dtype=np.float64) / size
    kappa = (size / (2.0 * np.pi)) ** 2
    out = np.exp(kappa * (np.cos(angle - centres[None, :]) - 1.0))
    out[~np.isfinite(angle[:, 0])] = 0.0
    return out.astype(np.float32)


class MetadataEncoder:
    """Turns catalog metadata into a float32 feature matrix; statistics come from training rows.

    Args:
        date_size: Number of circular date features, 3 or 12.
        time_size: Number of circular time features, 3 or 12.
    """

    STANDARDISED = ("latitude", "longitude", "elevation")

    def __init__(self, date_size: int = 12, time_size: int = 12) -> None:
        for name, size in (("date_size", date_size), ("time_size", time_size)):
            if size not in CIRCULAR_SIZES:
                raise ValueError(f"{name} must be one of {CIRCULAR_SIZES}, not {size!r}")
        self.date_size = int(date_size)
        self.time_size = int(time_size)
        self.mean: dict[str, float] | None = None
        self.std: dict[str, float] | None = None
        self.n_fit: dict[str, int] | None = None

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns, in order."""
        names = [f"date_{j}" for j in range(self.date_size)] + ["date_missing"]
        names += [f"time_{j}" for j in range(self.time_size)] + ["time_missing"]
        for field in self.STANDARDISED:
            names += [field, f"{field}_missing"]
        return names

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @staticmethod
    def _column(df: pd.DataFrame, field: str) -> np.ndarray:
        if field in df.columns:
            return _parse_column(field, df[field].tolist())
        return np.full(len(df), np.nan)

    def fit(self, df: pd.DataFrame) -> MetadataEncoder:
        """Computes mean and std of latitude, longitude and elevation over the parsed values of ``df``.

        Args:
            df: Training catalog rows (columns may be missing; unparseable values are ignored).

        Returns:
            ``self``.
        """
        self.mean, self.std, self.n_fit = {}, {}, {}
        for field in self.STANDARDISED:
            values = self._column(df, field)
            values = values[np.isfinite(values)]
            mean = float(values.mean()) if values.size else 0.0
            std = float(values.std()) if values.size > 1 else 0.0
            self.mean[field] = mean
            self.std[field] = std if std > 1e-12 else 1.0
            self.n_fit[field] = int(values.size)
        return self

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encodes the rows of ``df``.

        Args:
            df: Catalog rows; absent columns count as missing for every row.

        Returns:
            float32 ``[len(df), num_features]``, columns as :attr:`feature_names`; always finite.

        Raises:
            RuntimeError: The encoder has not been fitted (or loaded).
        """
        if not self.fitted:
            raise RuntimeError("MetadataEncoder.transform called before fit() or load()")
        blocks = []
        doy = self._column(df, "date")
        blocks += [circular_encoding(2.0 * np.pi * (doy - 1.0) / DAYS_PER_YEAR, self.date_size), _missing(doy)]
        hours = self._column(df, "time")
        blocks += [circular_encoding(2.0 * np.pi * hours / 24.0, self.time_size), _missing(hours)]
        for field in self.STANDARDISED:
            values = self._column(df, field)
            scaled = (values - self.mean[field]) / self.std[field]
            blocks += [np.nan_to_num(scaled, nan=0.0).astype(np.float32)[:, None], _missing(values)]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def fit_transform(self, df: pd.DataFrame) -> np.ndarray:
        return self.fit(df).transform(df)

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        """The settings and training statistics as a JSON-serialisable dict."""
        if not self.fitted:
            raise RuntimeError("MetadataEncoder.to_json called before fit()")
        return {
            "format": "birdnet_tf.metadata_encoder",
            "version": _FORMAT_VERSION,
            "date_size": self.date_size,
            "time_size": self.time_size,
            "feature_names": self.feature_names,
            "mean": dict(self.mean),
            "std": dict(self.std),
            "n_fit": dict(self.n_fit or {}),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any] | str) -> MetadataEncoder:
        """Rebuilds an encoder from :meth:`to_json`'s dict (or its JSON text).

        Raises:
            ValueError: The object is not a valid encoder description.
        """
        if isinstance(obj, str):
            obj = json.loads(obj)
        if not isinstance(obj, dict) or obj.get("format") != "birdnet_tf.metadata_encoder":
            raise ValueError("not a birdnet_tf metadata encoder description")
        if obj.get("version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported metadata encoder version {obj.get('version')!r}")
        enc = cls(date_size=obj["date_size"], time_size=obj["time_size"])
        try:
            enc.mean = {f: float(obj["mean"][f]) for f in cls.STANDARDISED}
            enc.std = {f: float(obj["std"][f]) for f in cls.STANDARDISED}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"metadata encoder statistics incomplete: {exc}") from None
        if not all(math.isfinite(v) for v in enc.mean.values()) or not all(
            math.isfinite(v) and v > 0 for v in enc.std.values()
        ):
            raise ValueError("metadata encoder statistics are not finite positive numbers")
        enc.n_fit = {f: int(v) for f, v in (obj.get("n_fit") or {}).items()}
        if obj.get("feature_names") not in (None, enc.feature_names):
            raise ValueError("feature_names do not match date_size/time_size")
        return enc

    def save(self, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Writes :meth:`to_json` atomically to ``path`` (a file, or a run folder).

        Raises:
            BirdnetError: The file exists and ``force`` is false.
        """
        target = Path(path)
        if target.is_dir():
            target = target / METADATA_ENCODER_FILENAME
        if target.exists() and not force:
            raise BirdnetError(f"{target}: already exists (use force to overwrite)")
        return write_json_atomic(target, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MetadataEncoder:
        """Reads an encoder written by :meth:`save` (``path``: the file or its run folder).

        Raises:
            BirdnetError: The file is missing, not JSON, or not a valid encoder.
        """
        target = Path(path)
        if target.is_dir():
            target = target / METADATA_ENCODER_FILENAME
        try:
            text = target.read_text(encoding="utf-8")
        except OSError as exc:
            raise BirdnetError(f"{target}: cannot read metadata encoder ({exc.strerror or exc})") from None
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise BirdnetError(f"{target}: invalid metadata encoder ({exc})") from None

    def __repr__(self) -> str:
        return f"MetadataEncoder(date_size={self.date_size}, time_size={self.time_size}, fitted={self.fitted})"


def _missing(values: np.ndarray) -> np.ndarray:
    return (~np.isfinite(values)).astype(np.float32)[:, None]


# --------------------------------------------------------------------------- report


def describe(df: pd.DataFrame, examples: int = 3) -> str:
    """Summarises how the metadata fields of ``df`` parse.

    For each of :data:`FIELDS`: how many values parsed, were missing (absent column,
    NA, empty, ``?``, ``unknown``, ...) or were present but unparseable, with up to
    ``examples`` distinct unparseable values. For ``date`` "parsed" means a day of
    year was found (``2012-00-00`` counts as unparseable for encoding).

    Returns:
        A multi-line text, one line per field, e.g.
        ``time       parsed 189  missing 18  unparseable 0``.
    """
    lines = [f"metadata of {len(df)} rows:"]
    for field in FIELDS:
        raw = df[field].tolist() if field in df.columns else [None] * len(df)
        parsed = _parse_column(field, raw)
        missing = np.array([_is_missing(v) for v in raw], dtype=bool)
        ok = np.isfinite(parsed)
        bad = ~ok & ~missing
        line = f"{field:<10} parsed {int(ok.sum())}  missing {int(missing.sum())}  unparseable {int(bad.sum())}"
        if bad.any():
            seen: list[str] = []
            for value, is_bad in zip(raw, bad):
                if is_bad and str(value) not in seen:
                    seen.append(str(value))
                    if len(seen) == examples:
                        break
            line += "  e.g. " + ", ".join(repr(v) for v in seen)
        lines.append(line)
    return "\n".join(lines)
