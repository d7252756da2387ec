"""Prediction outputs: thresholds, species lists, merging and every writer's exact lines.

Hand-built score tables; everything is parsed back from the files written. No TensorFlow.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdnet_tf.errors import BirdnetError
from birdnet_tf.infer import outputs as O

LABELS = ["Setophaga adelaidae", "Vireo latimeri", "Melopyrrha portoricensis"]
SA, VL, MP = LABELS


def make_table(files=("/rec/a/x.wav", "/rec/b/y.wav")) -> pd.DataFrame:
    """Two files: x has three 5-s windows (the last partial), y one window."""
    x, y = files
    return pd.DataFrame({
        "file": [x, x, x, y],
        "start_s": [0.0, 5.0, 10.0, 0.0],
        "end_s": [5.0, 10.0, 12.3, 5.0],
        SA: [0.90, 0.80, 0.10, 0.00],
        VL: [0.20, 0.60, 0.70, 0.50],
        MP: [0.05, 0.10, 0.20, 0.30],
    })


def rows(dets: pd.DataFrame) -> list[tuple]:
    return [(Path(r.file).name, r.start_s, r.end_s, r.label, round(r.score, 6)) for r in dets.itertuples()]


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders of an atomic write that were left behind."""
    return [p.name for p in folder.rglob("*") if ".part" in p.name]


# --------------------------------------------------------------------------
# select_detections
# --------------------------------------------------------------------------

def test_global_threshold_is_inclusive_and_sorted():
    dets = O.select_detections(make_table(), LABELS, min_score=0.5)
    assert list(dets.columns) == list(O.DETECTION_COLUMNS)
    # sorted by file, start_s, score descending; 0.5 itself is a detection
    assert rows(dets) == [
        ("x.wav", 0.0, 5.0, SA, 0.9),
        ("x.wav", 5.0, 10.0, SA, 0.8),
        ("x.wav", 5.0, 10.0, VL, 0.6),
        ("x.wav", 10.0, 12.3, VL, 0.7),
        ("y.wav", 0.0, 5.0, VL, 0.5),
    ]


def test_min_score_zero_keeps_every_pair():
    assert len(O.select_detections(make_table(), LABELS)) == 4 * 3


def test_per_species_threshold_overrides_global():
    dets = O.select_detections(make_table(), LABELS, min_score=0.5, thresholds={VL: 0.65, MP: 0.25})
    assert rows(dets) == [
        ("x.wav", 0.0, 5.0, SA, 0.9),
        ("x.wav", 5.0, 10.0, SA, 0.8),
        ("x.wav", 10.0, 12.3, VL, 0.7),
        ("y.wav", 0.0, 5.0, MP, 0.3),
    ]
    # an override can also lower the bar below the global one
    dets = O.select_detections(make_table(), LABELS, min_score=0.95, thresholds={SA: 0.85})
    assert rows(dets) == [("x.wav", 0.0, 5.0, SA, 0.9)]


def test_include_and_exclude():
    table = make_table()
    assert set(O.select_detections(table, LABELS, include=[VL])["label"]) == {VL}
    assert set(O.select_detections(table, LABELS, exclude=[VL])["label"]) == {SA, MP}
    # exclusion wins over inclusion
    assert set(O.select_detections(table, LABELS, include=[VL, MP], exclude=[VL])["label"]) == {MP}
    assert O.restrict_labels(LABELS, include=[MP, SA]) == [SA, MP]  # model order


def test_lists_and_thresholds_from_files(tmp_path):
    species = tmp_path / "species.txt"
    species.write_text("# my site\nvireo  LATIMERI\n\n", encoding="utf-8")
    thr = tmp_path / "thr.csv"
    thr.write_text("label,threshold\nVireo latimeri,0.65\n", encoding="utf-8")
    dets = O.select_detections(make_table(), LABELS, include=str(species), thresholds=thr)
    assert rows(dets) == [("x.wav", 10.0, 12.3, VL, 0.7)]


