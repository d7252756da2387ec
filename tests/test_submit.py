"""``birdnet-tf submit``: BirdCLEF monophone and soundscape run files from exports and ensembles.

Real exports (the session's tiny synthetic run, and one tiny run trained on data with
BirdCLEF class ids and a ``noise`` class), real audio decoding, the CLI in process.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import SYNTH_RATE_HZ, run_cli, synth_signal, tiny_set_args, write_synthetic_dataset

MONO_LINE = re.compile(r"^([^;]+);([^;]+);(\d+\.\d{6});(\d+)$")
SOUND_LINE = re.compile(r"^([^;]+);(\d{2,}:\d{2}:\d{2})-(\d{2,}:\d{2}:\d{2});([^;]+);(\d+\.\d{6})$")


def _parse_mono(path) -> pd.DataFrame:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = MONO_LINE.match(line)
        assert m, f"not a monophone line: {line!r}"
        rows.append((m[1], m[2], float(m[3]), int(m[4])))
    return pd.DataFrame(rows, columns=["media", "class", "p", "rank"])


def _parse_sound(path) -> pd.DataFrame:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = SOUND_LINE.match(line)
        assert m, f"not a soundscape line: {line!r}"
        rows.append((m[1], m[2], m[3], m[4], float(m[5])))
    return pd.DataFrame(rows, columns=["media", "start", "end", "class", "p"])


def _check_ranks(df: pd.DataFrame, n_classes: int) -> None:
    for _, g in df.groupby("media", sort=False):
        assert list(g["rank"]) == list(range(1, n_classes + 1))
        assert g["class"].is_unique
        assert (np.diff(g["p"].to_numpy()) <= 0).all()  # descending scores
        assert ((g["p"] >= 0) & (g["p"] <= 1)).all()


def _write(path, kind: str, duration_s: float, seed: int = 0, amplitude: float = 1.0):
    x = amplitude * synth_signal(kind, duration_s, SYNTH_RATE_HZ, np.random.default_rng(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, SYNTH_RATE_HZ, subtype="PCM_16")
    return path


@pytest.fixture
def test_audio(tmp_path):
    """Three synthetic test recordings (one 9 s, longer than one window) and a corrupt file."""
    folder = tmp_path / "test_audio"
    _write(folder / "a_tone.wav", "tone1k", 9.0, 1)
    _write(folder / "sub" / "b_chirp.wav", "chirp2to4k", 3.0, 2)
    _write(folder / "c_noise.wav", "noise6k", 2.5, 3)
    (folder / "d_broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)
    return folder


def _xml_metadata(folder, ids: dict[str, str]):
    folder.mkdir(parents=True)
    for i, (name, media) in enumerate(ids.items()):
        (folder / f"rec{i}.xml").write_text(
            f"<?xml version='1.0' encoding='UTF-8'?>\n<Audio><MediaId>{media}</MediaId><FileName>{name}</FileName>"
            "<Author>someone</Author></Audio>\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def noise_export(tmp_path_factory):
    """A tiny run trained on a metadata.csv dataset with ``class_id`` and a class named ``noise``, exported."""
    root = tmp_path_factory.mktemp("submit_noise")
    data = write_synthetic_dataset(root / "data", files_per_class=3)
    rows = [{"filename": f"{kind}/{kind}_{i}.wav", "primary_label": "noise" if kind == "noise6k" else kind,
             "class_id": {"tone1k": "t1k", "chirp2to4k": "c24", "noise6k": "n6"}[kind],
             "common_name": f"{kind} bird"} for kind in ("tone1k", "chirp2to4k", "noise6k") for i in range(3)]
    pd.DataFrame(rows).to_csv(data / "metadata.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIRDNET_TF_CACHE", str(root / "cache"))
        rc, out, err = run_cli(["train", "--data", str(data), "--out", str(root / "run"), "--no-eval",
                                "--workers", "1", *tiny_set_args()])
        assert rc == 0, out[-2000:] + err[-2000:]
        rc, out, err = run_cli(["export", str(root / "run"), "--out", str(root / "export")])
        assert rc == 0, out[-2000:] + err[-2000:]
    return root


# ---------------------------------------------------------------- pure functions

def test_soundscape_windows_past_one_hour():
    from birdnet_tf.infer.outputs import soundscape_timestamp
    from birdnet_tf.infer.submit import soundscape_windows

    sr = 22050
    start, end = soundscape_windows(int(3723.5 * sr), sr)  # 1 h 2 min 3.5 s
    assert len(start) == 745  # 744 full windows + the 3.5-s tail
    assert np.allclose(np.diff(start), 5.0) and np.allclose(end - start, 5.0)
    stamps = [soundscape_timestamp(s, e) for s, e in zip(start, end)]
    assert stamps[0] == "00:00:00-00:00:05"
    assert stamps[719] == "00:59:55-01:00:00"
    assert stamps[720] == "01:00:00-01:00:05"
    assert stamps[-1] == "01:02:00-01:02:05"
    # a tail under 0.1 s is not a window; a recording shorter than that still gets one
    assert len(soundscape_windows(int(10.05 * sr), sr)[0]) == 2
    assert len(soundscape_windows(100, sr)[0]) == 1
    start, end = soundscape_windows(10 * sr, sr, window_s=2.0, hop_s=1.0)
    assert list(start[:3]) == [0.0, 1.0, 2.0] and end[0] == 2.0


def test_monophone_starts_spread_evenly():
    from birdnet_tf.infer.submit import monophone_starts

    starts = monophone_starts(1000 * 100 + 50, 100, 100, 128)
    assert len(starts) == 128 and starts[0] == 0 and starts[-1] == 1000 * 100 + 50 - 100
    assert np.all(np.diff(starts) > 0)
    assert list(monophone_starts(50, 100, 100, 128)) == [0]  # shorter than a window: one (looped)
    assert len(monophone_starts(1000, 100, 100, None)) == 10


def test_drop_noise_leaves_other_scores_alone():
    from birdnet_tf.infer.submit import drop_noise, kept_labels

    labels = ["a", "Noise", "b"]
    table = pd.DataFrame({"file": ["x", "y"], "start_s": [0.0, 0.0], "end_s": [1.0, 1.0],
                          "a": [0.2, 0.1], "Noise": [0.7, 0.5], "b": [0.1, 0.4]})
    out, kept = drop_noise(table, labels)
    assert kept == ["a", "b"] and list(out.columns) == ["file", "start_s", "end_s", "a", "b"]
    assert out["a"].tolist() == [0.2, 0.1] and out["b"].tolist() == [0.1, 0.4]  # not renormalised
    assert kept_labels(["NOISE", "x"], ["noise"]) == ["x"]
    assert kept_labels(["noise", "x"], []) == ["noise", "x"]


def test_read_media_ids_from_xml_folder_and_csv(tmp_path):
    from birdnet_tf.errors import BirdnetError
    from birdnet_tf.infer.submit import read_media_ids

    xml = _xml_metadata(tmp_path / "test" / "xml", {"LIFECLEF2018_X_1.wav": "101", "other.mp3": "102"})
    (xml / "broken.xml").write_text("<Audio><MediaId>9", encoding="utf-8")
    with pytest.warns(UserWarning, match="1 of 3 XML files skipped"):
        ids = read_media_ids(tmp_path / "test")  # the parent of xml/ works too
    assert ids["LIFECLEF2018_X_1.wav"] == "101" and ids["LIFECLEF2018_X_1"] == "101" and ids["other.mp3"] == "102"
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"FileName": ["audio/a.wav", "b.ogg"], "MediaId": ["7", "8"]}).to_csv(csv, index=False)
    assert read_media_ids(csv)["a.wav"] == "7"
    pd.DataFrame({"file": ["a.wav"], "id": ["7"]}).to_csv(csv, index=False)
    with pytest.raises(BirdnetError, match="media id column"):
        read_media_ids(csv)


# ---------------------------------------------------------------- end to end

def test_monophone_cli_xml_media_ids_class_ids_and_skipped(trained_synthetic, test_audio, tmp_path):
    labels = (trained_synthetic.export / "assets.extra" / "labels.txt").read_text().split()
    media = {"a_tone.wav": "1001", "b_chirp.wav": "1002", "c_noise.wav": "1003", "d_broken.wav": "1004"}
    xml = _xml_metadata(tmp_path / "xml", media)
    ids = tmp_path / "class_ids.csv"
    pd.DataFrame({"label": labels, "class_id": [f"cls{i}" for i in range(len(labels))]}).to_csv(ids, index=False)
    out = tmp_path / "mono.txt"
    argv = ["submit", "--task", "monophone", str(trained_synthetic.export), "--audio", str(test_audio),
            "--out", str(out), "--metadata", str(xml), "--class-ids", str(ids), "--no-progress"]
    rc, stdout, stderr = run_cli(argv)
    assert rc == 0, stdout + stderr
    df = _parse_mono(out)
    assert list(dict.fromkeys(df["media"])) == ["1001", "1003", "1002"]  # sorted paths: a, c, sub/b
    assert set(df["class"]) == {f"cls{i}" for i in range(len(labels))}
    _check_ranks(df, len(labels))
    assert "1 input(s) skipped" in stdout and "d_broken.wav" in stdout
    assert "pooling median" in stdout

    before = out.read_bytes()
    rc, stdout, stderr = run_cli(argv)  # refuses to overwrite
    assert rc == 2 and "already exists" in stderr and out.read_bytes() == before
    rc, stdout, stderr = run_cli([*argv, "--force", "--pooling", "max", "--engine", "sliding"])
    assert rc == 0, stdout + stderr
    df2 = _parse_mono(out)
    _check_ranks(df2, len(labels))
    assert len(df2) == len(df)


def test_monophone_file_pools_the_baseline_median_of_window_scores(trained_synthetic, tmp_path):
    """The file's probabilities are the median pooling of its (at most max_windows) window scores."""
    from birdnet_tf.evaluate.pooling import median_pool
    from birdnet_tf.infer.submit import load_members, score_file, submit

    wav = _write(tmp_path / "in" / "long_tone.wav", "tone1k", 12.0, 5)
    out = submit("monophone", trained_synthetic.export, wav, tmp_path / "m.txt", max_windows=3, log=lambda m: None,
                 progress=False)
    members, labels = load_members([trained_synthetic.export])
    cfg = members[0].exported.config
    res = score_file(members, str(wav), "monophone", cfg.data.excerpt_s, cfg.data.eval_hop_s, 3)
    assert res["scores"].shape == (3, len(labels))  # 6 windows of 2 s every 2 s, capped at 3
    expected = median_pool(res["scores"])
    got = _parse_mono(out).set_index("class")["p"]
    assert np.allclose([got[label] for label in labels], expected, atol=1e-6)


