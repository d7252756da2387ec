"""Tests of BirdCLEF XML reading, ``birdnet-tf sort`` and the fixed split it leaves behind.

Synthetic BirdCLEF datasets (``xml/`` + ``wav/`` with tiny real WAVs) are written to
``tmp_path``; the real xc-pr20 XML folder is sorted in symlink mode.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import run_cli

from birdnet_tf.data import sort as sort_module
from birdnet_tf.data.catalog import CatalogWarning, is_birdclef_xml_dir, load_birdclef_xml, load_catalog
from birdnet_tf.data.labels import LabelSet, class_ids_from_catalog, encode_targets, load_class_ids
from birdnet_tf.data.sort import MARKER_NAME, read_class_list, safe_folder_name, sort_dataset
from birdnet_tf.data.split import split_catalog
from birdnet_tf.errors import BirdnetError, CatalogError

RATE_HZ = 8000

#: label -> (class id, number of files) of the default synthetic dataset
SPECIES = {
    "Turdus plumbeus": ("turplu", 30),
    "Amazona vittata": ("amavit", 11),
    "Coereba flaveola": ("coefla", 10),
    "Vireo latimeri": ("virlat", 2),
    "Todus mexicanus": ("todmex", 1),
}


def write_wav(path: Path, number: int) -> Path:
    """A 0.05-s 16-bit tone whose samples differ per ``number`` (so copies can be told apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.05 * RATE_HZ)) / RATE_HZ
    sf.write(path, 0.3 * np.sin(2 * np.pi * (200 + 10 * number) * t), RATE_HZ, subtype="PCM_16")
    return path


def write_xml(folder: Path, media_id: int, filename: str, label: str, class_id: str, *,
              background: str | None = "", author: str = "Ann Author", vernacular: str = "Some Bird",
              latitude: str = "18.3", extra: str = "") -> Path:
    """One BirdCLEF ``<Audio>`` file; ``background=None`` leaves the BackgroundSpecies tag out (2017 files)."""
    genus, species = label.split(" ", 1)
    bg = "" if background is None else f"<BackgroundSpecies>{escape(background)}</BackgroundSpecies>\n"
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Audio>\n'
        f"<MediaId>{media_id}</MediaId>\n<FileName>{escape(filename)}</FileName>\n<ClassId>{class_id}</ClassId>\n"
        f"<Date>2012-03-29</Date>\n<Time>9:30</Time>\n<Locality>Somewhere</Locality>\n"
        f"<Latitude>{latitude}</Latitude>\n<Longitude>-66.9</Longitude>\n<Elevation>?</Elevation>\n"
        f"<Author>{escape(author)}</Author>\n<Content>song</Content>\n<Quality>A</Quality>\n<Year>BirdCLEF2018</Year>\n"
        f"{bg}<Genus>{escape(genus)}</Genus>\n<Species>{escape(species)}</Species>\n"
        f"<VernacularNames>{escape(vernacular)}</VernacularNames>\n{extra}</Audio>\n"
    )
    path = folder / f"{Path(filename).stem}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_birdclef(root: Path, species: dict[str, tuple[str, int]] = SPECIES) -> Path:
    """A BirdCLEF-style dataset: ``root/xml/*.xml`` beside ``root/wav/*.wav``; returns ``root``.

    The first file of every class has a background species that is a class and one that is not.
    """
    number = 0
    for label, (class_id, n) in species.items():
        for i in range(n):
            number += 1
            name = f"LIFECLEF2018_BIRD_XC_WAV_RN{number}.wav"
            write_wav(root / "wav" / name, number)
            background = "Turdus plumbeus, Nonexistens avis" if i == 0 else ("" if i % 2 else None)
            write_xml(root / "xml", number, name, label, class_id, background=background,
                      author=f"Recordist {number % 4}", vernacular=f"{label} Common, Other Name")
    return root