@pytest.mark.parametrize("kwargs, source, unknown, suggestion", [
    ({"include": ["Setophaga adelaide"]}, "include", "Setophaga adelaide", SA),
    ({"exclude": ["Vireo latimerii"]}, "exclude", "Vireo latimerii", VL),
    ({"thresholds": {"Melopyrrha portoricencis": 0.5}}, "thresholds", "Melopyrrha portoricencis", MP),
])
def test_unknown_labels_are_named_with_a_suggestion(kwargs, source, unknown, suggestion):
    with pytest.raises(BirdnetError) as e:
        O.select_detections(make_table(), LABELS, **kwargs)
    msg = str(e.value)
    assert msg.startswith(f"{source}: ")
    assert repr(unknown) in msg and f"did you mean {suggestion!r}" in msg


def test_bad_min_score_and_threshold_values():
    with pytest.raises(BirdnetError, match="min-score"):
        O.select_detections(make_table(), LABELS, min_score=1.5)
    with pytest.raises(BirdnetError, match=r"\[0, 1\]"):
        O.select_detections(make_table(), LABELS, thresholds={SA: -0.1})


def test_malformed_tables_are_refused():
    table = make_table()
    with pytest.raises(BirdnetError, match="lacks columns: end_s"):
        O.select_detections(table.drop(columns="end_s"), LABELS)
    with pytest.raises(BirdnetError, match="lacks columns: Corvus corax"):
        O.select_detections(table, [*LABELS, "Corvus corax"])
    table.loc[2, VL] = np.nan
    with pytest.raises(BirdnetError, match=r"x\.wav, 'Vireo latimeri'"):
        O.select_detections(table, LABELS)


# --------------------------------------------------------------------------
# species lists and threshold files
# --------------------------------------------------------------------------

