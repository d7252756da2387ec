"""From any dataset folder to a catalog of prepared WAV files.

A dataset folder (``metadata.csv`` or one folder per class, any audio format) is
decoded once into 16-bit mono WAV at the model's rate. The output is itself a
dataset folder (WAVs + ``metadata.csv`` + a marker), so ``birdnet-tf prepare DATA
--out DIR`` followed by ``birdnet-tf train --data DIR`` skips decoding; given a raw
folder, training prepares into a cache (``$BIRDNET_TF_CACHE`` or
``~/.cache/birdnet-tf``) and reuses it next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pandas as pd

from birdnet_tf.fileio import atomic_path
from birdnet_tf.data.audio import audio_duration_s
from birdnet_tf.data.catalog import load_catalog
from birdnet_tf.data.prepare import MARKER_NAME, output_path_for, prepare

#: columns that are regenerated for a prepared dataset and not copied as metadata
_DERIVED = ("key", "path", "wav_path", "duration_s")  # a "split" column (from birdnet-tf sort) is kept


def default_cache_root() -> Path:
    return Path(os.environ.get("BIRDNET_TF_CACHE") or Path.home() / ".cache" / "birdnet-tf")


def cache_dir_for(data_dir: str | os.PathLike, sample_rate_hz: int) -> Path:
    """A stable cache folder for one dataset folder at one sample rate."""
    src = Path(data_dir).resolve()
    digest = hashlib.sha1(str(src).encode("utf-8")).hexdigest()[:10]
    return default_cache_root() / "prepared" / f"{src.name}-{digest}-{sample_rate_hz}hz"


def prepared_rate(data_dir: str | os.PathLike) -> int | None:
    """The sample rate of a folder written by :func:`prepare_dataset`, else None."""
    marker = Path(data_dir) / MARKER_NAME
    if not marker.is_file() or not (Path(data_dir) / "metadata.csv").is_file():
        return None
    try:
        return int(json.loads(marker.read_text())["sample_rate_hz"])
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def prepare_dataset(data_dir: str | os.PathLike, out_dir: str | os.PathLike, sample_rate_hz: int,
                    workers: int = 2, progress: bool = True, log=print) -> pd.DataFrame:
    """Decodes every recording of ``data_dir`` into ``out_dir`` and writes its ``metadata.csv``.

    Resumable (finished files are kept), never touches the sources, and a file that
    fails is reported and left out; the rest go on.

    Returns:
        The catalog of prepared files: the source catalog's columns plus
        ``wav_path`` and ``duration_s``; ``attrs["failed"]`` lists (key, path, reason).
    """
    catalog = load_catalog(data_dir)
    out_dir = Path(out_dir)
    result = prepare(list(zip(catalog["key"], catalog["path"])), out_dir, sample_rate_hz,
                     workers=workers, progress=progress, source=str(Path(data_dir).resolve()))
    log(result.summary())
    if not result.done:
        from birdnet_tf.errors import BirdnetError

        raise BirdnetError(f"{data_dir}: none of its {len(catalog)} recordings could be decoded "
                           f"(reasons above and in {out_dir / 'prepare_report.json'})")
    ok = catalog["key"].isin(list(result.done))
    prepared = catalog[ok].copy()
    prepared["wav_path"] = [str(result.done[k][0]) for k in prepared["key"]]
    prepared["duration_s"] = [float(result.done[k][1]) for k in prepared["key"]]
    _write_metadata(prepared, out_dir)
    prepared.attrs["failed"] = list(result.failed)
    return prepared.reset_index(drop=True)


def _write_metadata(prepared: pd.DataFrame, out_dir: Path) -> None:
    meta = prepared.drop(columns=[c for c in _DERIVED if c in prepared.columns])
    meta.insert(0, "filename", [output_path_for(out_dir, k).relative_to(out_dir).as_posix()
                                for k in prepared["key"]])
    meta["secondary_labels"] = [";".join(v) for v in prepared["secondary_labels"]]
    meta["source"] = list(prepared["key"])
    meta["duration_s"] = [round(d, 3) for d in prepared["duration_s"]]
    with atomic_path(out_dir / "metadata.csv") as tmp:
        meta.to_csv(tmp, index=False)


def prepared_catalog(data_dir: str | os.PathLike, sample_rate_hz: int, cache_dir: str | os.PathLike | None = None,
                     workers: int = 2, progress: bool = True, log=None) -> pd.DataFrame:
    """Catalog of ``data_dir`` with ``wav_path`` and ``duration_s`` of prepared WAVs.

    Uses ``data_dir`` as is when it was prepared at ``sample_rate_hz``; otherwise
    prepares it into ``cache_dir`` (default :func:`cache_dir_for`).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if prepared_rate(data_dir) == sample_rate_hz:
        catalog = load_catalog(data_dir)
        catalog["wav_path"] = catalog["path"]
        catalog["duration_s"] = [audio_duration_s(p) for p in catalog["path"]]
        return catalog
    out = Path(cache_dir) if cache_dir else cache_dir_for(data_dir, sample_rate_hz)
    log(f"preparing {data_dir} at {sample_rate_hz} Hz into {out} (done once; later runs reuse it)")
    return prepare_dataset(data_dir, out, sample_rate_hz, workers=workers, progress=progress, log=log)
