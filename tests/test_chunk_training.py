"""Training on `birdnet-tf extract` PNG chunks: the 2018 baseline's input path into the same trainer.

extract (64×32 chunks) → train with the kahl2018 recipe shrunk → run folder, validation metrics,
evaluation report → export (waveform in: ChunkSpectrogram in front of the image model) → predict;
the S/N interval filter against a hand count from the PNG names; the clear errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, write_synthetic_dataset

RECIPE = "pipelines/kahl2018_baseline.yaml"
CHUNK_SETTINGS = ["chunks.width=64", "chunks.height=32"]
SMALL = ["train.epochs=1", "model.filters=4,8,8,8", "model.resnet_k=1", "model.resnet_n=1", "data.batch_size=4",
         "data.max_eval_windows=3", *CHUNK_SETTINGS]


def _set(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """The synthetic dataset (3 files per class, as the ``synthetic_dataset`` fixture writes it) and its
    ``birdnet-tf extract`` folder at 64×32."""
    root = tmp_path_factory.mktemp("chunk_training")
    data = write_synthetic_dataset(root / "synth", files_per_class=3)
    chunks = root / "chunks"
    rc, out, err = run_cli(["extract", str(data), "--out", str(chunks), "--config", RECIPE, *_set(CHUNK_SETTINGS),
                            "--workers", "1", "--no-progress"])
    assert rc == 0, err + out
    return data, chunks


def _hand_count(chunks: Path, train_keys: set[str], lo: int, hi: int) -> int:
    """Training chunks by hand: signal rows of training files whose name's score × 1e4 is in [lo, hi]."""
    table = pd.read_csv(chunks / "chunks.csv", keep_default_na=False)
    score4 = table["png"].map(lambda p: int(Path(p).stem.rsplit("_", 1)[1]))
    keep = (table["kind"] == "signal") & table["source_key"].isin(train_keys) & (score4 >= lo) & (score4 <= hi)
    return int(keep.sum())


def test_trains_on_png_chunks_evaluates_exports_and_predicts(extracted, tmp_path):
    import tensorflow as tf

    from birdnet_tf.config import read_config_json
    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.data.chunk_folder import read_chunk_png
    from birdnet_tf.frontend.chunks import chunk_spectrogram
    from birdnet_tf.models.build import build_model, load_keras_model

    data, chunks = extracted
    run, export = tmp_path / "run", tmp_path / "export"
    rc, out, err = run_cli(["train", "--config", RECIPE, "--data", str(chunks), "--out", str(run), *_set(SMALL)])
    assert rc == 0, err + out[-3000:]

    # run folder: config records the chunks folder and the input; split.csv has files with chunk counts
    cfg, extra = read_config_json(run / "config.json")
    assert extra["input"] == "chunks" and Path(extra["data_dir"]) == chunks.resolve()
    split = pd.read_csv(run / "split.csv", keep_default_na=False)
    index = pd.read_csv(chunks / "chunks.csv", keep_default_na=False)
    assert set(split["key"]) == set(index["source_key"])  # every file with a PNG, once
    signal = index[index["kind"] == "signal"].groupby("source_key").size()
    assert dict(zip(split["key"], split["signal_chunks"])) == {k: int(signal.get(k, 0)) for k in split["key"]}
    assert set(split["split"]) == {"train", "val"}  # extract had no split ("all"): split here by file
    labels = (run / "labels.txt").read_text().split()
    assert labels == sorted(set(index["label"]))

    # S/N interval: the training chunks are exactly the hand count from the PNG names
    train_keys = set(split.loc[split["split"] == "train", "key"])
    n_train = _hand_count(chunks, train_keys, 50, 2500)
    n_signal_train = int(index[(index["kind"] == "signal") & index["source_key"].isin(train_keys)].shape[0])
    assert 0 < n_train < n_signal_train  # the interval really drops some of this data's chunks
    assert f"{n_train} training chunks within chunks.s2n_interval" in out
    assert f"on {n_train} chunks of {len(train_keys)} files" in out
    assert int(split.loc[split["split"] == "train", "s2n_chunks"].sum()) == n_train

    # validation per epoch with FileValidation's metrics; the best model is the image model
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 1 and 0 <= history["val_mlrap_bg"].iloc[0] <= 1
    best = load_keras_model(run / "best.keras")
    assert tuple(best.inputs[0].shape) == (None, 64, 32)
    on_the_fly = build_model(cfg, len(labels))
    assert [layer.name for layer in best.layers][1:] == \
        [layer.name for layer in on_the_fly.layers if layer.name not in ("waveform", "chunk_spectrogram")]

    # evaluate: the report of the training run, and evaluate again with another pooling
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["pooling"] == "median" and set(report["by_pooling"]) >= {"mean", "max", "median"}
    val_with_chunks = [k for k in split.loc[split["split"] == "val", "key"] if signal.get(k, 0) > 0]
    assert report["n_files"] == len(val_with_chunks)
    assert report["n_windows"] == sum(int(signal[k]) for k in val_with_chunks)
    rc, out, err = run_cli(["evaluate", str(run), "--pooling", "mean", "--out", str(tmp_path / "eval2")])
    assert rc == 0, err
    again = json.loads((tmp_path / "eval2" / "report.json").read_text())
    assert again["pooling"] == "mean" and again["mlrap"] == pytest.approx(report["by_pooling"]["mean"]["mlrap"])
    assert (tmp_path / "eval2" / "confusion.png").is_file()

    # export: a waveform model; on a chunk's waveform it scores as the image model on that chunk's PNG
    rc, out, err = run_cli(["export", str(run), "--out", str(export)])
    assert rc == 0, err
    serve = tf.saved_model.load(str(export)).signatures["serving_default"]
    rows = index[index["kind"] == "signal"].head(6)
    sr = cfg.chunks.sample_rate_hz
    waves = []
    for row in rows.itertuples():
        audio, _ = load_audio(data / row.source_key, sr)
        start = int(round(row.start_s * sr))
        waves.append(np.pad(audio[start:start + sr], (0, max(0, start + sr - len(audio))))[:sr])
    waves = np.stack(waves).astype(np.float32)
    exported = serve(waveform=tf.constant(waves))["scores"].numpy()
    float_images = chunk_spectrogram(waves, cfg.chunks).numpy()
    pngs = np.stack([read_chunk_png(chunks / p) for p in rows["png"]])
    assert np.abs(float_images - pngs).max() <= 0.5 / 255 + 1e-6  # the PNGs are these images, 8-bit rounded
    on_float = best.predict(float_images, verbose=0)
    on_png = best.predict(pngs, verbose=0)
    assert np.abs(exported - on_float).max() < 1e-5  # same network, same weights, same spectrogram
    # the PNG's 8-bit rounding (≤ 0.5/255 per cell): measured max |Δscore| 2.9e-4 on this run's 14 signal
    # chunks (5.8e-4 after 11 epochs); 0.01 allowed
    assert np.abs(exported - on_png).max() < 0.01
    assert np.array_equal(exported.argmax(axis=1), on_png.argmax(axis=1))
    config = json.loads((export / "assets.extra" / "config.json").read_text())
    assert "chunk images" in config["trained_on"]

    # predict on WAV files through the export, unchanged
    csv = tmp_path / "p.csv"
    rc, out, err = run_cli(["predict", str(export), str(data / "tone1k"), "--pooling", "mean", "--out", str(csv),
                            "--no-progress"])
    assert rc == 0, err
    table = pd.read_csv(csv)
    assert len(table) == 3 and np.allclose(table[labels].sum(axis=1), 1.0, atol=1e-4)


