"""Tests of birdnet_tf.evaluate.metrics: hand-computed values and sklearn cross-checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from birdnet_tf.evaluate import metrics as M

# --------------------------------------------------------------------------- by hand

# 3 files x 4 classes
S = np.array([
    [0.1, 0.4, 0.3, 0.2],
    [0.5, 0.5, 0.1, 0.2],
    [0.9, 0.0, 0.0, 0.0],
])
REL = np.array([
    [0, 1, 0, 1],
    [0, 1, 0, 0],
    [0, 0, 0, 0],  # no relevant class: skipped by lrap
])
PRIMARY = np.array([3, 1, 0])


def test_lrap_by_hand():
    # file 0: order c1 (0.4), c2 (0.3), c3 (0.2), c0 (0.1); relevant c1, c3
    #   c1: rank 1, relevant at or above 1 -> 1/1 ; c3: rank 3, relevant 2 -> 2/3
    #   LRAP = (1 + 2/3) / 2 = 5/6
    # file 1: relevant c1 = 0.5, tied with c0: rank = #{s >= 0.5} = 2 -> 1/2
    # file 2: no relevant class -> skipped
    # MLRAP = (5/6 + 1/2) / 2 = 2/3
    assert M.lrap(REL, S) == pytest.approx(2 / 3)
    assert M.lrap(REL.astype(bool), S) == pytest.approx(2 / 3)
    assert np.isnan(M.lrap(np.zeros_like(REL), S))


def test_ranks_mrr_topk_by_hand():
    # file 0: primary c3 = 0.2; scores >= 0.2: 0.4, 0.3, 0.2 -> rank 3
    # file 1: primary c1 = 0.5; tied with c0 -> rank 2 (pessimistic)
    # file 2: primary c0 = 0.9 -> rank 1
    np.testing.assert_array_equal(M.ranks(PRIMARY, S), [3, 2, 1])
    # MRR = (1/3 + 1/2 + 1) / 3 = 11/18
    assert M.mrr(PRIMARY, S) == pytest.approx(11 / 18)
    assert M.top_k_accuracy(PRIMARY, S, 1) == pytest.approx(1 / 3)
    assert M.top_k_accuracy(PRIMARY, S, 2) == pytest.approx(2 / 3)
    assert M.top_k_accuracy(PRIMARY, S, 3) == pytest.approx(1.0)
    assert M.top_k_accuracy(PRIMARY, S, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.top_k_accuracy(PRIMARY, S, 0)


def test_lrap_with_one_label_is_reciprocal_rank():
    assert M.lrap(M.one_hot(PRIMARY, 4), S) == pytest.approx(M.mrr(PRIMARY, S))
    rng = np.random.default_rng(1)
    s = np.round(rng.random((50, 12)), 1)  # many ties
    p = rng.integers(0, 12, 50)
    assert M.lrap(M.one_hot(p, 12), s) == pytest.approx(M.mrr(p, s))


def test_class_ap_and_cmap_by_hand():
    # 4 files x 3 classes
    s = np.array([
        [0.9, 0.5, 0.1],
        [0.8, 0.5, 0.2],
        [0.7, 0.2, 0.3],
        [0.6, 0.1, 0.4],
    ])
    r = np.array([
        [1, 0, 0],
        [0, 1, 0],
        [1, 0, 0],
        [0, 0, 0],
    ])
    # class 0: files ranked 0.9, 0.8, 0.7, 0.6; positives at ranks 1 and 3
    #   precisions 1/1, 2/3 -> AP = 5/6
    # class 1: positive file 1 (0.5) tied with file 0: rank 2, 1 positive -> 1/2
    # class 2: no positives -> NaN
    ap = M.class_average_precision(r, s)
    np.testing.assert_allclose(ap[:2], [5 / 6, 1 / 2])
    assert np.isnan(ap[2])
    # cmAP = (5/6 + 1/2) / 2 = 2/3
    assert M.cmap(r, s) == pytest.approx(2 / 3)
    assert np.isnan(M.cmap(np.zeros_like(r), s))


def test_confusion_matrix_by_hand():
    s = np.array([
        [0.7, 0.2, 0.1],  # true 0, pred 0
        [0.6, 0.3, 0.1],  # true 1, pred 0
        [0.1, 0.1, 0.8],  # true 2, pred 2
        [0.4, 0.4, 0.2],  # true 1, tie 0/1 -> argmax picks 0
        [0.1, 0.8, 0.1],  # true 1, pred 1
    ])
    cm = M.confusion_matrix([0, 1, 2, 1, 1], s, 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [2, 1, 0], [0, 0, 1]])
    assert cm.dtype == np.int64 and cm.sum() == 5
    with pytest.raises(ValueError):
        M.confusion_matrix([0, 1, 2, 1, 1], s, 4)


def test_evaluate_scores_by_hand():
    s = np.array([
        [0.6, 0.3, 0.1],
        [0.2, 0.5, 0.05],
        [0.1, 0.2, 0.7],
    ])
    primary = np.array([0, 2, 2])
    bg = np.zeros((3, 3), dtype=bool)
    bg[0, 1] = True  # file 0 has class 1 in the background
    bg[2, 0] = True  # file 2 has class 0 in the background
    out = M.evaluate_scores(s, primary, bg)
    # ranks of the primary class: 1, 3 (0.05 is the lowest), 1
    # MRR = MAP = MLRAP (fg) = (1 + 1/3 + 1) / 3 = 7/9
    # MLRAP-bg: file 0 {c0, c1} ranks 1, 2 -> (1/1 + 2/2)/2 = 1
    #           file 1 {c2} -> 1/3
    #           file 2 {c2, c0}: c2 rank 1 -> 1, c0 rank 3 with 2 relevant -> 2/3 -> 5/6
    #           mean (1 + 1/3 + 5/6) / 3 = 13/18
    # AP fg: class 0 {f0}: top -> 1 ; class 1 no positives ; class 2 {f1, f2}:
    #   column (0.1, 0.05, 0.7): f2 rank 1 -> 1, f1 rank 3 -> 2/3 -> AP 5/6
    #   cmAP = (1 + 5/6) / 2 = 11/12
    # AP bg: class 0 {f0, f2}: column (0.6, 0.2, 0.1): 1, 2/3 -> 5/6
    #        class 1 {f0}: column (0.3, 0.5, 0.2): rank 2 -> 1/2 ; class 2 -> 5/6
    #   cmAP-bg = (5/6 + 1/2 + 5/6) / 3 = 13/18
    expected = {
        "mlrap": 7 / 9, "mlrap_bg": 13 / 18, "mrr": 7 / 9, "map": 7 / 9, "map_bg": 13 / 18,
        "cmap": 11 / 12, "cmap_bg": 13 / 18,
        "top1": 2 / 3, "top2": 2 / 3, "top3": 1.0, "top4": 1.0, "top5": 1.0,
    }
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key
    assert out["n_files"] == 3
    assert out["per_class_ap"][0] == pytest.approx(1.0)
    assert out["per_class_ap"][1] is None
    assert out["per_class_ap"][2] == pytest.approx(5 / 6)
    # flat and strictly JSON-serialisable
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    # without background: the *_bg metrics equal the foreground ones
    out_fg = M.evaluate_scores(s, primary)
    assert out_fg["mlrap_bg"] == pytest.approx(out_fg["mlrap"])
    assert out_fg["cmap_bg"] == pytest.approx(out_fg["cmap"])


def test_input_validation():
    with pytest.raises(ValueError, match="no files"):
        M.mrr(np.zeros(0, dtype=int), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="out of range"):
        M.mrr([0, 5], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        M.lrap(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        M.mrr([0], np.array([[np.nan, 0.2]]))
    with pytest.raises(ValueError, match="0/1"):
        M.lrap(np.array([[0, 2]]), np.array([[0.1, 0.2]]))


# --------------------------------------------------------------------------- sklearn


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal -> many ties
def test_lrap_matches_sklearn(decimals):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(42)
    s = rng.random((200, 15))
    if decimals is not None:
        s = np.round(s, decimals)
    r = rng.random((200, 15)) < 0.15
    r[np.arange(200), rng.integers(0, 15, 200)] = True  # every file has a label
    assert M.lrap(r, s) == pytest.approx(skm.label_ranking_average_precision_score(r, s), abs=1e-12)
    # files without labels are skipped here, counted as 1 by sklearn
    r2 = r.copy()
    r2[:20] = False
    assert M.lrap(r2, s) == pytest.approx(
        skm.label_ranking_average_precision_score(r2[20:], s[20:]), abs=1e-12
    )


@pytest.mark.parametrize("decimals", [None, 1])
def test_class_ap_matches_sklearn(decimals):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    s = rng.random((120, 10))
    if decimals is not None:
        s = np.round(s, decimals)
    r = rng.random((120, 10)) < 0.2
    r[:, 9] = False  # a class without positives
    ap = M.class_average_precision(r, s)
    for c in range(9):
        assert ap[c] == pytest.approx(skm.average_precision_score(r[:, c], s[:, c]), abs=1e-12)
    assert np.isnan(ap[9])
    assert M.cmap(r, s) == pytest.approx(np.mean(ap[:9]))


def test_mrr_topk_confusion_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    s = rng.random((300, 8))  # continuous: no ties
    p = rng.integers(0, 8, 300)
    onehot = M.one_hot(p, 8)
    assert M.mrr(p, s) == pytest.approx(skm.label_ranking_average_precision_score(onehot, s))
    for k in range(1, 6):
        assert M.top_k_accuracy(p, s, k) == pytest.approx(
            skm.top_k_accuracy_score(p, s, k=k, labels=np.arange(8))
        )
    np.testing.assert_array_equal(
        M.confusion_matrix(p, s, 8),
        skm.confusion_matrix(p, s.argmax(axis=1), labels=np.arange(8)),
    )