def files_of(out: Path) -> list[str]:
    """Every audio file under ``out/train`` and ``out/val``, relative, sorted."""
    return sorted(p.relative_to(out).as_posix() for split in ("train", "val") for p in (out / split).rglob("*.wav"))


def quiet_sort(*args, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("log", lambda msg: None)
    return sort_dataset(*args, **kwargs)


@pytest.fixture
def birdclef(tmp_path: Path) -> Path:
    return make_birdclef(tmp_path / "birdclef")


# --------------------------------------------------------------------------- reading XML


def test_load_birdclef_xml_fields(birdclef: Path) -> None:
    df = load_birdclef_xml(birdclef / "xml")
    assert len(df) == sum(n for _, n in SPECIES.values())
    assert df.attrs["skipped"] == []
    first = df.iloc[0]
    assert first["key"] == "wav/LIFECLEF2018_BIRD_XC_WAV_RN1.wav"
    assert Path(first["path"]).is_file() and Path(first["path"]).parent == birdclef / "wav"
    assert first["primary_label"] == "Turdus plumbeus"
    assert first["secondary_labels"] == ["Nonexistens avis"]  # the primary itself is dropped from the list
    assert (first["class_id"], first["media_id"], first["recordist"]) == ("turplu", "1", "Recordist 1")
    assert first["common_name"] == "Turdus plumbeus Common"  # first of the comma-separated VernacularNames
    assert (first["date"], first["time"], first["latitude"]) == ("2012-03-29", "9:30", "18.3")
    assert first["elevation"] is pd.NA  # "?"
    amazona = df[df["primary_label"] == "Amazona vittata"].reset_index(drop=True)
    assert amazona.loc[0, "secondary_labels"] == ["Turdus plumbeus", "Nonexistens avis"]
    assert amazona.loc[1, "secondary_labels"] == []  # empty tag
    assert amazona.loc[2, "secondary_labels"] == []  # no BackgroundSpecies tag at all
    # the layout is detected from the XML folder and from its parent
    assert is_birdclef_xml_dir(birdclef / "xml") and not is_birdclef_xml_dir(birdclef / "wav")
    for folder in (birdclef / "xml", birdclef):
        again = load_catalog(folder)
        assert again["key"].tolist() == df["key"].tolist()
        assert again["class_id"].tolist() == df["class_id"].tolist()


def test_xml_audio_places_and_missing_values(tmp_path: Path) -> None:
    beside = tmp_path / "beside"
    write_wav(beside / "a.wav", 1)
    write_xml(beside, 1, "a.wav", "Turdus plumbeus", "turplu", latitude="None", background="?")
    df = load_catalog(beside)  # audio next to the XML files
    assert df["key"].tolist() == ["a.wav"] and df.loc[0, "latitude"] is pd.NA
    assert df.loc[0, "secondary_labels"] == []

    sibling = tmp_path / "ds"
    write_wav(sibling / "audio" / "b.wav", 2)
    write_xml(sibling / "xml", 2, "b.wav", "Amazona vittata", "amavit")
    assert load_birdclef_xml(sibling / "xml")["key"].tolist() == ["audio/b.wav"]

    elsewhere = tmp_path / "elsewhere"
    write_wav(elsewhere / "b.wav", 3)
    df = load_birdclef_xml(sibling / "xml", audio_dir=elsewhere)
    assert df["key"].tolist() == ["b.wav"] and Path(df.loc[0, "path"]).parent == elsewhere
    with pytest.raises(CatalogError, match="no \\*.xml files"):
        load_birdclef_xml(tmp_path / "elsewhere")


def test_bad_xml_files_skipped_and_counted(birdclef: Path) -> None:
    xml = birdclef / "xml"
    (xml / "garbled.xml").write_bytes(b"<Audio><FileName>x.wav</FileN\x00\xff\xfe")
    (xml / "truncated.xml").write_text("<?xml version='1.0'?>\n<Audio>\n<MediaId>1", encoding="utf-8")
    (xml / "other_root.xml").write_text("<Recording><FileName>x.wav</FileName></Recording>", encoding="utf-8")
    write_wav(birdclef / "wav" / "nogenus.wav", 99)
    (xml / "nogenus.xml").write_text("<Audio><FileName>nogenus.wav</FileName><Species>x</Species></Audio>")
    write_xml(xml, 900, "missing_audio.wav", "Turdus plumbeus", "turplu")
    (xml / "nofilename.xml").write_text("<Audio><Genus>Turdus</Genus><Species>plumbeus</Species></Audio>")
    write_xml(xml, 901, "../escape.wav", "Turdus plumbeus", "turplu")
    total = sum(n for _, n in SPECIES.values())

    with pytest.warns(CatalogWarning) as caught:
        df = load_birdclef_xml(xml)
    assert len(caught) == 1  # one summarising warning
    message = str(caught[0].message)
    assert f"skipped 7 of {total + 7} recordings" in message
    assert "2 XML does not parse" in message and "1 audio file not found (missing_audio.xml)" in message
    reasons = dict(df.attrs["skipped"])
    assert reasons == {
        "garbled.xml": "XML does not parse", "truncated.xml": "XML does not parse",
        "other_root.xml": "XML root is <Recording>, not <Audio>", "nogenus.xml": "no Genus/Species",
        "missing_audio.xml": "audio file not found", "nofilename.xml": "no FileName",
        "escape.xml": "unsafe FileName",
    }
    assert len(df) == total

    with pytest.warns(CatalogWarning):
        result = quiet_sort(xml, birdclef.parent / "sorted", mode="symlink")
    assert len(result.skipped) == 7
    assert "skipped 7 source recordings: 2 XML does not parse" in result.summary()
    assert len(files_of(result.out_dir)) == total

    empty = birdclef.parent / "all_bad"
    empty.mkdir()
    (empty / "bad.xml").write_text("<Audio><Genus>A</Genus>")
    with pytest.warns(CatalogWarning), pytest.raises(CatalogError, match="all 1 XML files were skipped"):
        load_birdclef_xml(empty)


# --------------------------------------------------------------------------- sorting


def test_split_rule_layout_and_metadata(birdclef: Path, tmp_path: Path) -> None:
    out = tmp_path / "sorted"
    result = quiet_sort(birdclef / "xml", out)
    assert result.labels == tuple(sorted(SPECIES))
    files = files_of(out)
    for label, (_, n) in SPECIES.items():
        n_val = len(list((out / "val" / label).glob("*.wav")))
        n_train = len(list((out / "train" / label).glob("*.wav")))
        assert n_val + n_train == n
        # max(1, ceil(10 %)), but never all files: 30 -> 3 (not the baseline's float artefact 4), 11 -> 2, 2 -> 1
        assert n_val == (0 if n == 1 else min(n - 1, max(1, math.ceil(0.1 * n - 1e-9)))), label
        assert n_val >= (1 if n >= 2 else 0)
    assert result.single_file == ["Todus mexicanus"] and "single file" in result.summary()
    assert (result.n_train, result.n_val) == (47, 7) and len(files) == 54
    assert all(not (out / f).is_symlink() for f in files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    # metadata/<stem>.json: the baseline's keys plus what is known
    row = result.catalog[result.catalog["source_key"] == "wav/LIFECLEF2018_BIRD_XC_WAV_RN12.wav"].iloc[0]
    data = json.loads((out / "metadata" / "LIFECLEF2018_BIRD_XC_WAV_RN12.json").read_text())
    assert data == {
        "sci-name": "Turdus plumbeus", "species": "Turdus plumbeus Common", "background": [],
        "filename": "LIFECLEF2018_BIRD_XC_WAV_RN12.wav", "classid": "turplu", "common_name": "Turdus plumbeus Common",
        "media_id": "12", "split": row["split"], "source": "wav/LIFECLEF2018_BIRD_XC_WAV_RN12.wav",
        "date": "2012-03-29", "time": "9:30", "latitude": "18.3", "longitude": "-66.9", "recordist": "Recordist 0",
    }
    first_amazona = json.loads((out / "metadata" / "LIFECLEF2018_BIRD_XC_WAV_RN31.json").read_text())
    assert first_amazona["background"] == ["Turdus plumbeus", "Nonexistens avis"]
    assert "elevation" not in first_amazona  # unknown ("?") values are left out
    assert len(list((out / "metadata").glob("*.json"))) == 54

    # labels.csv: the label set with class ids and common names, in label order
    labels_csv = pd.read_csv(out / "labels.csv", dtype=str)
    assert labels_csv.columns.tolist() == ["label", "class_id", "common_name"]
    assert labels_csv["label"].tolist() == sorted(SPECIES)
    assert load_class_ids(out / "labels.csv") == {label: cid for label, (cid, _) in SPECIES.items()}
    assert labels_csv.set_index("label").loc["Vireo latimeri", "common_name"] == "Vireo latimeri Common"

    # the marker, written last
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["complete"] is True and marker["n_train"] == 47 and marker["seed"] == 1337


def test_sorted_folder_is_a_dataset_with_a_fixed_split(birdclef: Path, tmp_path: Path) -> None:
    out = tmp_path / "sorted"
    quiet_sort(birdclef / "xml", out, mode="symlink")
    df = load_catalog(out)
    assert len(df) == 54 and set(df["split"]) == {"train", "val"}
    assert all(key.startswith(f"{split}/") for key, split in zip(df["key"], df["split"]))
    assert df["class_id"].notna().all() and df["common_name"].notna().all()

    train, val = split_catalog(df)  # auto: the split column wins over recordists and class split
    assert val.attrs["split"]["by"] == "column"
    assert sorted(val["key"]) == [f for f in files_of(out) if f.startswith("val/")]
    assert sorted(train["key"]) == [f for f in files_of(out) if f.startswith("train/")]
    forced_train, forced_val = split_catalog(df, by="column")
    assert forced_val["key"].tolist() == val["key"].tolist()

    # background species: the one that is a class becomes a 0.5 target, the other is ignored
    labels = LabelSet.from_catalog(df)
    amazona = df[df["source_key"] == "wav/LIFECLEF2018_BIRD_XC_WAV_RN31.wav"]
    assert amazona.iloc[0]["secondary_labels"] == ["Turdus plumbeus", "Nonexistens avis"]
    targets = encode_targets(amazona, labels, background_weight=0.5)
    expected = np.zeros((1, len(labels)), dtype=np.float32)
    expected[0, labels.index("Amazona vittata")] = 1.0
    expected[0, labels.index("Turdus plumbeus")] = 0.5
    np.testing.assert_array_equal(targets, expected)

    assert class_ids_from_catalog(df) == {label: cid for label, (cid, _) in sorted(SPECIES.items())}


def test_split_column_rules() -> None:
    df = pd.DataFrame({"key": [f"f{i}" for i in range(4)], "primary_label": ["A", "A", "B", "B"],
                       "recordist": ["r1", "r2", "r3", "r4"], "split": [" Train", "VAL", "train", "val "]})
    train, val = split_catalog(df)
    assert val["key"].tolist() == ["f1", "f3"] and set(val["split"]) == {"val"} and set(train["split"]) == {"train"}
    bad = df.assign(split=["train", "test", pd.NA, "val"])
    with pytest.raises(CatalogError, match=r"2 of 4 rows are not: f1 \('test'\), f2 \(missing\)"):
        split_catalog(bad)
    with pytest.raises(CatalogError, match="none of the 4 files as 'val'"):
        split_catalog(df.assign(split="train"))
    without = df.drop(columns="split")
    with pytest.raises(CatalogError, match="no 'split' column"):
        split_catalog(without, by="column")
    assert split_catalog(without)[1].attrs["split"]["by"] == "recordist"  # unchanged without the column
    assert split_catalog(df.assign(split=pd.NA))[1].attrs["split"]["by"] == "recordist"  # an empty column is none
    with pytest.raises(ValueError):
        split_catalog(df, by="columns")  # type: ignore[arg-type]


def test_class_ids_conflict_and_labels_csv_errors(tmp_path: Path) -> None:
    df = pd.DataFrame({"key": ["a", "b", "c"], "primary_label": ["A x", "A x", "B y"], "class_id": ["ax", "ay", pd.NA]})
    with pytest.raises(CatalogError, match="'A x' has two class ids: 'ax' \\(a\\) and 'ay' \\(b\\)"):
        class_ids_from_catalog(df)
    assert class_ids_from_catalog(df.drop(columns="class_id")) is None
    assert class_ids_from_catalog(df.assign(class_id=pd.NA)) is None
    (tmp_path / "labels.csv").write_text("label,common_name\nA x,Foo\n")
    with pytest.raises(CatalogError, match="'class_id' is missing"):
        load_class_ids(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("label,class_id\nA x,ax\nB y,\nA x,ax\n")
    with pytest.raises(CatalogError, match="line 4: label 'A x' is repeated"):
        load_class_ids(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("label,class_id\nA x,ax\nB y,\n")
    assert load_class_ids(tmp_path / "labels.csv") == {"A x": "ax"}

    # a source where one label has two class ids is refused before anything is written
    src = tmp_path / "conflict"
    for i, cid in enumerate(["turplu", "turplu", "other"]):
        write_wav(src / "wav" / f"{i}.wav", i)
        write_xml(src / "xml", i, f"{i}.wav", "Turdus plumbeus", cid)
    with pytest.raises(CatalogError, match="two class ids"):
        quiet_sort(src, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_deterministic(birdclef: Path, tmp_path: Path) -> None:
    first = quiet_sort(birdclef / "xml", tmp_path / "one", mode="symlink")
    second = quiet_sort(birdclef, tmp_path / "two", mode="copy")  # the dataset root: same recordings, same keys
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")
    assert first.catalog["filename"].tolist() == second.catalog["filename"].tolist()
    quiet_sort(birdclef / "xml", tmp_path / "three", mode="symlink", seed=7)
    assert files_of(tmp_path / "three") != files_of(tmp_path / "one")
    # a class's split does not depend on the other classes
    only = quiet_sort(birdclef / "xml", tmp_path / "four", mode="symlink", classes=["Turdus plumbeus"])
    assert files_of(tmp_path / "four") == [f for f in files_of(tmp_path / "one") if "/Turdus plumbeus/" in f]
    assert only.labels == ("Turdus plumbeus",)


def test_never_overwrites(birdclef: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BirdnetError, match=f"{out}: already exists and is not empty"):
        quiet_sort(birdclef / "xml", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(BirdnetError, match="not a folder"):
        quiet_sort(birdclef / "xml", tmp_path / "a_file")
    empty = tmp_path / "empty"
    empty.mkdir()
    quiet_sort(birdclef / "xml", empty, mode="symlink")  # an existing empty folder is fine
    assert (empty / MARKER_NAME).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_modes(tmp_path: Path) -> None:
    for mode in ("copy", "symlink", "move"):
        src = make_birdclef(tmp_path / f"src_{mode}")
        before = {p.name: p.read_bytes() for p in (src / "wav").iterdir()}
        out = tmp_path / f"out_{mode}"
        # Todus mexicanus (1 file) is dropped by min_files, so its file must stay in the source in every mode
        result = quiet_sort(src / "xml", out, mode=mode, min_files=2)
        assert result.dropped == {"Todus mexicanus": "1 file(s), fewer than the minimum 2"}
        written = files_of(out)
        assert len(written) == 53
        for rel in written:
            target = out / rel
            assert target.read_bytes() == before[target.name]  # the same audio, whatever the mode
            assert target.is_symlink() == (mode == "symlink")
            if mode == "symlink":
                assert Path(os.readlink(target)).is_absolute() and target.resolve().parent == (src / "wav").resolve()
        left = sorted(p.name for p in (src / "wav").iterdir())
        if mode == "move":
            assert left == ["LIFECLEF2018_BIRD_XC_WAV_RN54.wav"]  # only the dropped class's file stays
        else:
            assert left == sorted(before)
        assert len(list((src / "xml").glob("*.xml"))) == 54  # XML files are never touched


def test_move_that_fails_halfway_moves_files_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_birdclef(tmp_path / "src")
    before = sorted(p.name for p in (src / "wav").iterdir())
    real_move = sort_module._move
    calls: list[Path] = []  # moves into the sorted folder (moving back goes the other way)

    def failing_move(source: Path, target: Path) -> None:  # the third move in fails (disk full, say)
        if target.parent.parent.parent.name.endswith(".part"):
            calls.append(source)
            if len(calls) == 3:
                raise OSError(28, "No space left on device")
        real_move(source, target)

    monkeypatch.setattr(sort_module, "_move", failing_move)
    out = tmp_path / "out"
    with pytest.raises(BirdnetError, match="nothing was written; the 2 files moved so far were moved back"):
        quiet_sort(src / "xml", out, mode="move")
    assert sorted(p.name for p in (src / "wav").iterdir()) == before
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    calls.clear()

    def interrupted_move(source: Path, target: Path) -> None:
        if target.parent.parent.parent.name.endswith(".part"):
            calls.append(source)
            if len(calls) == 5:
                raise KeyboardInterrupt
        real_move(source, target)

    monkeypatch.setattr(sort_module, "_move", interrupted_move)
    with pytest.raises(KeyboardInterrupt):
        quiet_sort(src / "xml", out, mode="move")
    assert sorted(p.name for p in (src / "wav").iterdir()) == before
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_selection_and_oversampling(birdclef: Path, tmp_path: Path) -> None:
    # whitelist by label or class id; an unknown entry is warned about
    with pytest.warns(UserWarning, match="1 of the 3 entries of the class list match no class"):
        result = quiet_sort(birdclef / "xml", tmp_path / "white", mode="symlink",
                            classes=["Amazona vittata", "virlat", "Nope nope"])
    assert result.labels == ("Amazona vittata", "Vireo latimeri") and result.unknown_classes == ["Nope nope"]
    assert len(result.not_whitelisted) == 3
    with pytest.raises(BirdnetError, match="none of the 1 classes of the class list"):
        quiet_sort(birdclef / "xml", tmp_path / "none", classes=["Nope nope"])

    # max_classes keeps the classes with the most files; max_files caps each class
    result = quiet_sort(birdclef / "xml", tmp_path / "top", mode="symlink", max_classes=2, max_files=5)
    assert result.labels == ("Amazona vittata", "Turdus plumbeus")
    assert set(result.dropped) == {"Coereba flaveola", "Vireo latimeri", "Todus mexicanus"}
    counts = result.catalog.groupby(["primary_label", "split"]).size().to_dict()
    assert counts == {("Amazona vittata", "train"): 4, ("Amazona vittata", "val"): 1,
                      ("Turdus plumbeus", "train"): 4, ("Turdus plumbeus", "val"): 1}
    with pytest.raises(BirdnetError, match="no class is left"):
        quiet_sort(birdclef / "xml", tmp_path / "nothing", min_files=100)

    # oversampling fills TRAIN up to the minimum with <stem>_dupN copies; validation is left alone
    out = tmp_path / "over"
    result = quiet_sort(birdclef / "xml", out, oversample_to=4)
    table = result.catalog
    per_class = table[table["split"] == "train"].groupby("primary_label").size().to_dict()
    assert per_class == {"Turdus plumbeus": 27, "Amazona vittata": 9, "Coereba flaveola": 9,
                         "Vireo latimeri": 4, "Todus mexicanus": 4}
    assert table[table["split"] == "val"].groupby("primary_label").size().to_dict() == {
        "Turdus plumbeus": 3, "Amazona vittata": 2, "Coereba flaveola": 1, "Vireo latimeri": 1}
    assert result.n_duplicates == 3 + 3
    dups = table[table["duplicate_of"].notna()]
    vireo = sorted(Path(f).name for f in dups[dups["primary_label"] == "Vireo latimeri"]["filename"])
    (original,) = table[(table["primary_label"] == "Vireo latimeri") & (table["split"] == "train")
                        & table["duplicate_of"].isna()]["filename"]
    stem = Path(original).stem
    assert vireo == [f"{stem}_dup1.wav", f"{stem}_dup2.wav", f"{stem}_dup3.wav"]
    for filename, of in zip(dups["filename"], dups["duplicate_of"]):
        assert (out / filename).read_bytes() == (out / of).read_bytes()
        assert json.loads((out / "metadata" / f"{Path(filename).stem}.json").read_text())["duplicate_of"] == Path(of).name
    assert load_catalog(out)["duplicate_of"].notna().sum() == 6


def test_unsafe_labels_and_name_clashes(tmp_path: Path) -> None:
    assert safe_folder_name("Turdus plumbeus") == "Turdus plumbeus"
    assert safe_folder_name('A/b:c*?"<>|') == "A_b_c______"
    assert safe_folder_name("Nul") == "Nul_" and safe_folder_name("x. ") == "x" and safe_folder_name("..") == "_"
    src = tmp_path / "src"
    write_wav(src / "wav" / "a.wav", 1)
    write_wav(src / "wav" / "b.wav", 2)
    write_wav(src / "wav" / "c.wav", 3)
    write_wav(src / "wav" / "d.wav", 4)
    write_xml(src / "xml", 1, "a.wav", "Foo bar/baz", "f1")
    write_xml(src / "xml", 2, "b.wav", "Foo bar/baz", "f1")
    write_xml(src / "xml", 3, "c.wav", "Foo bar:baz", "f2")
    write_xml(src / "xml", 4, "d.wav", "Foo bar:baz", "f2")
    out = tmp_path / "out"
    result = quiet_sort(src, out, mode="symlink")
    folders = sorted(p.name for p in (out / "train").iterdir())
    assert folders == ["Foo bar_baz", "Foo bar_baz_2"]  # two labels, one safe name: told apart
    assert sorted(load_catalog(out)["primary_label"].unique()) == ["Foo bar/baz", "Foo bar:baz"]  # text kept
    assert result.labels == ("Foo bar/baz", "Foo bar:baz")


def test_sort_a_metadata_csv_dataset(tmp_path: Path) -> None:
    # two classes with files of the same name in different folders: output names stay unique
    src = tmp_path / "csv"
    rows = []
    for i in range(6):
        filename = f"site{i % 3}/rec.wav" if i < 3 else f"site{i % 3}/rec{i}.wav"
        write_wav(src / filename, i)
        rows.append({"filename": filename, "primary_label": "Amazona vittata" if i % 2 else "Turdus plumbeus",
                     "recordist": f"R{i}", "license": "cc-by"})
    pd.DataFrame(rows).to_csv(src / "metadata.csv", index=False)
    out = tmp_path / "out"
    result = quiet_sort(src, out)
    names = sorted(Path(f).name for f in result.catalog["filename"])
    assert names == ["rec.wav", "rec3.wav", "rec4.wav", "rec5.wav", "rec_2.wav", "rec_3.wav"]
    df = load_catalog(out)
    assert df["license"].tolist() == ["cc-by"] * 6  # other source columns are kept
    assert df["class_id"].isna().all()
    assert pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)["class_id"].tolist() == ["", ""]


def test_cli_sort(birdclef: Path, tmp_path: Path) -> None:
    class_file = tmp_path / "classes.txt"
    class_file.write_text("# species to keep\nAmazona vittata\nturplu\n\n")
    assert read_class_list(str(class_file)) == ["Amazona vittata", "turplu"]
    assert read_class_list("A b, C d") == ["A b", "C d"]
    out = tmp_path / "cli"
    rc, stdout, stderr = run_cli(["sort", str(birdclef / "xml"), "--out", str(out), "--mode", "symlink",
                                  "--classes", str(class_file), "--val-fraction", "0.2", "--seed", "3",
                                  "--oversample-to", "12", "--no-progress"])
    assert rc == 0, stderr
    assert "sorted 2 classes" in stdout and "train 36 files (incl. 4 oversampling duplicates), val 9 files" in stdout
    assert f"birdnet-tf extract {out}" in stdout and f"birdnet-tf train --data {out}" in stdout
    marker = json.loads((out / MARKER_NAME).read_text())
    assert (marker["seed"], marker["val_fraction"], marker["mode"]) == (3, 0.2, "symlink")

    rc, stdout, stderr = run_cli(["sort", str(birdclef / "xml"), "--out", str(out), "--no-progress"])
    assert rc == 2 and f"birdnet-tf: error: {out}: already exists and is not empty" in stderr
    rc, _, stderr = run_cli(["sort", str(birdclef / "xml"), "--out", str(tmp_path / "x"), "--val-fraction", "1"])
    assert rc == 2 and "validation fraction" in stderr and not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- the real recordings


def test_real_xc_pr20_xml(xc_pr20: Path, tmp_path: Path) -> None:
    xml = xc_pr20 / "xml"
    if not xml.is_dir():
        pytest.skip("xc-pr20 has no xml/ folder")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CatalogWarning)  # every real XML file is usable
        result = quiet_sort(xml, tmp_path / "a", mode="symlink")
    again = quiet_sort(xml, tmp_path / "b", mode="symlink")
    listing = [sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink())
               for root in (tmp_path / "a", tmp_path / "b")]
    assert listing[0] == listing[1] and len(listing[0]) == 207

    reference = load_catalog(xc_pr20)  # the same recordings through metadata.csv
    per_class = reference["primary_label"].value_counts()
    assert result.labels == tuple(sorted(per_class.index)) and len(result.labels) == 20
    val = result.catalog[result.catalog["split"] == "val"]["primary_label"].value_counts()
    for label, n in per_class.items():
        assert val[label] == max(1, math.ceil(0.1 * n - 1e-9)), label
    assert (result.n_train, result.n_val) == (207 - val.sum(), val.sum())

    sorted_df = load_catalog(tmp_path / "a")
    merged = sorted_df.merge(reference, left_on="source_key", right_on="key", suffixes=("", "_ref"))
    assert len(merged) == 207
    for column in ("primary_label", "recordist", "date", "common_name"):
        assert merged[column].fillna("?").tolist() == merged[f"{column}_ref"].fillna("?").tolist(), column
    assert [sorted(a) for a in merged["secondary_labels"]] == [sorted(b) for b in merged["secondary_labels_ref"]]
    train, val_df = split_catalog(sorted_df)
    assert val_df.attrs["split"]["by"] == "column" and len(val_df) == result.n_val
    ids = load_class_ids(tmp_path / "a" / "labels.csv")
    assert len(ids) == 20 and ids["Amazona vittata"] == "amavit"
    with_bg = merged[merged["secondary_labels"].map(len) > 0].iloc[0]
    data = json.loads((tmp_path / "a" / "metadata" / f"{Path(with_bg['key']).stem}.json").read_text())
    assert data["background"] == with_bg["secondary_labels"] and data["sci-name"] == with_bg["primary_label"]
    assert again.catalog["filename"].tolist() == result.catalog["filename"].tolist()
