"""``birdnet-tf evaluate``: file-level scores of a run's model, metrics, report and plots."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.config import read_config_json
from birdnet_tf.errors import BirdnetError
from birdnet_tf.evaluate.pooling import POOLINGS, pool


def pool_by_file(window_scores: np.ndarray, file_index: np.ndarray, n_files: int, method: str) -> np.ndarray:
    """Pools ``[windows, classes]`` scores into ``[n_files, classes]`` by ``file_index``."""
    out = np.zeros((n_files, window_scores.shape[1]), np.float64)
    order = np.argsort(file_index, kind="stable")
    bounds = np.searchsorted(file_index[order], np.arange(n_files + 1))
    for i in range(n_files):
        rows = order[bounds[i]:bounds[i + 1]]
        if len(rows):
            out[i] = pool(window_scores[rows], method)
    return out


def predict_windows(model, windows) -> np.ndarray:
    """Scores of every window of a :class:`~birdnet_tf.data.pipeline.WindowSet`: ``[windows, classes]``."""
    return np.asarray(model.predict(windows.dataset, verbose=0), np.float64)


def score_windows(model, windows, n_files: int, method: str) -> np.ndarray:
    return pool_by_file(predict_windows(model, windows), windows.file_index, n_files, method)


def _split_rows(run_dir: Path, split: str, cfg, extra: dict, log, need_audio: bool = True) -> pd.DataFrame:
    from birdnet_tf.data.dataset import prepared_catalog

    table = pd.read_csv(run_dir / "split.csv", keep_default_na=False)
    rows = table if split == "all" else table[table["split"] == split]
    if rows.empty:
        raise BirdnetError(f"{run_dir / 'split.csv'}: no files in split '{split}' (choose val, train or all)")
    if need_audio and not all(Path(p).is_file() for p in rows["wav_path"]):
        # the prepared cache was removed or the run moved: prepare the data folder again
        catalog = prepared_catalog(extra.get("data_dir", ""), cfg.audio.sample_rate_hz, log=log)
        where = dict(zip(catalog["key"], catalog["wav_path"]))
        rows = rows[rows["key"].isin(where)].copy()
        rows["wav_path"] = rows["key"].map(where)
    rows = rows.copy()
    rows["secondary_labels"] = [[s for s in str(v).split(";") if s] for v in rows["secondary_labels"]]
    return rows.reset_index(drop=True)


def run_metadata_features(run_dir: Path, rows: pd.DataFrame, extra: dict, log=print) -> np.ndarray:
    """Metadata features of ``rows`` (``split.csv`` rows) with the run's saved encoder: float32 ``[rows, F]``.

    The raw date, time, latitude, longitude and elevation come from ``split.csv`` (written there
    by training); a ``split.csv`` without them is completed from the run's dataset
    (``extra["data_dir"]``), matched by ``key``.

    Raises:
        BirdnetError: The run has no ``metadata_encoder.json``.
    """
    from birdnet_tf.data.metadata import FIELDS, METADATA_ENCODER_FILENAME, MetadataEncoder

    path = run_dir / METADATA_ENCODER_FILENAME
    if not path.is_file():
        raise BirdnetError(f"{path}: missing; this metadata run cannot be evaluated without its encoder")
    encoder = MetadataEncoder.load(path)
    if not all(column in rows.columns for column in FIELDS):
        from birdnet_tf.data.catalog import load_catalog

        catalog = load_catalog(extra.get("data_dir", ""), check_files=False).set_index("key")
        rows = rows.copy()
        for column in FIELDS:
            if column not in rows.columns:
                rows[column] = rows["key"].map(catalog[column]) if column in catalog.columns else pd.NA
        log(f"metadata of the files read from {extra.get('data_dir')} (split.csv has none)")
    return encoder.transform(rows)


def _chunk_split_rows(run_dir: Path, split: str, cfg, extra: dict, log):
    """The files of ``split`` of a run on PNG chunks and a WindowSet of their signal chunks (at most
    ``chunks.max_chunks_per_file`` = MAX_SPECS_PER_FILE per file).

    Files without a signal chunk are left out (and counted in the log).
    """
    from birdnet_tf.data.pipeline import chunk_file_windows, read_chunk_index

    table = pd.read_csv(run_dir / "split.csv", keep_default_na=False, dtype={"key": str, "split": str})
    rows = table if split == "all" else table[table["split"] == split]
    if rows.empty:
        raise BirdnetError(f"{run_dir / 'split.csv'}: no files in split '{split}' (choose val, train or all)")
    index = read_chunk_index(extra.get("data_dir", ""), cfg)
    windows, rows = chunk_file_windows(index, rows, cfg, cfg.chunks.max_chunks_per_file, log)  # MAX_SPECS_PER_FILE
    rows = rows.copy()
    rows["secondary_labels"] = [[s for s in str(v).split(";") if s] for v in rows["secondary_labels"]]
    return rows.reset_index(drop=True), windows


def evaluate_run(run_dir: str | os.PathLike, split: str = "val", pooling: str | None = None,
                 model_file: str = "best.keras", out_dir: str | os.PathLike | None = None, log=print,
                 force: bool = False) -> dict:
    """Evaluates a run's model on its validation files (or ``train`` / ``all``).

    Scores every evaluation window, pools the windows of each file with every method of
    :data:`~birdnet_tf.evaluate.pooling.POOLINGS`, and reports the metrics of ``pooling``
    (default: the config's ``data.file_pooling``) with the others side by side.

    An ``out_dir`` other than the run's own ``eval/`` that exists and is not empty is refused
    unless ``force`` (and then only when it holds an earlier report, ``report.json``).

    Returns:
        The metrics dict also written to ``report.json``, plus ``report_dir``.
    """
    from birdnet_tf.fileio import check_replaceable
    from birdnet_tf.models.build import load_keras_model

    from birdnet_tf.data.labels import LabelSet, background_matrix, primary_indices
    from birdnet_tf.data.pipeline import CHUNK_INPUT, evaluation_windows
    from birdnet_tf.evaluate.metrics import evaluate_scores
    from birdnet_tf.evaluate.report import write_report

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise BirdnetError(f"{run_dir}: not a run folder (no config.json)")
    model_path = run_dir / model_file
    if not model_path.is_file():
        raise BirdnetError(f"{model_path}: no model to evaluate (has training finished an epoch?)")
    if out_dir is not None and Path(out_dir).resolve() != (run_dir / "eval").resolve():
        check_replaceable(out_dir, ("report.json",), "report folder", force)  # before any work
    cfg, extra = read_config_json(run_dir / "config.json")
    pooling = pooling or cfg.data.file_pooling
    pool(np.zeros((1, 1)), pooling)  # validates the name before any work
    labels = LabelSet.load(run_dir / "labels.txt")
    if extra.get("input") == CHUNK_INPUT:  # trained on a birdnet-tf extract folder: score its PNG chunks
        rows, windows = _chunk_split_rows(run_dir, split, cfg, extra, log)
        model = load_keras_model(model_path)
    elif cfg.metadata.use == "only":  # the metadata MLP: one "window" per file, its metadata row
        from birdnet_tf.models.metadata import metadata_windows

        rows = _split_rows(run_dir, split, cfg, extra, log, need_audio=False)
        model = load_keras_model(model_path)
        windows = metadata_windows(run_metadata_features(run_dir, rows, extra, log), cfg)
    else:
        rows = _split_rows(run_dir, split, cfg, extra, log)
        model = load_keras_model(model_path)
        # every window of each file; the 2018 baseline's models: at most MAX_SPECS_PER_FILE, spread evenly
        cap = cfg.chunks.max_chunks_per_file if cfg.frontend.kind == "chunks" else None
        meta = run_metadata_features(run_dir, rows, extra, log) if cfg.metadata.use == "combined" else None
        windows = evaluation_windows(list(rows["wav_path"]), cfg, max_windows=cap, metadata=meta)
    scores_w = predict_windows(model, windows)
    primary, background = primary_indices(rows, labels), background_matrix(rows, labels)

    by_pooling = {}
    for method in dict.fromkeys([pooling, *POOLINGS]):
        m = evaluate_scores(pool_by_file(scores_w, windows.file_index, len(rows), method), primary, background)
        by_pooling[method] = {k: v for k, v in m.items() if k != "per_class_ap"}
    file_scores = pool_by_file(scores_w, windows.file_index, len(rows), pooling)
    metrics = evaluate_scores(file_scores, primary, background)
    metrics.update(split=split, pooling=pooling, model=str(model_path), n_windows=int(len(scores_w)),
                   by_pooling=by_pooling)
    if cfg.distill.teachers and extra.get("input") != CHUNK_INPUT and cfg.metadata.use == "none":
        from birdnet_tf.distill.agreement import run_agreement

        agreed = run_agreement(cfg, list(labels), rows, windows, scores_w, log)
        if agreed is not None:
            metrics["teacher_agreement"] = agreed
    out = Path(out_dir) if out_dir else run_dir / "eval"
    history = run_dir / "history.csv"
    written = write_report(out, metrics, list(labels),
                           per_file={"scores": file_scores, "primary_idx": primary, "files": list(rows["key"])},
                           history_csv=history if history.exists() else None, monitor=cfg.train.monitor)
    pd.DataFrame(file_scores, columns=list(labels)).assign(file=list(rows["key"])).set_index("file").to_csv(
        out / "scores.csv", float_format="%.6f")
    log(format_metrics(metrics, by_pooling))
    log(f"report: {written['report']}  plots: {', '.join(str(p) for k, p in written.items() if str(p).endswith('.png'))}")
    return {**metrics, "report_dir": out}


#: (key, label) of the OFAI 2018 metrics line of :func:`format_metrics`.
OFAI_METRICS: tuple[tuple[str, str], ...] = (
    ("map", "MAP"), ("map_bg", "MAP-bg"), ("top1", "top-1"), ("top2", "top-2"), ("top3", "top-3"),
    ("top4", "top-4"), ("top5", "top-5"),
)


def format_metrics(metrics: dict, by_pooling: dict | None = None) -> str:
    """The metrics as text: the baseline's (MLRAP, cmAP) line, OFAI's (MAP, MAP-bg, top-k) line, then per pooling."""
    keys = ("mlrap", "mlrap_bg", "mrr", "cmap", "top1", "top5")
    lines = [f"{metrics.get('n_files')} files, pooling {metrics.get('pooling')}: "
             + "  ".join(f"{k} {metrics[k]:.3f}" for k in keys if metrics.get(k) is not None)]
    ofai = [f"{label} {metrics[k]:.3f}" for k, label in OFAI_METRICS if metrics.get(k) is not None]
    if ofai:
        lines.append("  OFAI 2018: " + "  ".join(ofai)
                     + "  (MAP = MRR of the foreground species; MAP-bg = MLRAP with background species)")
    if by_pooling:
        lines.append("  pooling      " + "  ".join(f"{k:>8}" for k in keys))
        for name, m in by_pooling.items():
            lines.append(f"  {name:<12} " + "  ".join(f"{m[k]:8.3f}" if m.get(k) is not None else f"{'-':>8}"
                                                     for k in keys))
    return "\n".join(lines)
