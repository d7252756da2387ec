"""``birdnet-tf head``: a classifier for new sound classes fitted on a few labelled windows of an
embedding database ("agile modelling"), exported stacked on the embedding model (a run folder's,
or an export's: rebuilt from its config and weights, :func:`export_keras_model`; a TFLite folder
has no trainable model, so its databases are refused).

The head is one Dense layer with a sigmoid per class (multi-label logistic regression) on the
database's window vectors, which are the means of the backbone's per-step features over each
window's steps. Because it is linear, ``W·mean(f) + b = mean(W·f + b)``: put on the model's
per-step features as its ``frame_logits`` layer, with ``mean`` temporal pooling and a sigmoid,
it gives every window exactly the head's score. The stacked model is written as a normal
export (:func:`birdnet_tf.export.export_model`), so ``predict`` (either engine) and ``serve``
score the new classes directly (``tflite`` converts run folders only, not exports).

``LABELS.csv`` has columns ``file, start_s, end_s, label``: a database window takes a label
when it overlaps the labelled stretch by at least half a window (or by the whole stretch when
that is shorter); files match the database's by path, resolved path or file name. Windows
with no label are the negatives of every class (at most ``max_negatives`` of them, sampled).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.embed.db import EmbeddingTable, read_database, read_facts
from birdnet_tf.errors import BirdnetError

LABEL_COLUMNS = ("file", "start_s", "end_s", "label")


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise BirdnetError(f"{p}: labels file does not exist")
    try:
        table = pd.read_csv(p)
    except Exception as err:  # noqa: BLE001 - names the file
        raise BirdnetError(f"{p}: unreadable CSV ({err})") from None
    missing = [c for c in LABEL_COLUMNS if c not in table.columns]
    if missing:
        raise BirdnetError(f"{p}: lacks the column(s) {missing} (needs {', '.join(LABEL_COLUMNS)})")
    return table


def window_targets(table: EmbeddingTable, labels: pd.DataFrame, log=None) -> tuple[list[str], np.ndarray]:
    """``(classes, targets [windows, classes])``: 1 where a labelled stretch covers the window."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    classes = sorted(str(c) for c in labels["label"].dropna().unique())
    if not classes:
        raise BirdnetError("the labels file names no class")
    col = {c: j for j, c in enumerate(classes)}
    by_key: dict[str, np.ndarray] = {}
    files = table.files.astype(str)
    for f in np.unique(files):
        rows = np.flatnonzero(files == f)
        for key in {f, str(Path(f).resolve()), Path(f).name}:
            by_key[key] = rows if key not in by_key else np.union1d(by_key[key], rows)
    targets = np.zeros((len(table), len(classes)), np.float32)
    window_s = table.facts.window_s
    unmatched = 0
    for row in labels.itertuples(index=False):
        f = str(row.file)
        rows = by_key.get(f, by_key.get(str(Path(f).resolve()), by_key.get(Path(f).name)))
        if rows is None:
            unmatched += 1
            continue
        start, end = float(row.start_s), float(row.end_s)
        overlap = np.minimum(table.ends[rows], end) - np.maximum(table.starts[rows], start)
        need = min(0.5 * window_s, max(end - start, 0.0)) - 1e-6
        targets[rows[overlap >= need], col[str(row.label)]] = 1.0
    if unmatched:
        log(f"warning: {unmatched} labelled stretch(es) name a file that is not in the database (skipped)")
    for c in classes:
        if targets[:, col[c]].sum() == 0:
            raise BirdnetError(f"class '{c}': no database window matches its labelled stretches")
    return classes, targets


