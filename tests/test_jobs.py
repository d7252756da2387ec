"""Tests for birdnet_tf.data.jobs: the one runner of the ``prepare`` and ``extract`` jobs."""

from __future__ import annotations

import multiprocessing
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdnet_tf.config import ChunkConfig
from birdnet_tf.data import jobs
from birdnet_tf.data.extract import extract
from birdnet_tf.data.prepare import prepare


@dataclass(frozen=True)
class Item:
    key: str
    path: str


def square(key: str, path: str):
    """A worker: squares the number in ``path``; 'bad' fails, 'boom' kills its worker process."""
    if path == "boom":
        os._exit(3)
    if path == "bad":
        return None, "not a number", ["a warning from the worker"]
    return int(path) ** 2, None, []


def run(items, workers, done_before=None):
    done, failed = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jobs.run_jobs(items, square, lambda item: (item.key, item.path), name="square", workers=workers,
                      on_done=lambda item, value, fresh: done.append((item.key, value, fresh)),
                      on_failed=lambda item, reason: failed.append((item.key, reason)),
                      done_before=done_before, progress=False, crash_reason="its worker died")
    return sorted(done), sorted(failed), [str(w.message) for w in caught]


def test_runner_skips_resumes_counts_failures_and_survives_a_dead_worker(monkeypatch):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    monkeypatch.setattr(jobs, "pool_context", lambda: multiprocessing.get_context("fork"))
    items = [Item("a", "2"), Item("b", "bad"), Item("c", "3"), Item("d", "boom"), Item("e", "4")]
    earlier = {"c": 9}  # finished by an earlier run: kept, not run again
    for workers in (1, 2):
        todo = items if workers == 2 else [i for i in items if i.path != "boom"]  # in-process: no crash
        done, failed, texts = run(todo, workers, done_before=lambda item: earlier.get(item.key))
        assert done == [("a", 4, True), ("c", 9, False), ("e", 16, True)], workers
        assert failed == [("b", "not a number")] + ([("d", "its worker died")] if workers == 2 else [])
        assert "a warning from the worker" in texts  # re-issued in the parent
        assert "square: b (bad) failed: not a number" in texts
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        run(items, 0)


def test_prepare_and_extract_skip_and_count_the_same_corrupt_file_in_worker_processes(tmp_path):
    """Both jobs on the shared runner with two worker processes: the corrupt file fails with the
    same reason, the others finish, and a rerun skips what is done (extract's pool gives the
    chunks that one process gives)."""
    sr, rng = 22050, np.random.default_rng(3)
    root = tmp_path / "data"
    (root / "audio").mkdir(parents=True)
    for name in ("a", "b"):
        sf.write(root / "audio" / f"{name}.wav", (0.3 * rng.standard_normal(int(1.8 * sr))), sr, subtype="PCM_16")
    (root / "audio" / "broken.wav").write_bytes(b"RIFF" + rng.bytes(500))
    keys = ["audio/a.wav", "audio/b.wav", "audio/broken.wav"]
    pd.DataFrame({"filename": keys, "primary_label": ["x", "y", "y"]}).to_csv(root / "metadata.csv", index=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare([(k, str(root / k)) for k in keys], tmp_path / "wav", sr, workers=2, progress=False)
        cfg = ChunkConfig(sample_rate_hz=sr, width=32, height=16, fmax_hz=10000.0, noise_fraction=1.0)
        extracted = extract(root, tmp_path / "chunks", cfg, workers=2, progress=False, log=lambda m: None)
        extract(root, tmp_path / "chunks1", cfg, workers=1, progress=False, log=lambda m: None)
        again = extract(root, tmp_path / "chunks", cfg, workers=2, progress=False, log=lambda m: None)

    assert (prepared.converted, prepared.skipped, sorted(prepared.done)) == (2, 0, keys[:2])
    assert (extracted.processed, extracted.skipped, extracted.chunks) == (2, 0, 2 * 2)
    assert (again.processed, again.skipped, len(again.failed)) == (0, 2, 1)
    reasons = {r.failed[0][2] for r in (prepared, extracted, again)}
    assert [r.failed[0][0] for r in (prepared, extracted)] == ["audio/broken.wav"] * 2
    assert len(reasons) == 1 and next(iter(reasons)).startswith("not a recognised audio file"), reasons
    assert (Path(tmp_path / "chunks" / "chunks.csv").read_text()
            == Path(tmp_path / "chunks1" / "chunks.csv").read_text())
