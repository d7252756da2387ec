"""The OFAI 2018 recipes: the seed's settings, and the README's sequence end to end on real recordings."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd

from conftest import run_cli

AUDIO, META, COMBINED = (f"pipelines/ofai2018_{n}.yaml" for n in ("audio", "meta", "combined"))
SMALL = ["train.epochs=1", "model.width=0.25", "model.dense_units=16", "data.batch_size=4", "data.excerpt_s=2.0",
         "data.excerpt_max_s=4.0", "data.length_buckets=2", "data.eval_hop_s=2.0", "data.max_eval_windows=2",
         "data.max_excerpts_per_file=1", "train.warmup_epochs=0"]


def _set(items):
    return [a for s in items for a in ("--set", s)]


def test_audio_recipe_has_the_seeds_settings():
    from birdnet_tf.config import load_config

    cfg = load_config(AUDIO)
    fe = cfg.frontend
    assert cfg.audio.sample_rate_hz == 22050
    assert (fe.n_fft, fe.hop_length, fe.n_mels, fe.fmin_hz, fe.fmax_hz) == (1024, 315, 80, 27.5, 10000.0)
    assert round(cfg.frames_per_second) == 70
    assert (fe.magnitude, fe.frontend_lr_scale, fe.band_norm) == ("pow_learn", 10.0, True)
    assert (cfg.data.excerpt_s, cfg.data.excerpt_max_s, cfg.data.length_buckets) == (5.0, 30.0, 10)
    assert (cfg.model.name, cfg.model.width, cfg.model.dense_units, cfg.model.dropout) == ("ismir2016", 1.0, 256, 0.5)
    assert cfg.model.temporal_pooling == "logmeanexp:1"
    assert (cfg.train.optimizer, cfg.train.learning_rate, cfg.data.batch_size) == ("adam", 1e-3, 16)
    assert (cfg.train.schedule, cfg.train.lr_step_factor, cfg.train.lr_plateau_drops) == ("plateau", 0.1, 3)
    assert cfg.metadata.use == "none"


def test_meta_and_combined_recipes():
    from birdnet_tf.config import load_config

    meta, combined, audio = load_config(META), load_config(COMBINED), load_config(AUDIO)
    assert meta.metadata.use == "only" and tuple(meta.metadata.hidden) == (256, 512)
    assert combined.metadata.use == "combined"
    # the combined recipe inherits the audio recipe (base: ofai2018_audio): only metadata differs
    for section in ("audio", "frontend", "data", "augment", "model", "train"):
        assert dataclasses.asdict(getattr(combined, section)) == dataclasses.asdict(getattr(audio, section)), section
    assert dataclasses.asdict(combined.metadata) == {**dataclasses.asdict(meta.metadata), "use": "combined"}


def test_readme_sequence_on_real_recordings(real_subset, tmp_path):
    """audio (bucketed) → metadata-only → combined from the audio run → ensemble → export → predict --metadata."""
    data = real_subset()
    runs = {n: tmp_path / n for n in ("audio", "meta", "combined")}
    steps = [
        (["train", "--config", AUDIO, "--data", str(data), "--out", str(runs["audio"]), *_set(SMALL)]),
        (["train", "--config", META, "--data", str(data), "--out", str(runs["meta"]),
          *_set(["train.epochs=2", "metadata.hidden=16,16", "data.batch_size=4"])]),
        (["train", "--config", COMBINED, "--data", str(data), "--out", str(runs["combined"]),
          *_set(SMALL + [f"train.init_weights={runs['audio'] / 'best.keras'}", "metadata.hidden=16,16"])]),
    ]
    for argv in steps:
        rc, out, err = run_cli(argv)
        assert rc == 0, f"{argv[:6]} failed:\n{out[-2000:]}\n{err[-2000:]}"
    assert "init weights from" in out + err  # the combined run started from the audio run
    # every run validated on the same files
    vals = [set(pd.read_csv(r / "split.csv").query("split == 'val'")["key"]) for r in runs.values()]
    assert vals[0] == vals[1] == vals[2] and vals[0]
    for r in runs.values():
        assert (r / "eval" / "scores.csv").is_file()
    for r in ("meta", "combined"):
        assert (runs[r] / "metadata_encoder.json").is_file()

    rc, out, err = run_cli(["ensemble", *map(str, runs.values()), "--targets", str(runs["audio"]),
                            "--method", "greedy", "--out", str(tmp_path / "ens")])
    assert rc == 0, err[-2000:]
    weights = json.loads((tmp_path / "ens" / "weights.json").read_text())
    assert len(weights["models"]) == 3 and abs(sum(weights["weights"].values()) - 1) < 1e-6

    rc, out, err = run_cli(["export", str(runs["combined"]), "--out", str(tmp_path / "export")])
    assert rc == 0, err[-2000:]
    meta_csv = tmp_path / "meta.csv"
    rows = pd.read_csv(data / "metadata.csv", dtype=str, keep_default_na=False)
    rows.rename(columns={"filename": "file"})[["file", "date", "time", "latitude", "longitude", "elevation"]].to_csv(
        meta_csv, index=False)
    audio = [str(data / f) for f in rows["filename"][:3]]
    rc, out, err = run_cli(["predict", str(tmp_path / "export"), *audio, "--metadata", str(meta_csv),
                            "--out", str(tmp_path / "pred.csv")])
    assert rc == 0, err[-2000:]
    table = pd.read_csv(tmp_path / "pred.csv")
    assert len(table) == 3
    scores = table.drop(columns=["file", "start_s", "end_s"]).to_numpy()
    assert abs(scores.sum(axis=1) - 1).max() < 1e-4  # softmax rows
