"""``birdnet-tf batch``: the whole-recording engine as an Apache Beam pipeline.

A tiny untrained export (made here) scores two recordings of the embedded sample
(Ogg and MP3), a synthetic WAV and a file that is not audio. The Beam tables must equal
``predict`` window by window (tolerance 1e-5: the same engine, but files are batched
differently; observed differences are ~1e-7), a rerun must score only what is not done,
and bad options, paths and files must give one-line reasons.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import run_cli

pytest.importorskip("apache_beam")

TOL = 1e-5
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "xc-sample" / "audio"
IN_PROCESS = ["direct_running_mode=in_memory"]  # one process: fast, for the equality and resume checks


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny untrained export (3 classes, 2-s excerpts) with whole-recording signatures."""
    import keras

    from birdnet_tf.config import Config
    from birdnet_tf.export import export_model
    from birdnet_tf.models.build import build_model

    cfg = Config().replace(["model.dense_units=16", "model.width=0.25", "data.excerpt_s=2.0",
                            "data.eval_hop_s=2.0"])
    keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("beam") / "export"
    export_model(build_model(cfg, 3), cfg, ["a", "b", "c"], out, log=lambda msg: None)
    return out


@pytest.fixture
def audio(tmp_path):
    """A folder: two sample recordings (4.1-s Ogg, 5.2-s MP3), a 3.3-s synthetic WAV, and a broken WAV."""
    folder = tmp_path / "audio"
    (folder / "sub").mkdir(parents=True)
    for name in ("XC9423.ogg", "XC91093.mp3"):
        (folder / name).write_bytes((SAMPLE / name).read_bytes())
    rng = np.random.default_rng(0)
    t = np.arange(int(3.3 * 16000)) / 16000
    sf.write(folder / "sub" / "tone.wav", 0.3 * np.sin(2 * np.pi * 3000 * t) + 0.01 * rng.standard_normal(len(t)),
             16000, subtype="PCM_16")
    (folder / "sub" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    return folder


def _tables(out: Path, suffix: str) -> pd.DataFrame:
    shards = sorted(glob.glob(str(out / f"scores-*-of-*{suffix}")))
    assert shards, f"no {suffix} shards in {out}"
    read = pd.read_parquet if suffix == ".parquet" else pd.read_csv
    return pd.concat([read(s) for s in shards], ignore_index=True)


def _assert_equal_to_predict(table: pd.DataFrame, expected: pd.DataFrame, atol: float) -> None:
    assert list(table.columns) == list(expected.columns)
    assert list(table["file"]) == list(expected["file"])
    np.testing.assert_allclose(table[["start_s", "end_s"]].to_numpy(), expected[["start_s", "end_s"]].to_numpy())
    np.testing.assert_allclose(table.iloc[:, 3:].to_numpy(np.float64), expected.iloc[:, 3:].to_numpy(np.float64),
                               atol=atol, rtol=0)


def test_batch_equals_predict(export, audio, tmp_path):
    from birdnet_tf.infer.beam import run_batch
    from birdnet_tf.infer.predict import predict

    out = tmp_path / "batch"
    logs = []
    inputs = [str(audio / "*.ogg"), str(audio / "XC91093.mp3"), str(audio / "sub")]  # a glob, a file, a folder
    manifest = run_batch(export, inputs, out, window_s=2.0, hop_s=1.0, workers=1, beam_options=IN_PROCESS,
                         files_per_shard=2, progress=False, log=logs.append)
    ok = [str(audio / "XC9423.ogg"), str(audio / "XC91093.mp3"), str(audio / "sub" / "tone.wav")]
    expected, failures = predict(export, ok, window_s=2.0, hop_s=1.0, progress=False, log=lambda m: None)
    assert not failures
    assert expected["file"].value_counts().to_dict() == {ok[0]: 4, ok[1]: 5, ok[2]: 4}  # a window every second

    _assert_equal_to_predict(_tables(out, ".parquet"), expected, TOL)
    _assert_equal_to_predict(_tables(out, ".csv"), expected, TOL + 1e-6)  # CSV keeps 6 decimals, as predict's
    assert sorted(p.name for p in out.glob("scores-*.csv")) == ["scores-00000-of-00002.csv",
                                                                "scores-00001-of-00002.csv"]
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert (manifest["files"], manifest["done"], manifest["scored_this_run"], manifest["rows"]) == (4, 3, 3, 13)
    broken = str(audio / "sub" / "broken.wav")
    assert [f["file"] for f in manifest["failures"]] == [broken]
    assert "not a recognised audio file" in manifest["failures"][0]["reason"]
    assert any(broken in line for line in logs)
    manifest = run_batch(export, inputs, out, window_s=2.0, hop_s=1.0, workers=1, beam_options=IN_PROCESS,
                         files_per_shard=2, progress=False, log=logs.append)  # all done: only the tables again
    assert (manifest["done_before"], manifest["scored_this_run"], manifest["failed"]) == (3, 0, 1)
    _assert_equal_to_predict(_tables(out, ".parquet"), expected, TOL)

    # the same folder with other windows is refused, --force starts over
    rc, _, err = run_cli(["batch", str(export), str(audio), "--out", str(out), "--window-s", "1.5",
                          "--beam-option", "direct_running_mode=in_memory"])
    assert rc == 2 and "other settings" in err and "window_s 2.0 → 1.5" in err


def test_a_killed_run_resumes_without_redoing_finished_files(export, tmp_path):
    """``kill -9`` of a batch process as soon as its first file is done; the rerun scores only the rest."""
    import signal
    import subprocess
    import sys
    import time

    from birdnet_tf.infer.beam import run_batch
    from birdnet_tf.infer.predict import predict

    folder = tmp_path / "long"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        sf.write(folder / f"rec{i}.wav", 0.2 * rng.standard_normal(12 * 16000), 16000, subtype="PCM_16")
    out = tmp_path / "batch"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "birdnet_tf.cli", "batch", str(export), str(folder), "--out",
                             str(out), "--no-progress", "--beam-option", "direct_running_mode=in_memory"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "files").glob("[!.]*.npz")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it started
    finally:
        proc.wait()
    finished = {r: r.stat().st_mtime_ns for r in (out / "files").glob("[!.]*.npz")}
    assert 1 <= len(finished) < 6, "the kill came too late to interrupt anything"
    assert not (out / "manifest.json").exists()

    manifest = run_batch(export, [str(folder)], out, workers=1, beam_options=IN_PROCESS, progress=False,
                         log=lambda m: None)
    assert (manifest["done_before"], manifest["scored_this_run"], manifest["done"]) == (
        len(finished), 6 - len(finished), 6)
    assert {r: r.stat().st_mtime_ns for r in finished} == finished  # nothing finished was redone
    files = sorted(str(f) for f in folder.glob("*.wav"))
    expected, _ = predict(export, files, window_s=2.0, progress=False, log=lambda m: None)
    _assert_equal_to_predict(_tables(out, ".parquet"), expected, TOL)


