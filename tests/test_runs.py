"""The run-folder readers (birdnet_tf.runs): split.csv, state.json, config.json and the input kind.

Every reader fails with one line that names the file and says what is wrong; nothing here trains.
"""

from __future__ import annotations

import json

import pytest

from birdnet_tf.config import Config, save_config
from birdnet_tf.errors import BirdnetError
from birdnet_tf.runs import InputKind, RunPaths, label_list, open_run, read_split, read_state

GOOD = ("key,split,primary_label,secondary_labels,wav_path,duration_s\n"
        "0042,train,amro,,/x/0042.wav,3.5\n"
        "a/b.wav,val,blja,amro;cardi,/x/b.wav,2.0\n"
        "c.wav,train,amro,,,\n")


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_split_rows_keep_text_as_written(tmp_path):
    path = write(tmp_path / "split.csv", GOOD)
    rows = read_split(path)
    assert list(rows["key"]) == ["0042", "a/b.wav", "c.wav"]  # a key of digits stays text
    assert list(rows["secondary_labels"]) == ["", "amro;cardi", ""]  # blanks stay "", never NaN
    assert [label_list(v) for v in rows["secondary_labels"]] == [[], ["amro", "cardi"], []]
    val = read_split(path, "val")
    assert list(val["key"]) == ["a/b.wav"] and list(val.index) == [0]
    assert list(read_split(path, "train")["key"]) == ["0042", "c.wav"]


@pytest.mark.parametrize("text, split, message", [
    (None, "all", "split.csv: missing"),
    ("", "all", "split.csv: cannot read it as a table"),
    ("key,primary_label\na.wav,amro\n", "all", "split.csv: lacks column(s) split"),
    ("key,split,primary_label\na.wav,train,amro\nb.wav,test,amro\n", "all", "split.csv: row 3 has split 'test'"),
    ("key,split,primary_label\na.wav,train,amro\n", "val", "split.csv: no files in split 'val'"),
    (GOOD, "validation", "split.csv: no files in split 'validation' (choose val, train or all)"),
])
def test_a_bad_split_csv_gives_one_line_naming_it(tmp_path, text, split, message):
    path = tmp_path / "split.csv"
    if text is not None:
        write(path, text)
    with pytest.raises(BirdnetError) as e:
        read_split(path, split)
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_state_json_missing_damaged_or_fine(tmp_path):
    path = tmp_path / "state.json"
    assert read_state(path) == {}  # no epoch finished yet
    with pytest.raises(BirdnetError, match=r"state\.json: missing; the run has not finished an epoch"):
        read_state(path, required=True)
    write(path, '{"epoch": 2, "best"')  # a torn write
    with pytest.raises(BirdnetError, match=r"state\.json: not valid JSON"):
        read_state(path)
    write(path, "[1, 2]")
    with pytest.raises(BirdnetError, match=r"state\.json: holds list, not a JSON object"):
        read_state(path)
    write(path, json.dumps({"epoch": 2, "best": 0.5}))
    assert read_state(path, required=True) == {"epoch": 2, "best": 0.5}


def test_open_run_reads_config_facts_and_input_kind(tmp_path):
    with pytest.raises(BirdnetError, match="not a run folder"):
        open_run(tmp_path / "nothing")
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    save_config(Config(), paths.config, data_dir="/data/x", n_classes=3)
    run = open_run(paths.root)
    assert run.kind is InputKind.WAVEFORM and run.data_dir == "/data/x" and run.facts["n_classes"] == 3
    save_config(Config(), paths.config, data_dir="/data/chunks", input="chunks")
    assert open_run(paths.root).kind is InputKind.CHUNKS
    meta = Config().replace(["metadata.use=only"])
    save_config(meta, paths.config, data_dir="/data/x")
    assert open_run(paths.root).kind is InputKind.METADATA
    assert InputKind.of_run(Config().replace(["metadata.use=combined"]), {}) is InputKind.WAVEFORM
    write(paths.split, GOOD)
    assert len(open_run(paths.root).split("train")) == 2


def test_input_kind_of_a_data_folder(tmp_path):
    (tmp_path / "recordings").mkdir()
    (tmp_path / "chunks").mkdir()
    write(tmp_path / "chunks" / "chunks.csv", "png\n")  # what birdnet-tf extract writes
    assert InputKind.of_data(Config(), tmp_path / "recordings") is InputKind.WAVEFORM
    assert InputKind.of_data(Config().replace(["metadata.use=only"]), tmp_path / "recordings") is InputKind.METADATA
    assert InputKind.of_data(Config().replace(["metadata.use=only"]), tmp_path / "chunks") is InputKind.CHUNKS
    assert InputKind("chunks") is InputKind.CHUNKS and InputKind.CHUNKS == "chunks"
