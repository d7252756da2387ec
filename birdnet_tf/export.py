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
    assets.extra/metadata_encoder.json  runs with metadata (``metadata.use`` only / combined): the
                                        run's feature encoder; ``serving_default`` then also takes
                                        (combined) or only takes (only) ``metadata`` float32
                                        [batch, F], the encoded date/time/place of each recording,
                                        and config.json records ``metadata_features`` (F) and
                                        ``metadata_feature_names``. A combined model's ``windows``
                                        takes the recording's ``metadata`` [F] too, and
                                        ``metadata_logits`` gives its metadata network's logits (the
                                        per-recording bias on the pooled logits); a metadata-only
                                        model has no whole-recording signatures.

Inputs shorter than the model's receptive field are looped to that length inside the
graph, so any length works. After writing, the export is reloaded with
``tf.saved_model.load`` and checked on silence, noise and a tone before success is
reported; a failed check removes nothing but the half-written export.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from birdnet_tf.config import Config, read_config_json, save_config
from birdnet_tf.errors import BirdnetError
from birdnet_tf.fileio import check_replaceable, replace_folder, restore_folder

EXTRA = "assets.extra"
#: Files that mark a folder as a birdnet-tf export (what ``export --force`` may replace).
EXPORT_MARKERS = ("saved_model.pb", f"{EXTRA}/config.json")


