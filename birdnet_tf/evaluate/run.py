"""``birdnet-tf evaluate``: file-level scores of a run's model, metrics, report and plots."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.errors import BirdnetError
from birdnet_tf.evaluate.pooling import POOLINGS, pool
from birdnet_tf.runs import open_run


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
    from birdnet_tf.data.labels import background_matrix, primary_indices
    from birdnet_tf.evaluate.metrics import evaluate_scores
    from birdnet_tf.evaluate.report import write_report
    from birdnet_tf.fileio import check_replaceable
    from birdnet_tf.models.objects import load_model
    from birdnet_tf.train.sources import run_source

    run = open_run(run_dir)
    run_dir = run.root
    model_path = run_dir / model_file
    if not model_path.is_file():
        raise BirdnetError(f"{model_path}: no model to evaluate (has training finished an epoch?)")
    if out_dir is not None and Path(out_dir).resolve() != run.paths.eval.resolve():
        check_replaceable(out_dir, ("report.json",), "report folder", force)  # before any work
    cfg = run.cfg
    pooling = pooling or cfg.data.file_pooling
    pool(np.zeros((1, 1)), pooling)  # validates the name before any work
    labels = run.labels()
    source = run_source(run, log)  # the run's input kind: recordings, PNG chunks or metadata rows
    rows, windows = source.evaluation(run, split)
    model = load_model(model_path)
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
    if cfg.distill.teachers and source.takes_teachers:
        from birdnet_tf.distill.agreement import run_agreement

        agreed = run_agreement(cfg, list(labels), rows, windows, scores_w, log)
        if agreed is not None:
            metrics["teacher_agreement"] = agreed
    out = Path(out_dir) if out_dir else run.paths.eval
    history = run.paths.history
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
