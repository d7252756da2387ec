"""The chunk-folder format: what ``birdnet-tf extract`` writes and training reads.

``extract`` writes, for every recording of a dataset::

    OUT/extract_config.json            the ChunkConfig, seed and package version
    OUT/<split>/<label>/<stem>_<start_ms>_<score4>.png     chunks scoring >= signal_threshold
    OUT/noise/<stem>_<start_ms>_<score4>.png               about noise_fraction of the others
    OUT/chunks.csv                     one row per PNG: png (path relative to OUT), source_key,
                                       label, secondary_labels (";"-joined), split, start_s,
                                       score (0..1), kind (signal | noise)
    OUT/extract_report.json            counts and failures of the latest run
    OUT/.parts/<hash of key>.json      per-file done marker holding that file's rows

``<split>`` is the catalog's ``split`` column (lower case; ``all`` where there is
none), ``<label>`` the primary label with characters other than letters, digits,
space and ``._-+,()`` replaced by ``_`` (:func:`safe_name`), ``<stem>`` the audio
file's name without suffix (followed by ``-`` and 8 hex digits of the key's SHA-1 when
two recordings share a stem), ``<start_ms>`` the chunk's start in whole milliseconds
and ``<score4>`` ``floor(score × 10⁴)`` computed exactly from the cell count, as the
baseline kept the score in its file names (:func:`score_x1e4`).

PNGs (:func:`write_chunk_png`, :func:`read_chunk_png`, :func:`decode_chunk_png`) are
conventional images of ``height`` rows × ``width`` columns, 8-bit grayscale
``round(255 · value)``, with the lowest band in the **bottom** row: ``pixels =
flipud(img.T)`` of a ``[width, height]`` chunk spectrogram
(:func:`birdnet_tf.frontend.chunks.chunk_spectrogram`).

The writer is :func:`birdnet_tf.data.extract.extract`; the reader for training is
:func:`birdnet_tf.data.pipeline.read_chunk_index`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from birdnet_tf.config import ChunkConfig
from birdnet_tf.errors import BirdnetError
from birdnet_tf.fileio import atomic_path

__all__ = [
    "CONFIG_NAME",
    "INDEX_COLUMNS",
    "INDEX_NAME",
    "NOISE_DIR",
    "NOT_EXTRACTION_FIELDS",
    "PARTS_DIR",
    "REPORT_NAME",
    "decode_chunk_png",
    "extraction_settings",
    "key_hash",
    "part_path",
    "read_chunk_png",
    "read_part",
    "safe_name",
    "score_x1e4",
    "to_pixels",
    "write_chunk_png",
]

#: The extraction settings of a folder (refuses a rerun with other settings).
CONFIG_NAME = "extract_config.json"
#: One row per written PNG.
INDEX_NAME = "chunks.csv"
#: Counts and failures of the latest run.
REPORT_NAME = "extract_report.json"
#: Per-file done markers (JSON with the file's index rows).
PARTS_DIR = ".parts"
#: Folder of the rejected chunks kept for noise augmentation.
NOISE_DIR = "noise"
#: Columns of ``chunks.csv``.
INDEX_COLUMNS = ("png", "source_key", "label", "secondary_labels", "split", "start_s", "score", "kind")
#: ChunkConfig fields that do not change what extract writes (used later by training / testing).
NOT_EXTRACTION_FIELDS = ("s2n_interval", "max_chunks_per_file")


# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------


def safe_name(text: str) -> str:
    """A folder-name-safe version of a label or split (see the module docstring)."""
    name = re.sub(r"[^\w .+,()-]", "_", " ".join(str(text).split()))
    name = name.strip(" .")
    return name or "_"


def key_hash(key: str) -> str:
    """SHA-1 hex digest of a recording's key: its done marker's name, its stem's suffix when stems repeat."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def score_x1e4(score: float, cells: int) -> int:
    """``floor(score × 10⁴)`` computed exactly from the cell count behind ``score``."""
    count = int(round(float(score) * cells))
    return count * 10000 // cells


# --------------------------------------------------------------------------
# Settings and done markers
# --------------------------------------------------------------------------


def extraction_settings(cfg: ChunkConfig, seed: int) -> dict[str, Any]:
    """What decides a folder's content: the ``chunks`` settings but :data:`NOT_EXTRACTION_FIELDS`, and the seed."""
    d = dataclasses.asdict(cfg)
    return {**{k: v for k, v in d.items() if k not in NOT_EXTRACTION_FIELDS}, "seed": int(seed)}


def part_path(out_dir: str | os.PathLike, key: str) -> Path:
    """The done marker of recording ``key`` in a chunk folder: ``.parts/<SHA-1 of key>.json``."""
    return Path(out_dir) / PARTS_DIR / f"{key_hash(key)}.json"


def read_part(out_dir: Path, key: str) -> dict | None:
    """The done marker of ``key`` if it is complete and all its PNGs exist, else None."""
    path = part_path(out_dir, key)
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(part, dict) or part.get("key") != key or not isinstance(part.get("rows"), list):
        return None
    if not all((out_dir / row["png"]).is_file() for row in part["rows"]):
        return None
    return part


# --------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------


def to_pixels(img: np.ndarray) -> np.ndarray:
    """A ``[width, height]`` 0..1 spectrogram as the uint8 ``[height, width]`` pixels of its PNG."""
    x = np.asarray(img, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a [width, height] spectrogram, got shape {x.shape}")
    return np.ascontiguousarray(np.flipud(np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8).T))


def write_chunk_png(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Writes a ``[width, height]`` 0..1 spectrogram as an 8-bit grayscale PNG, atomically.

    The PNG has ``height`` rows × ``width`` columns, lowest band in the bottom
    row, pixel ``round(255 · value)``; written with ``cv2.imwrite`` to a
    temporary name beside ``path`` and renamed over it.

    Returns:
        ``path``.

    Raises:
        OSError: OpenCV could not write the file.
    """
    import cv2

    pixels = to_pixels(img)
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), pixels):
            raise OSError(f"{path}: OpenCV could not write the PNG")
    return Path(path)


def read_chunk_png(path: str | os.PathLike) -> np.ndarray:
    """Reads a chunk PNG back into a spectrogram (the inverse of :func:`write_chunk_png`).

    Returns:
        float32 ``[width, height]`` in 0..1 (multiples of 1/255), lowest band first.

    Raises:
        BirdnetError: The file is missing or not a readable grayscale image.
    """
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise BirdnetError(f"{path}: not a readable PNG image")
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise BirdnetError(f"{path}: expected an 8-bit grayscale chunk PNG, got shape {pixels.shape} "
                           f"of {pixels.dtype}")
    return np.ascontiguousarray(np.flipud(pixels).T.astype(np.float32) / np.float32(255.0))


def decode_chunk_png(path_tensor):
    """A chunk PNG → float32 ``[width, height]`` in 0..1, in TF ops (``tf.data`` friendly).

    Args:
        path_tensor: Scalar string tensor, the PNG's path.

    Returns:
        float32 ``[width, height]``, equal to :func:`read_chunk_png` of the file.
    """
    import tensorflow as tf

    pixels = tf.io.decode_png(tf.io.read_file(path_tensor), channels=1, dtype=tf.uint8)[:, :, 0]
    return tf.transpose(tf.reverse(tf.cast(pixels, tf.float32) / 255.0, axis=[0]))
