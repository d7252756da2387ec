"""``birdnet-tf embed`` and ``birdnet-tf search``: a model's per-window vectors into a database, and queries.

The vectors are those of :meth:`birdnet_tf.infer.whole.WholeRecordingModel.embed`: per window,
the mean of the backbone's per-step features (the input of the class-logits layer) over the
steps that the window's scores pool, computed in the one whole-recording pass. A model is a
run folder (its ``best.keras``), an export folder (its ``features`` signature), or a ``birdnet-tf
tflite`` folder (its ``front``/``embed`` halves, run in LiteRT without TensorFlow: the TensorFlow-free
install with pyarrow embeds and searches).

The database's :class:`~birdnet_tf.embed.db.EmbeddingFacts` name the model (its absolute
path, so ``search`` finds it from any folder) and its fingerprint (a hash of the weights and the labels): a query embedded by another model is
refused, as is adding its vectors to the database.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.embed.db import EmbeddingFacts, EmbeddingWriter, read_database, read_facts
from birdnet_tf.errors import AudioDecodeError, BirdnetError, about

LAYER = "frame_logits input, mean over the window's steps"


@dataclass
class Embedder:
    """A model ready to embed: its whole-recording engine and what identifies it."""

    path: str
    scorer: object  # WholeRecordingModel with features
    fingerprint: str
    dim: int
    keras_model: object = None  # a run folder's Keras model (None for an export)
    runtime: str = "tensorflow"  # or "tflite": a birdnet-tf tflite folder, run in LiteRT

    @property
    def sample_rate(self) -> int:
        return self.scorer.sample_rate

    def facts(self, window_s: float, hop_s: float) -> EmbeddingFacts:
        return EmbeddingFacts(model=self.path, fingerprint=self.fingerprint, dim=self.dim, window_s=float(window_s),
                              hop_s=float(hop_s), sample_rate_hz=int(self.sample_rate), layer=LAYER)


def _hash_files(paths: list[Path], labels: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update("\n".join(labels).encode("utf-8"))
    return h.hexdigest()


def _hash_weights(model, labels: list[str]) -> str:
    h = hashlib.sha256()
    for w in model.weights:
        h.update(w.path.encode("utf-8"))
        h.update(np.ascontiguousarray(np.asarray(w.numpy())).tobytes())
    h.update("\n".join(labels).encode("utf-8"))
    return h.hexdigest()


def open_embedder(path: str | os.PathLike) -> Embedder:
    """The embedding model of a run folder or an export folder (see the module docstring).

    Raises:
        BirdnetError: Not a model folder, a TFLite folder without its sidecar or embedding half, or an
            export without the ``features`` signature.
    """
    p = Path(path)
    if not p.exists():
        raise BirdnetError(f"{p}: model does not exist")
    from birdnet_tf.lite import LiteModel, is_tflite_folder

    if is_tflite_folder(p):  # LiteRT, never TensorFlow; a folder missing its labels (sidecar) says so here
        lite = LiteModel(p)
        scorer = lite.embed_model()
        return Embedder(str(p.resolve()), scorer, _hash_files(lite.embedding_files(), lite.labels),
                        int(lite.extra["whole_recording"]["dim"]), runtime="tflite")
    from birdnet_tf.fileio import quiet_tensorflow

    quiet_tensorflow()
    from birdnet_tf.infer.whole import WholeRecordingModel

    if (p / "saved_model.pb").is_file():
        from birdnet_tf.export import ExportedModel

        exported = ExportedModel(p)
        facts = exported.extra.get("whole_recording") or {}
        if not facts.get("features"):
            raise BirdnetError(f"{p}: export has no features signature for embeddings "
                               "(made by an older birdnet-tf; export it again)")
        scorer = WholeRecordingModel.from_export(exported)
        weights = sorted((p / "variables").glob("variables.*"))
        return Embedder(str(p.resolve()), scorer, _hash_files(weights, exported.labels), int(facts["dim"]))
    if (p / "config.json").is_file():
        from birdnet_tf.export import load_run
        from birdnet_tf.models.surgery import split_model

        model, cfg, labels, _ = load_run(p)
        scorer = WholeRecordingModel.from_keras(model, cfg, labels=labels)
        dim = split_model(model, features=True)[2]["dim"]
        return Embedder(str(p.resolve()), scorer, _hash_weights(model, labels), int(dim), keras_model=model)
    raise BirdnetError(f"{p}: not a run folder (config.json) nor an export folder (saved_model.pb)")


def _windows(embedder: Embedder, window_s: float | None, hop_s: float | None) -> tuple[float, float]:
    cfg = embedder.scorer.config
    window_s = float(window_s if window_s is not None else cfg.data.excerpt_s)
    hop_s = float(hop_s if hop_s is not None else window_s)
    if window_s <= 0 or hop_s <= 0:
        raise BirdnetError("--window-s and --hop-s must be positive")
    return window_s, hop_s


def embed_files(model: str | os.PathLike | Embedder, inputs: list[str], out: str | os.PathLike,
                window_s: float | None = None, hop_s: float | None = None, force: bool = False,
                progress: bool = True, log=None, part_files: int = 64) -> tuple[int, list[tuple[str, str]]]:
    """Writes the per-window vectors of ``inputs`` (files and folders) to the database ``out``.

    ``window_s`` (default the model's ``data.excerpt_s``) every ``hop_s`` (default ``window_s``).
    Resumable: recordings already in the database are skipped. Unreadable files are skipped
    with a warning and counted.

    Returns:
        (recordings embedded now, failures as (path, reason)).
    """
    from tqdm.auto import tqdm

    from birdnet_tf.grid import Grid
    from birdnet_tf.infer.predict import expand_inputs

    log = log or (lambda msg: print(msg, file=sys.stderr))
    embedder = model if isinstance(model, Embedder) else open_embedder(model)
    window_s, hop_s = _windows(embedder, window_s, hop_s)
    files, failures = expand_inputs(inputs)
    for path, reason in failures:
        log(f"skipped: {about(path, reason)}")
    grid = Grid.regular(window_s, hop_s, embedder.sample_rate)
    done = 0
    with EmbeddingWriter(out, embedder.facts(window_s, hop_s), force=force, part_files=part_files) as writer:
        finished = writer.done()
        todo = [f for f in files if f not in finished]
        if len(todo) < len(files):
            log(f"{len(files) - len(todo)} recording(s) already in {out}; embedding the other {len(todo)}")
        for f in tqdm(todo, desc="embed", unit="file", disable=not progress or len(todo) < 2):
            try:
                emb = embedder.scorer.embed(f, grid=grid, log=log)
            except (AudioDecodeError, BirdnetError) as err:
                failures.append((f, str(err)))
                log(f"skipped: {about(f, str(err))}")
                continue
            writer.add(f, emb.starts, emb.ends, emb.vectors)
            done += 1
    return done, failures


def search(db: str | os.PathLike, query: str | os.PathLike, start_s: float | None = None,
           end_s: float | None = None, top: int = 10, model: str | os.PathLike | Embedder | None = None,
           log=None) -> pd.DataFrame:
    """The ``top`` windows of ``db`` nearest (cosine) to the query clip, one block of hits per query window.

    The query (``[start_s, end_s)`` of it when given) is embedded on the database's windows by the
    database's model (``model`` overrides where it is looked up); a model with another fingerprint is
    refused, and a query shorter than one window is an error.
    """
    from birdnet_tf.embed.search import search_table
    from birdnet_tf.grid import Grid

    facts = read_facts(db)
    embedder = model if isinstance(model, Embedder) else open_embedder(model or facts.model)
    problem = facts.mismatch(embedder.facts(facts.window_s, facts.hop_s))
    if problem:
        raise BirdnetError(f"{db}: cannot search it with {embedder.path}: {problem} (pass --model with the "
                           "model that made the database)")
    from birdnet_tf.data.audio import load_audio

    sr = facts.sample_rate_hz
    x, _ = load_audio(str(query), sr)
    lo = 0 if start_s is None else max(0, int(round(start_s * sr)))
    hi = len(x) if end_s is None else min(len(x), int(round(end_s * sr)))
    window = int(round(facts.window_s * sr))
    if hi - lo < window:
        raise BirdnetError(f"{query}: the query ({(hi - lo) / sr:.2f} s) is shorter than one window of the database "
                           f"({facts.window_s:g} s); give a longer clip or a wider --start-s/--end-s")
    emb = embedder.scorer.embed(x[lo:hi], grid=Grid.regular(facts.window_s, facts.hop_s, sr), log=log)
    full = emb.ends - emb.starts >= facts.window_s - 0.5 / sr  # only whole windows query
    offset = lo / sr
    names = [f"{Path(query).name}@{s + offset:.2f}" for s in emb.starts[full]]
    table = read_database(db)
    if not len(table):
        raise BirdnetError(f"{db}: the database holds no vectors")
    return search_table(table, emb.vectors[full], top, query_names=names)