SIGNATURES = {
    "serving_default": "waveform float32 [batch, samples] -> scores [batch, classes]",
    "windows": "waveform float32 [samples] (one recording) -> scores [windows, classes], "
               "start_s, end_s [windows], labels [classes], sample_rate_hz []",
    "front": "waveform float32 [batch, samples] -> frames [batch, frames, bands]",
    "body": "frames [batch, frames, bands] (band-centred if whole_recording.center) -> logits [batch, steps, classes] "
            "(attention:K pooling: [batch, steps, classes + K*classes], the attention logits after the class logits)",
    "metadata_logits": "metadata float32 [batch, F] -> logits [batch, classes] (combined audio + metadata models: "
                       "the bias added to the pooled logits)",
    "features": "frames [batch, frames, bands] (as for body) -> features [batch, steps, dim] (the input of the "
                "class-logits layer)",
    "embeddings": "waveform float32 [samples] (one recording) -> vectors [windows, dim] (the mean of the features "
                  "over the steps each window's scores pool), start_s, end_s [windows], sample_rate_hz []",
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


def _metadata_serving_fn(model, min_len: int, n_features: int, with_waveform: bool):
    """``serving_default`` of a metadata model: ``(waveform, metadata)`` → scores (combined), or
    ``metadata`` alone (metadata-only); the waveform is looped to ``min_len`` as in :func:`_serving_fn`."""
    import tensorflow as tf

    from birdnet_tf.models.metadata import METADATA_INPUT

    meta_spec = tf.TensorSpec([None, n_features], tf.float32, name=METADATA_INPUT)
    if not with_waveform:
        @tf.function(input_signature=[meta_spec])
        def serve_metadata(metadata):
            return {"scores": model({METADATA_INPUT: metadata}, training=False)}

        return serve_metadata

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform"), meta_spec])
    def serve_combined(waveform, metadata):
        n = tf.shape(waveform)[1]
        reps = tf.maximum(1, (min_len + tf.maximum(n, 1) - 1) // tf.maximum(n, 1))
        padded = tf.cond(n >= min_len, lambda: waveform,
                         lambda: tf.tile(tf.cond(n > 0, lambda: waveform,
                                                 lambda: tf.zeros([tf.shape(waveform)[0], 1])), [1, reps]))
        return {"scores": model({"waveform": padded, METADATA_INPUT: metadata}, training=False)}

    return serve_combined


def _whole_recording_fns(model, cfg: Config, labels: list[str], window_s: float, hop_s: float):
    """The ``front``, ``body``, ``windows``, ``features`` and ``embeddings`` signatures and the facts saved with them.

    ``front``: ``waveform float32 [batch, samples]`` → ``frames [batch, frames, bands]``;
    ``body``: ``frames`` (band-centred when the model centres) → ``logits [batch, steps, classes]``;
    ``windows``: one recording ``waveform float32 [samples]`` → ``scores [windows, classes]``,
    ``start_s``, ``end_s`` ``[windows]``, ``labels [classes]``, ``sample_rate_hz []`` — the
    whole-recording path of :mod:`birdnet_tf.infer.whole` in one graph.

    A combined audio + metadata model also gets ``metadata_logits``: ``metadata float32 [batch, F]``
    → ``logits [batch, classes]`` (its metadata network), and its ``windows`` takes the
    recording's ``metadata float32 [F]`` too, adding those logits to every window's pooled logits.

    ``features`` is ``body`` cut before its class logits (``[batch, steps, dim]``) and ``embeddings``
    gives one recording's per-window vectors (their mean over each window's steps) on the
    ``windows`` grid, as :meth:`birdnet_tf.infer.whole.WholeRecordingModel.embed` does.
    """
    import tensorflow as tf

    from birdnet_tf.grid import MIN_WINDOW_S
    from birdnet_tf.models.layers import pool_packed
    from birdnet_tf.models.surgery import metadata_bias_model, probe_geometry, split_model

    front, body, facts = split_model(model)
    _, feature_body, feature_facts = split_model(model, features=True)
    meta_model = metadata_bias_model(model) if facts.get("metadata") else None
    fe, sr = cfg.frontend, cfg.audio.sample_rate_hz
    geo = probe_geometry(body, fe.n_mels, fe.hop_length, fe.n_fft, sr)
    window, hop = int(round(window_s * sr)), int(round(hop_s * sr))
    per_window = max(1, geo.steps(geo.frames(window)))
    min_len = max(window, geo.field_samples)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="waveform")])
    def front_fn(waveform):
        return {"frames": front(waveform, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, fe.n_mels], tf.float32, name="frames")])
    def body_fn(frames):
        return {"logits": body(frames, training=False)}

    def per_step(waveform, net):
        """``(n, starts, idx, steps, out)``: ``net``'s per-step output over the recording and each window's steps."""
        n = tf.shape(waveform)[0]
        x = tf.cond(n >= min_len, lambda: waveform,
                    lambda: tf.tile(tf.cond(n > 0, lambda: waveform, lambda: tf.zeros([1])),
                                    [(min_len + tf.maximum(n, 1) - 1) // tf.maximum(n, 1)])[:min_len])
        frames = front(x[tf.newaxis], training=False)
        if facts["center"]:
            frames = frames - tf.reduce_mean(frames, axis=1, keepdims=True)
        out = tf.cast(net(frames, training=False)[0], tf.float32)  # [steps, classes or dim]
        steps = tf.shape(out)[0]
        starts = tf.range(0, tf.maximum(n, 1), hop)
        # birdnet_tf.grid.regular_starts: no last window under MIN_WINDOW_S
        starts = tf.boolean_mask(starts, (starts == 0) | (tf.cast(starts, tf.float32) + MIN_WINDOW_S * sr
                                                           < tf.cast(n, tf.float32)))
        first = tf.clip_by_value(tf.cast(tf.round(tf.cast(starts, tf.float32) / geo.stride_samples), tf.int32),
                                 0, steps - 1)
        return n, starts, first[:, None] + tf.range(per_window)[None, :], steps, out

    def times(starts, n):
        return {"start_s": tf.cast(starts, tf.float32) / sr,
                "end_s": tf.cast(tf.minimum(starts + window, n), tf.float32) / sr, "sample_rate_hz": tf.constant(sr, tf.int32)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, fe.n_mels], tf.float32, name="frames")])
    def features_fn(frames):
        return {"features": tf.cast(feature_body(frames, training=False), tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="waveform")])
    def embeddings_fn(waveform):
        n, starts, idx, steps, feats = per_step(waveform, feature_body)
        valid = tf.cast(idx < steps, tf.float32)[:, :, None]  # windows running past the end average what there is
        picked = tf.gather(feats, tf.minimum(idx, steps - 1)) * valid
        return {"vectors": tf.reduce_sum(picked, axis=1) / tf.reduce_sum(valid, axis=1), **times(starts, n)}

    def windows(waveform, bias=None):
        n, starts, idx, steps, logits = per_step(waveform, body)
        # [windows, per_window, classes (+ attention logits)], steps past the end masked out
        pooled = pool_packed(tf.gather(logits, tf.minimum(idx, steps - 1)), facts["pooling"], mask=idx < steps)
        if bias is not None:  # the combined model's metadata logits: one bias per class for the recording
            pooled = pooled + bias[None, :]
        scores = tf.nn.softmax(pooled) if facts["activation"] == "softmax" else tf.sigmoid(pooled)
        return {"scores": scores, "labels": tf.constant(list(labels)), **times(starts, n)}

    fns = {"front": front_fn, "body": body_fn, "features": features_fn, "embeddings": embeddings_fn}
    if meta_model is None:
        fns["windows"] = tf.function(windows, input_signature=[tf.TensorSpec([None], tf.float32, name="waveform")])
    else:
        n_meta = meta_model.inputs[0].shape[-1]

        @tf.function(input_signature=[tf.TensorSpec([None, n_meta], tf.float32, name="metadata")])
        def metadata_logits_fn(metadata):
            return {"logits": tf.cast(meta_model(metadata, training=False), tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="waveform"),
                                      tf.TensorSpec([n_meta], tf.float32, name="metadata")])
        def windows_meta_fn(waveform, metadata):
            return windows(waveform, tf.cast(meta_model(metadata[None], training=False), tf.float32)[0])

        fns.update(windows=windows_meta_fn, metadata_logits=metadata_logits_fn)

    facts = {**facts, "stride_frames": geo.stride, "field_frames": geo.field, "window_s": window / sr,
             "hop_s": hop / sr, "features": True, "dim": feature_facts["dim"]}
    return fns, facts