def test_species_list_forms(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text(
        "\ufeff# comment line\n"
        "Vireo latimeri   # trailing comment\n"
        "\n"
        "Setophaga adelaidae_Adelaide's Warbler\n"  # BirdNET style
        "vireo latimeri\n",  # duplicate, other case
        encoding="utf-8",
    )
    assert O.load_species_list(path, LABELS) == [VL, SA]


def test_species_list_errors(tmp_path):
    with pytest.raises(BirdnetError, match=r"nope\.txt: species list file not found"):
        O.load_species_list(tmp_path / "nope.txt", LABELS)
    with pytest.raises(BirdnetError, match="is a folder"):
        O.load_species_list(tmp_path, LABELS)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(BirdnetError, match="names no label"):
        O.load_species_list(empty, LABELS)
    bad = tmp_path / "bad.txt"
    bad.write_text("Vireo latimeri\nSetophaga adelaide\nCorvus corax_Common Raven\n", encoding="utf-8")
    with pytest.raises(BirdnetError) as e:
        O.load_species_list(bad, LABELS)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: 2 names are not labels")
    assert "'Setophaga adelaide' (line 2; did you mean 'Setophaga adelaidae'?)" in msg
    assert "'Corvus corax_Common Raven' (line 3)" in msg


def test_species_list_not_strict_warns_and_skips(tmp_path):
    path = tmp_path / "regional.txt"
    path.write_text("Corvus corax\nVireo latimeri\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="Corvus corax"):
        assert O.load_species_list(path, LABELS, strict=False) == [VL]


def test_thresholds_csv_and_tsv(tmp_path):
    csv_path = tmp_path / "thr.csv"
    csv_path.write_text("label,threshold\n# comment\nVireo latimeri,0.25\n\n\"Setophaga adelaidae\",1\n",
                        encoding="utf-8")
    assert O.load_thresholds(csv_path, LABELS) == {VL: 0.25, SA: 1.0}
    tsv_path = tmp_path / "thr.tsv"
    tsv_path.write_text("Melopyrrha portoricensis\t0.4\nvireo latimeri\t0\n", encoding="utf-8")
    assert O.load_thresholds(tsv_path, LABELS) == {MP: 0.4, VL: 0.0}


@pytest.mark.parametrize("text, pattern", [
    ("label,threshold\nVireo latimeri,high\n", r"line 2: threshold 'high' is not a number"),
    ("label,threshold\nVireo latimeri,0.5\nSetophaga adelaidae,1.5\n", r"line 3: threshold must be in \[0, 1\], got 1.5"),
    ("Vireo latimeri,0.5\nSetophaga adelaidae\n", r"line 2: expected 'label,threshold'"),
    ("Vireo latimeri\tnan\n", r"line 1: threshold must be in \[0, 1\]"),
    ("Vireo latimeri,0.5\nVireo latimeri,0.6\n", r"line 2: 'Vireo latimeri' given twice"),
    ("Vireo latimeri,0.5\nVireo latimery,0.6\n", r"'Vireo latimery' \(line 2; did you mean 'Vireo latimeri'\?\)"),
])
def test_threshold_file_errors_name_file_and_line(tmp_path, text, pattern):
    path = tmp_path / "thr.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BirdnetError, match=pattern) as e:
        O.load_thresholds(path, LABELS)
    assert str(e.value).startswith(str(path))


def test_threshold_file_missing(tmp_path):
    with pytest.raises(BirdnetError, match="thresholds file not found"):
        O.load_thresholds(tmp_path / "thr.csv", LABELS)


# --------------------------------------------------------------------------
# merge_detections
# --------------------------------------------------------------------------

def dets_frame(items) -> pd.DataFrame:
    return pd.DataFrame(items, columns=list(O.DETECTION_COLUMNS))


def test_merge_overlapping_and_touching():
    dets = dets_frame([
        ("f.wav", 6.0, 9.0, SA, 0.5),  # unsorted on purpose: chain 0-3, 2-5 (overlap), 5-8 (touching)
        ("f.wav", 0.0, 3.0, SA, 0.6),
        ("f.wav", 2.0, 5.0, SA, 0.9),
        ("f.wav", 5.0, 6.0, SA, 0.4),
        ("f.wav", 9.5, 12.0, SA, 0.7),  # 0.5 s gap: separate at max_gap_s 0
    ])
    merged = O.merge_detections(dets)
    assert list(merged.columns) == [*O.DETECTION_COLUMNS, "windows"]
    assert [(r.start_s, r.end_s, r.score, r.windows) for r in merged.itertuples()] == [
        (0.0, 9.0, 0.9, 4), (9.5, 12.0, 0.7, 1)]
    bridged = O.merge_detections(dets, max_gap_s=0.5)
    assert [(r.start_s, r.end_s, r.score, r.windows) for r in bridged.itertuples()] == [(0.0, 12.0, 0.9, 5)]
    # a later detection overlapping a long earlier one (not the short one in between) joins it
    nested = dets_frame([("f.wav", 0.0, 10.0, VL, 0.3), ("f.wav", 1.0, 2.0, VL, 0.4), ("f.wav", 8.0, 12.0, VL, 0.2)])
    assert [(r.start_s, r.end_s, r.score, r.windows) for r in O.merge_detections(nested).itertuples()] == [
        (0.0, 12.0, 0.4, 3)]
    # merging again sums the windows already merged
    assert O.merge_detections(merged, max_gap_s=1.0)["windows"].tolist() == [5]


def test_merge_keeps_labels_and_files_apart():
    dets = dets_frame([
        ("a.wav", 0.0, 5.0, SA, 0.9),
        ("a.wav", 5.0, 10.0, VL, 0.8),  # touching, other label
        ("b.wav", 5.0, 10.0, SA, 0.7),  # touching, other file
        ("a.wav", 3.0, 8.0, VL, 0.6),
    ])
    merged = O.merge_detections(dets)
    assert [(r.file, r.start_s, r.end_s, r.label, r.score, r.windows) for r in merged.itertuples()] == [
        ("a.wav", 0.0, 5.0, SA, 0.9, 1),
        ("a.wav", 3.0, 10.0, VL, 0.8, 2),
        ("b.wav", 5.0, 10.0, SA, 0.7, 1),
    ]


def test_merge_empty_and_bad_gap():
    empty = O.select_detections(make_table(), LABELS, min_score=1.0)
    assert empty.empty
    merged = O.merge_detections(empty)
    assert merged.empty and "windows" in merged.columns
    with pytest.raises(BirdnetError, match="non-negative"):
        O.merge_detections(empty, max_gap_s=-1)


# --------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------

def test_csv_writes_the_wide_table(tmp_path):
    out = tmp_path / "scores.csv"
    assert O.write_output(make_table(), LABELS, out, "csv") == [out]
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "file,start_s,end_s," + ",".join(LABELS)
    assert lines[3] == "/rec/a/x.wav,10.000000,12.300000,0.100000,0.700000,0.200000"
    table, labels = O.read_score_table(out)
    assert labels == LABELS
    pd.testing.assert_frame_equal(table, make_table(), check_dtype=False)
    # include/exclude restrict the label columns
    O.write_output(make_table(), LABELS, out, "csv", exclude=[VL], force=True)
    assert out.read_text(encoding="utf-8").splitlines()[0] == f"file,start_s,end_s,{SA},{MP}"


def test_read_score_table_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,score\nx.wav,0.5\n", encoding="utf-8")
    with pytest.raises(BirdnetError, match="lacks columns start_s, end_s"):
        O.read_score_table(bad)
    with pytest.raises(BirdnetError, match="not found"):
        O.read_score_table(tmp_path / "none.csv")


def test_detections_csv(tmp_path):
    out = tmp_path / "dets.csv"
    O.write_output(make_table(), LABELS, out, "detections-csv", min_score=0.65)
    with out.open(encoding="utf-8", newline="") as f:
        got = list(csv.reader(f))
    assert got == [
        ["file", "start_s", "end_s", "label", "score"],
        ["/rec/a/x.wav", "0.000000", "5.000000", SA, "0.900000"],
        ["/rec/a/x.wav", "5.000000", "10.000000", SA, "0.800000"],
        ["/rec/a/x.wav", "10.000000", "12.300000", VL, "0.700000"],
    ]
    merged = tmp_path / "merged.csv"
    O.write_output(make_table(), LABELS, merged, "detections-csv", min_score=0.65, merge_gap_s=0.0)
    with merged.open(encoding="utf-8", newline="") as f:
        got = list(csv.reader(f))
    assert got[0][-1] == "windows"
    assert got[1] == ["/rec/a/x.wav", "0.000000", "10.000000", SA, "0.900000", "2"]


def test_json_lists_every_file(tmp_path):
    out = tmp_path / "dets.json"
    O.write_output(make_table(), LABELS, out, "json", min_score=0.65)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc == {
        "labels": LABELS,
        "files": [
            {"file": "/rec/a/x.wav", "detections": [
                {"start_s": 0.0, "end_s": 5.0, "label": SA, "score": 0.9},
                {"start_s": 5.0, "end_s": 10.0, "label": SA, "score": 0.8},
                {"start_s": 10.0, "end_s": 12.3, "label": VL, "score": 0.7},
            ]},
            {"file": "/rec/b/y.wav", "detections": []},
        ],
    }


RAVEN_HEADER_LINE = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\t"
                     "Species\tConfidence\tBegin Path\tFile Offset (s)")


def test_raven_tables(tmp_path):
    out = tmp_path / "raven"
    paths = O.write_output(make_table(), LABELS, out, "raven", min_score=0.65, sample_rate_hz=22050)
    assert paths == [out / "x.selections.txt", out / "y.selections.txt"]
    assert sorted(p.name for p in out.iterdir()) == [O.PREDICTIONS_MARKER, "x.selections.txt", "y.selections.txt"]
    x_lines = (out / "x.selections.txt").read_text(encoding="utf-8").splitlines()
    assert x_lines == [
        RAVEN_HEADER_LINE,
        f"1\tSpectrogram 1\t1\t0.000\t5.000\t0.0\t11025.0\t{SA}\t0.9000\t/rec/a/x.wav\t0.000",
        f"2\tSpectrogram 1\t1\t5.000\t10.000\t0.0\t11025.0\t{SA}\t0.8000\t/rec/a/x.wav\t5.000",
        f"3\tSpectrogram 1\t1\t10.000\t12.300\t0.0\t11025.0\t{VL}\t0.7000\t/rec/a/x.wav\t10.000",
    ]
    # parses back as a tab-separated table with the exact columns
    parsed = pd.read_csv(out / "x.selections.txt", sep="\t")
    assert list(parsed.columns) == list(O.RAVEN_HEADER)
    assert parsed["Selection"].tolist() == [1, 2, 3]
    # a file without detections gets a header-only table
    assert (out / "y.selections.txt").read_text(encoding="utf-8") == RAVEN_HEADER_LINE + "\n"


def test_raven_frequencies_and_colliding_stems(tmp_path):
    table = make_table(files=("/rec/a/x.wav", "/rec/b/x.flac"))
    out = tmp_path / "raven"
    paths = O.write_output(table, LABELS, out, "raven", min_score=0.85, low_freq_hz=500, high_freq_hz=8000)
    assert [p.name for p in paths] == ["x.selections.txt", "x_2.selections.txt"]
    line = (out / "x.selections.txt").read_text(encoding="utf-8").splitlines()[1].split("\t")
    assert line[5:7] == ["500.0", "8000.0"]
    assert (out / "x_2.selections.txt").read_text(encoding="utf-8") == RAVEN_HEADER_LINE + "\n"
    # no sample rate: 0..15000 Hz
    O.write_output(table, LABELS, out, "raven", min_score=0.85, force=True)
    line = (out / "x.selections.txt").read_text(encoding="utf-8").splitlines()[1].split("\t")
    assert line[5:7] == ["0.0", "15000.0"]
    with pytest.raises(BirdnetError, match="low < high"):
        O.write_output(table, LABELS, tmp_path / "r2", "raven", low_freq_hz=9000, high_freq_hz=8000)


def test_unique_stems():
    files = ["/a/x.wav", "/b/x.wav", "/c/x_2.wav", "/d/X.mp3", "/e/y.wav"]
    assert O.unique_stems(files) == {"/a/x.wav": "x", "/b/x.wav": "x_3", "/c/x_2.wav": "x_2",
                                     "/d/X.mp3": "X_4", "/e/y.wav": "y"}


def test_audacity_tracks(tmp_path):
    out = tmp_path / "labels"
    paths = O.write_output(make_table(), LABELS, out, "audacity", min_score=0.55, merge_gap_s=0.0)
    assert paths == [out / "x.labels.txt", out / "y.labels.txt"]
    assert (out / "x.labels.txt").read_text(encoding="utf-8") == (
        f"0.000\t10.000\t{SA} (0.900)\n"
        f"5.000\t12.300\t{VL} (0.700)\n"
    )
    assert (out / "y.labels.txt").read_text(encoding="utf-8") == ""


def many_classes_table(n_classes: int = 120, files=("/rec/XC1.wav", "/rec/XC2.wav")):
    rng = np.random.default_rng(0)
    labels = [f"Genus species{i:03d}" for i in range(n_classes)]
    scores = rng.permutation(n_classes * len(files)).reshape(len(files), n_classes) / (n_classes * len(files))
    table = pd.DataFrame(scores, columns=labels)
    table.insert(0, "file", list(files))
    table.insert(1, "start_s", 0.0)
    table.insert(2, "end_s", 30.0)
    return table, labels


def test_birdclef_monophone_top100(tmp_path):
    table, labels = many_classes_table()
    out = tmp_path / "mono.txt"
    # thresholds are ignored: every file still gets its top 100
    O.write_output(table, labels, out, "birdclef-monophone", min_score=0.99, thresholds={labels[0]: 1.0})
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200
    for k, media in enumerate(["XC1", "XC2"]):
        block = [line.split(";") for line in lines[100 * k:100 * (k + 1)]]
        assert all(len(parts) == 4 for parts in block)
        assert {parts[0] for parts in block} == {media}
        assert [int(parts[3]) for parts in block] == list(range(1, 101))
        probabilities = [float(parts[2]) for parts in block]
        assert probabilities == sorted(probabilities, reverse=True)
        expected = table.iloc[k][labels].astype(float).sort_values(ascending=False, kind="stable")[:100]
        assert [parts[1] for parts in block] == list(expected.index)
        assert all(parts[2] == f"{p:.6f}" for parts, p in zip(block, expected))


def test_birdclef_monophone_ids_include_and_window_pooling(tmp_path):
    out = tmp_path / "mono.txt"
    class_ids = {SA: "adewar", VL: "flbvir", MP: "purbul"}
    O.write_output(make_table(), LABELS, out, "birdclef-monophone", exclude=[MP], class_ids=class_ids,
                   media_ids={"/rec/a/x.wav": "1001", "y.wav": "1002"})
    # x is pooled by the maximum over its three windows; fewer classes than 100 -> all of them
    assert out.read_text(encoding="utf-8") == (
        "1001;adewar;0.900000;1\n"
        "1001;flbvir;0.700000;2\n"
        "1002;flbvir;0.500000;1\n"
        "1002;adewar;0.000000;2\n"
    )
    with pytest.raises(BirdnetError, match="no ClassId for 1 labels: 'Melopyrrha portoricensis'"):
        O.write_output(make_table(), LABELS, tmp_path / "m2.txt", "birdclef-monophone", class_ids={SA: "a", VL: "b"})
    with pytest.raises(BirdnetError, match="both get MediaId 'x'"):
        O.write_output(make_table(files=("/a/x.wav", "/b/x.wav")), LABELS, tmp_path / "m3.txt",
                       "birdclef-monophone")
    assert not (tmp_path / "m2.txt").exists() and not (tmp_path / "m3.txt").exists()


def test_soundscape_timestamps():
    assert O.soundscape_timestamp(0.0, 5.0) == "00:00:00-00:00:05"
    assert O.soundscape_timestamp(4.9996, 9.9996) == "00:00:05-00:00:10"  # float noise rounds to the grid
    assert O.soundscape_timestamp(3605.0, 3610.0) == "01:00:05-01:00:10"
    assert O.soundscape_timestamp(36000.0 + 55, 36000.0 + 60) == "10:00:55-10:01:00"
    assert O.soundscape_timestamp(100 * 3600.0, 100 * 3600.0 + 5) == "100:00:00-100:00:05"
    assert O.soundscape_timestamp(10.0, 10.2) == "00:00:10-00:00:11"  # a sliver still spans a second
    assert O.hhmmss(3599.6) == "01:00:00" and O.hhmmss(59.4) == "00:00:59"
    with pytest.raises(BirdnetError, match="negative"):
        O.hhmmss(-3)


def test_birdclef_soundscape_file(tmp_path):
    n_classes = 120
    labels = [f"Genus species{i:03d}" for i in range(n_classes)]
    starts = [0.0, 5.0, 3605.0, 36055.0]
    scores = np.tile(np.linspace(0.0, 1.0, n_classes), (len(starts), 1))  # last label scores highest
    table = pd.DataFrame(scores, columns=labels)
    table.insert(0, "file", "/rec/RN42.wav")
    table.insert(1, "start_s", starts)
    table.insert(2, "end_s", [s + 5.0 for s in starts])
    table = table.iloc[::-1].reset_index(drop=True)  # written in time order whatever the table order
    out = tmp_path / "soundscape.txt"
    O.write_output(table, labels, out, "birdclef-soundscape", class_ids={lab: str(i) for i, lab in enumerate(labels)})
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 * 100
    parsed = [line.split(";") for line in lines]
    assert all(len(parts) == 4 for parts in parsed)
    stamps = list(dict.fromkeys(parts[1] for parts in parsed))
    assert stamps == ["00:00:00-00:00:05", "00:00:05-00:00:10", "01:00:05-01:00:10", "10:00:55-10:01:00"]
    assert {parts[0] for parts in parsed} == {"RN42"}
    block = parsed[200:300]
    assert {parts[1] for parts in block} == {"01:00:05-01:00:10"}
    assert [parts[2] for parts in block] == [str(i) for i in range(119, 19, -1)]  # top 100 only
    assert block[0][3] == "1.000000" and block[-1][3] == f"{20 / 119:.6f}"


# --------------------------------------------------------------------------
# overwriting and atomicity
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(O.FORMATS))
def test_refuses_existing_output_unless_force(tmp_path, fmt):
    out = tmp_path / ("out" if fmt in O.FOLDER_FORMATS else "out.txt")
    first = O.write_output(make_table(), LABELS, out, fmt, min_score=0.65)
    assert first and all(p.is_file() for p in first)
    before = {p: p.read_text(encoding="utf-8") for p in first}
    with pytest.raises(BirdnetError) as e:
        O.write_output(make_table(), LABELS, out, fmt, min_score=0.0)
    assert str(out) in str(e.value) and "--force" in str(e.value)
    assert {p: p.read_text(encoding="utf-8") for p in first} == before  # untouched
    second = O.write_output(make_table(), LABELS, out, fmt, min_score=0.0, force=True)
    assert second == first
    if fmt not in ("csv", "birdclef-monophone", "birdclef-soundscape"):  # those ignore min_score
        assert any(p.read_text(encoding="utf-8") != before[p] for p in second)
    assert leftovers(tmp_path) == []


