"""``birdnet-tf head``: a classifier for new sound classes fitted on a few labelled windows of an
embedding database ("agile modelling"), exported stacked on the embedding model.

The head is one Dense layer with a sigmoid per class (multi-label logistic regression) on the
database's window vectors, which are the means of the backbone's per-step features over each
window's steps. Because it is linear, ``W·mean(f) + b = mean(W·f + b)``: put on the model's
per-step features as its ``frame_logits`` layer, with ``mean`` temporal pooling and a sigmoid,
it gives every window exactly the head's score. The stacked model is written as a normal
export (:func:`birdnet_tf.export.export_model`), so ``predict`` (either engine), ``tflite``
and ``serve`` score the new classes directly.

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
    """One Dense layer with sigmoids fitted full-batch (Adam, binary cross-entropy); returns ``(W, b)``."""
    import keras

    keras.utils.set_random_seed(seed)
    head = keras.Sequential([keras.Input((vectors.shape[1],)),
                             keras.layers.Dense(targets.shape[1], activation="sigmoid",
                                                kernel_regularizer=keras.regularizers.L2(l2))])
    head.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    # positives are few: weigh each class's positives and negatives equally
    pos = targets.mean(axis=0).clip(1e-6, 1 - 1e-6)
    weights = np.where(targets > 0, 0.5 / pos, 0.5 / (1 - pos)).mean(axis=1).astype(np.float32)
    head.fit(vectors, targets, sample_weight=weights, epochs=epochs, batch_size=len(vectors), verbose=0)
    kernel, bias = head.layers[-1].get_weights()
    return kernel, bias


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


def train_head(db: str | os.PathLike, labels_csv: str | os.PathLike, out: str | os.PathLike,
               model: str | os.PathLike | None = None, force: bool = False, epochs: int = 300,
               max_negatives: int = 20000, log=None) -> Path:
    """Fits the head on ``db``'s windows labelled by ``labels_csv`` and exports it stacked on the
    database's model (a run folder; ``model`` overrides where it is) to ``out``."""
    from birdnet_tf.embed.embedder import open_embedder

    log = log or (lambda msg: print(msg, file=sys.stderr))
    facts = read_facts(db)
    labels = read_labels(labels_csv)  # a bad CSV fails before the model loads
    source = Path(model or facts.model)
    if not (source / "config.json").is_file() or (source / "saved_model.pb").is_file():
        raise BirdnetError(f"{source}: a head is stacked on the run folder the database was embedded with "
                           "(pass --model RUN_DIR)")
    embedder = open_embedder(source)
    problem = facts.mismatch(embedder.facts(facts.window_s, facts.hop_s))
    if problem:
        raise BirdnetError(f"{db}: cannot fit a head for {source}: {problem}")
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
    return export_model(stacked_model(embedder.keras_model, kernel, bias), cfg, classes, out, force=force, log=log,
                        hop_s=facts.hop_s, window_s=facts.window_s,
                        extra={"head_on_embeddings": {"database": str(db), "labels": str(labels_csv),
                                                      "source_run": str(source.resolve()),
                                                      "windows": int(len(keep)),
                                                      "positives": int(positive.sum())}})