def test_batch_in_two_local_processes_equals_one(export, audio, tmp_path):
    """The default runner: DirectRunner, two worker processes, each loading the model once."""
    from birdnet_tf.infer.beam import run_batch

    one = run_batch(export, [str(audio)], tmp_path / "one", workers=1, beam_options=IN_PROCESS, progress=False,
                    log=lambda m: None)
    rc, out, err = run_cli(["batch", str(export), str(audio), "--out", str(tmp_path / "two"), "--workers", "2",
                            "--no-progress", "--files-per-shard", "1"])
    assert rc == 0, err[-3000:]
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert two["beam_options"]["direct_running_mode"] == "multi_processing"
    assert two["beam_options"]["direct_num_workers"] == 2
    assert (two["done"], two["failed"], two["rows"]) == (3, 1, one["rows"])
    assert len(glob.glob(str(tmp_path / "two" / "scores-*-of-00004.csv"))) == 3  # the broken file's shard is empty
    _assert_equal_to_predict(_tables(tmp_path / "two", ".parquet"), _tables(tmp_path / "one", ".parquet"), TOL)
    assert "3 of 4 file(s) done" in out


@pytest.mark.parametrize("option, message", [
    ("no_such_option=1", "Beam knows no option no_such_option"),
    ("direct_num_workers=many", "invalid int value: 'many'"),
    ("direct_running_mode=threads", "invalid choice: 'threads'"),
    ("runner=NoSuchRunner", "Unexpected pipeline runner: NoSuchRunner"),
    ("direct_num_workers", "expected KEY=VALUE"),
])
def test_bad_beam_options_are_one_line_errors(export, audio, tmp_path, option, message):
    rc, _, err = run_cli(["batch", str(export), str(audio), "--out", str(tmp_path / "o"), "--beam-option", option])
    assert rc == 2, err
    line = [s for s in err.splitlines() if s.startswith("birdnet-tf: error:")]
    assert len(line) == 1 and message in line[0], err
    assert not (tmp_path / "o" / "files").exists() or not any((tmp_path / "o" / "files").iterdir())


def test_missing_inputs_and_models_are_clear(export, tmp_path):
    rc, _, err = run_cli(["batch", str(export), str(tmp_path / "nowhere"), str(tmp_path / "*.flac"),
                          "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "no audio file to score (2 input(s) skipped" in err and "path does not exist" in err
    rc, _, err = run_cli(["batch", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "not an exported model (no saved_model.pb)" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    rc, _, err = run_cli(["batch", str(export), str(SAMPLE / "XC9423.ogg"), "--out", str(tmp_path / "mine"),
                          "--force"])
    assert rc == 2 and "not a batch output folder written by birdnet-tf" in err
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
