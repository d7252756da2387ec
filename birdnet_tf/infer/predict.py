"""``birdnet-tf predict``: class scores for audio files from an exported SavedModel.

Any format ``load_audio`` reads is decoded and resampled to the model's rate on the
fly. Per file (default): the model's windows (``data.excerpt_s`` with hop
``data.eval_hop_s``) are scored and pooled over the whole recording. With
``window_s``: one row per window on a regular grid (``start_s = k·hop``).

Two :class:`~birdnet_tf.infer.engine.Scorer` engines give these window scores: ``whole``
(default) runs the network once over each streamed recording and pools its per-step
logits per window (:mod:`birdnet_tf.infer.whole`); ``sliding`` scores each window on its
own through the export's ``serving_default`` (the last partial window looped to full
length; :mod:`birdnet_tf.infer.sliding`), which is also how a remote TF Serving model is used.

An export with metadata input (``metadata.use`` only / combined) also takes each file's
date, time and place: ``metadata`` is a CSV (:func:`read_metadata_csv`) whose rows are
matched to the audio files by path, name or stem (:func:`match_metadata`) and encoded with
the export's encoder. A combined model's metadata network adds one bias per recording to
the pooled logits of every window (both engines); a metadata-only export reads no audio
but still scores each window (the same scores for every window of a file).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.fileio import atomic_path
from birdnet_tf.errors import BirdnetError, about


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files as given plus the audio files found (recursively, sorted) in given folders.

    Returns (files, problems) where problems are (path, reason) for paths that do not exist
    and files whose name is not text (it could not be written to an output table).
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
    named = [f for f in files if _text_name(f)]  # an output table names every file: it must be text
    problems += [(f, "file name that is not valid UTF-8 text (rename it)") for f in files if not _text_name(f)]
    return named, problems


def _text_name(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Column names (any case) that name the audio file in a ``--metadata`` CSV, in order of preference.
METADATA_FILE_COLUMNS = ("file", "filename")


def read_metadata_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a ``--metadata`` CSV: one row per recording, a ``file`` (or ``filename``) column and
    any of ``date``, ``time``, ``latitude``, ``longitude``, ``elevation`` (column names in any case).

    Values stay the raw strings (parsed by :mod:`birdnet_tf.data.metadata`: ``?`` or an empty
    cell is missing, ``7.30 am`` and ``ca. 500 m`` are understood); other columns are ignored.

    Returns:
        Columns ``file`` (stripped) and those of the five fields the CSV has.

    Raises:
        BirdnetError: The file is missing or unreadable, or has no file column.
    """
    from birdnet_tf.data.metadata import FIELDS

    p = Path(path)
    if not p.is_file():
        raise BirdnetError(f"{p}: metadata file does not exist")
    try:
        table = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise BirdnetError(f"{p}: unreadable metadata CSV ({' '.join(str(e).split())[:200]})") from None
    columns = {str(c).strip().lower(): c for c in table.columns}
    key = next((columns[c] for c in METADATA_FILE_COLUMNS if c in columns), None)
    if key is None:
        raise BirdnetError(f"{p}: needs a 'file' (or 'filename') column naming the audio files; its columns are "
                           f"{', '.join(map(str, table.columns)) or 'none'}")
    out = pd.DataFrame({"file": table[key].astype(str).str.strip()})
    for field in FIELDS:
        if field in columns:
            out[field] = table[columns[field]].to_numpy()
    return out


