"""Evaluation report: ``report.json`` plus PNG plots, with matplotlib's Agg backend.

Plots are drawn on :class:`matplotlib.figure.Figure` objects attached to an Agg
canvas, never through :mod:`matplotlib.pyplot`, so they need no display, keep
no global figure state and work in threads. Each plotting function selects the
Agg backend when it runs (not at import), unless :mod:`matplotlib.pyplot` is
already in use, in which case the caller's backend is left alone: the figures
are rendered by Agg either way.

Figure sizes grow with the number of classes (20 to 1,000) so that every label,
including long scientific names, keeps a legible font; very large figures lower
their resolution to stay below about 8,000 pixels a side.

Every file is written atomically (temporary file in the same folder, then
:func:`os.replace`), so a report regenerated for the same run replaces the old
one in one step and a crash never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Columns of a Keras ``CSVLogger`` history plotted in the validation-metric panel, in order.
HISTORY_METRICS: tuple[str, ...] = ("val_mlrap", "val_mrr", "val_cmap")
#: Largest side of a saved figure in pixels; bigger figures get a lower dpi.
MAX_SIDE_PX = 8000


# --------------------------------------------------------------------------- helpers


def _use_agg() -> None:
    """Selects the Agg backend unless pyplot already runs with a backend of its own."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")


def _figure(width_in: float, height_in: float) -> Any:
    """A new Figure on an Agg canvas (no pyplot, nothing global)."""
    _use_agg()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def _dpi(width_in: float, height_in: float, preferred: float = 120.0) -> float:
    """The preferred dpi, lowered so that neither side exceeds :data:`MAX_SIDE_PX`."""
    return float(min(preferred, MAX_SIDE_PX / max(width_in, height_in, 1e-9)))


def _atomic_write(path: Path, write: Any, mode: str = "w") -> Path:
    """Calls ``write(fileobj)`` on a temporary file beside ``path``, then renames it over ``path``."""
    from birdnet_tf.fileio import atomic_path

    kwargs = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        write(fh)
    return Path(path)


def _save(fig: Any, out_png: str | os.PathLike[str], dpi: float) -> Path:
    """Saves ``fig`` as a PNG atomically and returns its path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.15)
    return _atomic_write(Path(out_png), lambda fh: fh.write(buf.getvalue()), mode="wb")


def _label_width_in(labels: Sequence[str], fontsize_pt: float) -> float:
    """Approximate width in inches of the longest label at ``fontsize_pt``."""
    longest = max((len(str(x)) for x in labels), default=1)
    return longest * fontsize_pt * 0.55 / 72.0


def _jsonable(x: Any) -> Any:
    """Converts numpy values and paths to plain JSON types; NaN/inf become None."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


