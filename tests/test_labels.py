"""Tests of birdnet_tf.data.labels: the label set and multi-hot targets."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import xc_pr20_dir

from birdnet_tf.data.catalog import CatalogWarning, load_catalog
from birdnet_tf.data.labels import (
    LabelSet,
    UnknownLabelError,
    background_matrix,
    encode_targets,
    filter_known,
    primary_indices,
)
from birdnet_tf.errors import CatalogError




@pytest.fixture
def catalog() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": ["r0.wav", "r1.wav", "r2.wav", "r3.wav"],
            "primary_label": ["Turdus plumbeus", "Amazona vittata", "Turdus plumbeus", "Coereba flaveola"],
            "secondary_labels": [
                ["Amazona vittata", "Zenaida aurita"],  # Zenaida aurita is not a class
                [],
                "Turdus plumbeus;Coereba flaveola",  # primary repeated, string form
                ["Zenaida aurita"],
            ],
        }
    )


def test_labelset_basics(catalog: pd.DataFrame) -> None:
    labels = LabelSet.from_catalog(catalog)
    assert labels.labels == ("Amazona vittata", "Coereba flaveola", "Turdus plumbeus")
    assert "Zenaida aurita" not in labels  # background-only species are not classes
    assert len(labels) == 3
    assert list(labels) == list(labels.labels)
    assert labels.index("Turdus plumbeus") == 2
    assert labels[0] == "Amazona vittata"
    assert labels == LabelSet(["Amazona vittata", "Coereba flaveola", "Turdus plumbeus"])
    assert labels != LabelSet(["Coereba flaveola", "Amazona vittata", "Turdus plumbeus"])
    assert hash(labels) == hash(LabelSet(labels.labels))
    with pytest.raises(AttributeError):
        labels._labels = ()  # type: ignore[misc]
    with pytest.raises(UnknownLabelError, match="Zenaida aurita") as info:
        labels.index("Zenaida aurita")
    assert isinstance(info.value, CatalogError) and isinstance(info.value, KeyError)
    assert "LabelSet" in repr(labels)


@pytest.mark.parametrize("bad", [[], ["A b", "A b"], ["A b", ""], [" A b"], ["A\nb"], [3]])
def test_labelset_invalid(bad: list) -> None:
    with pytest.raises(CatalogError):
        LabelSet(bad)


def test_labelset_save_load(tmp_path: Path) -> None:
    labels = LabelSet(["Zonotrichia capensis", "Émou ñandú", "Amazona vittata"])
    path = tmp_path / "labels.txt"
    labels.save(path)
    assert path.read_bytes() == "Zonotrichia capensis\nÉmou ñandú\nAmazona vittata\n".encode("utf-8")
    assert LabelSet.load(path) == labels
    assert [p.name for p in tmp_path.iterdir()] == ["labels.txt"]  # no temporary files left
    (tmp_path / "blank.txt").write_text("\n  A b  \n\nC d\n", encoding="utf-8")
    assert LabelSet.load(tmp_path / "blank.txt").labels == ("A b", "C d")
    with pytest.raises(CatalogError, match="does not exist"):
        LabelSet.load(tmp_path / "none.txt")
    (tmp_path / "dup.txt").write_text("A b\nA b\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="dup.txt.*repeated"):
        LabelSet.load(tmp_path / "dup.txt")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="empty"):
        LabelSet.load(tmp_path / "empty.txt")


def test_encode_targets(catalog: pd.DataFrame) -> None:
    labels = LabelSet.from_catalog(catalog)
    targets = encode_targets(catalog, labels)
    assert targets.dtype == np.float32 and targets.shape == (4, 3)
    # columns: Amazona vittata, Coereba flaveola, Turdus plumbeus
    np.testing.assert_array_equal(
        targets,
        np.array(
            [
                [0.5, 0.0, 1.0],  # out-of-set Zenaida aurita ignored
                [1.0, 0.0, 0.0],
                [0.0, 0.5, 1.0],  # repeated primary stays 1.0
                [0.0, 1.0, 0.0],
            ],
            dtype=np.float32,
        ),
    )
    weighted = encode_targets(catalog, labels, background_weight=0.25)
    assert weighted[0, 0] == pytest.approx(0.25) and weighted[0, 2] == 1.0
    assert encode_targets(catalog, labels, background_weight=0.0).sum() == 4.0
    with pytest.raises(ValueError):
        encode_targets(catalog, labels, background_weight=1.5)


def test_background_overlap_never_lowers_primary() -> None:
    df = pd.DataFrame({"key": ["a"], "primary_label": ["A b"], "secondary_labels": [["A b", "C d"]]})
    labels = LabelSet(["A b", "C d"])
    np.testing.assert_array_equal(encode_targets(df, labels, background_weight=0.3), np.float32([[1.0, 0.3]]))
    np.testing.assert_array_equal(background_matrix(df, labels), [[False, True]])


def test_primary_indices_and_background_matrix(catalog: pd.DataFrame) -> None:
    labels = LabelSet.from_catalog(catalog)
    indices = primary_indices(catalog, labels)
    assert indices.dtype == np.int64
    assert indices.tolist() == [2, 0, 2, 1]
    matrix = background_matrix(catalog, labels)
    assert matrix.dtype == bool
    assert matrix.tolist() == [
        [True, False, False],
        [False, False, False],
        [False, True, False],
        [False, False, False],
    ]
    no_column = catalog.drop(columns="secondary_labels")
    assert not background_matrix(no_column, labels).any()


def test_unknown_primary(catalog: pd.DataFrame) -> None:
    labels = LabelSet(["Amazona vittata", "Turdus plumbeus"])
    with pytest.raises(UnknownLabelError) as info:
        encode_targets(catalog, labels)
    message = str(info.value)
    assert "Coereba flaveola" in message and "r3.wav" in message
    assert "1 of 4" in message
    with pytest.raises(CatalogError, match="r3.wav"):
        primary_indices(catalog, labels)
    skipped = encode_targets(catalog, labels, unknown="skip")
    assert skipped.shape == (4, 2)
    assert not skipped[3].any()
    np.testing.assert_array_equal(skipped[0], [0.5, 1.0])


def test_filter_known(catalog: pd.DataFrame) -> None:
    labels = LabelSet(["Amazona vittata", "Turdus plumbeus"])
    with pytest.warns(CatalogWarning) as record:
        known = filter_known(catalog, labels)
    assert len(record) == 1
    assert "1 of 4" in str(record[0].message) and "Coereba flaveola" in str(record[0].message)
    assert known["key"].tolist() == ["r0.wav", "r1.wav", "r2.wav"]
    assert "Coereba flaveola" in known["secondary_labels"][2]  # background lists are untouched
    with pytest.raises(UnknownLabelError, match="r3.wav"):
        filter_known(catalog, labels, on_unknown="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(filter_known(catalog, LabelSet.from_catalog(catalog))) == 4
        assert len(filter_known(catalog, labels, on_unknown="ignore")) == 3


def test_real_targets() -> None:
    folder = xc_pr20_dir() or pytest.skip("xc-pr20 dataset not found")
    df = load_catalog(folder)
    labels = LabelSet.from_catalog(df)
    assert len(labels) == 20
    assert "Zenaida aurita" not in labels  # a background-only species
    targets = encode_targets(df, labels)
    assert targets.shape == (207, 20)
    assert (targets.max(axis=1) == 1.0).all()
    assert ((targets == 1.0).sum(axis=1) == 1).all()
    assert set(np.unique(targets).tolist()) == {0.0, 0.5, 1.0}
    np.testing.assert_array_equal(targets.argmax(axis=1), primary_indices(df, labels))
