"""Embeddings through LiteRT: ``birdnet-tf tflite`` writes a verified embedding half
(``embed_<q>.tflite``); ``embed`` and ``search`` on the TFLite folder give the SavedModel's
vectors without importing TensorFlow; ``head`` stacks on an export's database and refuses a
TFLite one; bad folders and databases give clear messages.

The session's TFLite export of the tiny synthetic run (``tflite_tiny``, conftest; every
quantization's embedding half verified by ``birdnet-tf tflite`` itself, see test_tflite.py) runs
(float32, the folder's first choice) on synthetic recordings written here, one of 23 s so that
the 10-s front chunks and body segments have seams inside windows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("pyarrow")

from conftest import run_cli, synth_signal  # noqa: E402

from birdnet_tf.embed.db import read_database, read_facts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SR = 22050
#: a window of the tiny model (2 s) every 0.7 s: starts off the step grid, windows overlapping seams
GRID = ["--window-s", "2", "--hop-s", "0.7"]


def _write(path: Path, x: np.ndarray) -> str:
    sf.write(str(path), np.asarray(x, np.float32), SR, subtype="FLOAT")
    return str(path)


@pytest.fixture(scope="module")
def lite(tflite_tiny, tmp_path_factory):
    """The session's TFLite export of the tiny run (conftest) and the recordings of this module."""
    root = tmp_path_factory.mktemp("lite_embed")
    rng = np.random.default_rng(7)
    audio = root / "audio"
    audio.mkdir()
    files = {name: _write(audio / f"{name}.wav", synth_signal(kind, 6.0, SR, rng))
             for name, kind in [("chirp0", "chirp2to4k"), ("chirp1", "chirp2to4k"), ("tone0", "tone1k"),
                                ("noise0", "noise6k")]}
    files["long"] = _write(audio / "long.wav", np.concatenate(
        [synth_signal(kind, s, SR, rng) for kind, s in [("tone1k", 8.0), ("chirp2to4k", 8.0), ("noise6k", 7.0)]]))
    return types.SimpleNamespace(root=root, out=tflite_tiny.out, audio=audio, files=files, logs=tflite_tiny.logs)


@pytest.fixture(scope="module")
def saved_db(trained_synthetic, lite):
    """The recordings embedded from the SavedModel export (windows of :data:`GRID`)."""
    db = lite.root / "db_saved"
    rc, _, err = run_cli(["embed", str(trained_synthetic.export), str(lite.audio), "--out", str(db), *GRID,
                          "--no-progress"])
    assert rc == 0, err
    return db


def test_tflite_writes_a_verified_embedding_half(lite):
    meta = json.loads((lite.out / "model_float32.json").read_text())
    whole = meta["whole_recording"]
    assert whole["embed"] == "embed_float32.tflite" and (lite.out / whole["embed"]).is_file()
    check = whole["embed_verification"]
    assert check["dim"] == whole["dim"] > 0 and check["windows"] >= 3
    assert check["max_rel_diff"] <= 1e-4 and check["min_cosine"] > 0.9999
    assert any(line.startswith("embeddings (") and "least cosine similarity" in line for line in lite.logs)
    assert "embed_float32.tflite" in json.loads((lite.out / ".birdnet_tf_tflite.json").read_text())["files"]


_NO_TF = """
import importlib.abc, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, NoTensorFlow())
from birdnet_tf.cli import main
for argv in ARGVS:
    rc = main(argv)
    assert rc == 0, (argv, rc)
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "TensorFlow was imported"
assert "ai_edge_litert.interpreter" in sys.modules and "pyarrow" in sys.modules
print("no tensorflow")
"""


def test_embed_and_search_on_a_tflite_folder_equal_the_savedmodels_without_tensorflow(lite, saved_db, tmp_path):
    db_lite, hits_csv = tmp_path / "db_lite", tmp_path / "hits.csv"
    query = lite.files["chirp1"]
    argvs = [["embed", str(lite.out), str(lite.audio), "--out", str(db_lite), *GRID, "--no-progress"],
             ["search", str(db_lite), "--query", query, "--top", "4", "--out", str(hits_csv)]]
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _NO_TF.replace("ARGVS", repr(argvs))], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "no tensorflow" in proc.stdout and "vectors of 5 recording(s)" in proc.stdout

    got, want = read_database(db_lite), read_database(saved_db)
    assert len(got) == len(want) == 4 * 9 + 33  # starts k·0.7 s up to 0.1 s before the end: 6 s → 9, 23 s → 33
    order_got, order_want = np.lexsort((got.starts, got.files)), np.lexsort((want.starts, want.files))
    assert list(got.files[order_got]) == list(want.files[order_want])
    np.testing.assert_allclose(got.starts[order_got], want.starts[order_want], atol=1e-9)
    np.testing.assert_allclose(got.ends[order_got], want.ends[order_want], atol=1e-9)
    a, b = got.vectors[order_got], want.vectors[order_want]
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), np.abs(a - b).max()
    assert np.abs(np.diff(b, axis=0)).max() > 1e-2 * np.abs(b).max()  # windows differ: the check has teeth
    assert read_facts(db_lite).model == str(lite.out.resolve()) and read_facts(db_lite).dim == b.shape[1]

    hits = pd.read_csv(hits_csv)  # each whole window of the query (6: starts 0 … 3.5 s) finds itself first
    assert hits["query"].nunique() == 6 and len(hits) == 6 * 4
    for (name, group), start in zip(hits.groupby("query", sort=False), np.arange(6) * 0.7):
        assert group.iloc[0]["file"] == query and group.iloc[0]["start_s"] == pytest.approx(start), group.to_string()
        assert group.iloc[0]["similarity"] > 0.9999 > group.iloc[1]["similarity"]
    # search takes a database of either runtime: the SavedModel's, with the export as its model
    rc, out, err = run_cli(["search", str(saved_db), "--query", query, "--top", "1"])
    assert rc == 0 and "chirp1.wav@3.50" in out, err


