"""``birdnet-tf predict``: class scores for audio files from an exported SavedModel.

Any format ``load_audio`` reads is decoded and resampled to the model's rate on the
fly. Per file (default): the model's windows (``data.excerpt_s`` with hop
``data.eval_hop_s``) are scored and pooled over the whole recording. With
``window_s``: one row per window on a regular grid (``start_s = k·hop``).

Two engines give these window scores: ``whole`` (default) runs the network once over
each streamed recording and pools its per-step logits per window
(:mod:`birdnet_tf.infer.whole`); ``sliding`` scores each window on its own through the
export's ``serving_default`` (the last partial window looped to full length), which is
also how a remote TF Serving model is used.
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
            progress: bool = True, log=None, engine: str = "whole", model=None) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Scores audio files with an exported model.

    Args:
        model_dir: Export folder (ignored when ``model`` is given).
        inputs: Audio files and folders.
        window_s, hop_s: One row per window of ``window_s`` every ``hop_s`` (default
            ``window_s``); without ``window_s`` one row per file, pooling the model's own
            windows (``data.excerpt_s`` every ``data.eval_hop_s``) with ``pooling``.
        engine: ``whole`` — the network runs once over each recording, streaming it
            (:mod:`birdnet_tf.infer.whole`); ``sliding`` — each window is cut from the
            decoded recording and scored through ``serving_default`` on its own.
        model: An already loaded model with the ``ExportedModel`` interface (e.g. a
            :class:`~birdnet_tf.infer.remote.RemoteModel`); sliding windows only.

    Returns:
        (table, failures): ``file``, ``start_s``, ``end_s`` + one column per label (per-file
        rows span the whole recording); failures are (path, reason) of skipped inputs.
    """
    from birdnet_tf.evaluate.pooling import pool
    from birdnet_tf.export import ExportedModel

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if engine not in ("whole", "sliding"):
        raise BirdnetError(f"unknown engine '{engine}'; choose whole or sliding")
    if window_s is not None and window_s <= 0 or hop_s is not None and hop_s <= 0:
        raise BirdnetError("--window-s and --hop-s must be positive")
    if model is None:
        model = ExportedModel(model_dir)
    elif engine == "whole":
        engine = "sliding"  # a remote or custom model has no front/body halves here
    cfg = getattr(model, "config", None)
    pooling = pooling or (cfg.data.file_pooling if cfg is not None else "mean")
    pool(np.zeros((1, 1)), pooling)  # validate the name before decoding anything
    files, failures = expand_inputs(inputs)
    for path, reason in failures:
        log(f"skipped: {path}: {reason}")
    if engine == "whole" and not model.extra.get("whole_recording"):
        log("note: this export has no whole-recording signatures; scoring windows one by one")
        engine = "sliding"
    if engine == "whole":
        from birdnet_tf.infer.whole import WholeRecordingModel

        whole = WholeRecordingModel.from_export(model)
        results = whole.score_files(files, window_s=window_s, hop_s=hop_s, file_pooling=pooling,
                                    progress=progress, log=log)
    else:
        results = _sliding(model, files, window_s, hop_s, pooling, batch_size, progress, log)
    rows = []
    sr = model.sample_rate_hz
    for index, res, error in results:
        if error is not None:
            failures.append((files[index], error))
            log(f"skipped: {error}")
            continue
        if window_s is None:
            rows.append((index, [files[index], 0.0, round(res["n_samples"] / sr, 3), *res["file_scores"]]))
        else:
            for s, e, row in zip(res["start_s"], res["end_s"], res["scores"]):
                rows.append((index, [files[index], round(float(s), 3), round(float(e), 3), *row]))
    if not rows:
        detail = "; ".join(f"{p}: {r}" for p, r in failures[:3])
        raise BirdnetError(f"no input could be scored ({len(failures)} skipped: {detail})")
    rows.sort(key=lambda r: r[0])  # input order (stable within a file)
    cols = ["file", "start_s", "end_s", *model.labels]
    table = pd.DataFrame([r for _, r in rows], columns=cols)
    table.attrs["sample_rate_hz"] = sr
    return table, failures


def _sliding(model, files, window_s, hop_s, pooling, batch_size, progress, log):
    """Sliding windows through ``serving_default``; yields ``(index, result, error)`` like the whole engine."""
    from tqdm.auto import tqdm

    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.data.pipeline import window_starts
    from birdnet_tf.errors import AudioDecodeError
    from birdnet_tf.evaluate.pooling import pool

    cfg = getattr(model, "config", None)
    sr = model.sample_rate_hz
    excerpt_s = cfg.data.excerpt_s if cfg is not None else 3.0
    eval_hop_s = cfg.data.eval_hop_s if cfg is not None else excerpt_s
    for index, path in enumerate(tqdm(files, desc="predict", unit="file", disable=not progress or len(files) < 2)):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x, _ = load_audio(path, sr)
            for w in caught:
                log(f"warning: {w.message}")
        except AudioDecodeError as e:
            yield index, None, str(e)
            continue
        if window_s is None:
            window = int(round(excerpt_s * sr))
            starts = window_starts(len(x), window, int(round(eval_hop_s * sr)))
        else:
            window = int(round(window_s * sr))
            hop = int(round((hop_s or window_s) * sr))
            starts = np.arange(0, max(len(x), 1), hop, dtype=np.int64)
            starts = starts[(starts == 0) | (starts + 0.1 * sr < len(x))]  # no slivers under 0.1 s
        scores = score_recording(model, x, window, starts, batch_size)
        yield index, {"n_samples": len(x), "start_s": starts / sr, "end_s": np.minimum(starts + window, len(x)) / sr,
                      "scores": scores, "file_scores": pool(scores, pooling)}, None


def write_table(table: pd.DataFrame, out: str | os.PathLike, force: bool = False) -> Path:
    """Writes CSV atomically; refuses to replace an existing file unless ``force``."""
    out = Path(out)
    if out.exists() and not force:
        raise BirdnetError(f"{out}: already exists; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    return out