def test_s2n_interval_filter_matches_a_hand_count(extracted):
    from birdnet_tf.config import load_config
    from birdnet_tf.data.pipeline import chunk_file_table, read_chunk_index

    _, chunks = extracted
    index = pd.read_csv(chunks / "chunks.csv", keep_default_na=False)
    keys = set(index["source_key"])
    for lo, hi in [(50, 2500), (50, 1200), (1200, 9999), (0, 10000)]:
        cfg = load_config(RECIPE, [*CHUNK_SETTINGS, f"chunks.s2n_interval={lo},{hi}"])
        table = read_chunk_index(chunks, cfg)
        picked = table[(table["kind"] == "signal") & table["in_s2n_interval"]]
        assert len(picked) == _hand_count(chunks, keys, lo, hi), (lo, hi)
        assert int(chunk_file_table(table)["s2n_chunks"].sum()) == len(picked)
    assert _hand_count(chunks, keys, 0, 10000) == int((index["kind"] == "signal").sum())


def test_clear_errors(extracted, tmp_path):
    _, chunks = extracted

    def train(data, *sets, recipe=RECIPE):
        return run_cli(["train", "--config", recipe, "--data", str(data), "--out", str(tmp_path / "run"),
                        *_set([*SMALL, *sets])])

    # a chunks folder without chunks.csv (an interrupted extract)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(chunks / "extract_config.json", partial / "extract_config.json")
    rc, _, err = train(partial)
    assert rc == 2 and "partial: has no chunks.csv" in err

    # no training chunk in the S/N interval
    rc, _, err = train(chunks, "chunks.s2n_interval=9990,9999")
    assert rc == 2 and "no training chunk has a signal/noise score × 1e4 within chunks.s2n_interval [9990, 9999]" in err

    # a recipe that is not a chunks recipe
    rc, _, err = run_cli(["train", "--data", str(chunks), "--out", str(tmp_path / "run2"),
                          "--set", "train.epochs=1"])
    assert rc == 2 and "frontend.kind=chunks" in err and "frontend.kind=mel" in err
    assert not (tmp_path / "run2").exists()

    # chunks settings other than the extract's, each difference named
    rc, _, err = train(chunks, "chunks.height=48", "chunks.top_db=60")
    assert rc == 2 and "chunks.height = 32 there, 48 in the recipe" in err and "chunks.top_db = 80.0 there, 60.0" in err
    assert not (tmp_path / "run" / "config.json").exists()