def export_model(model, cfg: Config, labels: list[str], out_dir: str | os.PathLike, force: bool = False,
                 extra: dict | None = None, window_s: float | None = None, hop_s: float | None = None,
                 log=print, labels_csv: str | os.PathLike | None = None,
                 metadata_encoder: str | os.PathLike | None = None) -> Path:
    """Writes ``model`` as a verified SavedModel to ``out_dir`` (see module docstring).

    ``labels_csv`` (the run's ``label,class_id,common_name`` table, when it has one) is
    copied to ``assets.extra/labels.csv``, where ``predict``/``submit`` find BirdCLEF class ids.
    A model with a ``metadata`` input (``metadata.use`` only / combined) needs
    ``metadata_encoder`` (the run's ``metadata_encoder.json``), copied to ``assets.extra/``.
    """
    import keras

    from birdnet_tf.models.build import min_samples
    from birdnet_tf.models.metadata import FEATURES_KEY, METADATA_INPUT, has_metadata_input, has_waveform_input

    out = Path(out_dir)
    restore_folder(out)  # an earlier export killed while replacing its folder
    check_replaceable(out, EXPORT_MARKERS, "model export", force)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with_metadata, meta_facts = has_metadata_input(model), {}
    if with_metadata:
        from birdnet_tf.data.metadata import MetadataEncoder

        if metadata_encoder is None or not Path(metadata_encoder).is_file():
            raise BirdnetError(f"{metadata_encoder or 'metadata_encoder.json'}: a model with metadata input needs "
                               "its run's metadata encoder to be exported")
        names = MetadataEncoder.load(metadata_encoder).feature_names
        n_meta = next(t.shape[-1] for t in model.inputs if t.name.split(":")[0] == METADATA_INPUT)
        if len(names) != n_meta:
            raise BirdnetError(f"{metadata_encoder}: encodes {len(names)} features, the model takes {n_meta}")
        meta_facts = {FEATURES_KEY: n_meta, "metadata_feature_names": names}
    min_len = min_samples(model, cfg)
    archive = keras.export.ExportArchive()
    archive.track(model)
    if with_metadata:
        archive.add_endpoint("serving_default",
                             _metadata_serving_fn(model, min_len, meta_facts[FEATURES_KEY], has_waveform_input(model)))
    else:
        archive.add_endpoint("serving_default", _serving_fn(model, min_len))
    window_s = window_s or cfg.data.excerpt_s
    if with_metadata and not has_waveform_input(model):
        fns, whole = {}, None
        log("note: no whole-recording signatures for a metadata-only model (it reads no audio)")
    else:
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
    signatures = {name: text for name, text in SIGNATURES.items() if name in fns or name == "serving_default"}
    what = "waveform float32 [batch, samples] at audio.sample_rate_hz"
    if with_metadata:
        from birdnet_tf.data.metadata import METADATA_ENCODER_FILENAME

        shutil.copyfile(metadata_encoder, tmp / EXTRA / METADATA_ENCODER_FILENAME)
        meta_in = (f"metadata float32 [batch, {meta_facts[FEATURES_KEY]}] (the recordings' date, time and place "
                   f"encoded by {EXTRA}/{METADATA_ENCODER_FILENAME})")
        what = f"{what} and {meta_in}" if has_waveform_input(model) else meta_in
        signatures["serving_default"] = f"{what} -> scores [batch, classes]"
        if "windows" in fns:
            signatures["windows"] = signatures["windows"].replace(
                "(one recording)", f"(one recording) and metadata float32 [{meta_facts[FEATURES_KEY]}] (its metadata)")
    save_config(cfg, tmp / EXTRA / "config.json", labels=list(labels), min_samples=min_len,
                input=what, output="scores float32 [batch, classes] in labels order",
                signatures=signatures, whole_recording=whole, **meta_facts, **(extra or {}))
    try:
        check_export(tmp, cfg, len(labels))
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, out)  # an existing export stays whole until the new one takes its place
    log(f"exported {out} ({len(labels)} classes, {cfg.audio.sample_rate_hz} Hz waveform input); "
        "reload check passed on silence, noise and a tone")
    return out


