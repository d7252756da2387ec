"""Embedding databases (Parquet parts, resume, refusal of another model's vectors) and
exact cosine search; no TensorFlow needed."""

from __future__ import annotations

import numpy as np
import pytest

from birdnet_tf.embed.db import EmbeddingFacts, EmbeddingWriter, read_database, read_facts
from birdnet_tf.embed.search import VectorIndex, cut_clips, search_table
from birdnet_tf.errors import BirdnetError

FACTS = EmbeddingFacts(model="m", fingerprint="abc123", dim=8, window_s=1.0, hop_s=1.0, sample_rate_hz=16000)


def _vectors(rng, n, dim=8):
    return rng.normal(size=(n, dim)).astype(np.float32)


def test_database_round_trip_parts_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    db = tmp_path / "db"
    data = {f"rec{i}.wav": _vectors(rng, 3 + i) for i in range(5)}
    with EmbeddingWriter(db, FACTS, part_files=2) as w:
        for f, v in list(data.items())[:3]:
            w.add(f, np.arange(len(v)), np.arange(len(v)) + 1.0, v)
    assert len(list(db.glob("part-*.parquet"))) == 2  # 2 files, then 1 on exit
    # a rerun sees what is done and adds the rest, including a recording with no window
    w = EmbeddingWriter(db, FACTS, part_files=2)
    assert w.done() == {"rec0.wav", "rec1.wav", "rec2.wav"}
    for f, v in list(data.items())[3:]:
        w.add(f, np.arange(len(v)), np.arange(len(v)) + 1.0, v)
    w.add("short.wav", [], [], np.zeros((0, 8), np.float32))
    w.close()
    assert "short.wav" in EmbeddingWriter(db, FACTS).done()
    table = read_database(db)
    assert len(table) == sum(len(v) for v in data.values())
    for f, v in data.items():
        np.testing.assert_array_equal(table.vectors[table.files == f], v)
    assert read_facts(db) == FACTS


def test_database_refuses_another_models_vectors(tmp_path):
    db = tmp_path / "db"
    EmbeddingWriter(db, FACTS).close()
    other = EmbeddingFacts(model="n", fingerprint="zzz999", dim=8, window_s=1.0, hop_s=1.0, sample_rate_hz=16000)
    with pytest.raises(BirdnetError, match="another model"):
        EmbeddingWriter(db, other)
    wider = EmbeddingFacts(**{**FACTS.__dict__, "dim": 16})
    with pytest.raises(BirdnetError, match="dim differs"):
        EmbeddingWriter(db, wider)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("x")
    with pytest.raises(BirdnetError, match="not an embedding database"):
        EmbeddingWriter(tmp_path / "notes", FACTS)
    with pytest.raises(BirdnetError, match="--force only replaces one"):
        EmbeddingWriter(tmp_path / "notes", FACTS, force=True)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "x"
    with pytest.raises(BirdnetError, match="does not exist"):
        read_database(tmp_path / "nowhere")


def test_index_is_exact_against_brute_force_across_blocks():
    rng = np.random.default_rng(1)
    base = _vectors(rng, 1000, 16)
    queries = _vectors(rng, 7, 16)
    idx, sims = VectorIndex(base, block_rows=97).search(queries, k=5)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    full = (unit @ (queries / np.linalg.norm(queries, axis=1, keepdims=True)).T).T
    want = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(sims, np.take_along_axis(full, want, axis=1), atol=1e-5)
    half_idx, _ = VectorIndex(base, dtype=np.float16).search(queries, k=1)
    np.testing.assert_array_equal(half_idx[:, 0], want[:, 0])
    with pytest.raises(BirdnetError, match="dimension 16"):
        VectorIndex(base).search(np.zeros(8), k=1)


def test_search_table_own_window_first_and_clips(tmp_path):
    from birdnet_tf.data.audio import load_audio, write_wav16

    sr = 8000
    t = np.arange(sr * 4) / sr
    audio = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    wav = write_wav16(tmp_path / "a.wav", audio, sr)
    rng = np.random.default_rng(2)
    v = _vectors(rng, 4)
    with EmbeddingWriter(tmp_path / "db", FACTS) as w:
        w.add(str(wav), [0, 1, 2, 3], [1, 2, 3, 4], v)
    table = read_database(tmp_path / "db")
    hits = search_table(table, v[2] + 0.01 * rng.normal(size=8), k=3, query_names=["q"])
    assert list(hits["rank"]) == [1, 2, 3]
    assert hits.iloc[0]["start_s"] == 2.0 and hits.iloc[0]["similarity"] > 0.99
    clips = cut_clips(hits, tmp_path / "clips")
    assert len(clips) == 3
    clip, clip_sr = load_audio(clips[0])
    assert clip_sr == sr and len(clip) == sr
    with pytest.raises(BirdnetError, match="already exists"):
        cut_clips(hits, tmp_path / "clips")
    assert len(cut_clips(hits.head(1), tmp_path / "clips", force=True)) == 1
    assert len(list((tmp_path / "clips").glob("*.wav"))) == 1
