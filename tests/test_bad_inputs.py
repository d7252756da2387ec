"""Bad inputs: every problem a user can cause gives one clear line naming the file and the problem.

Through the command line (``main([...])`` returns 2 and prints ``birdnet-tf: error: ...``)
where there is a command for it, else through the library.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import SYNTH_RATE_HZ, synth_signal, tiny_set_args, tone

from birdnet_tf.cli import main
from birdnet_tf.data.catalog import CatalogWarning
from birdnet_tf.data.labels import LabelSet, UnknownLabelError, encode_targets, primary_indices
from birdnet_tf.errors import CatalogError

ERROR = "birdnet-tf: error: "


def one_error_line(err: str) -> str:
    """The error line of stderr (exactly one)."""
    lines = [line for line in err.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, err
    return lines[0]


def write_csv_dataset(root, rows, columns=("filename", "primary_label")):
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(columns)).to_csv(root / "metadata.csv", index=False)
    return root


# ------------------------------------------------------------ dataset folders
def test_dataset_folder_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "no_such_data"
    assert main(["prepare", str(missing), "--out", str(tmp_path / "p")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(missing) in line and "does not exist" in line
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "run"), *tiny_set_args()]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(missing) in line and "does not exist" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "p").exists()


def test_metadata_without_primary_label_column(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    sf.write(data / "audio" / "a.wav", tone(1000, 16000, 1.0), 16000)
    write_csv_dataset(data, [["audio/a.wav", "A"]], columns=("filename", "species"))
    assert main(["prepare", str(data), "--out", str(tmp_path / "p")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(data / "metadata.csv") in line and "'primary_label'" in line and "missing" in line
    assert "species" in line  # lists the columns it found


def test_row_with_missing_audio_is_skipped_with_warning(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    for name in ("a", "b"):
        sf.write(data / "audio" / f"{name}.wav", tone(1000, 16000, 1.0), 16000)
    write_csv_dataset(data, [["audio/a.wav", "A"], ["audio/gone.wav", "A"], ["audio/b.wav", "B"]])
    out = tmp_path / "prepared"
    with pytest.warns(CatalogWarning, match=r"skipped 1 of 3.*audio file not found.*audio/gone\.wav"):
        rc = main(["prepare", str(data), "--out", str(out), "--workers", "1", "--no-progress"])
    assert rc == 0
    assert "2 converted" in capsys.readouterr().out
    meta = pd.read_csv(out / "metadata.csv")
    assert list(meta["source"]) == ["audio/a.wav", "audio/b.wav"]
    assert all((out / f).is_file() for f in meta["filename"])


def test_corrupt_and_empty_files_are_reported_and_others_prepared(tmp_path, capsys):
    data = tmp_path / "data"
    for cls in ("A", "B"):
        (data / cls).mkdir(parents=True)
        sf.write(data / cls / "good.wav", tone(1000, 16000, 1.0), 16000)
    (data / "A" / "corrupt.mp3").write_bytes(np.random.default_rng(0).bytes(4000))
    (data / "B" / "empty.wav").write_bytes(b"")
    (data / "B" / "truncated.flac").write_bytes(b"fLaC\x00\x00\x00\x22")
    out = tmp_path / "prepared"
    with pytest.warns(UserWarning, match="failed"):
        rc = main(["prepare", str(data), "--out", str(out), "--workers", "1", "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "2 converted" in stdout and "3 failed" in stdout
    for key in ("A/corrupt.mp3", "B/empty.wav", "B/truncated.flac"):
        line = next(line for line in stdout.splitlines() if key in line)
        assert str(data / key) in line
    assert "empty file" in next(line for line in stdout.splitlines() if "B/empty.wav" in line)
    meta = pd.read_csv(out / "metadata.csv")
    assert sorted(meta["source"]) == ["A/good.wav", "B/good.wav"]
    # --strict turns failures into exit status 1 (the good files are kept)
    with pytest.warns(UserWarning):
        assert main(["prepare", str(data), "--out", str(out), "--workers", "1", "--no-progress", "--strict"]) == 1
    capsys.readouterr()


def test_all_files_bad_is_an_error(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "A").mkdir(parents=True)
    (data / "A" / "x.wav").write_bytes(b"RIFF not really")
    with pytest.warns(UserWarning):
        assert main(["prepare", str(data), "--out", str(tmp_path / "p"), "--workers", "1", "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(data) in line and "none of its 1 recordings" in line


def test_unusual_formats_are_prepared(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "A").mkdir(parents=True)
    (data / "B").mkdir(parents=True)
    sf.write(data / "A" / "deep.wav", tone(1000, 44100, 1.0), 44100, subtype="PCM_24")
    sf.write(data / "A" / "low.wav", tone(1000, 8000, 1.0), 8000, subtype="PCM_16")
    x = tone(2000, 44100, 1.5)
    sf.write(data / "B" / "stereo.mp3", np.stack([x, 0.5 * x], axis=1), 44100, format="MP3")
    out = tmp_path / "prepared"
    with pytest.warns(UserWarning, match=r"low\.wav.*8000 Hz.*below the target 22050 Hz"):
        rc = main(["prepare", str(data), "--out", str(out), "--workers", "1", "--no-progress"])
    assert rc == 0
    assert "3 converted" in capsys.readouterr().out
    meta = pd.read_csv(out / "metadata.csv").set_index("source")
    for key, seconds in (("A/deep.wav", 1.0), ("A/low.wav", 1.0), ("B/stereo.mp3", 1.5)):
        info = sf.info(out / meta.loc[key, "filename"])
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert info.duration == pytest.approx(seconds, abs=0.06)  # MP3 adds encoder padding


def test_metadata_rows_outside_the_dataset_are_never_read_copied_or_moved(tmp_path, capsys):
    """An absolute filename or one with '..' names a file outside the dataset: prepare skips
    it with a warning, and sort --mode move leaves it where it is."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for name in ("a", "b"):
        sf.write(outside / f"{name}.wav", tone(1000, 16000, 1.0), 16000)
    data = write_csv_dataset(tmp_path / "data", [[str(outside / "a.wav"), "A"], ["../elsewhere/b.wav", "B"],
                                                 ["audio/ok.wav", "A"], ["audio/ok2.wav", "B"]])
    (data / "audio").mkdir(exist_ok=True)
    for name in ("ok", "ok2"):
        sf.write(data / "audio" / f"{name}.wav", tone(1000, 16000, 1.0), 16000)
    with pytest.warns(CatalogWarning) as caught:
        rc = main(["prepare", str(data), "--out", str(tmp_path / "p"), "--workers", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    said = " ".join(str(w.message) for w in caught)
    assert "absolute path (outside the dataset)" in said and "path with '..' (outside the dataset)" in said
    assert sorted(pd.read_csv(tmp_path / "p" / "metadata.csv")["source"]) == ["audio/ok.wav", "audio/ok2.wav"]
    rc = main(["sort", str(data), "--out", str(tmp_path / "sorted"), "--mode", "move", "--min-files", "1"])
    assert rc == 0, capsys.readouterr().err
    assert (outside / "a.wav").is_file() and (outside / "b.wav").is_file()
    assert not list((tmp_path / "sorted").rglob("a.wav")) and not list((tmp_path / "sorted").rglob("b.wav"))


# ------------------------------------------------------------------- train
def test_train_unknown_set_key(synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset()
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--set", "train.epoch=3"])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "train.epoch" in line and "epochs" in line
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--set", "train.epochs"]) == 2
    assert "section.field=value" in one_error_line(capsys.readouterr().err)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--set", "train.epochs=many"]) == 2
    assert "many" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_train_missing_recipe(synthetic_dataset, tmp_path, capsys):
    recipe = tmp_path / "nope.yaml"
    assert main(["train", "--data", str(synthetic_dataset()), "--out", str(tmp_path / "run"),
                 "--config", str(recipe)]) == 2
    assert str(recipe) in one_error_line(capsys.readouterr().err)


def test_train_excerpt_shorter_than_receptive_field_is_a_clear_error(trained_synthetic, tmp_path, capsys):
    rc = main(["train", "--data", str(trained_synthetic.prepared), "--out", str(tmp_path / "run"), "--no-eval",
               *tiny_set_args(["data.excerpt_s=1.0"])])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "excerpt_s" in line


# ---------------------------------------------------------------- evaluate
def test_evaluate_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    assert main(["evaluate", str(folder)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(folder) in line and "not a run folder" in line


def test_evaluate_run_without_model_file(trained_synthetic, capsys):
    assert main(["evaluate", str(trained_synthetic.run), "--model", "nope.keras"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "nope.keras" in line


def test_export_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "exp")]) == 2
    assert "not a run folder" in one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------- predict
def test_predict_corrupt_and_good_file(trained_synthetic, tmp_path, capsys):
    good = trained_synthetic.data / "tone1k" / "tone1k_1.wav"
    corrupt = tmp_path / "corrupt.ogg"
    corrupt.write_bytes(np.random.default_rng(1).bytes(5000))
    missing = tmp_path / "missing.wav"
    csv = tmp_path / "p.csv"
    rc = main(["predict", str(trained_synthetic.export), str(corrupt), str(good), str(missing),
               "--out", str(csv), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    table = pd.read_csv(csv)
    assert list(table["file"]) == [str(good)]
    assert "2 input(s) skipped" in captured.out
    assert any(str(corrupt) in line and "corrupt" in line for line in captured.out.splitlines())
    assert any(str(missing) in line and "does not exist" in line for line in captured.out.splitlines())


def test_predict_nothing_scorable(trained_synthetic, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    rc = main(["predict", str(trained_synthetic.export), str(empty), "--out", str(tmp_path / "p.csv"),
               "--no-progress"])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no input could be scored" in line and str(empty) in line
    assert not (tmp_path / "p.csv").exists()


def test_predict_with_non_export_folder(trained_synthetic, tmp_path, capsys):
    wav = trained_synthetic.data / "tone1k" / "tone1k_0.wav"
    for model_dir in (tmp_path, trained_synthetic.run, tmp_path / "does_not_exist"):
        rc = main(["predict", str(model_dir), str(wav), "--out", str(tmp_path / "p.csv"), "--no-progress"])
        assert rc == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(model_dir) in line and "not an exported model" in line and "birdnet-tf export" in line


def test_predict_bad_window(trained_synthetic, tmp_path, capsys):
    wav = trained_synthetic.data / "tone1k" / "tone1k_0.wav"
    rc = main(["predict", str(trained_synthetic.export), str(wav), "--window-s", "0", "--out",
               str(tmp_path / "p.csv")])
    assert rc == 2 and "--window-s" in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------ labels
def test_unknown_primary_label_names_label_and_file():
    labels = LabelSet(["Amazona vittata", "Turdus plumbeus"])
    catalog = pd.DataFrame({
        "key": ["audio/XC1.ogg", "audio/XC2.ogg"],
        "primary_label": ["Turdus plumbeus", "Corvus leucognaphalus"],
        "secondary_labels": [[], []],
    })
    with pytest.raises(UnknownLabelError) as e:
        encode_targets(catalog, labels)
    msg = str(e.value)
    assert "Corvus leucognaphalus" in msg and "audio/XC2.ogg" in msg
    assert isinstance(e.value, CatalogError) and isinstance(e.value, KeyError)
    with pytest.raises(UnknownLabelError, match="Corvus leucognaphalus"):
        primary_indices(catalog, labels)
    skipped = encode_targets(catalog, labels, unknown="skip")
    np.testing.assert_array_equal(skipped, [[0, 1], [0, 0]])


def test_class_folder_dataset_without_audio(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "A").mkdir(parents=True)
    (data / "A" / "notes.txt").write_text("no audio here")
    assert main(["prepare", str(data), "--out", str(tmp_path / "p")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(data) in line and "no audio files" in line


def test_synth_signal_helper_is_seeded():
    a = synth_signal("noise6k", 0.5, SYNTH_RATE_HZ, np.random.default_rng(0))
    b = synth_signal("noise6k", 0.5, SYNTH_RATE_HZ, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