def check_export(path: str | os.PathLike, cfg: Config, n_classes: int) -> dict[str, np.ndarray]:
    """Reloads a SavedModel and checks finite, well-shaped scores in [0, 1] on test signals."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    inputs = fn.structured_input_signature[1]
    if "metadata" in inputs:
        return _check_metadata_export(path, loaded, inputs, cfg, n_classes)
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
        if "embeddings" in loaded.signatures:
            emb = loaded.signatures["embeddings"](waveform=tf.constant(rec.astype(np.float32)))
            vec = emb["vectors"].numpy()
            if vec.ndim != 2 or vec.shape[0] != ws.shape[0] or not np.all(np.isfinite(vec)) \
                    or not np.allclose(emb["start_s"].numpy(), win["start_s"].numpy()):
                raise BirdnetError(f"{path}: the 'embeddings' signature gives wrong or non-finite vectors "
                                   f"(shape {vec.shape}, {ws.shape[0]} windows) on a 10-s test recording")
    return dict(zip(signals, scores))


def _check_metadata_export(path, loaded, inputs: dict, cfg: Config, n_classes: int) -> dict[str, np.ndarray]:
    """:func:`check_export` of a ``serving_default`` with a ``metadata`` input: scores of test signals
    with all-missing metadata, metadata at the training means, and all-missing again."""
    import tensorflow as tf

    fn = loaded.signatures["serving_default"]

    from birdnet_tf.models.metadata import feature_names

    names = feature_names(cfg)
    n_meta = inputs["metadata"].shape[-1]
    if n_meta != len(names):
        raise BirdnetError(f"{path}: serving_default takes {n_meta} metadata features, the config gives {len(names)}")
    missing = np.array([name.endswith("_missing") for name in names], np.float32)
    meta = np.stack([missing, np.zeros_like(missing), missing])
    feeds = {"metadata": tf.constant(meta)}
    signals = ["silence + missing metadata", "noise + mean metadata", "tone + missing metadata"]
    if "waveform" in inputs:
        sr, n = cfg.audio.sample_rate_hz, cfg.excerpt_samples
        t = np.arange(n) / sr
        rng = np.random.default_rng(0)
        feeds["waveform"] = tf.constant(np.stack([np.zeros(n), 0.1 * rng.standard_normal(n),
                                                  0.5 * np.sin(2 * np.pi * 3000.0 * t)]).astype(np.float32))
    scores = fn(**feeds)["scores"].numpy()
    if scores.shape != (len(signals), n_classes):
        raise BirdnetError(f"{path}: scores have shape {scores.shape}, expected {(len(signals), n_classes)}")
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise BirdnetError(f"{path}: reloaded model gives non-finite or out-of-range scores on test inputs")
    if "waveform" in inputs:
        short = fn(waveform=feeds["waveform"][:1, : cfg.audio.sample_rate_hz // 10], metadata=feeds["metadata"][:1])
        if short["scores"].numpy().shape != (1, n_classes) or not np.all(np.isfinite(short["scores"].numpy())):
            raise BirdnetError(f"{path}: reloaded model fails on a 0.1-s input")
    if "windows" in loaded.signatures:  # a 10-s recording through the whole-recording signature
        sr = cfg.audio.sample_rate_hz
        rec = np.resize(feeds["waveform"].numpy()[2], 10 * sr).astype(np.float32)
        win = loaded.signatures["windows"](waveform=tf.constant(rec), metadata=feeds["metadata"][1])
        ws = win["scores"].numpy()
        if ws.ndim != 2 or ws.shape[1] != n_classes or ws.shape[0] != win["start_s"].shape[0] \
                or not np.all(np.isfinite(ws)) or ws.min() < 0 or ws.max() > 1:
            raise BirdnetError(f"{path}: the 'windows' signature gives wrong or non-finite scores "
                               f"(shape {ws.shape}) on a 10-s test recording")
        bias = loaded.signatures["metadata_logits"](metadata=feeds["metadata"])["logits"].numpy()
        if bias.shape != (len(signals), n_classes) or not np.all(np.isfinite(bias)):
            raise BirdnetError(f"{path}: the 'metadata_logits' signature gives wrong or non-finite logits")
    return dict(zip(signals, scores))


def load_run(run_dir: str | os.PathLike, model_file: str = "best.keras"):
    """A run folder's model for inference: ``(waveform → scores keras model, config, labels, run extras)``.

    A model trained on PNG chunks (``input: chunks``) gets ``ChunkSpectrogram`` put in front
    of it, so every run gives a model that takes a waveform.
    """
    from birdnet_tf.data.labels import LabelSet
    from birdnet_tf.models.build import load_keras_model
    from birdnet_tf.runs import InputKind

    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise BirdnetError(f"{run}: not a run folder (no config.json)")
    path = run / model_file
    if not path.is_file():
        raise BirdnetError(f"{path}: no trained model there (has training finished an epoch?)")
    cfg, extra = read_config_json(run / "config.json")
    labels = list(LabelSet.load(run / "labels.txt"))
    model = load_keras_model(path)
    if InputKind.of_run(cfg, extra) is InputKind.CHUNKS:  # an image model trained on PNG chunks: put ChunkSpectrogram in front
        from birdnet_tf.models.build import waveform_model

        model = waveform_model(model, cfg)
    return model, cfg, labels, extra


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, model_file: str = "best.keras",
               force: bool = False, window_s: float | None = None, hop_s: float | None = None, log=print) -> Path:
    """Exports a run folder's best model (see :func:`export_model`)."""
    from birdnet_tf.runs import InputKind, read_state

    run = Path(run_dir)
    model, cfg, labels, run_extra = load_run(run, model_file)
    state = read_state(run / "state.json")
    trained_on = {"trained_on": "chunk images (birdnet-tf extract); the export computes them from the waveform"} \
        if InputKind.of_run(cfg, run_extra) is InputKind.CHUNKS else {}
    labels_csv = run / "labels.csv" if (run / "labels.csv").is_file() else None
    from birdnet_tf.data.metadata import METADATA_ENCODER_FILENAME

    encoder = run / METADATA_ENCODER_FILENAME
    return export_model(model, cfg, labels, out_dir, force=force, log=log, window_s=window_s, hop_s=hop_s,
                        labels_csv=labels_csv, metadata_encoder=encoder if encoder.is_file() else None,
                        extra={"source_run": str(run.resolve()), "source_model": model_file,
                               "best_epoch": state.get("best_epoch"), state.get("monitor", "monitor"): state.get("best"),
                               **trained_on})