def test_ensemble_of_identical_models_equals_single_and_reorders_labels(trained_synthetic, test_audio, tmp_path):
    from birdnet_tf.infer.submit import load_members, submit

    twin = tmp_path / "twin"
    shutil.copytree(trained_synthetic.export, twin)
    single = submit("monophone", [trained_synthetic.export], test_audio, tmp_path / "single.txt",
                    log=lambda m: None, progress=False)
    pair = submit("monophone", [trained_synthetic.export, twin], test_audio, tmp_path / "pair.txt",
                  log=lambda m: None, progress=False)
    a, b = _parse_mono(single), _parse_mono(pair)
    assert len(a) == len(b) > 0
    assert (a[["media", "class", "rank"]].to_numpy() == b[["media", "class", "rank"]].to_numpy()).all()
    assert np.allclose(a["p"], b["p"], atol=2e-6)

    # a member whose labels.txt lists the same classes in another order is reordered by name
    labels = (twin / "assets.extra" / "labels.txt").read_text().split()
    (twin / "assets.extra" / "labels.txt").write_text("".join(f"{x}\n" for x in labels[::-1]))
    members, order = load_members([trained_synthetic.export, twin])
    assert order == labels
    assert list(members[1].order) == list(range(len(labels)))[::-1]


def test_ensemble_with_other_classes_or_rate_is_refused(trained_synthetic, test_audio, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained_synthetic.export, other)
    labels = (other / "assets.extra" / "labels.txt").read_text().split()
    (other / "assets.extra" / "labels.txt").write_text("".join(f"{x}\n" for x in [*labels[:-1], "Parus major"]))
    out = tmp_path / "run.txt"
    rc, stdout, stderr = run_cli(["submit", "--task", "monophone", str(trained_synthetic.export), str(other),
                                  "--audio", str(test_audio), "--out", str(out)])
    assert rc == 2 and "classes differ" in stderr and "Parus major" in stderr and not out.exists()

    rate = tmp_path / "rate"
    shutil.copytree(trained_synthetic.export, rate)
    cfg_file = rate / "assets.extra" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["audio"]["sample_rate_hz"] = 16000
    cfg_file.write_text(json.dumps(cfg))
    rc, stdout, stderr = run_cli(["submit", "--task", "soundscape", str(trained_synthetic.export), str(rate),
                                  "--audio", str(test_audio), "--out", str(out)])
    assert rc == 2 and "16000 Hz" in stderr and not out.exists()


