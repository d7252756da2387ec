"""Tests of birdnet_tf.data.catalog: both dataset layouts, parsing, errors, round trip."""

from __future__ import annotations

import wave
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import xc_pr20_dir

from birdnet_tf.data.catalog import (
    CatalogWarning,
    load_catalog,
    parse_secondary_labels,
    read_catalog,
    save_catalog,
)
from birdnet_tf.errors import CatalogError




def write_wav(path: Path, seconds: float = 0.01, rate: int = 8000) -> Path:
    """Writes a tiny 16-bit mono tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.tobytes())
    return path


def write_csv(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metadata.csv"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- class folders


def test_class_folders(tmp_path: Path) -> None:
    write_wav(tmp_path / "Amazona vittata" / "a1.wav")
    write_wav(tmp_path / "Amazona vittata" / "sub" / "a2.WAV")
    (tmp_path / "Amazona vittata" / "a3.FLAC").write_bytes(b"x")  # only the suffix matters here
    (tmp_path / "Turdus plumbeus").mkdir()
    (tmp_path / "Turdus plumbeus" / "t1.mp3").write_bytes(b"x")
    (tmp_path / "Turdus plumbeus" / "t2.Opus").write_bytes(b"x")
    (tmp_path / "Turdus plumbeus" / "notes.txt").write_text("ignored")
    (tmp_path / "Turdus plumbeus" / ".hidden.wav").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    write_wav(tmp_path / ".cache" / "x.wav")
    write_wav(tmp_path / "top_level.wav")  # not in a class folder: ignored

    df = load_catalog(tmp_path)
    assert df["key"].tolist() == [
        "Amazona vittata/a1.wav",
        "Amazona vittata/a3.FLAC",
        "Amazona vittata/sub/a2.WAV",
        "Turdus plumbeus/t1.mp3",
        "Turdus plumbeus/t2.Opus",
    ]
    assert df["primary_label"].tolist() == ["Amazona vittata"] * 3 + ["Turdus plumbeus"] * 2
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert df["secondary_labels"].tolist() == [[]] * 5
    assert df["recordist"].isna().all()
    assert {"key", "path", "primary_label", "secondary_labels", "recordist", "date", "latitude"} <= set(df.columns)
    assert df.attrs["skipped"] == []


def test_class_folders_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nope")
    write_wav(tmp_path / "file.wav")
    with pytest.raises(CatalogError, match="not a folder"):
        load_catalog(tmp_path / "file.wav")
    with pytest.raises(CatalogError, match="no class folders"):
        load_catalog(tmp_path)
    (tmp_path / "Empty species").mkdir()
    (tmp_path / "Empty species" / "readme.txt").write_text("x")
    with pytest.raises(CatalogError, match="no audio files") as info:
        load_catalog(tmp_path)
    assert str(tmp_path) in str(info.value)


# --------------------------------------------------------------------------- metadata.csv

CSV = """filename,primary_label,secondary_labels,recordist,date,time,latitude,elevation,quality,notes
audio/a.wav,Amazona vittata,Turdus plumbeus;Zenaida aurita,Ann,2002-01-16,?,18.1,?,A,first
audio/b.wav,Turdus plumbeus,"['Amazona vittata', 'Zenaida aurita']",Bob,?,7.30 am,,ca. 500 m,B,
./audio/c.wav, Amazona vittata ," Turdus plumbeus ; Amazona vittata ;Turdus plumbeus;?",,,,,,,
audio/d.wav,Turdus plumbeus,[],Ann,2010-05-01,06:00,18.2,120,C,x
"""


def make_csv_dataset(folder: Path, text: str = CSV, files: tuple[str, ...] = ("a", "b", "c", "d")) -> Path:
    for name in files:
        write_wav(folder / "audio" / f"{name}.wav")
    write_csv(folder, text)
    return folder


def test_metadata_csv(tmp_path: Path) -> None:
    make_csv_dataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        df = load_catalog(tmp_path)
    assert df["key"].tolist() == ["audio/a.wav", "audio/b.wav", "audio/c.wav", "audio/d.wav"]
    assert df["path"].tolist() == [str(tmp_path / "audio" / f"{n}.wav") for n in "abcd"]
    assert df["primary_label"].tolist() == ["Amazona vittata", "Turdus plumbeus", "Amazona vittata", "Turdus plumbeus"]
    assert df["secondary_labels"].tolist() == [
        ["Turdus plumbeus", "Zenaida aurita"],
        ["Amazona vittata", "Zenaida aurita"],
        ["Turdus plumbeus"],  # stripped, de-duplicated, primary and '?' removed
        [],
    ]
    assert df["recordist"].tolist()[:2] == ["Ann", "Bob"]
    assert df["recordist"][2] is pd.NA
    # raw strings kept, '?' and empty -> NA
    assert df["time"][0] is pd.NA and df["time"][1] == "7.30 am"
    assert df["date"][1] is pd.NA
    assert df["elevation"][1] == "ca. 500 m" and df["elevation"][0] is pd.NA
    assert df["latitude"][1] is pd.NA and df["latitude"][0] == "18.1"
    # extra columns passed through
    assert df["quality"].tolist()[:2] == ["A", "B"] and df["notes"][0] == "first" and df["notes"][1] is pd.NA
    # absent optional columns exist as NA
    assert df["longitude"].isna().all()
    assert df.attrs["skipped"] == []


def test_minimal_csv(tmp_path: Path) -> None:
    write_wav(tmp_path / "x.wav")
    write_csv(tmp_path, "primary_label,filename\nAmazona vittata,x.wav\n")
    df = load_catalog(tmp_path)
    assert df["key"].tolist() == ["x.wav"]
    assert df["secondary_labels"].tolist() == [[]]
    assert df["recordist"].isna().all()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A b;C d", ["A b", "C d"]),
        (" A b ; C d ;", ["A b", "C d"]),
        ("['A b', 'C d']", ["A b", "C d"]),
        ('["A b", "C d"]', ["A b", "C d"]),
        ("[]", []),
        ("['A b', 'C d'", ["A b", "C d"]),  # malformed list literal
        ("A b, C d", ["A b", "C d"]),  # BirdCLEF XML style
        ("", []),
        ("?", []),
        (None, []),
        (float("nan"), []),
        (pd.NA, []),
        (["A b", " C d", "A b", ""], ["A b", "C d"]),
        ("P q;A b;P q", ["A b"]),  # primary removed
    ],
)
def test_parse_secondary_labels(raw: object, expected: list[str]) -> None:
    assert parse_secondary_labels(raw, primary="P q") == expected


def test_missing_column(tmp_path: Path) -> None:
    write_csv(tmp_path, "file,species,recordist\na.wav,A b,Ann\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path)
    message = str(info.value)
    assert "metadata.csv" in message
    assert "'filename'" in message
    assert "'file', 'species', 'recordist'" in message


def test_empty_csv(tmp_path: Path) -> None:
    write_csv(tmp_path, "filename,primary_label\n")
    with pytest.raises(CatalogError, match="empty dataset"):
        load_catalog(tmp_path)
    write_csv(tmp_path, "")
    with pytest.raises(CatalogError, match="empty"):
        load_catalog(tmp_path)


def test_skipped_rows_one_warning(tmp_path: Path) -> None:
    text = CSV + (
        "audio/missing1.wav,Amazona vittata,,Ann,,,,,,\n"
        "audio/missing2.wav,Amazona vittata,,Ann,,,,,,\n"
        "audio/a.wav,Turdus plumbeus,,Cid,,,,,,\n"  # duplicate filename
        "audio/b.wav,,,Ann,,,,,,\n"  # empty label (and duplicate)
        ",Amazona vittata,,Ann,,,,,,\n"  # empty filename
    )
    make_csv_dataset(tmp_path, text)
    with pytest.warns(CatalogWarning) as record:
        df = load_catalog(tmp_path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 5 of 9" in message
    assert "audio/missing1.wav" in message and "audio/missing2.wav" in message
    assert "not found" in message and "duplicate" in message
    assert len(df) == 4
    assert df["primary_label"][0] == "Amazona vittata"  # first of the duplicates kept
    skipped = df.attrs["skipped"]
    assert ("audio/missing1.wav", "audio file not found") in skipped
    assert ("audio/a.wav", "duplicate filename") in skipped
    assert ("audio/b.wav", "empty primary_label") in skipped
    assert (9, "empty filename") in skipped  # 1-based data row number
    assert len(skipped) == 5


def test_all_rows_missing(tmp_path: Path) -> None:
    write_csv(tmp_path, "filename,primary_label\na.wav,A b\nb.wav,A b\n")
    with pytest.warns(CatalogWarning), pytest.raises(CatalogError, match="all 2 rows were skipped"):
        load_catalog(tmp_path)
    df = load_catalog(tmp_path, check_files=False)
    assert len(df) == 2


def test_save_read_roundtrip(tmp_path: Path) -> None:
    make_csv_dataset(tmp_path / "data")
    df = load_catalog(tmp_path / "data")
    out = tmp_path / "catalog.csv"
    save_catalog(df, out)
    assert "Turdus plumbeus;Zenaida aurita" in out.read_text(encoding="utf-8")
    back = read_catalog(out)
    pd.testing.assert_frame_equal(back, df)
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_read_catalog_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("key,primary_label\na,b\n")
    with pytest.raises(CatalogError, match="'path'"):
        read_catalog(tmp_path / "bad.csv")


# --------------------------------------------------------------------------- real data


def test_real_metadata() -> None:
    folder = xc_pr20_dir() or pytest.skip("xc-pr20 dataset not found")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CatalogWarning)
        df = load_catalog(folder)
    assert len(df) == 207
    assert df["key"].is_unique
    assert df["primary_label"].nunique() == 20
    assert df["recordist"].notna().all()
    assert (df["time"].dropna() != "?").all() and (df["elevation"].dropna() != "?").all()
    assert all(isinstance(v, list) for v in df["secondary_labels"])
    background = {s for v in df["secondary_labels"] for s in v}
    assert background - set(df["primary_label"])  # species outside the 20 classes are kept
    assert all(p not in v for p, v in zip(df["primary_label"], df["secondary_labels"]))
    assert {"xc_id", "common_name", "locality", "quality", "duration_s", "url"} <= set(df.columns)
