"""Hostile but fair inputs: files outside a dataset, --force on the wrong folder, odd file
names and links, short files, one-class datasets, malformed server requests.

The bad-input corpus is generated here (no binary blobs in git) and sent through the
reading commands (catalog / prepare / train / predict / the server's JSON parser).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import run_cli, tiny_set_args

from birdnet_tf.errors import BirdnetError, about
from birdnet_tf.fileio import check_replaceable, entry_problem, remove_stale_parts, replace_folder, restore_folder


def wav(path, seconds=1.0, rate=16000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.random.default_rng(seed).standard_normal(max(1, int(seconds * rate)))
    sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
    return path


# ------------------------------------------------------------------ one rule for dataset entries
@pytest.mark.parametrize("name, problem", [
    ("/etc/passwd", "absolute"), ("C:\\x.wav", "absolute"), ("../../etc/passwd", ".."),
    ("a/../../b.wav", ".."), ("", "empty"), ("a\x00b.wav", "NUL"), ("x" * 300 + ".wav", "over 255 bytes"),
])
def test_entries_outside_the_dataset_or_unwritable_are_refused(name, problem):
    assert problem in entry_problem(name)


@pytest.mark.parametrize("name", ["a.wav", "audio/XC1.mp3", "./a/b.wav", "a\\b.wav", "ünïcödé/ß.ogg", "é" * 120])
def test_ordinary_entries_are_accepted(name):
    assert entry_problem(name) is None


def test_a_corpus_of_file_system_oddities_is_skipped_one_line_each(tmp_path):
    """Class folders with a link loop, a broken link, a self-link, a FIFO and odd names; a
    metadata.csv with an over-long name and paths outside the folder: every good file is
    prepared and every bad entry skipped, the job is never aborted."""
    data = tmp_path / "folders"
    for label in ("A", "B"):
        wav(data / label / f"good {label} ünï.wav", seed=ord(label))
    os.symlink(data / "A", data / "A" / "loop")  # a folder that contains itself
    os.symlink(data / "A" / "missing.wav", data / "A" / "broken.wav")
    os.symlink("self.wav", data / "B" / "self.wav")
    os.mkfifo(data / "B" / "fifo.wav")
    rc, out, err = run_cli(["prepare", str(data), "--out", str(tmp_path / "p1"), "--workers", "1", "--no-progress"])
    assert rc == 0, err
    assert sorted(pd.read_csv(tmp_path / "p1" / "metadata.csv")["primary_label"]) == ["A", "B"]

    table = tmp_path / "table"
    wav(table / "ok1.wav", seed=1)
    wav(table / "ok2.wav", seed=2)
    pd.DataFrame({"filename": ["ok1.wav", "ok2.wav", "y" * 300 + ".wav", "/etc/passwd", "../folders/A/x.wav"],
                  "primary_label": ["A", "B", "A", "B", "A"]}).to_csv(table / "metadata.csv", index=False)
    with pytest.warns(UserWarning, match="skipped 3 of 5"):
        rc, out, err = run_cli(["prepare", str(table), "--out", str(tmp_path / "p2"), "--workers", "1",
                                "--no-progress"])
    assert rc == 0, err
    assert len(pd.read_csv(tmp_path / "p2" / "metadata.csv")) == 2


# ------------------------------------------------------------------ nothing overwritten unasked
def test_prepare_refuses_a_folder_it_did_not_write_or_prepared_from_another_dataset(tmp_path):
    src = tmp_path / "src"
    wav(src / "A" / "a.wav")
    wav(src / "B" / "b.wav")
    other = tmp_path / "other"
    wav(other / "A" / "c.wav")
    wav(other / "B" / "d.wav")
    existing = tmp_path / "existing"
    wav(existing / "audio" / "x.wav")
    pd.DataFrame({"filename": ["audio/x.wav"], "primary_label": ["A"]}).to_csv(existing / "metadata.csv", index=False)
    before = (existing / "metadata.csv").read_bytes()
    rc, _, err = run_cli(["prepare", str(src), "--out", str(existing), "--workers", "1", "--no-progress"])
    assert rc == 2 and "not written by prepare" in err
    assert (existing / "metadata.csv").read_bytes() == before and not (existing / "A").exists()
    assert run_cli(["prepare", str(src), "--out", str(tmp_path / "p"), "--workers", "1", "--no-progress"])[0] == 0
    rc, _, err = run_cli(["prepare", str(other), "--out", str(tmp_path / "p"), "--workers", "1", "--no-progress"])
    assert rc == 2 and "prepared from" in err
    assert run_cli(["prepare", str(src), "--out", str(tmp_path / "p"), "--workers", "1", "--no-progress"])[0] == 0


def test_force_replaces_only_an_output_of_this_package_and_never_a_parent(tmp_path):
    markers = ("saved_model.pb", "assets.extra/config.json")

    def export(folder, tag):
        (folder / "assets.extra").mkdir(parents=True)
        (folder / "saved_model.pb").write_text(tag)
        (folder / "assets.extra" / "config.json").write_text("{}")
        return folder

    versions = tmp_path / "models" / "xc"
    export(versions / "1", "v1")
    export(versions / "2", "v2")
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "config.json").write_text("{}")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    for folder in (versions, runs, notes):
        with pytest.raises(BirdnetError, match="--force"):
            check_replaceable(folder, markers, "model export", force=True)
    with pytest.raises(BirdnetError, match="pass --force"):
        check_replaceable(versions / "1", markers, "model export", force=False)
    check_replaceable(versions / "1", markers, "model export", force=True)  # an export: may be replaced
    check_replaceable(tmp_path / "new", markers, "model export", force=False)

    new = export(tmp_path / ".1.partial", "v1-new")
    replace_folder(new, versions / "1")
    assert (versions / "1" / "saved_model.pb").read_text() == "v1-new" and not new.exists()
    os.replace(versions / "2", tmp_path / "models" / "xc" / ".2.old")  # a kill between two renames
    restore_folder(versions / "2")
    assert (versions / "2" / "saved_model.pb").read_text() == "v2"


def test_export_force_on_a_parent_of_versions_deletes_nothing(trained_synthetic, tmp_path):
    import shutil

    parent = tmp_path / "models"
    shutil.copytree(trained_synthetic.export, parent / "1")
    rc, _, err = run_cli(["export", str(trained_synthetic.run), "--out", str(parent), "--force"])
    assert rc == 2 and "never replaces a parent" in err
    assert (parent / "1" / "saved_model.pb").is_file()


def test_evaluate_out_refuses_an_existing_folder_without_force(trained_synthetic, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    rc, _, err = run_cli(["evaluate", str(trained_synthetic.run), "--out", str(out)])
    assert rc == 2 and "pass --force" in err
    rc, _, err = run_cli(["evaluate", str(trained_synthetic.run), "--out", str(out), "--force"])
    assert rc == 2 and "not a report folder written by birdnet-tf" in err
    assert (out / "mine.txt").read_text() == "keep"


# ------------------------------------------------------------------ runs and their temporaries
def test_history_rows_survive_an_empty_file_and_stale_parts_are_removed(tmp_path):
    from birdnet_tf.train.callbacks import append_history_row, trim_history

    history = tmp_path / "history.csv"
    history.write_text("")  # what a kill left with Keras' CSVLogger
    trim_history(history, 0)
    append_history_row(history, 0, {"loss": 1.0, "val_mlrap": 0.5})
    append_history_row(history, 1, {"loss": 0.5, "val_mlrap": 0.6})
    append_history_row(history, 1, {"loss": 0.4, "val_mlrap": 0.7})  # an epoch run again replaces its row
    assert list(pd.read_csv(history)["val_mlrap"]) == [0.5, 0.7]
    dead = tmp_path / ".best.keras.999999.0123abcd.part.keras"
    dead.write_text("x")
    alive = tmp_path / f".last.keras.{os.getpid()}.0123abcd.part.keras"
    alive.write_text("x")
    assert remove_stale_parts(tmp_path) == [dead] and alive.exists()


def test_a_dataset_of_one_class_is_refused(tmp_path):
    wav(tmp_path / "one" / "Only species" / "a.wav", seconds=2.5)
    wav(tmp_path / "one" / "Only species" / "b.wav", seconds=2.5, seed=1)
    rc, _, err = run_cli(["train", "--data", str(tmp_path / "one"), "--out", str(tmp_path / "run"), "--no-eval",
                          *tiny_set_args()])
    assert rc == 2 and "at least two" in err


# ------------------------------------------------------------------ short files, messages
def test_a_10_ms_file_keeps_its_own_length_on_the_default_engine(trained_synthetic, tmp_path):
    short = wav(tmp_path / "in" / "short.wav", seconds=0.01, rate=22050)
    for extra, ends in (([], [0.01]), (["--window-s", "1"], [0.01])):
        out = tmp_path / f"out{len(extra)}.csv"
        rc, _, err = run_cli(["predict", str(trained_synthetic.export), str(short), "--out", str(out), *extra])
        assert rc == 0, err
        table = pd.read_csv(out)
        assert list(table["end_s"].round(3)) == ends, table[["start_s", "end_s"]]


def test_a_skipped_file_is_named_once():
    assert about("bad/inf.wav", "bad/inf.wav: contains NaN") == "bad/inf.wav: contains NaN"
    assert about("bad/inf.wav", "contains NaN") == "bad/inf.wav: contains NaN"


# ------------------------------------------------------------------ the server's JSON
@pytest.mark.parametrize("body, said", [
    (b'{"instances": [[0.1, NaN]]}', "NaN is not a JSON value"),
    (b'{"instances": [[0.1, Infinity]]}', "Infinity is not a JSON value"),
    (b'{"instances": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nested too deeply"),
])
def test_server_refuses_bodies_that_are_not_json_with_400(body, said):
    from birdnet_tf.serve import RequestError, predict_json

    with pytest.raises(RequestError) as caught:
        predict_json(None, body)  # refused before any model is asked
    assert caught.value.status == 400 and said in caught.value.message


# ------------------------------------------------------------------ native chatter on the terminal
#: what libmpg123 (inside libsndfile) and TensorFlow's C++ start-up print straight to fd 2
NATIVE_CHATTER = ("Note: ", "Warning: ", "[src/libmpg123", "port.cc", "cudart_stub", "absl::InitializeLog")


def mp3_with_trailing_junk(path):
    """A real MP3 (libsndfile's LAME encoder) followed by bytes that are no MPEG frame, as
    some xeno-canto files end: libmpg123 prints a 'Warning:'/'Note:' line while decoding it."""
    x = 0.3 * np.sin(np.arange(2 * 22050) * 2 * np.pi * 440 / 22050)
    sf.write(path, x.astype(np.float32), 22050, format="MP3")
    with open(path, "ab") as f:
        f.write(b"this is not an mpeg frame, just trailing text " * 40)
    return path


def test_decoder_and_tensorflow_chatter_stays_off_the_terminal(trained_synthetic, tmp_path):
    """A real decode of an MP3 that makes libmpg123 talk (checked first: the raw decode does
    print) through prepare's worker processes and predict: nothing of it, nor TensorFlow's
    oneDNN/CUDA start-up lines, reaches stderr; Python's own warnings still do."""
    import subprocess
    import sys

    data = tmp_path / "data"
    mp3 = mp3_with_trailing_junk((data / "a").mkdir(parents=True) or data / "a" / "junk_end.mp3")
    wav(data / "b" / "quiet.wav", rate=8000)  # a low-rate file: prepare warns about it (Python's own warning)
    raw = subprocess.run([sys.executable, "-c", "import soundfile as sf, sys\n"
                          "with sf.SoundFile(sys.argv[1]) as f:\n    while len(f.read(65536)): pass", str(mp3)],
                         capture_output=True, text=True, timeout=60)
    assert any(c in raw.stderr for c in NATIVE_CHATTER[:3]), f"the MP3 no longer triggers libmpg123: {raw.stderr!r}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    errs = {}
    for argv in (["prepare", str(data), "--out", str(tmp_path / "prepared"), "--workers", "2", "--no-progress"],
                 ["predict", str(trained_synthetic.export), str(mp3), "--out", str(tmp_path / "p.csv")]):
        proc = subprocess.run([sys.executable, "-m", "birdnet_tf.cli", *argv], capture_output=True, text=True,
                              env=env, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        leaked = [line for line in proc.stderr.splitlines() if any(c in line for c in NATIVE_CHATTER)]
        assert not leaked, f"{argv[0]}: native chatter on stderr: {leaked}"
        errs[argv[0]] = proc.stderr
    assert "8000 Hz" in errs["prepare"]  # the filter keeps what is not chatter


# ------------------------------------------------------------------ more of the family: empty, nameless, moving files
def test_zero_length_files_and_names_that_are_no_text_are_skipped_one_line_each(tmp_path):
    """A 0-byte WAV in a class folder fails alone; a file whose name is bytes that are no UTF-8
    text (it could not be written to metadata.csv or an output table; it used to fail as a
    'corrupt' file with a codec error) is skipped, named, by prepare's catalog and by predict."""
    from birdnet_tf.infer.predict import expand_inputs

    data = tmp_path / "data"
    wav(data / "A" / "good.wav", seed=1)
    wav(data / "B" / "good.wav", seed=2)
    (data / "A" / "empty.wav").touch()
    nameless = os.fsdecode(os.fsencode(str(data / "B")) + b"/bad\xff name.wav")
    wav(data / "B" / "x.wav", seed=3).rename(nameless)
    with pytest.warns(UserWarning) as caught:
        rc, out, err = run_cli(["prepare", str(data), "--out", str(tmp_path / "p"), "--workers", "1",
                                "--no-progress"])
    assert rc == 0, err
    said = [str(w.message) for w in caught]
    assert any("not valid UTF-8" in m for m in said) and any("empty file (0 bytes)" in m for m in said), said
    assert sorted(pd.read_csv(tmp_path / "p" / "metadata.csv")["filename"]) == ["A/good.wav", "B/good.wav"]
    files, problems = expand_inputs([str(data)])
    assert nameless not in files and (nameless, "file name that is not valid UTF-8 text (rename it)") in problems


def test_a_source_changed_after_it_was_prepared_is_prepared_again(tmp_path):
    """prepare's resume kept the WAV of an older version of a source whose file was replaced
    since (same name, other content): a source modified after its WAV is converted again."""
    from birdnet_tf.data.dataset import prepare_dataset

    data = tmp_path / "data"
    wav(data / "A" / "a.wav", seconds=1.0, seed=1)
    wav(data / "B" / "b.wav", seconds=1.0, seed=2)
    prepare_dataset(data, tmp_path / "p", 16000, workers=1, progress=False, log=lambda m: None)
    before = (tmp_path / "p" / "A" / "a.wav").read_bytes()
    wav(data / "A" / "a.wav", seconds=2.0, seed=9)  # a longer recording under the same name
    st = os.stat(data / "A" / "a.wav")
    os.utime(data / "A" / "a.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # clearly after the WAV
    df = prepare_dataset(data, tmp_path / "p", 16000, workers=1, progress=False, log=lambda m: None)
    after = (tmp_path / "p" / "A" / "a.wav").read_bytes()
    assert after != before and df.set_index("key").loc["A/a.wav", "duration_s"] == pytest.approx(2.0)
    assert (tmp_path / "p" / "B" / "b.wav").stat().st_mtime_ns <= st.st_mtime_ns + 10**9  # b kept


def test_a_source_that_changes_while_it_is_read_is_not_kept(tmp_path):
    """A recording still being written (a copy arriving) changes while prepare reads it: its
    WAV would mix two versions, so it fails with one line and no WAV; the rerun converts it."""
    import threading
    import time

    from birdnet_tf.data.prepare import prepare

    src = wav(tmp_path / "data" / "long.wav", seconds=900, rate=8000, seed=4)  # ~1 s to resample: the margin
    out = tmp_path / "p"
    stop = threading.Event()

    def touch_when_reading():  # the moment the WAV's temporary file appears, the source grows
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            if out.exists() and any(p.name.startswith(".long.wav.") for p in out.iterdir()):
                with open(src, "ab") as f:
                    f.write(b"\0\0")
                return
            time.sleep(0.001)

    toucher = threading.Thread(target=touch_when_reading)
    toucher.start()
    try:
        with pytest.warns(UserWarning, match="changed while it was read"):  # (and "below the target rate")
            result = prepare([("long.wav", src)], out, 22050, workers=1, progress=False)
    finally:
        stop.set()
        toucher.join()
    assert [key for key, _, _ in result.failed] == ["long.wav"] and not (out / "long.wav").exists()
    again = prepare([("long.wav", src)], out, 22050, workers=1, progress=False)
    assert again.converted == 1 and not again.failed
