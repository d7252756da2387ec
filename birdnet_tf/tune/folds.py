"""Recordist-grouped cross-validation folds for a search.

Every recording of a recordist lands in the same fold (names compared as
:mod:`birdnet_tf.data.split` does), so each fold's validation files come from recordists
that its training files never heard. Rows without a recordist are groups of their own.

Assignment (deterministic for a ``seed``): groups are shuffled with
``numpy.random.default_rng(seed)``, then placed largest first into the fold with the fewest
files among those it may join: a group may join fold ``f`` only if every class it holds
keeps at least one training file outside ``f``. A group that fits no fold (e.g. the only
recordist of a class) is never validated: it trains in every fold (``fold = -1``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from birdnet_tf.data.split import recordist_groups
from birdnet_tf.errors import BirdnetError

__all__ = ["assign_folds"]


def assign_folds(catalog: pd.DataFrame, k: int, seed: int = 0) -> pd.DataFrame:
    """``key, primary_label, recordist, fold`` for the files of ``catalog`` in ``k`` recordist folds.

    Raises:
        BirdnetError: ``k`` < 2, or fewer than ``k`` groups can be validated.
    """
    if k < 2:
        raise BirdnetError(f"--folds must be at least 2 for cross-validation (got {k}); 1 uses the recipe's split")
    groups = recordist_groups(catalog["recordist"].tolist() if "recordist" in catalog.columns
                              else [None] * len(catalog))
    labels = [str(v) for v in catalog["primary_label"].tolist()]
    classes = sorted(set(labels))
    ci = {c: i for i, c in enumerate(classes)}
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    counts = np.zeros((n_groups, len(classes)), dtype=np.int64)
    np.add.at(counts, (groups, [ci[c] for c in labels]), 1)
    total = counts.sum(axis=0)
    sizes = counts.sum(axis=1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, ties in seeded order
    fold_counts = np.zeros((k, len(classes)), dtype=np.int64)
    fold_of_group = np.full(n_groups, -1, dtype=np.int64)
    for g in order:
        has = counts[g] > 0
        fits = [f for f in range(k) if np.all(total[has] - fold_counts[f, has] - counts[g, has] >= 1)]
        if fits:
            f = min(fits, key=lambda f: (fold_counts[f].sum(), f))
            fold_of_group[g] = f
            fold_counts[f] += counts[g]
    empty = [f for f in range(k) if fold_counts[f].sum() == 0]
    if empty:
        raise BirdnetError(f"cannot make {k} recordist folds: only {k - len(empty)} fold(s) get validation files "
                           f"({n_groups} recordist groups, {len(classes)} classes); use fewer --folds")
    out = pd.DataFrame({"key": catalog["key"].astype(str).to_numpy(), "primary_label": labels,
                        "recordist": catalog["recordist"].tolist() if "recordist" in catalog.columns else pd.NA,
                        "fold": fold_of_group[groups]})
    return out