def test_soundscape_70_s_file_and_dropped_class(trained_synthetic, tmp_path):
    _write(tmp_path / "scapes" / "scape_70s.wav", "chirp2to4k", 70.0, 7, amplitude=0.1)
    _write(tmp_path / "scapes" / "short.wav", "tone1k", 3.0, 8)
    out = tmp_path / "scape.txt"
    rc, stdout, stderr = run_cli(["submit", "--task", "soundscape", str(trained_synthetic.export),
                                  "--audio", str(tmp_path / "scapes"), "--out", str(out), "--no-progress",
                                  "--drop-class", "NOISE6K"])
    assert rc == 0, stdout + stderr
    assert "writing labels as ClassId" in stdout  # no class ids anywhere: warned
    df = _parse_sound(out)
    assert "noise6k" not in set(df["class"]) and set(df["class"]) == {"tone1k", "chirp2to4k"}
    scape = df[df["media"] == "scape_70s"]
    windows = list(dict.fromkeys(zip(scape["start"], scape["end"])))
    assert len(windows) == 14 and len(scape) == 14 * 2
    assert windows[0] == ("00:00:00", "00:00:05") and windows[-1] == ("00:01:05", "00:01:10")
    assert list(dict.fromkeys(zip(df[df["media"] == "short"]["start"], df[df["media"] == "short"]["end"]))) == \
        [("00:00:00", "00:00:05")]
    for _, g in df.groupby(["media", "start"]):  # per window: each class once, descending
        assert g["class"].is_unique and (np.diff(g["p"].to_numpy()) <= 0).all()


def test_trained_class_ids_travel_with_the_export_and_noise_is_dropped(noise_export, test_audio, tmp_path):
    run, export = noise_export / "run", noise_export / "export"
    table = pd.read_csv(run / "labels.csv", dtype=str)
    assert table.to_dict("list") == {"label": ["chirp2to4k", "noise", "tone1k"], "class_id": ["c24", "n6", "t1k"],
                                     "common_name": ["chirp2to4k bird", "noise6k bird", "tone1k bird"]}
    assert (export / "assets.extra" / "labels.csv").read_bytes() == (run / "labels.csv").read_bytes()
    out = tmp_path / "mono.txt"
    rc, stdout, stderr = run_cli(["submit", "--task", "monophone", str(export), "--audio", str(test_audio),
                                  "--out", str(out), "--no-progress"])
    assert rc == 0, stdout + stderr
    assert "dropping the class(es) noise" in stdout and "labels.csv" in stdout
    df = _parse_mono(out)
    assert set(df["class"]) == {"c24", "t1k"}  # the trained noise class (n6) is not in the run file
    assert list(dict.fromkeys(df["media"])) == ["a_tone", "c_noise", "b_chirp"]  # stems without metadata
    _check_ranks(df, 2)
