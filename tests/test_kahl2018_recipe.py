"""The 2018 baseline recipe trains on the fly (chunk images inside the model) and exports a waveform model."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import soundfile as sf

from conftest import SYNTH_RATE_HZ, run_cli, tone

RECIPE = "pipelines/kahl2018_baseline.yaml"
SMALL = ["train.epochs=1", "model.filters=4,8,8,8", "model.resnet_k=1", "model.resnet_n=1", "data.batch_size=4",
         "data.max_excerpts_per_file=2", "data.max_eval_windows=3", "chunks.width=64", "chunks.height=32",
         "data.min_signal_score=0.001"]


def _set(items):
    return [a for s in items for a in ("--set", s)]


def test_recipe_loads_with_the_baselines_settings():
    from birdnet_tf.config import load_config

    cfg = load_config(RECIPE)
    assert (cfg.audio.sample_rate_hz, cfg.data.excerpt_s, cfg.data.eval_hop_s) == (44100, 1.0, 0.75)
    assert (cfg.chunks.width, cfg.chunks.height, cfg.chunks.fmin_hz, cfg.chunks.fmax_hz) == (256, 128, 500.0, 15000.0)
    assert cfg.model.name == "kahl2018_resnet" and cfg.model.downsample == "strided"
    assert cfg.data.max_eval_windows == 128 and cfg.data.file_pooling == "median"
    assert (cfg.train.optimizer, cfg.train.learning_rate, cfg.train.epochs) == ("adam", 1e-3, 60)


def test_signal_filter_drops_silent_excerpts_and_keeps_calls():
    import tensorflow as tf

    from birdnet_tf.config import load_config
    from birdnet_tf.data.pipeline import signal_filter

    cfg = load_config(RECIPE)
    keep = signal_filter(cfg)
    sr = cfg.audio.sample_rate_hz
    t = np.arange(sr) / sr
    chirps = 0.5 * np.sin(2 * np.pi * (2000 + 3000 * (t * 4 % 1)) * t) * ((t * 4 % 1) < 0.3)
    quiet = 1e-3 * np.random.default_rng(0).standard_normal(sr)
    assert bool(keep(tf.constant(chirps + quiet, tf.float32), None))
    assert not bool(keep(tf.constant(quiet, tf.float32), None))


def test_kahl2018_recipe_trains_exports_and_predicts(synthetic_dataset, tmp_path):
    data = synthetic_dataset(files_per_class=3)
    # a call followed by 2 s of faint hiss: its later chunks are noise-only, the noise bank's source
    rng = np.random.default_rng(3)
    call = np.concatenate([tone(1000, SYNTH_RATE_HZ, 1.0), 1e-3 * rng.standard_normal(2 * SYNTH_RATE_HZ)])
    sf.write(data / "noise6k" / "noise6k_quiet_tail.wav", call, SYNTH_RATE_HZ, subtype="PCM_16")
    run, export = tmp_path / "run", tmp_path / "export"
    rc, out, err = run_cli(["train", "--config", RECIPE, "--data", str(data), "--out", str(run), *_set(SMALL),
                            "--set", "augment.image_augs=roll_v,noise_chunk,brightness"])
    assert rc == 0, err + out[-2000:]
    bank = re.search(r"noise bank for noise_chunk: (\d+) noise-only chunks", out)
    assert bank and int(bank.group(1)) > 0, "no noise bank was built for noise_chunk:\n" + out[-2000:]
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["pooling"] == "median" and 0 <= report["mlrap_bg"] <= 1
    rc, out, err = run_cli(["export", str(run), "--out", str(export)])
    assert rc == 0, err
    assert "no whole-recording signatures" in out
    csv = tmp_path / "p.csv"
    rc, out, err = run_cli(["predict", str(export), str(data / "tone1k"), "--pooling", "mean", "--out", str(csv),
                            "--no-progress"])
    assert rc == 0, err
    assert "scoring windows one by one" in out
    table = pd.read_csv(csv)
    assert len(table) == 3 and np.allclose(table.iloc[:, 3:].sum(axis=1), 1.0, atol=1e-4)
