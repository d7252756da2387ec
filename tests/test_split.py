"""Tests of birdnet_tf.data.split: recordist (group) and class (stratified) splits."""

from __future__ import annotations


import pandas as pd
import pytest
from conftest import xc_pr20_dir

from birdnet_tf.data.catalog import load_catalog
from birdnet_tf.data.split import assert_no_leak, describe_split, split_catalog
from birdnet_tf.errors import CatalogError




@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    folder = xc_pr20_dir() or pytest.skip("xc-pr20 dataset not found")
    return load_catalog(folder)


def synthetic(sizes: dict[str, int], recordists: bool = False) -> pd.DataFrame:
    rows = []
    for label, n in sizes.items():
        for i in range(n):
            rows.append({"key": f"{label}/{i:03d}.wav", "primary_label": label, "recordist": f"rec{i % 3}"})
    df = pd.DataFrame(rows)
    return df if recordists else df.drop(columns="recordist")


# --------------------------------------------------------------------------- recordist split


def test_recordist_split_real(real: pd.DataFrame) -> None:
    train, val = split_catalog(real, val_fraction=0.2, seed=0, by="recordist")
    assert_no_leak(train, val)
    assert len(train) + len(val) == len(real)
    assert set(train["primary_label"]) == set(real["primary_label"])  # every class keeps a training file
    assert 0.1 <= len(val) / len(real) <= 0.3
    # every class of xc-pr20 has >= 2 recordists, so every class should reach validation
    assert set(val["primary_label"]) == set(real["primary_label"])
    assert (train["split"] == "train").all() and (val["split"] == "val").all()
    assert val.attrs["split"] == {"by": "recordist", "seed": 0, "val_fraction": 0.2}
    assert set(train.index).isdisjoint(val.index)

    again_train, again_val = split_catalog(real, val_fraction=0.2, seed=0, by="recordist")
    assert again_val["key"].tolist() == val["key"].tolist()
    assert again_train["key"].tolist() == train["key"].tolist()
    _, other_val = split_catalog(real, val_fraction=0.2, seed=1, by="recordist")
    assert set(other_val["key"]) != set(val["key"])

    auto_train, auto_val = split_catalog(real)  # auto -> recordist with the defaults
    assert auto_val["key"].tolist() == val["key"].tolist()

    text = describe_split(train, val)
    assert f"{len(val)} files" in text and "20 of 20 classes" in text and "recordists" in text


def test_recordist_split_other_fractions(real: pd.DataFrame) -> None:
    for fraction in (0.1, 0.3):
        train, val = split_catalog(real, val_fraction=fraction, seed=3, by="recordist")
        assert_no_leak(train, val)
        assert set(train["primary_label"]) == set(real["primary_label"])
        assert abs(len(val) / len(real) - fraction) < 0.1


def test_recordist_names_normalised_and_missing_are_singletons() -> None:
    df = pd.DataFrame(
        {
            "key": [f"f{i}.wav" for i in range(12)],
            "primary_label": ["A"] * 6 + ["B"] * 6,
            "recordist": ["Ann", "ann ", " ANN", "Bob", pd.NA, pd.NA, "Bob", "Bob", "Cid", pd.NA, "?", "Cid"],
        }
    )
    for seed in range(5):
        train, val = split_catalog(df, val_fraction=0.3, seed=seed, by="recordist")
        assert_no_leak(train, val)
        assert len(val) > 0
        assert set(train["primary_label"]) == {"A", "B"}
        ann = df["recordist"].str.strip().str.lower() == "ann"
        assert set(df.index[ann]) <= set(train.index) or set(df.index[ann]) <= set(val.index)


def test_recordist_split_impossible() -> None:
    df = synthetic({"A": 3, "B": 3})
    df["recordist"] = ["Ann"] * 3 + ["Bob"] * 3  # each class recorded by one person only
    with pytest.raises(CatalogError, match="by='class'"):
        split_catalog(df, by="recordist")
    with pytest.raises(CatalogError, match="no 'recordist' column"):
        split_catalog(synthetic({"A": 3}), by="recordist")


def test_assert_no_leak_detects() -> None:
    df = synthetic({"A": 6}, recordists=True)
    with pytest.raises(AssertionError, match="keys"):
        assert_no_leak(df.iloc[:4], df.iloc[3:])
    with pytest.raises(AssertionError, match="recordists"):
        assert_no_leak(df.iloc[:3], df.iloc[3:])
    assert_no_leak(df.iloc[:3], df.iloc[3:], check_recordists=False)


# --------------------------------------------------------------------------- class split


def test_class_split() -> None:
    sizes = {"one": 1, "two": 2, "five": 5, "ten": 10, "eleven": 11}
    df = synthetic(sizes)
    train, val = split_catalog(df, val_fraction=0.2, seed=0, by="class")
    assert_no_leak(train, val)
    counts = val["primary_label"].value_counts().to_dict()
    assert counts == {"two": 1, "five": 1, "ten": 2, "eleven": 2}
    assert "one" in set(train["primary_label"]) and "one" not in counts
    assert set(train["primary_label"]) == set(sizes)
    assert val.attrs["split"]["by"] == "class"

    same_train, same_val = split_catalog(df, val_fraction=0.2, seed=0, by="class")
    assert same_val["key"].tolist() == val["key"].tolist()
    shuffled = df.sample(frac=1.0, random_state=7)
    _, shuffled_val = split_catalog(shuffled, val_fraction=0.2, seed=0, by="class")
    assert set(shuffled_val["key"]) == set(val["key"])  # row order does not matter
    other = {tuple(sorted(split_catalog(df, val_fraction=0.2, seed=s, by="class")[1]["key"])) for s in range(5)}
    assert len(other) > 1

    half_train, half_val = split_catalog(df, val_fraction=0.9, seed=0, by="class")
    assert set(half_train["primary_label"]) == set(sizes)  # never all of a class


def test_class_split_real(real: pd.DataFrame) -> None:
    train, val = split_catalog(real, val_fraction=0.2, seed=0, by="class")
    per_class = real["primary_label"].value_counts()
    val_counts = val["primary_label"].value_counts()
    for label, n in per_class.items():
        assert val_counts.get(label, 0) == max(1, int(round(0.2 * n)))
    assert set(train["primary_label"]) == set(per_class.index)


def test_auto() -> None:
    df = synthetic({"A": 5, "B": 5})
    assert split_catalog(df)[1].attrs["split"]["by"] == "class"
    df["recordist"] = "Solo"
    assert split_catalog(df)[1].attrs["split"]["by"] == "class"
    df = synthetic({"A": 6, "B": 6}, recordists=True)
    assert split_catalog(df)[1].attrs["split"]["by"] == "recordist"


def test_invalid_arguments() -> None:
    df = synthetic({"A": 5})
    with pytest.raises(ValueError):
        split_catalog(df, val_fraction=0.0)
    with pytest.raises(ValueError):
        split_catalog(df, by="species")  # type: ignore[arg-type]
    with pytest.raises(CatalogError, match="empty"):
        split_catalog(df.iloc[:0])
    with pytest.raises(CatalogError):
        split_catalog(synthetic({"A": 1, "B": 1}), by="class")
