"""Metadata parsing and encoding (birdnet_tf.data.metadata) on hand cases and the real xc-pr20 table."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from birdnet_tf.data.catalog import load_catalog
from birdnet_tf.data.metadata import (
    METADATA_ENCODER_FILENAME,
    MetadataEncoder,
    circular_encoding,
    describe,
    parse_coordinate,
    parse_date,
    parse_elevation,
    parse_time,
)
from birdnet_tf.errors import BirdnetError

NAN = float("nan")


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


# --------------------------------------------------------------------------- parsers

DATES = [
    # real xc-pr20 values
    ("2002-01-16", (2002, 16)),
    ("2009-05-00", (2009, 120 + 15)),  # unknown day -> the 15th of May
    ("2020-02-29", (2020, 60)),
    ("2016-12-21", (2016, 335 + 21)),  # leap year
    # hand cases
    ("2012-03-29", (2012, 60 + 29)),
    ("2012-03-00", (2012, 60 + 15)),
    ("2012-00-00", (2012, NAN)),  # unknown month -> day of year unknown
    ("2012/03/29", (2012, 89)),
    ("2012.03.29", (2012, 89)),
    ("29.03.2012", (2012, 89)),
    ("2012-03-29 00:00:00", (2012, 89)),
    ("2011-12-31", (2011, 365)),
    ("2012-12-31", (2012, 366)),
    ("2012-02-30", (NAN, NAN)),
    ("2012-13-01", (NAN, NAN)),
    ("?", (NAN, NAN)),
    ("", (NAN, NAN)),
    (pd.NA, (NAN, NAN)),
    ("yesterday", (NAN, NAN)),
]


@pytest.mark.parametrize("raw, expected", DATES)
def test_parse_date(raw, expected):
    year, doy = parse_date(raw)
    assert same(year, expected[0]) and same(doy, expected[1]), (raw, year, doy)


TIMES = [
    # real xc-pr20 values
    ("04:16", 4 + 16 / 60),
    ("05", 5.0),
    ("01.30", 1.5),
    ("15.20", 15 + 20 / 60),
    ("11:00 AST", 11.0),
    ("11:20 AST", 11 + 20 / 60),
    ("5:30", 5.5),
    ("22:21", 22 + 21 / 60),
    ("?", NAN),
    # hand cases
    ("9:30", 9.5),
    ("09:30:00", 9.5),
    ("7.30 am", 7.5),
    ("7:30pm", 19.5),
    ("7:30 p.m.", 19.5),
    ("12 am", 0.0),
    ("12 pm", 12.0),
    ("noon", 12.0),
    ("midnight", 0.0),
    ("am", NAN),
    ("7:00-8:00", 7.5),
    ("7-8 am", 7.5),
    ("23:00-01:00", 0.0),  # range over midnight
    ("0730", 7.5),
    ("24:00", 0.0),
    ("25:00", NAN),
    ("9:75", NAN),
    ("13 pm", NAN),
    ("", NAN),
    (None, NAN),
    ("dawn", NAN),
]


@pytest.mark.parametrize("raw, expected", TIMES)
def test_parse_time(raw, expected):
    assert same(parse_time(raw), expected), (raw, parse_time(raw))


COORDS = [
    # real xc-pr20 values
    ("18.1432", "latitude", 18.1432),
    ("-66.996", "longitude", -66.996),
    ("18.1877533292754", "latitude", 18.1877533292754),
    ("", "latitude", NAN),
    # hand cases
    ("18,1432", "latitude", 18.1432),
    ("18.14 N", "latitude", 18.14),
    ("18.14 S", "latitude", -18.14),
    ("W 66.99", "longitude", -66.99),
    ("18.14 N", "longitude", NAN),  # hemisphere letter of the other kind
    ("18°08'35\"N", "latitude", 18 + 8 / 60 + 35 / 3600),
    ("91", "latitude", NAN),
    ("91", "longitude", 91.0),
    ("-180.5", "longitude", NAN),
    (-66.5, "longitude", -66.5),
    ("?", "latitude", NAN),
    ("somewhere", "longitude", NAN),
]


@pytest.mark.parametrize("raw, kind, expected", COORDS)
def test_parse_coordinate(raw, kind, expected):
    assert same(parse_coordinate(raw, kind), expected), (raw, kind, parse_coordinate(raw, kind))


def test_parse_coordinate_rejects_bad_kind():
    with pytest.raises(ValueError):
        parse_coordinate("1", "altitude")


ELEVATIONS = [
    # real xc-pr20 values
    ("150", 150.0),
    ("0", 0.0),
    ("850", 850.0),
    ("?", NAN),
    # hand cases
    ("ca. 500 m", 500.0),
    ("c. 300 masl", 300.0),
    ("~500m", 500.0),
    ("500-700", 600.0),
    ("500 to 700 m", 600.0),
    ("1,200 m", 1200.0),
    ("2000 ft", 609.6),
    ("-5", -5.0),
    ("10000", NAN),
    ("high", NAN),
    ("", NAN),
]


@pytest.mark.parametrize("raw, expected", ELEVATIONS)
def test_parse_elevation(raw, expected):
    assert same(parse_elevation(raw), expected), (raw, parse_elevation(raw))


def test_parsers_never_raise_on_junk():
    junk = [object(), [], {}, b"\xff", "\x00", "1e400", "nan", "--", "::", "-", "9:30-", "a-b-c", 1e300]
    for value in junk:
        parse_date(value)
        parse_time(value)
        parse_coordinate(value, "latitude")
        parse_elevation(value)


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("size", [3, 12])
def test_circular_encoding_is_periodic_and_sized(size):
    enc = MetadataEncoder(date_size=size, time_size=size).fit(pd.DataFrame({"latitude": ["1", "2"]}))
    df = pd.DataFrame(
        {
            "date": ["2011-12-31", "2012-01-01", "2012-07-01"],
            "time": ["23:59", "00:00", "12:00"],
        }
    )
    x = enc.transform(df)
    names = enc.feature_names
    assert x.shape == (3, 2 * (size + 1) + 6) and len(names) == x.shape[1]
    date = x[:, [i for i, n in enumerate(names) if re.fullmatch(r"date_\d+", n)]]
    time = x[:, [i for i, n in enumerate(names) if re.fullmatch(r"time_\d+", n)]]
    assert date.shape[1] == size and time.shape[1] == size
    # Dec 31 ~ Jan 1, 23:59 ~ 00:00, both far from mid-year / noon
    assert np.abs(date[0] - date[1]).max() < 0.05
    assert np.abs(time[0] - time[1]).max() < 0.05
    assert np.abs(date[0] - date[2]).max() > 0.3
    assert np.abs(time[0] - time[2]).max() > 0.3
    assert np.all(x[:, names.index("date_missing")] == 0) and np.all(x[:, names.index("time_missing")] == 0)
    # a full turn gives the same code
    a = circular_encoding(np.array([0.3, 0.3 + 2 * np.pi]), size)
    np.testing.assert_allclose(a[0], a[1], atol=1e-6)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        MetadataEncoder(date_size=4)


def test_standardisation_uses_training_statistics_only():
    train = pd.DataFrame({"latitude": ["10", "20", "?"], "longitude": ["-60", "-70", "-80"], "elevation": ["100", "300", ""]})
    test = pd.DataFrame({"latitude": ["15", "1000", "25"], "longitude": ["-65", "x", "-60"], "elevation": ["200", "ca. 500 m", ""]})
    enc = MetadataEncoder(3, 3).fit(train)
    x = enc.transform(test)
    col = {n: i for i, n in enumerate(enc.feature_names)}
    # latitude: training mean 15, std 5 (the '?' is ignored; test values play no part)
    np.testing.assert_allclose(x[:, col["latitude"]], [0.0, 0.0, 2.0], atol=1e-6)
    np.testing.assert_array_equal(x[:, col["latitude_missing"]], [0, 1, 0])
    lon_std = np.std([-60, -70, -80])
    np.testing.assert_allclose(x[:, col["longitude"]], [(-65 + 70) / lon_std, 0.0, (-60 + 70) / lon_std], rtol=1e-5)
    np.testing.assert_array_equal(x[:, col["longitude_missing"]], [0, 1, 0])
    np.testing.assert_allclose(x[:, col["elevation"]], [0.0, 3.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(x[:, col["elevation_missing"]], [0, 0, 1])
    assert enc.mean["latitude"] == 15.0 and enc.std["elevation"] == 100.0
    # fitting on the test rows instead changes the result
    assert not np.allclose(MetadataEncoder(3, 3).fit(test).transform(test), x)


def test_missing_columns_give_indicators():
    enc = MetadataEncoder(12, 12).fit(pd.DataFrame({"elevation": ["1", "3"]}))
    x = enc.transform(pd.DataFrame({"key": ["a", "b"]}))
    assert x.dtype == np.float32 and x.shape == (2, enc.num_features)
    names = enc.feature_names
    miss = [i for i, n in enumerate(names) if n.endswith("_missing")]
    assert len(miss) == 5
    assert np.all(x[:, miss] == 1.0)
    assert np.all(np.delete(x, miss, axis=1) == 0.0)


def test_json_round_trip_and_save_load(tmp_path):
    train = pd.DataFrame(
        {
            "date": ["2012-03-29", "2012-00-00", "?"],
            "time": ["7.30 am", "noon", ""],
            "latitude": ["18.1", "18.3", ""],
            "longitude": ["-66.1", "-66.9", "-67"],
            "elevation": ["ca. 500 m", "150", "?"],
        }
    )
    enc = MetadataEncoder(12, 3).fit(train)
    again = MetadataEncoder.from_json(enc.to_json())
    np.testing.assert_array_equal(again.transform(train), enc.transform(train))
    path = enc.save(tmp_path)
    assert path == tmp_path / METADATA_ENCODER_FILENAME
    loaded = MetadataEncoder.load(tmp_path)
    np.testing.assert_array_equal(loaded.transform(train), enc.transform(train))
    assert loaded.feature_names == enc.feature_names
    with pytest.raises(BirdnetError, match="already exists"):
        enc.save(path)
    enc.save(path, force=True)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(BirdnetError, match=METADATA_ENCODER_FILENAME):
        MetadataEncoder.load(path)
    with pytest.raises(BirdnetError, match="cannot read"):
        MetadataEncoder.load(tmp_path / "nope.json")


def test_transform_before_fit_is_an_error():
    with pytest.raises(RuntimeError):
        MetadataEncoder().transform(pd.DataFrame({"date": ["2012-01-01"]}))


def test_describe_reports_unparseable_examples():
    df = pd.DataFrame({"time": ["9:30", "?", "dawn", "dusk", "late", "later", ""], "elevation": ["1"] * 7})
    text = describe(df)
    line = next(ln for ln in text.splitlines() if ln.startswith("time"))
    assert "parsed 1  missing 2  unparseable 4" in line
    assert "'dawn', 'dusk', 'late'" in line and "later" not in line
    assert re.search(r"^date\s+parsed 0  missing 7  unparseable 0$", text, re.M)


# --------------------------------------------------------------------------- the real table


def test_real_xc_pr20_metadata(xc_pr20):
    catalog = load_catalog(xc_pr20)
    assert len(catalog) == 207
    enc = MetadataEncoder(12, 12).fit(catalog)
    x = enc.transform(catalog)
    assert x.shape == (207, enc.num_features) and np.isfinite(x).all()
    # hand count of the raw CSV: '?' or empty cells in the time and latitude columns
    raw = pd.read_csv(xc_pr20 / "metadata.csv", dtype=str, keep_default_na=False)
    n_time_missing = int(raw["time"].str.strip().isin(["?", ""]).sum())
    n_lat_missing = int(raw["latitude"].str.strip().isin(["?", ""]).sum())
    assert (n_time_missing, n_lat_missing) == (18, 27)
    text = describe(catalog)
    assert re.search(rf"^time\s+parsed {207 - n_time_missing}  missing {n_time_missing}  unparseable 0$", text, re.M)
    assert re.search(rf"^latitude\s+parsed {207 - n_lat_missing}  missing {n_lat_missing}  unparseable 0", text, re.M)
    col = {n: i for i, n in enumerate(enc.feature_names)}
    assert x[:, col["time_missing"]].sum() == n_time_missing
    assert x[:, col["latitude_missing"]].sum() == n_lat_missing
    # standardised over the training rows: mean 0, std 1 over the present values
    present = x[:, col["latitude_missing"]] == 0
    assert abs(x[present, col["latitude"]].mean()) < 1e-4
    assert x[present, col["latitude"]].std() == pytest.approx(1.0, abs=1e-4)
    # every raw string of the real table that is not missing parses
    assert "unparseable 0" in text and "e.g." not in text