def read_history(history_csv: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a Keras ``CSVLogger`` file.

    Args:
        history_csv: Path of the CSV (header row, one row per epoch).

    Returns:
        Column name -> float ``[epochs]`` (empty cells and unparsable values are
        NaN). ``epoch`` is added as ``0..n-1`` when the file lacks it.

    Raises:
        ValueError: The file has no header or no rows.
    """
    with open(history_csv, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise ValueError(f"{history_csv}: empty training history (no header)")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{history_csv}: training history has no epochs")

    def num(v: str | None) -> float:
        try:
            return float(v) if v not in (None, "") else math.nan
        except ValueError:
            return math.nan

    cols = {name.strip(): np.array([num(r.get(name)) for r in rows]) for name in reader.fieldnames}
    if "epoch" not in cols or np.all(np.isnan(cols["epoch"])):
        cols["epoch"] = np.arange(len(rows), dtype=np.float64)
    return cols


# --------------------------------------------------------------------------- plots


def plot_training_curves(
    history_csv: str | os.PathLike[str], out_png: str | os.PathLike[str], monitor: str = "val_mlrap"
) -> Path:
    """Plots losses and validation metrics per epoch from a Keras ``CSVLogger`` file.

    Top panel: ``loss`` and ``val_loss`` (whichever exist; also any other
    ``*loss`` column), with ``learning_rate`` on a log-scaled right axis. Bottom
    panel: ``val_mlrap``, ``val_mrr``, ``val_cmap`` and any other ``val_*``
    metric. The best epoch by ``monitor`` (if present) is marked in both. Epochs are
    numbered from 1, as training logs them (CSVLogger's column counts from 0).

    Args:
        history_csv: CSV with columns ``epoch``, ``loss``, ``val_loss``,
            ``val_mlrap``, ``val_mrr``, ``val_cmap``, ``learning_rate``; any may
            be missing.
        out_png: Where to write the PNG.

    Returns:
        The path of the PNG.

    Raises:
        ValueError: The history is empty.
    """
    h = read_history(history_csv)
    epoch = h["epoch"] + 1

    def present(name: str) -> bool:
        return name in h and not np.all(np.isnan(h[name]))

    loss_cols = [c for c in ("loss", "val_loss") if present(c)]
    loss_cols += sorted(c for c in h if c.endswith("loss") and c not in loss_cols and present(c))
    metric_cols = [c for c in HISTORY_METRICS if present(c)]
    metric_cols += sorted(
        c for c in h
        if c.startswith("val_") and not c.endswith("loss") and c not in metric_cols and present(c)
    )
    lr_col = next((c for c in ("learning_rate", "lr") if present(c)), None)

    width, height = 9.0, 7.0
    fig = _figure(width, height)
    ax_loss, ax_met = fig.subplots(2, 1, sharex=True)

    for c in loss_cols:
        ax_loss.plot(epoch, h[c], marker="o", markersize=3, label=c)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("Training history")
    handles, names = ax_loss.get_legend_handles_labels()
    if lr_col is not None:
        ax_lr = ax_loss.twinx()
        lr = h[lr_col]
        ax_lr.plot(epoch, lr, color="grey", linestyle="--", linewidth=1, label=lr_col)
        if np.nanmin(lr) > 0:
            ax_lr.set_yscale("log")
        ax_lr.set_ylabel(lr_col, color="grey")
        ax_lr.tick_params(axis="y", colors="grey")
        h2, n2 = ax_lr.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    if handles:
        ax_loss.legend(handles, names, loc="upper right", fontsize=8)
    else:
        ax_loss.text(0.5, 0.5, "no loss columns", ha="center", va="center",
                     transform=ax_loss.transAxes, color="grey")

    for c in metric_cols:
        ax_met.plot(epoch, h[c], marker="o", markersize=3, label=c)
    ax_met.set_xlabel("epoch")
    ax_met.set_ylabel("validation metric")
    if metric_cols:
        ax_met.legend(loc="lower right", fontsize=8)
    else:
        ax_met.text(0.5, 0.5, "no validation metrics", ha="center", va="center",
                    transform=ax_met.transAxes, color="grey")

    if present(monitor):
        best = int(np.nanargmax(h[monitor]))
        label = f"best epoch {epoch[best]:g} ({monitor} {h[monitor][best]:.3f})"
        for ax in (ax_loss, ax_met):
            ax.axvline(epoch[best], color="crimson", linestyle=":", linewidth=1.5)
        ax_met.plot([epoch[best]], [h[monitor][best]], marker="*", markersize=14,
                    color="crimson", linestyle="none", label=label)
        ax_met.legend(loc="lower right", fontsize=8)
    for ax in (ax_loss, ax_met):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_png, _dpi(width, height))


def per_class_figsize(n_classes: int, labels: Sequence[str], fontsize_pt: float) -> tuple[float, float]:
    """Size ``(width, height)`` in inches of the per-class AP chart: one bar row per class.

    A row is at least 1.9 × the font size tall (0.16 in), so 1,000 classes give a
    tall, scrollable chart whose labels all stay legible.
    """
    row_in = max(0.16, fontsize_pt * 1.9 / 72.0)
    height = _AP_BOTTOM_IN + _AP_TOP_IN + n_classes * row_in
    width = _label_width_in(labels, fontsize_pt) + 0.4 + _AP_PLOT_IN + 0.4
    return width, max(height, 3.0)


_AP_PLOT_IN = 5.0  # width of the bar area
_AP_BOTTOM_IN = 0.7
_AP_TOP_IN = 0.6
#: Largest side in pixels of the per-class chart, which may be much taller than wide.
MAX_AP_HEIGHT_PX = 32000


def plot_per_class_ap(
    labels: Sequence[str],
    ap: Sequence[float | None] | np.ndarray,
    out_png: str | os.PathLike[str],
    n_pos: Sequence[int] | np.ndarray | None = None,
) -> Path:
    """Horizontal bar chart of average precision per class, best at the top.

    Classes without positives (AP NaN/None) are listed at the bottom as "n/a".
    The dashed line is the mean AP over the other classes (cmAP). The chart
    grows one row per class (see :func:`per_class_figsize`).

    Args:
        labels: ``[classes]`` class names.
        ap: ``[classes]`` AP per class; None/NaN for classes without positives.
        out_png: Where to write the PNG.
        n_pos: Optional int ``[classes]``: positives per class, shown as
            ``"label (n=3)"``.

    Returns:
        The path of the PNG.

    Raises:
        ValueError: No classes, or lengths of ``labels``, ``ap`` and ``n_pos``
            differ.
    """
    labels = [str(x) for x in labels]
    values = np.array([math.nan if v is None else float(v) for v in ap], dtype=np.float64)
    n = len(labels)
    if values.shape[0] != n:
        raise ValueError(f"{len(values)} AP values for {n} labels")
    if n == 0:
        raise ValueError("no classes to plot")
    if n_pos is not None:
        counts = np.asarray(n_pos)
        if counts.shape != (n,):
            raise ValueError(f"n_pos has shape {counts.shape}, expected ({n},)")
        labels = [f"{lab} (n={int(c)})" for lab, c in zip(labels, counts)]

    # ascending AP, NaN first: barh draws index 0 at the bottom, so the best is on top
    key = np.where(np.isnan(values), -np.inf, values)
    order = np.argsort(key, kind="stable")
    fontsize = 8.0 if n <= 60 else 7.0 if n <= 250 else 6.0
    width, height = per_class_figsize(n, labels, fontsize)
    fig = _figure(width, height)
    left = width - _AP_PLOT_IN - 0.4
    ax = fig.add_axes((left / width, _AP_BOTTOM_IN / height,
                       _AP_PLOT_IN / width, 1.0 - (_AP_BOTTOM_IN + _AP_TOP_IN) / height))
    y = np.arange(n)
    sorted_values = values[order]
    missing = np.isnan(sorted_values)
    ax.barh(y, np.nan_to_num(sorted_values, nan=0.0), height=0.8,
            color=np.where(missing, "lightgrey", "tab:blue").tolist())
    for yi, v in zip(y, sorted_values):
        text = "n/a" if np.isnan(v) else f"{v:.2f}"
        ax.text((0.0 if np.isnan(v) else v) + 0.01, yi, text, va="center", fontsize=fontsize * 0.9)
    ax.set_yticks(y)
    ax.set_yticklabels([labels[i] for i in order], fontsize=fontsize)
    ax.tick_params(axis="y", length=2)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlim(0.0, 1.1)
    ax.set_xlabel("average precision")
    finite = values[~np.isnan(values)]
    title = f"Average precision per class ({n} classes)"
    if finite.size:
        mean = float(finite.mean())
        ax.axvline(mean, color="crimson", linestyle="--", linewidth=1)
        title += f"; dashed: cmAP {mean:.3f}"
    ax.set_title(title, loc="left", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    dpi = min(100.0, MAX_AP_HEIGHT_PX / height, MAX_SIDE_PX / width)
    return _save(fig, out_png, dpi)


def confusion_figsize(n_classes: int, labels: Sequence[str]) -> tuple[float, float, float]:
    """``(side_in, cell_in, fontsize_pt)`` of the confusion plot for ``n_classes``.

    Cells shrink from 0.35 in (up to 20 classes) to 0.1 in (70 classes and
    more); the tick font follows the cell size, between 5 and 9 pt.
    """
    cell = 0.6 if n_classes <= 8 else 0.35 if n_classes <= 20 else max(0.1, 7.0 / n_classes)
    fontsize = float(min(9.0, max(5.0, cell * 72.0 * 0.75)))
    side = n_classes * cell + _label_width_in(labels, fontsize) + 1.4
    return side, cell, fontsize


def plot_confusion(
    labels: Sequence[str],
    cm: np.ndarray | Sequence[Sequence[int]],
    out_png: str | os.PathLike[str],
) -> Path:
    """Heatmap of the row-normalised confusion matrix (rows: true, columns: predicted).

    Each row is divided by its sum, so a cell is the fraction of the true class's
    files predicted as the column class; rows without files stay 0. Cell values
    are printed for up to 25 classes. The figure grows with the number of
    classes (see :func:`confusion_figsize`).

    Args:
        labels: ``[classes]`` class names.
        cm: ``[classes, classes]`` counts, e.g. from
            :func:`birdnet_tf.evaluate.metrics.confusion_matrix`.
        out_png: Where to write the PNG.

    Returns:
        The path of the PNG.

    Raises:
        ValueError: ``cm`` is not square or does not match ``labels``.
    """
    labels = [str(x) for x in labels]
    counts = np.asarray(cm, dtype=np.float64)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {counts.shape}, expected ({n}, {n})")
    if n == 0:
        raise ValueError("no classes to plot")
    row_sum = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, row_sum, out=np.zeros_like(counts), where=row_sum > 0)

    side, cell, fontsize = confusion_figsize(n, labels)
    grid = n * cell
    margin = side - grid  # tick labels + axis label
    top, right = 0.6, 1.2  # title; colour bar
    width, height = side + right, side + top
    fig = _figure(width, height)
    ax = fig.add_axes((margin / width, margin / height, grid / width, grid / height))
    cax = fig.add_axes(((margin + grid + 0.15) / width, margin / height,
                        0.2 / width, min(grid, 4.0) / height))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest",
                   aspect="auto")
    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(labels, rotation=90, fontsize=fontsize)
    ax.set_yticklabels(labels, fontsize=fontsize)
    ax.tick_params(length=2, pad=1)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true (foreground)")
    ax.set_title(f"Confusion, row-normalised\n({int(counts.sum())} files)", loc="left", fontsize=10)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if counts[i, j] > 0:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center",
                            fontsize=max(5.0, fontsize - 1),
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, cax=cax)
    return _save(fig, out_png, _dpi(width, height, preferred=130.0))


# --------------------------------------------------------------------------- report


def _write_json(path: Path, data: Any) -> Path:
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    return _atomic_write(path, lambda fh: fh.write(text))


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    def write(fh: Any) -> None:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)

    return _atomic_write(path, write)


def write_report(
    out_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    labels: Sequence[str],
    per_file: Mapping[str, Any] | None = None,
    history_csv: str | os.PathLike[str] | None = None,
    monitor: str = "val_mlrap",
) -> dict[str, Path]:
    """Writes an evaluation report folder: JSON, CSVs and the plots its inputs allow.

    Files (each written atomically; a regenerated report replaces the old files
    of the same name):

    * ``report.json`` — ``metrics``, pretty-printed (numpy values converted,
      NaN written as null). Always.
    * ``per_class_ap.csv`` and ``per_class_ap.png`` — when ``metrics`` has
      ``per_class_ap`` (as from
      :func:`birdnet_tf.evaluate.metrics.evaluate_scores`); positives per class
      come from ``per_file`` or ``metrics["per_class_n_pos"]`` when present.
    * ``per_file.csv`` and ``confusion.png`` — when ``per_file`` is given.
    * ``training_curves.png`` — when ``history_csv`` is given.

    Args:
        out_dir: Report folder; created if missing.
        metrics: Flat metric dict (JSON-serialisable after numpy conversion).
        labels: ``[classes]`` class names, in score-column order.
        per_file: Optional mapping with ``"scores"`` (``[files, classes]``
            pooled scores), ``"primary_idx"`` (int ``[files]``) and optionally
            ``"files"`` (``[files]`` names).
        history_csv: Optional Keras ``CSVLogger`` file of the training run.
        monitor: The history column whose best epoch the training curves mark.

    Returns:
        Written files by kind: ``report``, ``per_class_ap_csv``,
        ``per_class_ap``, ``per_file_csv``, ``confusion``, ``training_curves``.

    Raises:
        ValueError: Inconsistent shapes between ``labels``, ``metrics`` and
            ``per_file``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [str(x) for x in labels]
    n = len(labels)
    paths: dict[str, Path] = {"report": _write_json(out / "report.json", metrics)}

    n_pos: np.ndarray | None = None
    if metrics.get("per_class_n_pos") is not None:
        n_pos = np.asarray(metrics["per_class_n_pos"], dtype=np.int64)

    if per_file is not None:
        from birdnet_tf.evaluate.metrics import confusion_matrix, ranks

        scores = np.asarray(per_file["scores"], dtype=np.float64)
        primary = np.asarray(per_file["primary_idx"], dtype=np.int64)
        if scores.ndim != 2 or scores.shape[1] != n:
            raise ValueError(f"per_file scores have shape {scores.shape}, expected [files, {n}]")
        files = per_file.get("files")
        names = [str(f) for f in files] if files is not None else [str(i) for i in range(len(primary))]
        if len(names) != scores.shape[0]:
            raise ValueError(f"{len(names)} file names for {scores.shape[0]} score rows")
        cm = confusion_matrix(primary, scores, n)
        n_pos = cm.sum(axis=1)
        rank = ranks(primary, scores)
        pred = np.argmax(scores, axis=1)
        rows = [
            [names[i], labels[primary[i]], labels[pred[i]], int(rank[i]),
             f"{scores[i, primary[i]]:.6g}", f"{scores[i, pred[i]]:.6g}"]
            for i in range(scores.shape[0])
        ]
        paths["per_file_csv"] = _write_csv(
            out / "per_file.csv",
            ["file", "true_label", "predicted_label", "rank", "true_score", "predicted_score"],
            rows,
        )
        paths["confusion"] = plot_confusion(labels, cm, out / "confusion.png")

    ap = metrics.get("per_class_ap")
    if ap is not None:
        if len(ap) != n:
            raise ValueError(f"metrics['per_class_ap'] has {len(ap)} values for {n} labels")
        if n_pos is not None and n_pos.shape != (n,):
            n_pos = None
        rows = [
            [labels[i], "" if ap[i] is None or not math.isfinite(ap[i]) else f"{ap[i]:.6g}",
             "" if n_pos is None else int(n_pos[i])]
            for i in range(n)
        ]
        paths["per_class_ap_csv"] = _write_csv(out / "per_class_ap.csv", ["label", "ap", "n_pos"], rows)
        paths["per_class_ap"] = plot_per_class_ap(labels, ap, out / "per_class_ap.png", n_pos=n_pos)

    if history_csv is not None:
        paths["training_curves"] = plot_training_curves(history_csv, out / "training_curves.png", monitor)
    return paths
