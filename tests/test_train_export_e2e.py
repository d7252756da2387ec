"""End to end through the command line, in process: prepare → train → export → predict.

All runs use the tiny settings of ``conftest.TINY_SETTINGS`` (seconds per epoch on a CPU).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from conftest import SYNTH_CLASSES, interrupt_training_at_epoch_2, run_cli, tiny_set_args  # noqa: E402

import birdnet_tf  # noqa: E402
from birdnet_tf.cli import main  # noqa: E402
from birdnet_tf.config import Config, read_config_json  # noqa: E402
from birdnet_tf.data.audio import load_audio  # noqa: E402
from birdnet_tf.models.build import load_keras_model  # noqa: E402


def check_run_folder(run: Path, labels: list[str], epochs: int) -> dict:
    """Asserts the documented run-folder layout; returns state.json."""
    cfg_json = json.loads((run / "config.json").read_text())
    assert cfg_json["birdnet_tf_version"] == birdnet_tf.__version__
    cfg, extra = read_config_json(run / "config.json")
    assert cfg.train.epochs == epochs
    assert Path(extra["data_dir"]).is_dir()
    assert (run / "labels.txt").read_text().splitlines() == labels
    split = pd.read_csv(run / "split.csv")
    assert {"key", "split", "primary_label", "wav_path", "duration_s"} <= set(split.columns)
    assert set(split["split"]) == {"train", "val"}
    assert all(Path(p).is_file() for p in split["wav_path"])
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(epochs))
    assert {"loss", "val_loss", "val_mlrap_bg"} <= set(history.columns)
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == epochs and state["monitor"] == "val_mlrap_bg"
    assert 1 <= state["best_epoch"] <= epochs and 0 <= state["best"] <= 1
    assert (run / "best.keras").is_file()
    assert (run / "checkpoints" / "last.keras").is_file()
    for e in range(1, epochs + 1):
        assert (run / "checkpoints" / f"epoch_{e:03d}.weights.h5").is_file()
    return state


def check_export_folder(exp: Path, labels: list[str], sample_rate_hz: int) -> None:
    assert (exp / "saved_model.pb").is_file()
    assert (exp / "assets.extra" / "labels.txt").read_text().splitlines() == labels
    extra_cfg = json.loads((exp / "assets.extra" / "config.json").read_text())
    assert extra_cfg["birdnet_tf_version"] == birdnet_tf.__version__
    assert extra_cfg["labels"] == labels
    fn = tf.saved_model.load(str(exp)).signatures["serving_default"]
    spec = fn.structured_input_signature[1]
    assert list(spec) == ["waveform"]
    assert spec["waveform"].dtype == tf.float32 and spec["waveform"].shape.as_list() == [None, None]
    assert set(fn.structured_outputs) == {"scores"}
    for n in (sample_rate_hz // 10, 2 * sample_rate_hz, 3 * sample_rate_hz + 17):  # short inputs are looped
        x = (0.1 * np.random.default_rng(n).standard_normal((2, n))).astype(np.float32)
        scores = fn(waveform=tf.constant(x))["scores"].numpy()
        assert scores.shape == (2, len(labels)) and scores.dtype == np.float32
        assert np.all(np.isfinite(scores)) and scores.min() >= 0 and scores.max() <= 1


# ----------------------------------------------------------- (a) synthetic
def test_synthetic_end_to_end(trained_synthetic, tmp_path):
    ns = trained_synthetic
    labels = sorted(SYNTH_CLASSES)

    # prepare: resampled 16-bit WAVs at the model's rate + metadata.csv
    rc, out, _ = ns.steps["prepare"]
    assert "12 converted" in out and "0 failed" in out
    meta = pd.read_csv(ns.prepared / "metadata.csv")
    assert len(meta) == 12 and set(meta["primary_label"]) == set(SYNTH_CLASSES)
    _, rate = load_audio(ns.prepared / meta["filename"][0])
    assert rate == Config().audio.sample_rate_hz

    # train: run folder layout, evaluation report
    rc, out, _ = ns.steps["train"]
    assert "best model:" in out
    check_run_folder(ns.run, labels, epochs=1)
    report = json.loads((ns.run / "eval" / "report.json").read_text())
    assert report["n_files"] == 3 and report["split"] == "val"
    assert 0 <= report["mlrap"] <= 1
    assert list((ns.run / "eval").glob("*.png"))

    # export: the SavedModel contract; scores equal the Keras best model's
    check_export_folder(ns.export, labels, Config().audio.sample_rate_hz)
    x = (0.1 * np.random.default_rng(0).standard_normal((2, 2 * 22050))).astype(np.float32)
    keras_scores = load_keras_model(ns.run / "best.keras").predict(x, verbose=0)
    fn = tf.saved_model.load(str(ns.export)).signatures["serving_default"]
    np.testing.assert_allclose(fn(waveform=tf.constant(x))["scores"].numpy(), keras_scores, atol=1e-5)

    # predict: a file plus a folder, one row per file, labels in order
    one = ns.data / "tone1k" / "tone1k_0.wav"  # exactly 2 s = one window
    folder = ns.data / "chirp2to4k"
    csv = tmp_path / "pred.csv"
    rc, out, err = run_cli(["predict", str(ns.export), str(one), str(folder), "--out", str(csv), "--no-progress"])
    assert rc == 0, err
    table = pd.read_csv(csv)
    assert list(table.columns) == ["file", "start_s", "end_s", *labels]
    files = [str(one)] + sorted(str(p) for p in folder.glob("*.wav"))
    assert list(table["file"]) == files
    np.testing.assert_allclose(table["start_s"], 0.0)
    np.testing.assert_allclose(table["end_s"][0], 2.0)
    scores = table[labels].to_numpy()
    assert np.all((scores >= 0) & (scores <= 1))
    # the one-window file's row is the export's score of the resampled file (whole-recording engine)
    wave, _ = load_audio(one, 22050)
    direct = fn(waveform=tf.constant(wave[None]))["scores"].numpy()[0]
    np.testing.assert_allclose(table.loc[0, labels].to_numpy(float), direct, atol=1e-5)
    # ... and the sliding engine agrees with it
    csv_s = tmp_path / "pred_sliding.csv"
    rc, _, err = run_cli(["predict", str(ns.export), str(one), "--engine", "sliding", "--out", str(csv_s),
                          "--no-progress"])
    assert rc == 0, err
    np.testing.assert_allclose(pd.read_csv(csv_s).loc[0, labels].to_numpy(float), direct, atol=2e-6)

    # predict per window
    csv_w = tmp_path / "windows.csv"
    rc, _, err = run_cli(["predict", str(ns.export), str(one), str(ns.data / "tone1k" / "tone1k_3.wav"),
                          "--window-s", "1", "--out", str(csv_w), "--no-progress"])
    assert rc == 0, err
    win = pd.read_csv(csv_w)
    assert list(win.columns) == ["file", "start_s", "end_s", *labels]
    first = win[win["file"] == str(one)]
    np.testing.assert_allclose(first["start_s"], [0.0, 1.0])
    np.testing.assert_allclose(first["end_s"], [1.0, 2.0])
    last = win[win["file"] != str(one)]  # 4-s file
    np.testing.assert_allclose(last["start_s"], [0.0, 1.0, 2.0, 3.0])
    assert np.all((win[labels].to_numpy() >= 0) & (win[labels].to_numpy() <= 1))


# ---------------------------------------------------------------- (b) real
def test_real_subset_end_to_end(real_subset, tmp_path, monkeypatch):
    data = real_subset()
    meta = pd.read_csv(data / "metadata.csv")
    labels = sorted(meta["primary_label"].unique())
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIRDNET_TF_CACHE", str(cache))
    run, exp = tmp_path / "run", tmp_path / "export"

    rc, out, err = run_cli(["train", "--data", str(data), "--out", str(run), *tiny_set_args(), "--no-eval"])
    assert rc == 0, out[-2000:] + err[-2000:]
    # raw Ogg/MP3 were prepared once into $BIRDNET_TF_CACHE; the dataset folder is untouched
    prepared = [p.parent for p in cache.rglob("metadata.csv")]
    assert len(prepared) == 1
    assert len(list(prepared[0].rglob("*.wav"))) == len(meta)
    assert sorted(p.name for p in data.iterdir()) == ["audio", "metadata.csv"]
    check_run_folder(run, labels, epochs=1)
    split = pd.read_csv(run / "split.csv")
    assert len(split) == len(meta)
    # split by recordist: nobody on both sides, every class keeps a training file
    train_rec = set(split.loc[split["split"] == "train", "recordist"])
    val_rec = set(split.loc[split["split"] == "val", "recordist"])
    assert train_rec and val_rec and not train_rec & val_rec
    assert set(split.loc[split["split"] == "train", "primary_label"]) == set(labels)

    rc, out, err = run_cli(["export", str(run), "--out", str(exp)])
    assert rc == 0, err
    check_export_folder(exp, labels, 22050)

    ogg = data / "audio" / "XC9415.ogg"
    mp3 = data / "audio" / "XC5164.mp3"
    csv = tmp_path / "real.csv"
    rc, out, err = run_cli(["predict", str(exp), str(ogg), str(mp3), "--out", str(csv), "--no-progress"])
    assert rc == 0, err
    table = pd.read_csv(csv)
    assert list(table.columns) == ["file", "start_s", "end_s", *labels]
    assert list(table["file"]) == [str(ogg), str(mp3)]
    assert np.all((table[labels].to_numpy() >= 0) & (table[labels].to_numpy() <= 1))


# --------------------------------------------------------------- (c) resume
def test_rerun_with_other_config_is_refused_and_same_config_is_finished(trained_synthetic, tmp_path, capsys):
    ns = trained_synthetic
    run = tmp_path / "run"
    shutil.copytree(ns.run, run)
    before = {f: (run / f).read_bytes() for f in ("history.csv", "state.json", "config.json")}
    last_mtime = (run / "checkpoints" / "last.keras").stat().st_mtime_ns

    rc = main(["train", "--data", str(ns.prepared), "--out", str(run), *tiny_set_args(["train.epochs=2"])])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("birdnet-tf: error: ")
    assert str(run) in err and "different config" in err and "train.epochs: 1 -> 2" in err

    rc = main(["train", "--data", str(ns.prepared), "--out", str(run), *tiny_set_args()])
    out = capsys.readouterr().out
    assert rc == 0
    assert "already finished" in out
    assert {f: (run / f).read_bytes() for f in before} == before
    assert (run / "checkpoints" / "last.keras").stat().st_mtime_ns == last_mtime


def test_refuses_non_run_folder_that_is_not_empty(trained_synthetic, tmp_path, capsys):
    out_dir = tmp_path / "something"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    rc = main(["train", "--data", str(trained_synthetic.prepared), "--out", str(out_dir), *tiny_set_args()])
    err = capsys.readouterr().err
    assert rc == 2 and "not empty" in err and str(out_dir) in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["notes.txt"]


def test_interrupted_run_resumes_after_last_finished_epoch(trained_synthetic, tmp_path, monkeypatch, capsys):
    """Ctrl-C during epoch 2 of 2, then the same command again: only epoch 2 runs."""
    prepared = trained_synthetic.prepared
    run = tmp_path / "run"
    argv = ["train", "--data", str(prepared), "--out", str(run), "--no-eval",
            *tiny_set_args(["train.epochs=2", "train.steps_per_epoch=2"])]

    resume_normally = interrupt_training_at_epoch_2(monkeypatch)
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 130 and "run the same command again to resume" in captured.err
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 1
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [0]
    assert not (run / "checkpoints" / "epoch_002.weights.h5").exists()

    resume_normally()
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0
    assert "resuming" in out and "after epoch 1" in out
    assert "epochs 2..2" in out
    state = check_run_folder(run, sorted(SYNTH_CLASSES), epochs=2)  # history epochs exactly [0, 1]
    # the optimizer continued: two epochs of two steps each
    assert int(load_keras_model(run / "checkpoints" / "last.keras").optimizer.iterations.numpy()) == 4

    # a third call finds the run finished and changes nothing
    history = (run / "history.csv").read_bytes()
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    assert (run / "history.csv").read_bytes() == history


# ------------------------------------------------- (d) refusing to overwrite
def test_export_refuses_non_empty_out_without_force(trained_synthetic, tmp_path, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc = main(["export", str(trained_synthetic.run), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("birdnet-tf: error: ") and str(out) in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not list(tmp_path.glob(".*partial"))

    # --force replaces only a folder this package wrote: a folder of someone else's files stays
    rc = main(["export", str(trained_synthetic.run), "--out", str(out), "--force"])
    err = capsys.readouterr().err
    assert rc == 2 and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    # ... while an earlier export is replaced whole
    assert main(["export", str(trained_synthetic.run), "--out", str(tmp_path / "exp2")]) == 0
    (tmp_path / "exp2" / "stale.txt").write_text("x")
    capsys.readouterr()
    assert main(["export", str(trained_synthetic.run), "--out", str(tmp_path / "exp2"), "--force"]) == 0
    assert (tmp_path / "exp2" / "saved_model.pb").is_file() and not (tmp_path / "exp2" / "stale.txt").exists()


def test_predict_refuses_existing_out_without_force(trained_synthetic, tmp_path, capsys):
    csv = tmp_path / "pred.csv"
    csv.write_text("precious\n")
    wav = trained_synthetic.data / "noise6k" / "noise6k_0.wav"
    rc = main(["predict", str(trained_synthetic.export), str(wav), "--out", str(csv), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("birdnet-tf: error: ") and str(csv) in err and "--force" in err
    assert csv.read_text() == "precious\n"

    rc = main(["predict", str(trained_synthetic.export), str(wav), "--out", str(csv), "--force", "--no-progress"])
    capsys.readouterr()
    assert rc == 0
    assert list(pd.read_csv(csv)["file"]) == [str(wav)]


# ---------------------------------------------------------------- evaluate
def test_evaluate_command_writes_report_elsewhere(trained_synthetic, tmp_path):
    out = tmp_path / "report"
    rc, stdout, err = run_cli(["evaluate", str(trained_synthetic.run), "--split", "all", "--pooling", "max",
                               "--out", str(out)])
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == "all" and report["pooling"] == "max" and report["n_files"] == 12
    assert set(report["by_pooling"]) >= {"max", "mean"}
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == ["file", *sorted(SYNTH_CLASSES)] and len(scores) == 12
    assert "mlrap" in stdout
    # the run's own report is untouched
    assert json.loads((trained_synthetic.run / "eval" / "report.json").read_text())["split"] == "val"
