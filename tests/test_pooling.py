"""Tests of birdnet_tf.evaluate.pooling: hand-computed values for every method."""

from __future__ import annotations

import math

import numpy as np
import pytest

from birdnet_tf.errors import ConfigError
from birdnet_tf.evaluate.pooling import POOLINGS, logmeanexp, parse_method, pool, pool_many

# 2 windows x 2 classes
P = np.array([[0.2, 0.8],
              [0.6, 0.4]])


def test_poolings_tuple():
    assert POOLINGS == ("mean", "max", "logmeanexp", "median")


def test_mean_and_max_by_hand():
    # mean: (0.2+0.6)/2 = 0.4, (0.8+0.4)/2 = 0.6 ; max: 0.6, 0.8
    np.testing.assert_allclose(pool(P, "mean"), [0.4, 0.6])
    np.testing.assert_allclose(pool(P, "max"), [0.6, 0.8])


def test_logmeanexp_by_hand():
    # a = 1, class 0: log((e^0.2 + e^0.6) / 2) = log((1.221403 + 1.822119) / 2)
    #                = log(1.521761) = 0.419868
    # class 1: log((e^0.8 + e^0.4) / 2) = 0.2 + log((e^0.6 + e^0.2) / 2) = 0.619868
    np.testing.assert_allclose(pool(P, "logmeanexp"), [0.419868, 0.619868], atol=1e-6)
    # a = 2, class 0: log((e^0.4 + e^1.2) / 2) / 2 = log((1.491825 + 3.320117) / 2) / 2
    #               = log(2.405971) / 2 = 0.438977
    np.testing.assert_allclose(pool(P, "logmeanexp", a=2.0)[0], 0.438977, atol=1e-6)
    # the same through the method string; the string's parameter wins over a=
    np.testing.assert_allclose(pool(P, "logmeanexp:2", a=7.0)[0], 0.438977, atol=1e-6)


def test_logmeanexp_between_mean_and_max():
    rng = np.random.default_rng(0)
    p = rng.random((7, 5))
    mean, mx = p.mean(axis=0), p.max(axis=0)
    for a in (0.01, 1.0, 10.0, 1000.0):
        lme = pool(p, f"logmeanexp:{a}")
        assert np.all(lme >= mean - 1e-12) and np.all(lme <= mx + 1e-12)
    np.testing.assert_allclose(pool(p, "logmeanexp:1e-6"), mean, atol=1e-6)
    # a -> inf: max + log(1/windows)/a
    np.testing.assert_allclose(pool(p, "logmeanexp:1e6"), mx, atol=1e-5)


def test_logmeanexp_stable_with_large_values():
    with np.errstate(over="raise", invalid="raise"):
        # a*x = 100: exp(100) is finite, but still must be exact
        out = pool(np.array([[1.0, 0.0], [1.0, 1.0]]), "logmeanexp:100")
        # class 0: all equal -> 1 ; class 1: (100 + log((e^-100 + 1)/2)) / 100 = 1 + log(0.5)/100
        np.testing.assert_allclose(out, [1.0, 1.0 + math.log(0.5) / 100], atol=1e-12)
        # a*x = 1e5: a naive exp overflows to inf
        big = np.array([[1000.0, 1000.0], [1000.0, 0.0]])
        out = pool(big, "logmeanexp", a=100.0)
        # class 1: (1e5 + log((1 + e^-1e5)/2)) / 100 = 1000 + log(0.5)/100 = 999.993069
        np.testing.assert_allclose(out, [1000.0, 1000.0 + math.log(0.5) / 100], rtol=0, atol=1e-9)
        assert np.all(np.isfinite(out))
        # the helper with a negative a (soft minimum) is stable too
        np.testing.assert_allclose(logmeanexp(big, a=-100.0)[0], 1000.0)


