"""``birdnet-tf predict``: class scores for audio files from an exported SavedModel.

Any format ``load_audio`` reads is decoded and resampled to the model's rate on the
fly. Per file (default): the model's windows (``data.excerpt_s`` with hop
``data.eval_hop_s``) are scored and pooled over the whole recording. With
``window_s``: one row per window on a regular grid (``start_s = k·hop``), the last
partial window looped to full length.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.fileio import atomic_path
from birdnet_tf.errors import BirdnetError


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files as given plus the audio files found (recursively, sorted) in given folders.

    Returns (files, problems) where problems are (path, reason) for paths that do not exist.
    """
    from birdnet_tf.data.audio import AUDIO_EXTENSIONS

    files, problems = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                problems.append((item, "folder holds no audio files"))
            files += found
        elif p.exists():
            files.append(item)
        else:
            problems.append((item, "path does not exist"))
    return files, problems


def _cut(x: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """``[len(starts), window]`` windows of ``x``; parts beyond the end are looped from the window's start."""
    out = np.empty((len(starts), window), np.float32)
    for i, s in enumerate(starts):
        seg = x[s:s + window]
        out[i] = np.resize(seg, window) if len(seg) < window else seg
    return out


def score_recording(model, x: np.ndarray, window: int, starts: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Scores ``[len(starts), classes]`` of windows of one recording, in batches."""
    parts = [model(_cut(x, starts[i:i + batch_size], window)) for i in range(0, len(starts), batch_size)]
    return np.concatenate(parts, axis=0)


def predict(model_dir: str | os.PathLike, inputs: list[str], window_s: float | None = None,
            hop_s: float | None = None, pooling: str | None = None, batch_size: int = 32,
            progress: bool = True, log=None) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Scores audio files with an exported model.

    Returns:
        (table, failures): per file (``file`` + one column per label) or per window
        (``file``, ``start_s``, ``end_s`` + labels); failures are (path, reason) of
        inputs that were skipped.
    """
    from tqdm.auto import tqdm

    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.data.pipeline import window_starts
    from birdnet_tf.errors import AudioDecodeError
    from birdnet_tf.evaluate.pooling import pool
    from birdnet_tf.export import ExportedModel

    log = log or (lambda msg: print(msg, file=sys.stderr))
    model = ExportedModel(model_dir)
    cfg = model.config
    sr = model.sample_rate_hz
    pooling = pooling or cfg.data.file_pooling
    pool(np.zeros((1, 1)), pooling)  # validate the name before decoding anything
    if window_s is not None and window_s <= 0 or hop_s is not None and hop_s <= 0:
        raise BirdnetError("--window-s and --hop-s must be positive")
    files, failures = expand_inputs(inputs)
    rows = []
    for path in tqdm(files, desc="predict", unit="file", disable=not progress or len(files) < 2):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x, _ = load_audio(path, sr)
            for w in caught:
                log(f"warning: {w.message}")
        except AudioDecodeError as e:
            failures.append((path, str(e)))
            log(f"skipped: {e}")
            continue
        if window_s is None:
            window = cfg.excerpt_samples
            starts = window_starts(len(x), window, int(round(cfg.data.eval_hop_s * sr)))
            scores = pool(score_recording(model, x, window, starts, batch_size), pooling)
            rows.append([path, *scores])
        else:
            window = int(round(window_s * sr))
            hop = int(round((hop_s or window_s) * sr))
            starts = np.arange(0, max(len(x), 1), hop, dtype=np.int64)
            starts = starts[(starts == 0) | (starts + 0.1 * sr < len(x))]  # no slivers under 0.1 s
            scores = score_recording(model, x, window, starts, batch_size)
            for s, row in zip(starts, scores):
                rows.append([path, round(s / sr, 3), round(min(s + window, len(x)) / sr, 3), *row])
    if not rows:
        detail = "; ".join(f"{p}: {r}" for p, r in failures[:3])
        raise BirdnetError(f"no input could be scored ({len(failures)} skipped: {detail})")
    cols = ["file"] + ([] if window_s is None else ["start_s", "end_s"]) + list(model.labels)
    return pd.DataFrame(rows, columns=cols), failures


def write_table(table: pd.DataFrame, out: str | os.PathLike, force: bool = False) -> Path:
    """Writes CSV atomically; refuses to replace an existing file unless ``force``."""
    out = Path(out)
    if out.exists() and not force:
        raise BirdnetError(f"{out}: already exists; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    return out