def match_metadata(files: list[str], table: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The metadata row of each audio file: by its path (as given, or absolute), else its file
    name, else its name without extension; a name or stem that several rows share matches none.

    Args:
        files: Audio file paths, as predict scores them.
        table: :func:`read_metadata_csv`'s table.

    Returns:
        ``(rows, matched)``: one row per file with the table's field columns (``pd.NA`` where
        unmatched), and a bool ``[files]`` array of which files had a row.
    """
    from collections import Counter

    def name_of(v: str) -> str:
        return v.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]

    def stem_of(v: str) -> str:
        name = name_of(v)
        return name.rsplit(".", 1)[0] if "." in name.strip(".") else name

    values = [str(v) for v in table["file"]]
    by_path: dict[str, int] = {}
    for i, v in enumerate(values):
        if v:
            by_path.setdefault(os.path.normpath(v), i)
            by_path.setdefault(os.path.abspath(v), i)
    names, stems = Counter(name_of(v) for v in values if v), Counter(stem_of(v) for v in values if v)
    by_name = {name_of(v): i for i, v in enumerate(values) if v and names[name_of(v)] == 1}
    by_stem = {stem_of(v): i for i, v in enumerate(values) if v and stems[stem_of(v)] == 1}
    index = []
    for f in files:
        i = by_path.get(os.path.normpath(f), by_path.get(os.path.abspath(f)))
        if i is None:
            i = by_name.get(Path(f).name, by_stem.get(Path(f).stem))
        index.append(-1 if i is None else i)
    index = np.asarray(index, np.int64)
    fields = [c for c in table.columns if c != "file"]
    rows = pd.DataFrame({c: [table[c].iloc[i] if i >= 0 else pd.NA for i in index] for c in fields},
                        index=range(len(files)))
    return rows, index >= 0


def file_metadata(model, files: list[str], metadata, log) -> np.ndarray | None:
    """Encoded metadata ``[files, F]`` for a model with metadata input (None for one without).

    ``metadata``: a ``--metadata`` CSV path, a :func:`read_metadata_csv` table, or None. Files
    without a row get all-missing features; one warning gives their count.
    """
    encoder = getattr(model, "metadata_encoder", None)
    if encoder is None:
        if metadata is not None:
            log("warning: this model takes no metadata; --metadata is ignored")
        return None
    if metadata is None:
        table, matched = pd.DataFrame(index=range(len(files))), np.zeros(len(files), bool)
        log(f"warning: this model uses recording metadata and no --metadata was given: all {len(files)} file(s) "
            "are scored with date, time and place unknown"
            + (" (a metadata-only model then gives every file the same scores)"
               if not getattr(model, "uses_waveform", True) else ""))
    else:
        csv = metadata if isinstance(metadata, pd.DataFrame) else read_metadata_csv(metadata)
        table, matched = match_metadata(files, csv)
        if not matched.all():
            log(f"warning: {int((~matched).sum())} of {len(files)} file(s) have no row in the metadata table; "
                "they are scored with date, time and place unknown")
    return encoder.transform(table)


def predict(model_dir: str | os.PathLike, inputs: list[str], window_s: float | None = None,
            hop_s: float | None = None, pooling: str | None = None, batch_size: int = 32,
            progress: bool = True, log=None, engine: str = "whole", model=None,
            metadata: str | os.PathLike | pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
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
            :class:`~birdnet_tf.infer.remote.RemoteModel`); sliding windows only, unless it has
            a ``whole_model()`` giving its whole-recording engine (:class:`birdnet_tf.lite.LiteModel`).
        metadata: For an export with metadata input: a CSV path or table of the recordings'
            date, time and place (:func:`read_metadata_csv`, :func:`match_metadata`); files
            without a row, or all without it, are scored with all fields unknown (a warning
            says how many). Ignored, with a warning, by exports without metadata input.

    Returns:
        (table, failures): ``file``, ``start_s``, ``end_s`` + one column per label (per-file
        rows span the whole recording); failures are (path, reason) of skipped inputs.
    """
    from birdnet_tf.evaluate.pooling import pool
    from birdnet_tf.export import ExportedModel
    from birdnet_tf.infer.sliding import SlidingScorer

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if engine not in ("whole", "sliding"):
        raise BirdnetError(f"unknown engine '{engine}'; choose whole or sliding")
    if window_s is not None and window_s <= 0 or hop_s is not None and hop_s <= 0:
        raise BirdnetError("--window-s and --hop-s must be positive")
    if model is None:
        model = ExportedModel(model_dir)
    elif engine == "whole" and not hasattr(model, "whole_model"):
        engine = "sliding"  # a remote or custom model has no front/body halves here
    cfg = getattr(model, "config", None)
    pooling = pooling or (cfg.data.file_pooling if cfg is not None else "mean")
    pool(np.zeros((1, 1)), pooling)  # validate the name before decoding anything
    if metadata is not None and not isinstance(metadata, pd.DataFrame):
        metadata = read_metadata_csv(metadata)  # a bad CSV fails before any audio is decoded
    files, failures = expand_inputs(inputs)
    for path, reason in failures:
        log(f"skipped: {about(path, reason)}")
    features = file_metadata(model, files, metadata, log)
    if engine == "whole" and not model.extra.get("whole_recording"):
        log("note: this export has no whole-recording signatures; scoring windows one by one")
        engine = "sliding"
    if engine == "whole":
        from birdnet_tf.infer.whole import WholeRecordingModel

        # a LiteRT folder brings its own whole-recording engine (birdnet_tf.lite), TensorFlow-free
        scorer = model.whole_model() if hasattr(model, "whole_model") else WholeRecordingModel.from_export(model)
    else:
        scorer = SlidingScorer(model, batch_size)
    rows = []
    for index, ws, error in scorer.score_many(files, window_s, hop_s, metadata=features, progress=progress, log=log):
        if error is not None:
            failures.append((files[index], error))
            log(f"skipped: {error}")
            continue
        if window_s is None:
            rows.append((index, [files[index], 0.0, round(ws.duration_s, 3), *ws.pooled(pooling)]))
        else:
            for s, e, row in zip(ws.starts, ws.ends, ws.scores):
                rows.append((index, [files[index], round(float(s), 3), round(float(e), 3), *row]))
    if not rows:
        detail = "; ".join(f"{p}: {r}" for p, r in failures[:3])
        raise BirdnetError(f"no input could be scored ({len(failures)} skipped: {detail})")
    rows.sort(key=lambda r: r[0])  # input order (stable within a file)
    cols = ["file", "start_s", "end_s", *model.labels]
    table = pd.DataFrame([r for _, r in rows], columns=cols)
    table.attrs["sample_rate_hz"] = scorer.sample_rate
    return table, failures


def write_table(table: pd.DataFrame, out: str | os.PathLike, force: bool = False) -> Path:
    """Writes CSV atomically; refuses to replace an existing file unless ``force``."""
    out = Path(out)
    if out.exists() and not force:
        raise BirdnetError(f"{out}: already exists; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    return out