class ExportedModel:
    """An export folder loaded for inference: ``scores = m(waveforms)``; ``m.labels``, ``m.config``.

    An export with metadata input (``m.metadata_encoder`` is not None) takes
    ``m(waveforms, metadata)``: float32 ``[batch, F]`` rows of ``m.metadata_encoder.transform``
    (missing → all-missing rows, see :meth:`missing_metadata`).
    """

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
        self._inputs = set(self._fn.structured_input_signature[1])
        self.metadata_encoder = None
        if "metadata" in self._inputs:
            from birdnet_tf.data.metadata import METADATA_ENCODER_FILENAME, MetadataEncoder

            self.metadata_encoder = MetadataEncoder.load(self.path / EXTRA / METADATA_ENCODER_FILENAME)

    @property
    def uses_metadata(self) -> bool:
        """True when ``serving_default`` takes a ``metadata`` input."""
        return self.metadata_encoder is not None

    @property
    def uses_waveform(self) -> bool:
        """False for a metadata-only export (its ``serving_default`` reads no audio)."""
        return "waveform" in self._inputs

    def missing_metadata(self, n: int) -> np.ndarray:
        """``[n, F]`` metadata rows that say "all unknown" (indicators 1, values 0)."""
        import pandas as pd

        if self.metadata_encoder is None:
            raise BirdnetError(f"{self.path}: this export takes no metadata")
        return self.metadata_encoder.transform(pd.DataFrame(index=range(n)))

    def signature(self, name: str):
        """A signature of the SavedModel by name (``serving_default``, ``windows``, ``front``, ``body``)."""
        if name not in self._loaded.signatures:
            raise BirdnetError(f"{self.path}: export has no '{name}' signature "
                               f"(it has {', '.join(sorted(self._loaded.signatures))}); export it again")
        return self._loaded.signatures[name]

    @property
    def sample_rate_hz(self) -> int:
        return self.config.audio.sample_rate_hz

    def __call__(self, waveforms: np.ndarray, metadata: np.ndarray | None = None) -> np.ndarray:
        """``float32 [batch, samples]`` (and ``metadata [batch, F]``) → ``[batch, classes]`` scores.

        ``metadata`` is ignored by an export without metadata input; an export with one takes
        all-missing rows where it is None. A metadata-only export reads only ``len(waveforms)``.
        """
        import tensorflow as tf

        if self.metadata_encoder is None:
            return self._fn(waveform=tf.constant(np.asarray(waveforms, np.float32)))["scores"].numpy()
        n = len(waveforms)
        meta = self.missing_metadata(n) if metadata is None else np.asarray(metadata, np.float32).reshape(n, -1)
        feeds = {"metadata": tf.constant(meta)}
        if self.uses_waveform:
            feeds["waveform"] = tf.constant(np.asarray(waveforms, np.float32))
        return self._fn(**feeds)["scores"].numpy()