def test_folder_output_into_an_empty_folder_and_not_onto_a_file(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert O.write_output(make_table(), LABELS, out, "audacity") == [out / "x.labels.txt", out / "y.labels.txt"]
    afile = tmp_path / "afile"
    afile.write_text("keep\n", encoding="utf-8")
    with pytest.raises(BirdnetError, match="not a folder"):
        O.write_output(make_table(), LABELS, afile, "raven", force=True)
    with pytest.raises(BirdnetError, match="is a folder"):
        O.write_output(make_table(), LABELS, out, "csv", force=True)
    assert afile.read_text(encoding="utf-8") == "keep\n"


def test_failed_folder_write_leaves_nothing_behind(tmp_path):
    # the second file's table name is too long for the file system: the first must not be left either
    long_stem = "y" * 300
    table = make_table(files=("/rec/a/x.wav", f"/rec/b/{long_stem}.wav"))
    out = tmp_path / "raven"
    with pytest.raises(BirdnetError) as e:
        O.write_output(table, LABELS, out, "raven")
    assert "cannot write" in str(e.value) and long_stem in str(e.value)
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_unknown_format():
    with pytest.raises(BirdnetError, match="unknown output format 'xml'; choose one of: csv, detections-csv"):
        O.write_output(make_table(), LABELS, "unused", "xml")


def test_describe_formats_names_every_format():
    text = O.describe_formats()
    assert "\n" not in text
    assert all(name in text for name in O.FORMATS)


@pytest.mark.parametrize("fmt", sorted(O.FOLDER_FORMATS))
def test_force_replaces_only_a_predictions_folder_and_never_a_parent(tmp_path, fmt):
    """issue 12's --force rule for folder outputs: someone else's folder and a parent of
    outputs are refused even with --force; a folder predict wrote is replaced whole (a table
    of a file no longer predicted does not linger)."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "x.selections.txt").write_text("mine\n", encoding="utf-8")
    (theirs / "x.labels.txt").write_text("mine\n", encoding="utf-8")
    with pytest.raises(BirdnetError, match="not a predictions folder written by birdnet-tf"):
        O.write_output(make_table(), LABELS, theirs, fmt, force=True)
    assert sorted(p.name for p in theirs.iterdir()) == ["x.labels.txt", "x.selections.txt"]
    parent = tmp_path / "runs"
    O.write_output(make_table(), LABELS, parent / "a", fmt)
    with pytest.raises(BirdnetError, match="never replaces a parent"):
        O.write_output(make_table(), LABELS, parent, fmt, force=True)
    assert sorted(p.name for p in parent.iterdir()) == ["a"]
    ours = parent / "a"
    table = make_table()
    O.write_output(table[table["file"] != table["file"].iloc[0]], LABELS, ours, fmt, force=True)
    assert len([p for p in ours.iterdir() if not p.name.startswith(".")]) == 1
    assert leftovers(tmp_path) == []
