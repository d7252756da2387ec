"""Teacher tables (issue 11, items 3-4): readers, name mapping, thresholded tables, BirdNET runner,
and the soundscape helpers of the distillation benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from birdnet_tf.distill.names import SpeciesMatcher, split_birdnet_label
from birdnet_tf.distill.tables import read_teacher_table, result_file_stem
from birdnet_tf.distill.targets import match_table_files, pool_windows_np
from birdnet_tf.errors import BirdnetError

LABELS = ["Turdus plumbeus", "Amazona vittata", "Setophaga adelaidae"]
BOM = "\ufeff"


def _log():
    lines: list[str] = []
    return lines, lines.append


def _analyzer_rows(file: str | None, rows: list[tuple[float, float, str, str, float]]) -> str:
    head = "Start (s),End (s),Scientific name,Common name,Confidence" + (",File" if file is not None else "")
    out = [head]
    for start, end, sci, com, conf in rows:
        out.append(f"{start},{end},{sci},{com},{conf}" + (f",{file}" if file is not None else ""))
    return "\n".join(out) + "\n"


def test_birdnet_label_names_split_and_match_case_spacing_and_common_fallback():
    assert split_birdnet_label("Turdus plumbeus_Red-legged Thrush") == ("Turdus plumbeus", "Red-legged Thrush")
    m = SpeciesMatcher(LABELS, {"Setophaga adelaidae": "Adelaide's Warbler"})
    assert m.match("turdus  PLUMBEUS") == 0
    assert m.match("Turdus_plumbeus") == 0
    assert m.match("Amazona vittata_Puerto Rican Parrot") == 1
    assert m.match("Dendroica adelaidae", "adelaide's warbler") == 2  # old genus: common-name fallback
    assert m.match("Setophaga adelaidae_Adelaide's Warbler") == 2
    assert m.match("Corvus corax_Common Raven", count=3) is None
    assert m.unmapped() == [("Corvus corax_Common Raven", 3)]


def test_analyzer_csv_with_bom_and_file_column_thresholded_cells_are_unknown(tmp_path):
    p = tmp_path / "combined.csv"
    text = _analyzer_rows("/data/audio/XC1.mp3", [
        (0, 3, "Turdus plumbeus", "Red-legged Thrush", 0.91),
        (3, 6, "Turdus plumbeus", "Red-legged Thrush", 0.40),
        (3, 6, "Corvus corax", "Common Raven", 0.30),
    ]) + _analyzer_rows("/data/audio/XC2.mp3", [(0, 3, "Amazona vittata", "Puerto Rican Parrot", 0.5)]).split("\n", 1)[1]
    p.write_text(BOM + text, encoding="utf-8")
    lines, log = _log()
    t = read_teacher_table(p, LABELS, log)
    assert t.files == ["/data/audio/XC1.mp3", "/data/audio/XC2.mp3"]
    assert not t.complete
    assert any("looks thresholded" in ln and "unknown" in ln for ln in lines)
    assert any("Corvus corax (1)" in ln for ln in lines)  # unmapped, reported once with its count
    np.testing.assert_allclose(t.start_s, [0, 3, 0])
    np.testing.assert_allclose(t.scores[:, 0], [0.91, 0.40, 0])
    # Absent cells are unknown, not zero: Amazona vittata was not written for XC1's windows.
    assert t.known.tolist() == [[True, False, False], [True, False, False], [False, True, False]]
    assert t.class_known.tolist() == [True, True, False]


def test_analyzer_folder_without_file_column_names_files_after_the_result_files(tmp_path):
    assert result_file_stem("XC1192.BirdNET.results.csv") == "XC1192"
    assert result_file_stem("XC1192.BirdNET.selection.table.txt") == "XC1192"
    for stem, conf in (("XC1", 0.005), ("XC2", 0.2)):
        rows = [(s, s + 3, sci, com, conf if k == 0 else 0.0001) for s in (0.0, 3.0)
                for k, (sci, com) in enumerate([("Turdus plumbeus", "Red-legged Thrush"),
                                                ("Amazona vittata", "Puerto Rican Parrot")])]
        (tmp_path / f"{stem}.BirdNET.results.csv").write_text(_analyzer_rows(None, rows), encoding="utf-8")
    lines, log = _log()
    t = read_teacher_table(tmp_path, LABELS, log)
    assert t.files == ["XC1", "XC2"] and len(t.start_s) == 4
    assert t.complete and not any("thresholded" in ln for ln in lines)
    # Complete: every mapped class known in every window; an unmapped class never.
    assert t.known[:, :2].all() and not t.known[:, 2].any()
    recordings = ["/x/audio/XC2.mp3", "audio/XC1.wav", "XC3.mp3"]
    assert list(match_table_files(t, recordings, recordings)) == [1, 0, -1]


def test_raven_selection_table_with_its_real_columns(tmp_path):
    header = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\t"
              "Common Name\tSpecies Code\tConfidence\tBegin Path\tFile Offset (s)")
    rows = ["1\tSpectrogram 1\t1\t0\t3.0\t0\t15000\tRed-legged Thrush\trelthr1\t0.8\t/a/XC7.wav\t0",
            "2\tSpectrogram 1\t1\t6.0\t9.0\t0\t15000\tPuerto Rican Parrot\tpurpar1\t0.6\t/a/XC7.wav\t6.0",
            "3\tSpectrogram 1\t1\t6.0\t9.0\t0\t15000\tBananaquit\tbanana\t0.3\t/a/XC7.wav\t6.0"]
    p = tmp_path / "XC7.BirdNET.selection.table.txt"
    p.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    lines, log = _log()
    common = {"Turdus plumbeus": "Red-legged Thrush", "Amazona vittata": "Puerto Rican Parrot"}
    t = read_teacher_table(p, LABELS, log, common_names=common)
    assert t.files == ["/a/XC7.wav"] and not t.complete
    np.testing.assert_allclose(t.scores, [[0.8, 0, 0], [0, 0.6, 0]])
    assert t.known.tolist() == [[True, False, False], [False, True, False]]
    assert any("Bananaquit" in ln or "banana" in ln for ln in lines)


def test_birdnet_tf_window_csv_is_complete_and_pools_per_excerpt(tmp_path):
    p = tmp_path / "windows.csv"
    p.write_text("file,start_s,end_s,Turdus plumbeus,Setophaga adelaidae_Adelaide's Warbler,Corvus corax\n"
                 "b.wav,3.0,6.0,0.2,0.1,0.9\n"
                 "b.wav,0.0,3.0,0.6,0.3,0.9\n"
                 "a.wav,0.0,3.0,0.1,,0.5\n", encoding="utf-8")
    lines, log = _log()
    t = read_teacher_table(p, LABELS, log)
    assert t.files == ["b.wav", "a.wav"]
    np.testing.assert_allclose(t.start_s, [0, 3, 0])  # sorted by file (first seen), then time
    assert t.known.tolist() == [[True, False, True], [True, False, True], [True, False, False]]
    assert not t.complete and any("empty cells" in ln for ln in lines)
    assert any("Corvus corax (1)" in ln for ln in lines)
    # An excerpt [2, 5) overlaps both windows of b.wav: their overlap-weighted mean.
    def pool(file, start, end):
        rows = t.file_index == file
        return pool_windows_np(t.start_s[rows], t.end_s[rows], t.scores[rows], t.known[rows], start, end)

    s, k = pool(0, 2.0, 5.0)
    np.testing.assert_allclose(s, [(0.6 * 1 + 0.2 * 2) / 3, 0, (0.3 * 1 + 0.1 * 2) / 3], rtol=1e-6)
    assert k.tolist() == [True, False, True]
    s, k = pool(1, 10.0, 13.0)  # beyond the table: nothing known
    assert not k.any() and not s.any()


def test_bad_tables_fail_with_their_messages(tmp_path):
    with pytest.raises(BirdnetError, match="teacher table not found"):
        read_teacher_table(tmp_path / "nope.csv", LABELS)
    p = tmp_path / "other.csv"
    p.write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    with pytest.raises(BirdnetError, match="no recognised teacher-table columns"):
        read_teacher_table(p, LABELS)
    p.write_text(_analyzer_rows("x.wav", [(0, 3, "Corvus corax", "Common Raven", 0.9)]), encoding="utf-8")
    with pytest.raises(BirdnetError, match="none of the table's species .*Corvus corax.* matches"):
        read_teacher_table(p, LABELS)
    p.write_text(_analyzer_rows("x.wav", [(0, 3, "Turdus plumbeus", "x", 0.9)]).replace("0.9", "high"),
                 encoding="utf-8")
    with pytest.raises(BirdnetError, match="'Confidence' row 2: not a number"):
        read_teacher_table(p, LABELS)
    p.write_bytes(b"\xff\xfe\x00\x00garbage")
    with pytest.raises(BirdnetError):
        read_teacher_table(p, LABELS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BirdnetError, match="holds no teacher tables"):
        read_teacher_table(tmp_path / "empty", LABELS)


# --------------------------------------------------------------------------- soundscapes (benchmark helpers)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def _tone(path: Path, freq: float, seconds: float, rate: int) -> str:
    from birdnet_tf.data.audio import write_wav16

    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) * (t > 0.5 * seconds)  # silent first half: the stretch is the tone
    write_wav16(path, x, rate)
    return str(path)


def test_soundscapes_place_events_at_their_windows_at_the_asked_snr(tmp_path):
    import pandas as pd
    from soundscapes import build_soundscapes, read_truth

    from birdnet_tf.data.audio import load_audio

    rate = 16000
    recs = [(_tone(tmp_path / "a.wav", 1000, 8, rate), "A"), (_tone(tmp_path / "b.wav", 3000, 8, rate), "B")]
    kw = dict(n_soundscapes=2, duration_s=40.0, event_s=3.0, events_per_soundscape=3, snr_db=(10.0, 10.0),
              sample_rate_hz=rate, seed=3, progress=False, log=lambda _m: None)
    m = build_soundscapes(recs, tmp_path / "sc", **kw)
    events, truth = pd.read_csv(m["events"]), read_truth(m["truth"])
    assert len(m["files"]) == 2 and len(events) == 6 and len(truth) == 16
    assert set(events["label"]) == {"A", "B"}
    np.testing.assert_allclose(events["source_start_s"], 4.0, atol=0.11)  # the tone, not the silence
    for f, ev in events.groupby("file"):
        t = truth[truth["file"] == f]
        for w0, labs in zip(t["start_s"], t["labels"], strict=True):
            want = sorted({r.label for r in ev.itertuples() if min(r.end_s, w0 + 5) - max(r.start_s, w0) >= 1.0})
            assert labs == want
        x, _ = load_audio(f)
        ev_mask = np.zeros(len(x), bool)
        for r in ev.itertuples():
            ev_mask[int(r.start_s * rate): int(r.end_s * rate)] = True
        for r in ev.itertuples():  # event power / noise power = 10 dB (tone and noise uncorrelated)
            seg = x[int(r.start_s * rate): int(r.end_s * rate)].astype(np.float64)
            noise = x[~ev_mask].astype(np.float64)
            snr = 10 * np.log10(np.mean(seg ** 2) / np.mean(noise ** 2) - 1)
            assert abs(snr - 10) < 1.5, snr
    assert build_soundscapes(recs, tmp_path / "sc", **kw)["key"] == m["key"]  # cached
    with pytest.raises(BirdnetError, match="other arguments"):
        build_soundscapes(recs, tmp_path / "sc", **{**kw, "seed": 4})


def test_window_metrics_on_a_hand_made_case():
    import pandas as pd
    from soundscapes import score_windows

    truth = pd.DataFrame({"file": ["s.wav"] * 4, "start_s": [0.0, 5, 10, 15], "end_s": [5.0, 10, 15, 20],
                          "labels": [["A"], [], ["B"], ["A", "B"]]})
    # 2.5-s score windows, pooled by max onto the 5-s grid.
    rows = [(0, 0.9, 0.1), (2.5, 0.2, 0.0), (5, 0.3, 0.2), (7.5, 0.1, 0.1),
            (10, 0.4, 0.8), (12.5, 0.0, 0.1), (15, 0.5, 0.7), (17.5, 0.6, 0.0)]
    scores = pd.DataFrame({"file": "/x/s.wav", "start_s": [r[0] for r in rows],
                           "end_s": [r[0] + 2.5 for r in rows], "A": [r[1] for r in rows], "B": [r[2] for r in rows]})
    r = score_windows(scores, truth, ["A", "B"])
    # Grid scores: A = [.9, .3, .4, .6], B = [.1, .2, .8, .7].
    # AP(A): positives w0 (.9, rank 1) and w3 (.6, rank 2) -> 1.0; AP(B): w2 (.8) rank 1, w3 (.7) rank 2 -> 1.0.
    assert r["cmap"] == pytest.approx(1.0)
    # LRAP over windows with a bird: w0 A first (1), w2 B first (1), w3 A .6 < B .7, both relevant (1).
    assert r["lrap_bird"] == pytest.approx(1.0) and r["n_with_bird"] == 3
    scores.loc[scores["start_s"] == 5, "A"] = 0.95  # the empty window now outranks every A window
    r = score_windows(scores, truth, ["A", "B"])
    # AP(A): .95 (empty), .9 (w0) -> 1/2; .6 (w3) third -> 2/3.
    assert r["cmap"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1.0) / 2)
    assert r["lrap_bird"] == pytest.approx(1.0) and not r["missing"]


# --------------------------------------------------------------------------- birdnet-tf teacher birdnet


def test_missing_birdnet_environment_says_how_to_build_it(tmp_path):
    from birdnet_tf.distill.birdnet_teacher import find_birdnet_env

    with pytest.raises(BirdnetError, match=r"no BirdNET environment found .*bash .*birdnet_env\.sh.*--setup"):
        find_birdnet_env(tmp_path / "nope")


def _birdnet_env_or_skip():
    from birdnet_tf.distill.birdnet_teacher import find_birdnet_env

    try:
        return find_birdnet_env()
    except BirdnetError as e:
        pytest.skip(f"BirdNET not installed here ({e})")


def test_teacher_birdnet_writes_a_complete_table_resumes_and_skips_bad_files(tmp_path, capsys):
    _birdnet_env_or_skip()  # .venv-birdnet beside the checkout, ./.venv-birdnet or $BIRDNET_TF_BIRDNET_ENV
    from birdnet_tf.cli import main

    rate = 22050
    for label, name, freq in (("Turdus plumbeus", "a.wav", 2500), ("Amazona vittata", "b.wav", 1500)):
        (tmp_path / "data" / label).mkdir(parents=True)
        _tone(tmp_path / "data" / label / name, freq, 4.0, rate)
    (tmp_path / "data" / "Turdus plumbeus" / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = tmp_path / "t" / "birdnet.csv"
    argv = ["teacher", "birdnet", str(tmp_path / "data"), "--out", str(out), "--no-progress", "--workers", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "BirdNET knows 1 of the 2 classes" in text and "not: Amazona vittata" in text
    assert "1 file(s) skipped" in text and "bad.wav" in text
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["complete"] and meta["species"] == ["Turdus plumbeus_Red-legged Thrush"]
    assert list(meta["skipped"]) == ["Turdus plumbeus/bad.wav"]
    t = read_teacher_table(out, ["Amazona vittata", "Turdus plumbeus"], log=lambda _m: None)
    assert t.complete and t.class_known.tolist() == [False, True]  # Amazona: unknown to BirdNET, not 0
    assert sorted(t.files) == ["Amazona vittata/b.wav", "Turdus plumbeus/a.wav"]
    np.testing.assert_allclose(t.start_s, [0, 3, 0, 3])
    np.testing.assert_allclose(t.end_s, [3, 4, 3, 4])
    assert ((t.scores[:, 1] > 0) & (t.scores[:, 1] < 1)).all()
    whole = out.read_text()
    assert main(argv) == 0  # resumes: nothing left to score but the bad file
    assert "2 of 3 files already scored" in capsys.readouterr().out and out.read_text() == whole
    # An interrupted run: one file's rows written, the next cut off mid-line.
    lines = whole.splitlines(keepends=True)
    kept = [ln for ln in lines if not ln.startswith("Turdus plumbeus/a.wav")]
    out.write_text("".join(kept) + "Turdus plumbeus/a.wav,0.000,3.0")
    assert main(argv) == 0
    assert "1 of 3 files already scored, 2 to go" in capsys.readouterr().out
    again, first = out.read_text().splitlines(), whole.splitlines()
    assert [ln.rsplit(",", 1)[0] for ln in again] == [ln.rsplit(",", 1)[0] for ln in first]
    np.testing.assert_allclose([float(ln.rsplit(",", 1)[1]) for ln in again[1:]],  # LiteRT's batch numerics
                               [float(ln.rsplit(",", 1)[1]) for ln in first[1:]], rtol=1e-4)
    assert main([*argv, "--overlap-s", "1.5"]) == 2
    assert "written with other settings (overlap_s)" in capsys.readouterr().err
    (tmp_path / "other.csv").write_text("x\n")
    assert main([*argv[:3], "--out", str(tmp_path / "other.csv")]) == 2
    assert "was not written by 'birdnet-tf teacher birdnet'" in capsys.readouterr().err


def test_birdnet_zero_shot_window_table_scores_unknown_species_zero(tmp_path):
    _birdnet_env_or_skip()
    from birdnet_tf.distill.birdnet_teacher import birdnet_windows

    files = [_tone(tmp_path / "x.wav", 2000, 7.0, 16000), _tone(tmp_path / "y.wav", 4000, 2.0, 16000)]
    labels = ["Amazona vittata", "Turdus plumbeus"]
    t = birdnet_windows(files, labels, tmp_path / "cache.csv", workers=1, progress=False, log=lambda _m: None)
    assert list(t.columns) == ["file", "start_s", "end_s", *labels]
    assert t["file"].tolist() == [files[0]] * 3 + [files[1]]
    np.testing.assert_allclose(t["end_s"], [3, 6, 7, 2])
    assert (t["Amazona vittata"] == 0).all() and (t["Turdus plumbeus"] > 0).all()


def test_teacher_birdnet_on_unlabelled_recordings_with_a_student_labels_file(tmp_path, capsys):
    _birdnet_env_or_skip()
    from birdnet_tf.cli import main

    (tmp_path / "unl" / "day1").mkdir(parents=True)
    _tone(tmp_path / "unl" / "day1" / "r.wav", 3000, 3.0, 16000)
    (tmp_path / "unl" / "notes.txt").write_text("not audio")
    (tmp_path / "labels.txt").write_text("Turdus plumbeus\nAmazona vittata\n")
    out = tmp_path / "unl.csv"
    assert main(["teacher", "birdnet", str(tmp_path / "unl"), "--labels", str(tmp_path / "labels.txt"),
                 "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    assert "BirdNET knows 1 of the 2 classes" in capsys.readouterr().out
    t = read_teacher_table(out, ["Turdus plumbeus", "Amazona vittata"], log=lambda _m: None)
    assert t.files == ["day1/r.wav"] and t.class_known.tolist() == [True, False] and len(t.start_s) == 1
    assert main(["teacher", "birdnet", str(tmp_path / "unl"), "--labels", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "x.csv")]) == 2
    assert "--labels must be a labels file" in capsys.readouterr().err