def fit_head(vectors: np.ndarray, targets: np.ndarray, epochs: int = 300, learning_rate: float = 0.05,
             l2: float = 1e-4, seed: int = 0):
    """One Dense layer with sigmoids fitted full-batch (Adam, binary cross-entropy); returns ``(W, b)``.

    In NumPy: ``epochs`` full-batch Adam steps (Keras's defaults: β 0.9/0.999, ε 1e-7) on the
    class-balanced mean cross-entropy plus ``l2``·|W|², from a seeded Glorot-uniform kernel.
    (Keras's ``fit`` took 0.1–0.2 s per full-batch epoch of this one layer on a busy 2-core machine.)
    """
    x = np.asarray(vectors, np.float64)
    y = np.asarray(targets, np.float64)
    n, dim = x.shape
    classes = y.shape[1]
    limit = np.sqrt(6.0 / (dim + classes))
    kernel = np.random.default_rng(seed).uniform(-limit, limit, (dim, classes))
    bias = np.zeros(classes)
    # positives are few: weigh each class's positives and negatives equally
    pos = y.mean(axis=0).clip(1e-6, 1 - 1e-6)
    weights = np.where(y > 0, 0.5 / pos, 0.5 / (1 - pos)).mean(axis=1)
    moments = [[np.zeros_like(kernel), np.zeros_like(kernel)], [np.zeros_like(bias), np.zeros_like(bias)]]
    b1, b2, eps = 0.9, 0.999, 1e-7
    for step in range(1, int(epochs) + 1):
        p = 1.0 / (1.0 + np.exp(-(x @ kernel + bias)))
        g = (p - y) * weights[:, None] / (n * classes)  # d(mean weighted BCE)/d(logits)
        grads = (x.T @ g + 2 * l2 * kernel, g.sum(axis=0))
        lr = learning_rate * np.sqrt(1 - b2 ** step) / (1 - b1 ** step)
        for param, grad, (m, v) in zip((kernel, bias), grads, moments):
            m *= b1
            m += (1 - b1) * grad
            v *= b2
            v += (1 - b2) * grad * grad
            param -= lr * m / (np.sqrt(v) + eps)
    return kernel.astype(np.float32), bias.astype(np.float32)


def stacked_model(model, kernel: np.ndarray, bias: np.ndarray):
    """``model``'s waveform → per-step features, then the head per step, mean pooling, sigmoid."""
    import keras

    from birdnet_tf.models.layers import TemporalPooling

    names = {layer.name for layer in model.layers}
    if "combined_logits" in names or len(model.inputs) > 1:
        raise BirdnetError("a head on embeddings needs an audio-only model (this one takes metadata too)")
    feats = model.get_layer("frame_logits").input
    dense = keras.layers.Dense(kernel.shape[1], name="frame_logits", dtype="float32")
    logits = dense(keras.layers.Activation("linear", dtype="float32", name="features_f32")(feats))
    dense.set_weights([kernel, bias])
    pooled = TemporalPooling("mean", name="temporal_pooling")(logits)
    scores = keras.layers.Activation("sigmoid", dtype="float32", name="scores")(pooled)
    return keras.Model(model.input, scores, name=f"{model.name}_head")


def export_keras_model(path: str | os.PathLike, scorer=None):
    """The Keras model of an export folder: rebuilt from its config, given the SavedModel's weights.

    An export holds a SavedModel, not the Keras model; :func:`birdnet_tf.models.build.build_model`
    of the export's config and labels gives the same layers, whose variables take the saved values
    by their path (the RNG states of augmentation layers excepted). With ``scorer`` (the export's
    whole-recording engine with its ``features`` signature) the rebuilt model's embeddings of a
    test signal must equal the export's (relative 1e-4).

    Raises:
        BirdnetError: An export whose model the config does not rebuild (another architecture, a
            metadata or chunk-image model): stack the head on its run folder instead.
    """
    import tensorflow as tf

    from birdnet_tf.config import read_config_json
    from birdnet_tf.export import EXTRA
    from birdnet_tf.models.build import build_model

    p = Path(path)
    cfg, _ = read_config_json(p / EXTRA / "config.json")
    labels = [s for s in (p / EXTRA / "labels.txt").read_text(encoding="utf-8").splitlines() if s]
    hint = "embed the audio with its run folder and fit the head on that database"
    try:
        model = build_model(cfg, len(labels))
    except Exception as err:  # noqa: BLE001 - any failure means: not rebuildable from its config
        raise BirdnetError(f"{p}: cannot rebuild the export's Keras model from its config ({err}); {hint}") from None
    saved = {v.name.split(":")[0]: v for v in tf.saved_model.load(str(p)).variables}
    for v in model.variables:
        if v.path.split("/")[0].startswith("seed_generator"):
            continue  # augmentation RNG state: not used at inference
        src = saved.get(v.path)
        if src is None or tuple(src.shape) != tuple(v.shape):
            raise BirdnetError(f"{p}: the export's weights do not fit the model its config builds (variable "
                               f"{v.path} {'is missing' if src is None else f'has shape {tuple(src.shape)}'}); {hint}")
        v.assign(src.numpy())
    if scorer is not None:
        from birdnet_tf.infer.whole import WholeRecordingModel

        rng = np.random.default_rng(0)
        sr = cfg.audio.sample_rate_hz
        x = (0.1 * rng.standard_normal(4 * sr) + 0.3 * np.sin(2 * np.pi * 3000 * np.arange(4 * sr) / sr))
        x = x.astype(np.float32)
        want = scorer.embed(x, cfg.data.excerpt_s, cfg.data.excerpt_s / 2).vectors
        got = WholeRecordingModel.from_keras(model, cfg).embed(x, cfg.data.excerpt_s, cfg.data.excerpt_s / 2).vectors
        if got.shape != want.shape or np.abs(got - want).max() > 1e-4 * max(1.0, float(np.abs(want).max())):
            raise BirdnetError(f"{p}: the Keras model rebuilt from the export's config and weights does not give "
                               f"the export's embeddings; {hint}")
    return model


