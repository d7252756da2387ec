"""Tests of birdnet_tf.evaluate.report: PNGs are written, valid, and report.json round-trips."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest

from birdnet_tf.evaluate import report as R
from birdnet_tf.evaluate.metrics import confusion_matrix, evaluate_scores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """Checks the PNG signature and returns (width, height) from the IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def labels(n: int) -> list[str]:
    return [f"Genusname speciesepithet{i:03d}" for i in range(n)]


def write_history(path, columns: dict[str, list]) -> None:
    names = list(columns)
    rows = zip(*columns.values())
    lines = [",".join(names)] + [",".join("" if v is None else str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def history(tmp_path):
    path = tmp_path / "history.csv"
    write_history(path, {
        "epoch": [0, 1, 2, 3],
        "learning_rate": [1e-3, 1e-3, 1e-4, 1e-4],
        "loss": [2.0, 1.5, 1.2, 1.1],
        "val_cmap": [0.3, 0.4, 0.5, 0.45],
        "val_loss": [2.1, 1.7, 1.5, 1.6],
        "val_mlrap": [0.35, 0.5, 0.62, 0.6],
        "val_mrr": [0.35, 0.5, 0.62, 0.6],
    })
    return path


def test_no_pyplot_at_import():
    # importing the module must not pick a backend or load pyplot
    code = "import sys, birdnet_tf.evaluate.report; assert 'matplotlib.pyplot' not in sys.modules"
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_training_curves(tmp_path, history):
    out = R.plot_training_curves(history, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    w, h = png_size(out)
    assert w > 300 and h > 300
    assert not list(tmp_path.glob(".*.part*"))  # no temporary left behind


def test_plot_training_curves_missing_columns(tmp_path):
    path = tmp_path / "h.csv"
    write_history(path, {"loss": [1.0, 0.8, None]})  # no epoch, no val_*, an empty cell
    png_size(R.plot_training_curves(path, tmp_path / "a.png"))
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,loss\n")
    with pytest.raises(ValueError, match="no epochs"):
        R.plot_training_curves(empty, tmp_path / "b.png")


def test_read_history(history):
    h = R.read_history(history)
    assert int(np.nanargmax(h["val_mlrap"])) == 2
    np.testing.assert_allclose(h["epoch"], [0, 1, 2, 3])


def test_plot_per_class_ap(tmp_path):
    ap = [0.5, None, 0.9, float("nan"), 0.1]
    out = R.plot_per_class_ap(labels(5), ap, tmp_path / "ap.png", n_pos=[3, 0, 2, 0, 7])
    png_size(out)
    with pytest.raises(ValueError):
        R.plot_per_class_ap(labels(4), ap, tmp_path / "x.png")


def test_figures_grow_with_classes(tmp_path):
    small = R.per_class_figsize(20, labels(20), 8.0)
    large = R.per_class_figsize(1000, labels(1000), 6.0)
    assert large[1] > 10 * small[1]
    # every bar row at least as tall as its font
    assert (large[1] - 1.4) / 1000 >= 6.0 / 72
    s20, _, f20 = R.confusion_figsize(20, labels(20))
    s1000, cell, f1000 = R.confusion_figsize(1000, labels(1000))
    assert s1000 > 5 * s20 and f1000 >= 5.0 and cell * 72 >= f1000
    # a real 120-class chart: taller than wide, under the pixel cap
    rng = np.random.default_rng(0)
    w, h = png_size(R.plot_per_class_ap(labels(120), rng.random(120), tmp_path / "ap120.png"))
    assert h > w and max(w, h) <= R.MAX_SIDE_PX + 10


def test_plot_confusion(tmp_path):
    cm = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 2]])
    png_size(R.plot_confusion(labels(3), cm, tmp_path / "cm.png"))
    with pytest.raises(ValueError):
        R.plot_confusion(labels(2), cm, tmp_path / "bad.png")
    rng = np.random.default_rng(0)
    p = rng.integers(0, 60, 300)
    cm60 = confusion_matrix(p, rng.random((300, 60)), 60)
    w, h = png_size(R.plot_confusion(labels(60), cm60, tmp_path / "cm60.png"))
    assert w > 800 and h > 800


def test_write_report_round_trip(tmp_path, history):
    rng = np.random.default_rng(5)
    n_files, n_classes = 40, 6
    scores = rng.random((n_files, n_classes))
    primary = rng.integers(0, n_classes, n_files)
    primary[:n_classes] = np.arange(n_classes)
    bg = rng.random((n_files, n_classes)) < 0.1
    metrics = evaluate_scores(scores, primary, bg)
    out_dir = tmp_path / "report"
    paths = R.write_report(
        out_dir, metrics, labels(n_classes),
        per_file={"scores": scores, "primary_idx": primary,
                  "files": [f"rec{i}.wav" for i in range(n_files)]},
        history_csv=history,
    )
    assert set(paths) == {"report", "per_class_ap", "per_class_ap_csv", "per_file_csv",
                          "confusion", "training_curves"}
    for key in ("per_class_ap", "confusion", "training_curves"):
        assert paths[key].parent == out_dir
        png_size(paths[key])
    assert json.loads(paths["report"].read_text()) == metrics
    assert paths["per_file_csv"].read_text().count("\n") == n_files + 1
    assert not list(out_dir.glob(".*.tmp"))

    # regenerating the same run's report replaces it
    metrics2 = dict(metrics, mlrap=0.123, extra=np.float32(0.5), nan_value=float("nan"))
    paths2 = R.write_report(out_dir, metrics2, labels(n_classes))
    assert set(paths2) == {"report", "per_class_ap", "per_class_ap_csv"}
    loaded = json.loads(paths2["report"].read_text())
    assert loaded["mlrap"] == 0.123 and loaded["extra"] == 0.5 and loaded["nan_value"] is None


def test_write_report_minimal(tmp_path):
    paths = R.write_report(tmp_path / "r", {"mrr": 0.5, "n_files": 2}, ["a", "b"])
    assert set(paths) == {"report"}
    assert json.loads(paths["report"].read_text()) == {"mrr": 0.5, "n_files": 2}
    with pytest.raises(ValueError):
        R.write_report(tmp_path / "r2", {"per_class_ap": [0.5]}, ["a", "b"])
