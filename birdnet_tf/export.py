"""``birdnet-tf export``: a SavedModel that takes a raw waveform and returns class scores.

Contract of the export folder (usable as a TF Serving version folder)::

    saved_model.pb, variables/          signatures (``saved_model_cli show --all`` lists them):
      serving_default                   waveform float32 [batch, samples] at the model's rate
                                        → {"scores": float32 [batch, classes]}
      windows                           waveform float32 [samples], ONE recording of any length
                                        → {"scores" [windows, classes], "start_s", "end_s" [windows],
                                           "labels" string [classes], "sample_rate_hz" int32 []}
                                        (whole-recording inference: the network runs once over the
                                        recording, windows of --window-s every --hop-s are pooled
                                        from its per-step logits; see birdnet_tf.infer.whole)
      front, body                       the two halves the streaming whole-recording path of
                                        ``birdnet-tf predict`` runs (waveform → frames → logits)
    assets.extra/labels.txt             class names in score order
    assets.extra/labels.csv             label,class_id,common_name (BirdCLEF class ids), when the run has them
    assets.extra/config.json            the run's config + package version + export facts
                                        (signatures, step geometry, window and hop)

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


SIGNATURES = {
    "serving_default": "waveform float32 [batch, samples] -> scores [batch, classes]",
    "windows": "waveform float32 [samples] (one recording) -> scores [windows, classes], "
               "start_s, end_s [windows], labels [classes], sample_rate_hz []",
    "front": "waveform float32 [batch, samples] -> frames [batch, frames, bands]",
    "body": "frames [batch, frames, bands] (band-centred if whole_recording.center) -> logits [batch, steps, classes] "
            "(attention:K pooling: [batch, steps, classes + K*classes], the attention logits after the class logits)",
}


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


def _whole_recording_fns(model, cfg: Config, labels: list[str], window_s: float, hop_s: float):
    """The ``front``, ``body`` and ``windows`` signatures and the facts saved with them.

    ``front``: ``waveform float32 [batch, samples]`` → ``frames [batch, frames, bands]``;
    ``body``: ``frames`` (band-centred when the model centres) → ``logits [batch, steps, classes]``;
    ``windows``: one recording ``waveform float32 [samples]`` → ``scores [windows, classes]``,
    ``start_s``, ``end_s`` ``[windows]``, ``labels [classes]``, ``sample_rate_hz []`` — the
    whole-recording path of :mod:`birdnet_tf.infer.whole` in one graph.
    """
    import tensorflow as tf

    from birdnet_tf.infer.whole import probe_geometry, split_model
    from birdnet_tf.models.layers import attention_pool, noisy_or_logits

    front, body, facts = split_model(model)
    fe, sr = cfg.frontend, cfg.audio.sample_rate_hz
    geo = probe_geometry(body, fe.n_mels, fe.hop_length, fe.n_fft, sr)
    window, hop = int(round(window_s * sr)), int(round(hop_s * sr))
    per_window = max(1, geo.steps(geo.frames(window)))
    min_len = max(window, geo.field_samples)
    kind, _, param = facts["pooling"].partition(":")
    a = float(param) if param else 1.0
    heads = int(a) if kind == "attention" else 0

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def front_fn(waveform):
        return {"frames": front(waveform, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, fe.n_mels], tf.float32, name="frames")])
    def body_fn(frames):
        return {"logits": body(frames, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="waveform")])
    def windows_fn(waveform):
        n = tf.shape(waveform)[0]
        x = tf.cond(n >= min_len, lambda: waveform,
                    lambda: tf.tile(tf.cond(n > 0, lambda: waveform, lambda: tf.zeros([1])),
                                    [(min_len + tf.maximum(n, 1) - 1) // tf.maximum(n, 1)])[:min_len])
        frames = front(x[tf.newaxis], training=False)
        if facts["center"]:
            frames = frames - tf.reduce_mean(frames, axis=1, keepdims=True)
        logits = tf.cast(body(frames, training=False)[0], tf.float32)  # [steps, classes]
        steps = tf.shape(logits)[0]
        starts = tf.range(0, tf.maximum(n, 1), hop)
        starts = tf.boolean_mask(starts, (starts == 0) | (tf.cast(starts, tf.float32) + 0.1 * sr < tf.cast(n, tf.float32)))
        first = tf.clip_by_value(tf.cast(tf.round(tf.cast(starts, tf.float32) / geo.stride_samples), tf.int32),
                                 0, steps - 1)
        idx = first[:, None] + tf.range(per_window)[None, :]
        valid = idx < steps
        x = tf.gather(logits, tf.minimum(idx, steps - 1))  # [windows, per_window, classes]
        valid3 = tf.broadcast_to(valid[:, :, None], tf.shape(x))
        count = tf.reduce_sum(tf.cast(valid, tf.float32), axis=1, keepdims=True)
        if kind == "max":
            pooled = tf.reduce_max(tf.where(valid3, x, -1e30), axis=1)
        elif kind == "mean":
            pooled = tf.reduce_sum(tf.where(valid3, x, 0.0), axis=1) / count
        elif kind == "noisy-or":
            pooled = noisy_or_logits(x, axis=1, mask=valid3)
        elif kind == "attention":  # x packs [classes logits | heads x classes attention logits] per step
            c = len(labels)
            att = tf.reshape(x[:, :, c:], tf.stack([tf.shape(x)[0], tf.shape(x)[1], heads, c]))
            pooled = attention_pool(x[:, :, :c], att, mask=valid)
        else:
            pooled = (tf.reduce_logsumexp(tf.where(valid3, a * x, -1e30), axis=1) - tf.math.log(count)) / a
        scores = tf.nn.softmax(pooled) if facts["activation"] == "softmax" else tf.sigmoid(pooled)
        return {"scores": scores, "start_s": tf.cast(starts, tf.float32) / sr,
                "end_s": tf.cast(tf.minimum(starts + window, n), tf.float32) / sr,
                "labels": tf.constant(list(labels)), "sample_rate_hz": tf.constant(sr, tf.int32)}

    facts = {**facts, "stride_frames": geo.stride, "field_frames": geo.field, "window_s": window / sr,
             "hop_s": hop / sr}
    return {"front": front_fn, "body": body_fn, "windows": windows_fn}, facts


def export_model(model, cfg: Config, labels: list[str], out_dir: str | os.PathLike, force: bool = False,
                 extra: dict | None = None, window_s: float | None = None, hop_s: float | None = None,
                 log=print, labels_csv: str | os.PathLike | None = None) -> Path:
    """Writes ``model`` as a verified SavedModel to ``out_dir`` (see module docstring).

    ``labels_csv`` (the run's ``label,class_id,common_name`` table, when it has one) is
    copied to ``assets.extra/labels.csv``, where ``predict``/``submit`` find BirdCLEF class ids.
    """
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
    window_s = window_s or cfg.data.excerpt_s
    try:
        fns, whole = _whole_recording_fns(model, cfg, labels, window_s, hop_s or window_s)
    except BirdnetError as e:  # e.g. the baseline's chunk models: windows are scored one by one
        fns, whole = {}, None
        log(f"note: no whole-recording signatures ({e})")
    for name, fn in fns.items():
        archive.add_endpoint(name, fn)
    archive.write_out(str(tmp), verbose=False)
    (tmp / EXTRA).mkdir(exist_ok=True)
    (tmp / EXTRA / "labels.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    if labels_csv is not None:
        shutil.copyfile(labels_csv, tmp / EXTRA / "labels.csv")
    save_config(cfg, tmp / EXTRA / "config.json", labels=list(labels), min_samples=min_len,
                input="waveform float32 [batch, samples] at audio.sample_rate_hz",
                output="scores float32 [batch, classes] in labels order",
                signatures={name: text for name, text in SIGNATURES.items() if name in fns or name == "serving_default"},
                whole_recording=whole, **(extra or {}))
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
    if "windows" in loaded.signatures:  # one 10-s recording through the whole-recording signature
        rec = np.concatenate([batch[1], batch[2], batch[1], batch[0]])[: 10 * sr] if 4 * n >= 10 * sr \
            else np.resize(batch[2], 10 * sr)
        win = loaded.signatures["windows"](waveform=tf.constant(rec.astype(np.float32)))
        ws = win["scores"].numpy()
        if ws.ndim != 2 or ws.shape[1] != n_classes or ws.shape[0] != win["start_s"].shape[0] \
                or not np.all(np.isfinite(ws)) or ws.min() < 0 or ws.max() > 1:
            raise BirdnetError(f"{path}: the 'windows' signature gives wrong or non-finite scores "
                               f"(shape {ws.shape}) on a 10-s test recording")
        if len(win["labels"].numpy()) != n_classes or int(win["sample_rate_hz"].numpy()) != sr:
            raise BirdnetError(f"{path}: the 'windows' signature reports wrong labels or sample rate")
    return dict(zip(signals, scores))


def load_run(run_dir: str | os.PathLike, model_file: str = "best.keras"):
    """A run folder's model for inference: ``(waveform → scores keras model, config, labels, run extras)``.

    A model trained on PNG chunks (``input: chunks``) gets ``ChunkSpectrogram`` put in front
    of it, so every run gives a model that takes a waveform.
    """
    from birdnet_tf.data.labels import LabelSet
    from birdnet_tf.models.build import load_keras_model

    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise BirdnetError(f"{run}: not a run folder (no config.json)")
    path = run / model_file
    if not path.is_file():
        raise BirdnetError(f"{path}: no trained model there (has training finished an epoch?)")
    cfg, extra = read_config_json(run / "config.json")
    labels = list(LabelSet.load(run / "labels.txt"))
    model = load_keras_model(path)
    if extra.get("input") == "chunks":  # an image model trained on PNG chunks: put ChunkSpectrogram in front
        from birdnet_tf.models.build import waveform_model

        model = waveform_model(model, cfg)
    return model, cfg, labels, extra


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, model_file: str = "best.keras",
               force: bool = False, window_s: float | None = None, hop_s: float | None = None, log=print) -> Path:
    """Exports a run folder's best model (see :func:`export_model`)."""
    run = Path(run_dir)
    model, cfg, labels, run_extra = load_run(run, model_file)
    state = json.loads((run / "state.json").read_text()) if (run / "state.json").exists() else {}
    trained_on = {"trained_on": "chunk images (birdnet-tf extract); the export computes them from the waveform"} \
        if run_extra.get("input") == "chunks" else {}
    labels_csv = run / "labels.csv" if (run / "labels.csv").is_file() else None
    return export_model(model, cfg, labels, out_dir, force=force, log=log, window_s=window_s, hop_s=hop_s,
                        labels_csv=labels_csv,
                        extra={"source_run": str(run.resolve()), "source_model": model_file,
                               "best_epoch": state.get("best_epoch"), state.get("monitor", "monitor"): state.get("best"),
                               **trained_on})


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
        self._loaded = tf.saved_model.load(str(self.path))
        self._fn = self._loaded.signatures["serving_default"]

    def signature(self, name: str):
        """A signature of the SavedModel by name (``serving_default``, ``windows``, ``front``, ``body``)."""
        if name not in self._loaded.signatures:
            raise BirdnetError(f"{self.path}: export has no '{name}' signature "
                               f"(it has {', '.join(sorted(self._loaded.signatures))}); export it again")
        return self._loaded.signatures[name]

    @property
    def sample_rate_hz(self) -> int:
        return self.config.audio.sample_rate_hz

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        """``float32 [batch, samples]`` → ``[batch, classes]`` scores."""
        import tensorflow as tf

        return self._fn(waveform=tf.constant(np.asarray(waveforms, np.float32)))["scores"].numpy()