def train_head(db: str | os.PathLike, labels_csv: str | os.PathLike, out: str | os.PathLike,
               model: str | os.PathLike | None = None, force: bool = False, epochs: int = 300,
               max_negatives: int = 20000, log=None) -> Path:
    """Fits the head on ``db``'s windows labelled by ``labels_csv`` and exports it stacked on the
    database's model (a run folder or an export; ``model`` overrides where it is) to ``out``.

    A database embedded from a TFLite folder is refused: LiteRT flatbuffers hold no trainable
    model to stack a head on (embed with the run folder or the export it was made from).
    """
    from birdnet_tf.embed.embedder import open_embedder
    from birdnet_tf.lite import LiteModel, is_tflite_folder

    log = log or (lambda msg: print(msg, file=sys.stderr))
    facts = read_facts(db)
    labels = read_labels(labels_csv)  # a bad CSV fails before the model loads
    source = Path(model or facts.model)
    if source.exists() and is_tflite_folder(source):
        run = LiteModel(source).window.meta.get("source_run")
        raise BirdnetError(f"{db}: was embedded from the TFLite folder {source}, which holds no Keras model to stack "
                           "a head on; embed the same audio with the run folder or export it was made from"
                           + (f" ({run})" if run else "") + " and fit the head on that database")
    if source.exists() and not ((source / "config.json").is_file() or (source / "saved_model.pb").is_file()):
        raise BirdnetError(f"{source}: a head is stacked on the run folder or export the database was embedded "
                           "with (pass --model RUN_DIR or EXPORT_DIR)")
    embedder = open_embedder(source)
    problem = facts.mismatch(embedder.facts(facts.window_s, facts.hop_s))
    if problem:
        raise BirdnetError(f"{db}: cannot fit a head for {source}: {problem}")
    exported = embedder.keras_model is None
    keras_model = export_keras_model(source, embedder.scorer) if exported else embedder.keras_model
    table = read_database(db)
    classes, targets = window_targets(table, labels, log)
    positive = targets.sum(axis=1) > 0
    neg = np.flatnonzero(~positive)
    if len(neg) > max_negatives:
        neg = np.sort(np.random.default_rng(0).choice(neg, max_negatives, replace=False))
    keep = np.concatenate([np.flatnonzero(positive), neg])
    log(f"fitting a head for {len(classes)} class(es) on {int(positive.sum())} labelled and {len(neg)} "
        "unlabelled window(s)")
    kernel, bias = fit_head(table.vectors[keep], targets[keep], epochs=epochs)
    from birdnet_tf.export import export_model

    cfg = embedder.scorer.config.replace({"model.temporal_pooling": "mean", "model.output_activation": "sigmoid",
                       "data.excerpt_s": facts.window_s, "data.eval_hop_s": facts.hop_s})
    return export_model(stacked_model(keras_model, kernel, bias), cfg, classes, out, force=force, log=log,
                        hop_s=facts.hop_s, window_s=facts.window_s,
                        extra={"head_on_embeddings": {"database": str(db), "labels": str(labels_csv),
                                                      "source_export" if exported else "source_run":
                                                          str(source.resolve()),
                                                      "windows": int(len(keep)),
                                                      "positives": int(positive.sum())}})
