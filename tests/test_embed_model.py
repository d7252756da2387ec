"""Embeddings from a model: the whole-recording pass gives each window the vector of that window
run alone; ``birdnet-tf embed`` / ``search`` over a database of tones and noise."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_model

TOL = 1e-4


def _model(center: bool, seed: int = 0):
    return tiny_model(3, center, seed)


def _noise_and_tone(seconds: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sr = 22050
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 3000 * t) * (t % 4 < 2) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_window_embedding_equals_the_window_run_alone():
    from birdnet_tf.infer.whole import WholeRecordingModel
    from birdnet_tf.models.surgery import split_model

    model, cfg = _model(center=False)
    whole = WholeRecordingModel.from_keras(model, cfg, segment_s=2.0, batch_size=3)
    g = whole.geometry
    x = _noise_and_tone(12.0)
    window = 15 * g.stride_samples  # windows on the step grid, seams of 2-s segments inside them
    from birdnet_tf.grid import Grid

    grid = Grid.regular(window / g.sample_rate_hz, 7 * g.stride_samples / g.sample_rate_hz, g.sample_rate_hz)
    emb = whole.embed(x, grid=grid)
    front, feats, facts = split_model(model, features=True)
    starts = np.round(emb.starts * g.sample_rate_hz).astype(int)
    full = starts + window <= len(x)
    assert full.sum() >= 5
    alone = np.stack([np.asarray(feats(front(x[None, s:s + window]))).mean(axis=1)[0] for s in starts[full]])
    assert emb.vectors.shape == (len(starts), facts["dim"])
    np.testing.assert_allclose(emb.vectors[full], alone, atol=TOL)
    assert np.abs(np.diff(emb.vectors[full], axis=0)).max() > 1e-3  # windows differ: the check has teeth


def _run_folder(root, seed: int):
    """A run folder of an untrained tiny model (config.json, labels.txt, best.keras): what ``embed`` reads."""
    from birdnet_tf.config import save_config
    from birdnet_tf.data.labels import LabelSet

    model, cfg = _model(center=False, seed=seed)  # centring by the recording flattens a steady tone
    root.mkdir(parents=True)
    save_config(cfg, root / "config.json")
    LabelSet(["a", "b", "c"]).save(root / "labels.txt")
    model.save(root / "best.keras")
    return root


def _write(path, x, sr=22050):
    import soundfile as sf

    sf.write(str(path), x, sr, subtype="FLOAT")
    return path


def _tone_db(tmp_path):
    """Three tones and three noises of 6 s (three 2-s windows each), noise making every window distinct."""
    rng = np.random.default_rng(0)
    sr = 22050
    t = np.arange(6 * sr) / sr
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, f in enumerate([2500, 3000, 3500]):
        _write(audio / f"tone{i}.wav", (0.4 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(len(t))))
    for i in range(3):
        _write(audio / f"noise{i}.wav", 0.2 * rng.standard_normal(len(t)))
    return audio


def test_embed_and_search_through_the_cli(tmp_path):
    from conftest import run_cli

    from birdnet_tf.embed.db import read_database, read_facts

    run = _run_folder(tmp_path / "run", seed=0)
    audio = _tone_db(tmp_path)
    (audio / "broken.wav").write_bytes(b"not audio at all")
    db = tmp_path / "db"
    rc, out, err = run_cli(["embed", str(run), str(audio), "--out", str(db), "--no-progress"])
    assert rc == 0, err
    assert "vectors of 6 recording(s); 1 input(s) skipped" in out and "broken.wav" in out
    table = read_database(db)
    assert len(table) == 18 and read_facts(db).window_s == 2.0
    rc, out, _ = run_cli(["embed", str(run), str(audio / "tone0.wav"), "--out", str(db), "--no-progress"])
    assert rc == 0 and "1 recording(s) already in" in out and len(read_database(db)) == 18  # resumed: nothing twice

    hits_csv = tmp_path / "hits.csv"
    query = audio / "tone1.wav"
    rc, out, err = run_cli(["search", str(db), "--query", str(query), "--top", "3", "--out", str(hits_csv),
                            "--clips", str(tmp_path / "clips")])
    assert rc == 0, err
    import pandas as pd

    hits = pd.read_csv(hits_csv)
    assert hits["query"].nunique() == 3
    for (name, group), start in zip(hits.groupby("query", sort=False), [0.0, 2.0, 4.0]):
        first = group.iloc[0]
        assert first["file"] == str(query) and first["start_s"] == start and first["similarity"] > 0.9999
        assert all(f == str(query) for f in group["file"]), group  # a tone's neighbours: that tone, not noise
    assert len(list((tmp_path / "clips").glob("*.wav"))) == len(hits)
    # a part of the query: one window from 2 s
    rc, out, _ = run_cli(["search", str(db), "--query", str(query), "--start-s", "2", "--end-s", "4", "--top", "1"])
    assert rc == 0 and "tone1.wav@2.00" in out


def test_bad_inputs_give_clear_messages(tmp_path):
    from conftest import run_cli

    run = _run_folder(tmp_path / "run", seed=0)
    other = _run_folder(tmp_path / "other", seed=1)
    audio = _tone_db(tmp_path)
    db = tmp_path / "db"
    assert run_cli(["embed", str(run), str(audio / "tone0.wav"), "--out", str(db), "--no-progress"])[0] == 0
    rc, _, err = run_cli(["search", str(db), "--query", str(audio / "tone1.wav"), "--model", str(other)])
    assert rc == 2 and "another model" in err and "--model" in err
    rc, _, err = run_cli(["embed", str(other), str(audio / "tone1.wav"), "--out", str(db), "--no-progress"])
    assert rc == 2 and "cannot add to this embedding database" in err
    short = _write(tmp_path / "short.wav", np.zeros(22050, np.float32))
    rc, _, err = run_cli(["search", str(db), "--query", str(short)])
    assert rc == 2 and "shorter than one window" in err and "short.wav" in err
    lite = tmp_path / "lite"
    lite.mkdir()
    (lite / "model_float32.tflite").write_bytes(b"\0" * 64)
    rc, _, err = run_cli(["embed", str(lite), str(audio / "tone1.wav"), "--out", str(tmp_path / "db2")])
    assert rc == 2 and "sidecar" in err, err


def test_export_embeddings_signature_and_embed_from_an_export(tmp_path):
    """The export's ``embeddings`` signature, its ``features`` half in the streaming engine and the Keras
    model give the same vectors; ``embed`` reads an export folder."""
    import tensorflow as tf
    from conftest import run_cli

    from birdnet_tf.embed.db import read_database
    from birdnet_tf.export import ExportedModel, export_model
    from birdnet_tf.infer.whole import WholeRecordingModel

    model, cfg = _model(center=True, seed=2)
    out = export_model(model, cfg, ["a", "b", "c"], tmp_path / "export", log=lambda m: None)
    x = _noise_and_tone(9.0, seed=3)
    sig = ExportedModel(out).signature("embeddings")(waveform=tf.constant(x))
    keras_emb = WholeRecordingModel.from_keras(model, cfg).embed(x, window_s=2.0)
    export_emb = WholeRecordingModel.from_export(out).embed(x, window_s=2.0)
    np.testing.assert_allclose(sig["start_s"].numpy(), keras_emb.starts, atol=1e-6)
    np.testing.assert_allclose(sig["vectors"].numpy(), keras_emb.vectors, atol=TOL)
    np.testing.assert_allclose(export_emb.vectors, keras_emb.vectors, atol=TOL)
    audio = _tone_db(tmp_path)
    rc, _, err = run_cli(["embed", str(out), str(audio / "tone0.wav"), "--out", str(tmp_path / "db"),
                          "--no-progress"])
    assert rc == 0, err
    assert read_database(tmp_path / "db").vectors.shape == (3, keras_emb.vectors.shape[1])


def test_head_on_a_few_labelled_windows_finds_the_class_through_predict(tmp_path):
    import pandas as pd
    from conftest import run_cli

    run = _run_folder(tmp_path / "run", seed=0)
    audio = _tone_db(tmp_path)
    db = tmp_path / "db"
    assert run_cli(["embed", str(run), str(audio), "--out", str(db), "--no-progress"])[0] == 0
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"file": [str(audio / "tone1.wav"), "tone1.wav", str(tmp_path / "elsewhere.wav")],
                  "start_s": [0.0, 2.0, 0.0], "end_s": [2.0, 4.0, 2.0],
                  "label": ["whistle", "whistle", "whistle"]}).to_csv(labels, index=False)
    rc, out, err = run_cli(["head", str(db), "--labels", str(labels), "--out", str(tmp_path / "head")])
    assert rc == 0, err
    assert "on 2 labelled and 16 unlabelled window(s)" in out and "not in the database" in out
    # new recordings: the labelled tone (another phase and noise) and noise
    rng = np.random.default_rng(5)
    t = np.arange(4 * 22050) / 22050
    _write(tmp_path / "new_tone.wav", 0.4 * np.sin(2 * np.pi * 3000 * t + 1.0) + 0.01 * rng.standard_normal(len(t)))
    _write(tmp_path / "new_noise.wav", 0.2 * rng.standard_normal(len(t)))
    rc, _, err = run_cli(["predict", str(tmp_path / "head"), str(tmp_path / "new_tone.wav"),
                          str(tmp_path / "new_noise.wav"), "--out", str(tmp_path / "p.csv"), "--window-s", "2",
                          "--no-progress"])
    assert rc == 0, err
    p = pd.read_csv(tmp_path / "p.csv")
    tone_scores = p.loc[p["file"].str.endswith("new_tone.wav"), "whistle"]
    noise_scores = p.loc[p["file"].str.endswith("new_noise.wav"), "whistle"]
    assert tone_scores.min() > 0.5 > noise_scores.max(), p