def test_median_pool_normalised_branch():
    # p = [[0.1, 0.2, 0.9],      row medians 0.2, 0.3 -> thresholds 0.3, 0.45
    #      [0.3, 0.3, 0.4]]
    # filtered: [[0, 0, 0.9], [0, 0, 0]]   (row 1: every value < 0.45)
    # (2p)^2 = [[0, 0, 3.24], [0, 0, 0]] -> mean over windows [0, 0, 1.62]
    # minus min (0) -> [0, 0, 1.62]; max 1.62 > 1 -> divide -> [0, 0, 1]
    p = np.array([[0.1, 0.2, 0.9], [0.3, 0.3, 0.4]])
    np.testing.assert_allclose(pool(p, "median"), [0.0, 0.0, 1.0])


def test_median_pool_non_normalised_branch_with_min_shift():
    # rows (windows) and their medians over the 3 classes:
    #   r0 [0.3, 0.0, 0.0]  median 0   -> nothing below 0, unchanged
    #   r1 [0.0, 0.2, 0.0]  median 0   -> unchanged
    #   r2 [0.0, 0.0, 0.4]  median 0   -> unchanged
    #   r3 [0.1, 0.2, 0.5]  median 0.2 -> threshold 0.3: [0, 0, 0.5]
    # (2p)^2: r0 [0.36, 0, 0], r1 [0, 0.16, 0], r2 [0, 0, 0.64], r3 [0, 0, 1.0]
    # mean over 4 windows: [0.09, 0.04, 0.41]; minus min 0.04: [0.05, 0, 0.37]
    # max 0.37 <= 1 -> no division
    p = np.array([[0.3, 0.0, 0.0],
                  [0.0, 0.2, 0.0],
                  [0.0, 0.0, 0.4],
                  [0.1, 0.2, 0.5]])
    before = p.copy()
    np.testing.assert_allclose(pool(p, "median"), [0.05, 0.0, 0.37], atol=1e-12)
    np.testing.assert_array_equal(p, before)  # caller's array untouched


def test_median_pool_does_not_modify_input_and_float32_ok():
    p = np.array([[0.1, 0.2, 0.9], [0.3, 0.3, 0.4]], dtype=np.float32)
    before = p.copy()
    out = pool(p, "median")
    np.testing.assert_array_equal(p, before)
    assert out.dtype == np.float64 and out.shape == (3,)


def test_single_window_and_list_input():
    np.testing.assert_allclose(pool([[0.1, 0.7]], "max"), [0.1, 0.7])
    np.testing.assert_allclose(pool([[0.1, 0.7]], "logmeanexp:3"), [0.1, 0.7])


@pytest.mark.parametrize("bad", ["median_filter", "avg", "", "mean:2", "logmeanexp:abc", "logmeanexp:0"])
def test_unknown_or_bad_method(bad):
    with pytest.raises(ConfigError) as err:
        pool(P, bad)
    msg = str(err.value)
    assert repr(bad) in msg
    if bad in ("median_filter", "avg", ""):
        for choice in POOLINGS:
            assert choice in msg


def test_parse_method():
    assert parse_method("logmeanexp:5") == ("logmeanexp", 5.0)
    assert parse_method(" MAX ") == ("max", 1.0)
    assert parse_method("logmeanexp", a=3) == ("logmeanexp", 3.0)


def test_empty_and_bad_shapes():
    with pytest.raises(ValueError, match="empty"):
        pool(np.zeros((0, 4)), "mean")
    with pytest.raises(ValueError, match="2-D"):
        pool(np.zeros(4), "mean")
    with pytest.raises(ValueError, match="NaN"):
        pool(np.array([[np.nan, 0.1]]), "max")


def test_pool_many():
    mats = [P, np.array([[0.5, 0.5]]), np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])]
    out = pool_many(mats, "mean")
    np.testing.assert_allclose(out, [[0.4, 0.6], [0.5, 0.5], [0.5, 0.5]])
    assert pool_many(mats, "logmeanexp:2").shape == (3, 2)
    with pytest.raises(ValueError, match="matrix 1"):
        pool_many([P, np.zeros((0, 2))], "mean")
    with pytest.raises(ValueError, match="different numbers of classes"):
        pool_many([P, np.zeros((1, 3))], "mean")
    with pytest.raises(ValueError):
        pool_many([], "mean")
    with pytest.raises(ConfigError):
        pool_many(mats, "nope")
