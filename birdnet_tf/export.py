"""``birdnet-tf export``: a SavedModel that takes a raw waveform and returns class scores.

Contract of the export folder (usable as a TF Serving version folder)::

    saved_model.pb, variables/          serving_default: waveform float32 [batch, samples]
                                        at the model's rate → {"scores": float32 [batch, classes]}
    assets.extra/labels.txt             class names in score order
    assets.extra/config.json            the run's config + package version + export facts

Inputs shorter than the model's receptive field are looped to that length inside the
graph, so any length works. After writing, the export is reloaded with
``tf.saved_model.load`` and checked on silence, noise and a tone before success is
reported; a failed check removes nothing but the half-written export.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from birdnet_tf.config import Config, read_config_json, save_config
from birdnet_tf.errors import BirdnetError

EXTRA = "assets.extra"


def _serving_fn(model, min_len: int):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def serve(waveform):
        n = tf.shape(waveform)[1]
        reps = tf.maximum(1, (min_len + tf.maximum(n, 1) - 1) // tf.maximum(n, 1))
        padded = tf.cond(n >= min_len, lambda: waveform,
                         lambda: tf.tile(tf.cond(n > 0, lambda: waveform,
                                                 lambda: tf.zeros([tf.shape(waveform)[0], 1])), [1, reps]))
        return {"scores": model(padded, training=False)}

    return serve


def export_model(model, cfg: Config, labels: list[str], out_dir: str | os.PathLike, force: bool = False,
                 extra: dict | None = None, log=print) -> Path:
    """Writes ``model`` as a verified SavedModel to ``out_dir`` (see module docstring)."""
    import keras

    from birdnet_tf.models.build import min_samples

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise BirdnetError(f"{out}: already exists and is not empty; choose another --out or pass --force")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    min_len = min_samples(model, cfg)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", _serving_fn(model, min_len))
    archive.write_out(str(tmp), verbose=False)
    (tmp / EXTRA).mkdir(exist_ok=True)
    (tmp / EXTRA / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    save_config(cfg, tmp / EXTRA / "config.json", labels=list(labels), min_samples=min_len,
                input="waveform float32 [batch, samples] at audio.sample_rate_hz",
                output="scores float32 [batch, classes] in labels order", **(extra or {}))
    try:
        check_export(tmp, cfg, len(labels))
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"exported {out} ({len(labels)} classes, {cfg.audio.sample_rate_hz} Hz waveform input); "
        "reload check passed on silence, noise and a tone")
    return out


def check_export(path: str | os.PathLike, cfg: Config, n_classes: int) -> dict[str, np.ndarray]:
    """Reloads a SavedModel and checks finite, well-shaped scores in [0, 1] on test signals."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    sr, n = cfg.audio.sample_rate_hz, cfg.excerpt_samples
    t = np.arange(n) / sr
    rng = np.random.default_rng(0)
    signals = {
        "silence": np.zeros(n),
        "noise": 0.1 * rng.standard_normal(n),
        "tone": 0.5 * np.sin(2 * np.pi * 3000.0 * t),
    }
    batch = np.stack(list(signals.values())).astype(np.float32)
    out = fn(waveform=tf.constant(batch))
    if "scores" not in out:
        raise BirdnetError(f"{path}: serving_default returns {sorted(out)}, not 'scores'")
    scores = out["scores"].numpy()
    if scores.shape != (len(signals), n_classes):
        raise BirdnetError(f"{path}: scores have shape {scores.shape}, expected {(len(signals), n_classes)}")
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise BirdnetError(f"{path}: reloaded model gives non-finite or out-of-range scores on test signals")
    short = fn(waveform=tf.constant(batch[:1, : sr // 10]))["scores"].numpy()
    if short.shape != (1, n_classes) or not np.all(np.isfinite(short)):
        raise BirdnetError(f"{path}: reloaded model fails on a 0.1-s input")
    return dict(zip(signals, scores))


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, model_file: str = "best.keras",
               force: bool = False, log=print) -> Path:
    """Exports a run folder's best model (see :func:`export_model`)."""
    from birdnet_tf.models.build import load_keras_model

    from birdnet_tf.data.labels import LabelSet

    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise BirdnetError(f"{run}: not a run folder (no config.json)")
    path = run / model_file
    if not path.is_file():
        raise BirdnetError(f"{path}: no trained model there (has training finished an epoch?)")
    cfg, _ = read_config_json(run / "config.json")
    labels = list(LabelSet.load(run / "labels.txt"))
    state = json.loads((run / "state.json").read_text()) if (run / "state.json").exists() else {}
    model = load_keras_model(path)
    return export_model(model, cfg, labels, out_dir, force=force, log=log,
                        extra={"source_run": str(run.resolve()), "source_model": model_file,
                               "best_epoch": state.get("best_epoch"), state.get("monitor", "monitor"): state.get("best")})


class ExportedModel:
    """An export folder loaded for inference: ``scores = m(waveforms)``; ``m.labels``, ``m.config``."""

    def __init__(self, path: str | os.PathLike):
        import tensorflow as tf

        self.path = Path(path)
        cfg_file = self.path / EXTRA / "config.json"
        if not (self.path / "saved_model.pb").is_file():
            raise BirdnetError(f"{self.path}: not an exported model (no saved_model.pb); "
                               "create one with 'birdnet-tf export RUN_DIR --out DIR'")
        if not cfg_file.is_file():
            raise BirdnetError(f"{self.path}: export lacks {EXTRA}/config.json (not made by birdnet-tf export?)")
        self.config, self.extra = read_config_json(cfg_file)
        self.labels = [s for s in (self.path / EXTRA / "labels.txt").read_text(encoding="utf-8").splitlines() if s]
        self._fn = tf.saved_model.load(str(self.path)).signatures["serving_default"]

    @property
    def sample_rate_hz(self) -> int:
        return self.config.audio.sample_rate_hz

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        """``float32 [batch, samples]`` → ``[batch, classes]`` scores."""
        import tensorflow as tf

        return self._fn(waveform=tf.constant(np.asarray(waveforms, np.float32)))["scores"].numpy()
