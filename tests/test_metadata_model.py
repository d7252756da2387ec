"""The metadata network (metadata.use only / combined): builders, training, evaluation, export, predict.

The synthetic dataset here has identical noise as audio for every file, so only the metadata
(class ``janbird`` recorded in January at latitude ~10, ``julbird`` in July at ~-30) tells
the classes apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

tf = pytest.importorskip("tensorflow")

from conftest import TINY_SETTINGS, interrupt_training_at_epoch_2, run_cli, tiny_set_args  # noqa: E402

from birdnet_tf.config import Config, read_config_json  # noqa: E402
from birdnet_tf.errors import BirdnetError, ConfigError  # noqa: E402

LABELS = ["janbird", "julbird"]


def write_meta_dataset(root: Path, per_class: int = 6, val_per_class: int = 2, seconds: float = 1.0) -> Path:
    """A metadata.csv dataset of identical noise recordings whose class only the metadata tells.

    Per class ``per_class`` files (the last ``val_per_class`` in the val split); values are
    messy on purpose (``7.30 am``, ``ca. 500 m``, ``?``, a date with an unknown day).
    """
    (root / "audio").mkdir(parents=True)
    noise = 0.1 * np.random.default_rng(0).standard_normal(int(22050 * seconds))
    rows = []
    for label in LABELS:
        for i in range(per_class):
            name = f"audio/{label}_{i}.wav"
            sf.write(root / name, noise, 22050, subtype="PCM_16")
            jan = label == "janbird"
            rows.append({
                "filename": name, "primary_label": label,
                "date": (f"2015-01-{3 + 4 * i:02d}" if i else "2015-01-00") if jan else f"2016-07-{2 + 4 * i:02d}",
                "time": "7.30 am" if jan else "18:00",
                "latitude": f"{10 + 0.2 * i:.1f}" if jan else f"{-30 - 0.2 * i:.1f}",
                "longitude": "-66.5" if jan else "W 60",
                "elevation": "ca. 500 m" if jan else "?",
                "split": "val" if i >= per_class - val_per_class else "train",
            })
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def prediction_csv(path: Path, files: list[Path]) -> Path:
    """A --metadata CSV for ``files`` (names only, upper-case column names, an unknown column, no elevation)."""
    rows = []
    for f in files:
        jan = f.name.startswith("janbird")
        rows.append({"File": f.name, "Date": "2019-01-12" if jan else "2019-07-20",
                     "time": "7.30 am" if jan else "?", "latitude": "10.3" if jan else "-30.1",
                     "longitude": "-66.4" if jan else "", "notes": "whatever"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------ config
def test_config_section_defaults_and_old_configs():
    cfg = Config()
    assert cfg.metadata.use == "none" and cfg.metadata.hidden == (256, 512)
    assert cfg.metadata.date_size == 12 and cfg.metadata.time_size == 12
    old = cfg.to_dict()
    del old["metadata"]  # a config.json written before the section existed
    assert Config.from_dict(old, strict=False).metadata == cfg.metadata
    assert Config().replace(["metadata.hidden=32,16"]).metadata.hidden == (32, 16)

    from birdnet_tf.models.build import build_model

    with pytest.raises(ConfigError, match="metadata.use"):
        build_model(Config().replace(["metadata.use=sometimes"]), 2)
    with pytest.raises(ConfigError, match="metadata.date_size"):
        build_model(Config().replace(["metadata.use=only", "metadata.date_size=5"]), 2)


# ---------------------------------------------------------------------- builders
def _meta_rows(cfg: Config, n: int, seed: int = 0) -> np.ndarray:
    from birdnet_tf.models.metadata import make_encoder

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"date": [f"2015-{m:02d}-10" for m in rng.integers(1, 13, n)],
                       "time": ["?" if i % 3 == 0 else f"{h}:15" for i, h in enumerate(rng.integers(0, 24, n))],
                       "latitude": rng.uniform(-40, 40, n).round(2), "longitude": rng.uniform(-80, -50, n).round(2),
                       "elevation": ["?" if i % 2 else "ca. 300 m" for i in range(n)]})
    return make_encoder(cfg).fit(df).transform(df)


def test_metadata_model_shapes_and_training_only_randomness():
    from birdnet_tf.models.build import build_model
    from birdnet_tf.models.metadata import num_features

    cfg = Config().replace(["metadata.use=only", "metadata.hidden=16,8", "metadata.date_size=3",
                            "metadata.noise_std=0.5", "metadata.dropout=0.3"])
    assert num_features(cfg) == 3 + 1 + 12 + 1 + 6
    model = build_model(cfg, 4)
    assert [t.name for t in model.inputs] == ["metadata"] and model.output_shape == (None, 4)
    x = _meta_rows(cfg, 6)
    assert x.shape == (6, num_features(cfg))
    a, b = model({"metadata": x}, training=False).numpy(), model({"metadata": x}, training=False).numpy()
    np.testing.assert_array_equal(a, b)  # no noise, no dropout in inference
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)  # softmax scores
    c = model({"metadata": x}, training=True).numpy()
    assert c.shape == (6, 4) and np.all(np.isfinite(c)) and not np.allclose(a, c)
    names = [layer.name for layer in model.layers]
    assert names[-2:] == ["meta_logits", "scores"] and "meta_noise" in names and "meta_bn_2" in names


def test_noise_spares_indicators_and_missing_fields():
    from birdnet_tf.models.metadata import MetadataNoise, feature_names, indicator_index

    cfg = Config()
    names = feature_names(cfg)
    idx = indicator_index(names)
    assert idx[names.index("date_5")] == names.index("date_missing")
    assert idx[names.index("latitude")] == names.index("latitude_missing")
    assert idx[names.index("time_missing")] == -1
    x = _meta_rows(cfg, 64, seed=1)
    layer = MetadataNoise(1.0, idx)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
    y = layer(x, training=True).numpy()
    changed = ~np.isclose(x, y)
    indicator = np.array([i == -1 for i in idx])
    assert not changed[:, indicator].any()  # indicators exact
    missing_value = np.zeros_like(x, bool)
    for j, i in enumerate(idx):
        if i >= 0:
            missing_value[:, j] = x[:, i] == 1
    assert missing_value.any() and not changed[missing_value].any()  # missing fields stay 0
    known_value = ~missing_value & ~indicator[None, :]
    assert changed[known_value].mean() > 0.99  # every known value got noise


def test_combined_model_names_and_init_from_audio_run(tmp_path):
    from birdnet_tf.models.build import build_model, load_keras_model
    from birdnet_tf.train.init_weights import apply_init_weights, read_init_weights

    audio_cfg = Config().replace(TINY_SETTINGS)
    audio = build_model(audio_cfg, 3)
    x = (0.1 * np.random.default_rng(0).standard_normal((2, 2 * 22050))).astype(np.float32)
    for layer in audio.layers:  # make its weights unlike a fresh model's
        if layer.name == "frame_logits":
            layer.set_weights([w + 0.3 for w in layer.get_weights()])
    audio.save(tmp_path / "audio.keras")

    cfg = audio_cfg.replace(["metadata.use=combined", "metadata.hidden=8",
                             f"train.init_weights={tmp_path / 'audio.keras'}"])
    combined = build_model(cfg, 3)
    assert {t.name for t in combined.inputs} == {"waveform", "metadata"}
    audio_names = {layer.name for layer in audio.layers}
    assert audio_names <= {layer.name for layer in combined.layers}
    weights = read_init_weights(cfg, 3, log=lambda m: None)
    assert set(weights) == {layer.name for layer in audio.layers if layer.weights}
    apply_init_weights(combined, weights)
    reloaded = load_keras_model(tmp_path / "audio.keras")
    for name in weights:
        for a, b in zip(combined.get_layer(name).get_weights(), reloaded.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # meta_logits starts at zero: the combined model starts as the audio model, whatever the metadata
    meta = _meta_rows(cfg, 2)
    np.testing.assert_allclose(combined({"waveform": x, "metadata": meta}, training=False).numpy(),
                               audio(x, training=False).numpy(), atol=1e-6)


def test_whole_recording_engine_adds_the_metadata_bias():
    from birdnet_tf.infer.whole import WholeRecordingModel
    from birdnet_tf.models.surgery import missing_metadata, split_model
    from birdnet_tf.models.build import build_model
    from birdnet_tf.models.metadata import feature_names

    cfg = Config().replace([*TINY_SETTINGS, "metadata.use=combined", "metadata.hidden=8"])
    model = build_model(cfg, 3)
    layer = model.get_layer("meta_logits")  # not zero, so the bias shows
    layer.set_weights([np.random.default_rng(1).normal(0, 1, w.shape).astype(np.float32) for w in layer.get_weights()])
    meta = _meta_rows(cfg, 2)
    wave = (0.1 * np.random.default_rng(0).standard_normal((2, 2 * 22050))).astype(np.float32)  # one window each
    keras_scores = model({"waveform": wave, "metadata": meta}, training=False).numpy()
    assert not np.allclose(keras_scores[0], model({"waveform": wave[:1], "metadata": meta[1:]}).numpy()[0], atol=1e-3)
    whole = WholeRecordingModel.from_keras(model, cfg)
    assert whole.uses_metadata
    results = sorted(whole.score_many(list(wave), metadata=meta), key=lambda r: r[0])
    for (index, res, error), expected in zip(results, keras_scores):
        assert error is None
        np.testing.assert_allclose(res.pooled(cfg.data.file_pooling), expected, atol=1e-5)
    # without metadata: the recordings' metadata counts as unknown, as in the sliding path
    unknown = missing_metadata(cfg, 2)
    assert unknown[0, feature_names(cfg).index("latitude_missing")] == 1 and unknown[0].sum() == 5
    expected = model({"waveform": wave, "metadata": unknown}, training=False).numpy()
    for index, res, _ in whole.score_many(list(wave)):
        np.testing.assert_allclose(res.pooled(cfg.data.file_pooling), expected[index], atol=1e-5)

    noisy = build_model(cfg.replace(["model.temporal_pooling=noisy-or", "model.output_activation=sigmoid"]), 3)
    with pytest.raises(BirdnetError, match="noisy-or"):  # does not commute with the bias: window by window
        split_model(noisy)


# ---------------------------------------------------------------- messy metadata
def test_messy_prediction_metadata_encodes(tmp_path):
    from birdnet_tf.infer.predict import match_metadata, read_metadata_csv
    from birdnet_tf.models.metadata import make_encoder

    csv = tmp_path / "meta.csv"
    pd.DataFrame({"FileName": ["a.wav", "sub/b.flac", "c", "dup/x.wav", "other/x.wav"],
                  "date": ["?", "2012-00-00", "29.03.2012", "2012-13-40", ""],
                  "Time": ["7.30 am", "11:00 AST", "noon", "25:00", "7-8 am"],
                  "latitude": ["18°08'35\"N", "?", "18,14", "abc", "-18.1"],
                  "comment": ["x", "y", "z", "", ""]}).to_csv(csv, index=False)  # no longitude, no elevation
    table = read_metadata_csv(csv)
    assert list(table.columns) == ["file", "date", "time", "latitude"]
    files = [str(tmp_path / "a.wav"), "/elsewhere/b.flac", "c.mp3", "x.wav", "unknown.wav"]
    rows, matched = match_metadata(files, table)
    assert list(matched) == [True, True, True, False, False]  # x.wav is ambiguous, unknown.wav absent
    enc = make_encoder(Config()).fit(pd.DataFrame({"latitude": ["10", "20"]}))
    x = enc.transform(rows)
    assert x.shape == (5, enc.num_features) and np.all(np.isfinite(x))
    col = {name: i for i, name in enumerate(enc.feature_names)}
    np.testing.assert_array_equal(x[:, col["date_missing"]], [1, 1, 0, 1, 1])  # "?", unknown month, ok, bad, none
    np.testing.assert_array_equal(x[:, col["time_missing"]], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(x[:, col["latitude_missing"]], [0, 1, 0, 1, 1])
    assert np.all(x[:, col["elevation_missing"]] == 1) and np.all(x[:, col["longitude_missing"]] == 1)

    bad = tmp_path / "bad.csv"
    pd.DataFrame({"name": ["a.wav"], "date": ["2012-01-01"]}).to_csv(bad, index=False)
    with pytest.raises(BirdnetError, match=r"bad\.csv.*'file'"):
        read_metadata_csv(bad)


# ------------------------------------------------------------- metadata-only run
def test_metadata_only_run_learns_evaluates_exports_and_predicts(tmp_path):
    from birdnet_tf.data.metadata import METADATA_ENCODER_FILENAME
    from birdnet_tf.export import ExportedModel, export_run
    from birdnet_tf.infer.predict import predict
    from birdnet_tf.train.trainer import train

    data = write_meta_dataset(tmp_path / "data")
    cfg = Config().replace([*TINY_SETTINGS, "metadata.use=only", "metadata.hidden=32", "metadata.dropout=0.1",
                            "train.epochs=4", "train.learning_rate=0.01", "data.min_excerpts_per_file=4",
                            "data.max_excerpts_per_file=4"])
    logs = []
    summary = train(cfg, data, tmp_path / "run", workers=1, log=logs.append)
    run = Path(summary["run_dir"])
    text = "\n".join(map(str, logs))
    assert "metadata MLP" in text and "elevation" in text and "missing 4" in text  # julbird's '?' in training
    assert (run / METADATA_ENCODER_FILENAME).is_file()
    _, extra = read_config_json(run / "config.json")
    assert extra["metadata_features"] == 32
    split = pd.read_csv(run / "split.csv", keep_default_na=False)
    assert {"date", "time", "latitude", "longitude", "elevation"} <= set(split.columns)
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["n_files"] == 4 and report["top1"] >= 0.9  # chance is 0.5
    scores = pd.read_csv(run / "eval" / "scores.csv", index_col="file")
    assert list(scores.columns) == LABELS and len(scores) == 4

    # evaluating again needs no dataset: the metadata is in split.csv
    (data / "metadata.csv").rename(data / "moved.csv")
    from birdnet_tf.evaluate.run import evaluate_run

    again = evaluate_run(run, out_dir=tmp_path / "eval2", log=lambda m: None)
    assert again["top1"] == report["top1"]

    out = export_run(run, tmp_path / "export", log=lambda m: None)
    assert (out / "assets.extra" / METADATA_ENCODER_FILENAME).is_file()
    meta_cfg = json.loads((out / "assets.extra" / "config.json").read_text())
    assert meta_cfg["metadata_features"] == 32 and len(meta_cfg["metadata_feature_names"]) == 32
    assert "windows" not in meta_cfg["signatures"]
    spec = tf.saved_model.load(str(out)).signatures["serving_default"].structured_input_signature[1]
    assert list(spec) == ["metadata"] and spec["metadata"].shape.as_list() == [None, 32]
    model = ExportedModel(out)
    assert model.uses_metadata and not model.uses_waveform

    files = sorted((data / "audio").glob("*.wav"))
    csv = prediction_csv(tmp_path / "pred_meta.csv", files)
    messages = []
    table, failures = predict(out, [str(f) for f in files], metadata=csv, progress=False, log=messages.append)
    assert not failures and len(table) == len(files)
    truth = [LABELS.index(f.name.split("_")[0]) for f in files]
    top1 = np.argmax(table[LABELS].to_numpy(), axis=1)
    assert (top1 == truth).mean() >= 0.9
    assert not any("no row" in m for m in messages)

    # without metadata: one warning, every file gets the same finite scores (the prior)
    messages = []
    table, _ = predict(out, [str(f) for f in files[:3]], progress=False, log=messages.append)
    warnings = [m for m in messages if m.startswith("warning") and "metadata" in m]
    assert len(warnings) == 1 and "3 file(s)" in warnings[0]
    values = table[LABELS].to_numpy()
    assert np.all(np.isfinite(values)) and np.allclose(values, values[0], atol=1e-6)

    # a CSV that lacks some files: those count as missing, with one warning naming how many
    messages = []
    partial = prediction_csv(tmp_path / "partial.csv", files[:2])
    table, _ = predict(out, [str(f) for f in files[:4]], metadata=partial, progress=False, log=messages.append)
    assert sum("2 of 4 file(s) have no row" in m for m in messages) == 1 and len(table) == 4


def test_interrupted_metadata_run_resumes_with_its_saved_encoder(tmp_path, monkeypatch):
    from birdnet_tf.data.metadata import METADATA_ENCODER_FILENAME
    from birdnet_tf.train import trainer

    data = write_meta_dataset(tmp_path / "data", per_class=3, val_per_class=1)
    cfg = Config().replace([*TINY_SETTINGS, "metadata.use=only", "metadata.hidden=8", "train.epochs=2",
                            "train.steps_per_epoch=2"])
    resume_normally = interrupt_training_at_epoch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, data, tmp_path / "run", workers=1, evaluate=False, log=lambda m: None)
    encoder = (tmp_path / "run" / METADATA_ENCODER_FILENAME).read_bytes()
    resume_normally()
    logs = []
    summary = trainer.train(cfg, data, tmp_path / "run", workers=1, evaluate=False, log=logs.append)
    assert summary["epochs"] == 2 and summary["epochs_run"] == 1
    assert any("resuming" in str(m) for m in logs) and any("(saved)" in str(m) for m in logs)
    assert (tmp_path / "run" / METADATA_ENCODER_FILENAME).read_bytes() == encoder


# -------------------------------------------------------------------- combined
def test_combined_run_through_the_cli(tmp_path):
    data = write_meta_dataset(tmp_path / "data", per_class=3, val_per_class=1, seconds=2.0)
    run, export = tmp_path / "run", tmp_path / "export"
    rc, out, err = run_cli(["train", "--data", str(data), "--out", str(run),
                            *tiny_set_args(["metadata.use=combined", "metadata.hidden=8"])])
    assert rc == 0, err + out[-3000:]
    assert (run / "metadata_encoder.json").is_file() and (run / "eval" / "scores.csv").is_file()
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["n_files"] == 2

    rc, out, err = run_cli(["export", str(run), "--out", str(export)])
    assert rc == 0, err
    fn = tf.saved_model.load(str(export)).signatures["serving_default"]
    spec = fn.structured_input_signature[1]
    assert set(spec) == {"waveform", "metadata"} and spec["metadata"].shape.as_list() == [None, 32]
    loaded = tf.saved_model.load(str(export))
    assert {"windows", "front", "body", "metadata_logits"} <= set(loaded.signatures)
    assert set(loaded.signatures["windows"].structured_input_signature[1]) == {"waveform", "metadata"}

    files = sorted((data / "audio").glob("*.wav"))
    csv = prediction_csv(tmp_path / "pred_meta.csv", files)
    with_meta, without = tmp_path / "with.csv", tmp_path / "without.csv"
    rc, out, err = run_cli(["predict", str(export), *map(str, files), "--metadata", str(csv),
                            "--out", str(with_meta), "--no-progress"])
    assert rc == 0, err
    assert "no row" not in out and "one by one" not in out  # the whole-recording engine adds the bias
    rc, out2, err2 = run_cli(["predict", str(export), *map(str, files), "--out", str(without), "--no-progress"])
    assert rc == 0, err2
    assert sum("no --metadata" in line for line in out2.splitlines()) == 1
    a, b = pd.read_csv(with_meta), pd.read_csv(without)
    assert list(a["file"]) == [str(f) for f in files] and list(a.columns) == ["file", "start_s", "end_s", *LABELS]
    assert np.all(np.isfinite(a[LABELS].to_numpy())) and np.all(np.isfinite(b[LABELS].to_numpy()))
    assert not np.allclose(a[LABELS].to_numpy(), b[LABELS].to_numpy(), atol=1e-7)  # the metadata matters

    # the sliding engine agrees (every file is one 2-s window)
    sliding = tmp_path / "sliding.csv"
    rc, _, err = run_cli(["predict", str(export), *map(str, files), "--metadata", str(csv), "--engine", "sliding",
                          "--out", str(sliding), "--no-progress"])
    assert rc == 0, err
    np.testing.assert_allclose(pd.read_csv(sliding)[LABELS].to_numpy(), a[LABELS].to_numpy(), atol=2e-6)

    # the CSV row of a one-window file is the export's score of its waveform + encoded metadata
    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.export import ExportedModel
    from birdnet_tf.infer.predict import file_metadata, read_metadata_csv

    model = ExportedModel(export)
    feats = file_metadata(model, [str(files[0])], read_metadata_csv(csv), log=lambda m: None)
    wave, _ = load_audio(files[0], model.sample_rate_hz)
    direct = model(wave[None], feats)[0]
    np.testing.assert_allclose(a.loc[0, LABELS].to_numpy(float), direct, atol=1e-5)
    # ... and what the export's one-graph 'windows' signature gives for that recording and row
    win = loaded.signatures["windows"](waveform=tf.constant(wave), metadata=tf.constant(feats[0]))
    np.testing.assert_allclose(win["scores"].numpy()[0], direct, atol=1e-5)

    rc, _, err = run_cli(["predict", str(export), str(files[0]), "--metadata", str(tmp_path / "nope.csv"),
                          "--out", str(tmp_path / "x.csv")])
    assert rc != 0 and "nope.csv" in err and "does not exist" in err