def test_bad_tflite_folders_and_databases_give_clear_messages(trained_synthetic, lite, tmp_path):
    wav = lite.files["tone0"]
    old = tmp_path / "old"  # a folder written before TFLite embeddings: no embed half, none in its sidecar
    shutil.copytree(lite.out, old)
    meta = json.loads((old / "model_float32.json").read_text())
    for key in ("embed", "dim", "embed_verification"):
        meta["whole_recording"].pop(key)
    (old / "model_float32.json").write_text(json.dumps(meta))
    (old / "embed_float32.tflite").unlink()
    rc, _, err = run_cli(["embed", str(old), wav, "--out", str(tmp_path / "db_old"), "--no-progress"])
    assert rc == 2 and "no embedding half (embed_float32.tflite)" in err and "write it again with 'birdnet-tf tflite" \
        in err, err
    assert not (tmp_path / "db_old").exists()  # refused before anything was written
    rc, out, err = run_cli(["predict", str(old), wav, "--out", str(tmp_path / "p.csv"), "--no-progress"])
    assert rc == 0, err  # predict does not need it

    lost = tmp_path / "lost"  # the sidecar names the half, the file is gone
    shutil.copytree(lite.out, lost)
    (lost / "embed_float32.tflite").unlink()
    rc, _, err = run_cli(["embed", str(lost), wav, "--out", str(tmp_path / "db_lost"), "--no-progress"])
    assert rc == 2 and "embed_float32.tflite: TFLite model file does not exist" in err, err
    (lost / "model_float32.json").unlink()  # its labels are in the sidecar
    rc, _, err = run_cli(["embed", str(lost), wav, "--out", str(tmp_path / "db_lost"), "--no-progress"])
    assert rc == 2 and "no sidecar model_float32.json beside it (labels" in err, err

    db = tmp_path / "db"
    assert run_cli(["embed", str(lite.out), wav, "--out", str(db), "--no-progress"])[0] == 0
    rc, _, err = run_cli(["embed", str(trained_synthetic.export), lite.files["noise0"], "--out", str(db),
                          "--no-progress"])
    assert rc == 2 and "cannot add to this embedding database" in err and "another model" in err, err
    rc, _, err = run_cli(["search", str(db), "--query", wav, "--model", str(trained_synthetic.export)])
    assert rc == 2 and "another model" in err and "--model" in err, err
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"file": [wav], "start_s": [0.0], "end_s": [2.0], "label": ["x"]}).to_csv(labels, index=False)
    rc, _, err = run_cli(["head", str(db), "--labels", str(labels), "--out", str(tmp_path / "head")])
    assert rc == 2 and "holds no Keras model to stack a head on" in err and str(trained_synthetic.run.resolve()) in err
    assert not (tmp_path / "head").exists()


def test_head_on_a_database_embedded_from_an_export(trained_synthetic, lite, saved_db, tmp_path):
    from birdnet_tf.embed.head import export_keras_model
    from birdnet_tf.errors import BirdnetError

    labels = tmp_path / "labels.csv"  # the chirps: chirp0.wav, chirp1.wav, 8-16 s of long.wav
    pd.DataFrame({"file": [lite.files["chirp0"], lite.files["chirp1"], lite.files["long"]],
                  "start_s": [0.0, 0.0, 8.0], "end_s": [6.0, 6.0, 16.0], "label": ["sweep"] * 3}).to_csv(labels,
                                                                                                     index=False)
    rc, out, err = run_cli(["head", str(saved_db), "--labels", str(labels), "--out", str(tmp_path / "head")])
    assert rc == 0, err
    # windows overlapping a stretch by half a window (1 s): 8 of each 6-s chirp (not 5.6-6 s), 12 of long (7-14.7 s)
    assert "on 28 labelled and 41 unlabelled window(s)" in out
    cfg = json.loads((tmp_path / "head" / "assets.extra" / "config.json").read_text())
    assert cfg["head_on_embeddings"]["source_export"] == str(trained_synthetic.export.resolve())
    rng = np.random.default_rng(11)  # new recordings: a chirp, a tone and band noise
    new = [_write(tmp_path / f"{kind}.wav", synth_signal(kind, 4.0, SR, rng))
           for kind in ("chirp2to4k", "tone1k", "noise6k")]
    rc, _, err = run_cli(["predict", str(tmp_path / "head"), *new, "--out", str(tmp_path / "p.csv"),
                          "--window-s", "2", "--no-progress"])
    assert rc == 0, err
    p = pd.read_csv(tmp_path / "p.csv")
    chirp = p["file"].str.endswith("chirp2to4k.wav")
    assert chirp.sum() == 2 and p.loc[chirp, "sweep"].min() > 0.5 > p.loc[~chirp, "sweep"].max(), p

    changed = tmp_path / "changed"  # an export whose config does not rebuild its model
    shutil.copytree(trained_synthetic.export, changed)
    path = changed / "assets.extra" / "config.json"
    obj = json.loads(path.read_text())
    obj["model"]["dense_units"] *= 2
    path.write_text(json.dumps(obj))
    with pytest.raises(BirdnetError, match="weights do not fit the model its config builds.*embed the audio with its "
                                           "run folder"):
        export_keras_model(changed)
