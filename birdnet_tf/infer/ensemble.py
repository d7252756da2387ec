"""``birdnet-tf ensemble``: linear ensembles of models, weights fitted on validation predictions.

The OFAI 2018 system (REFERENCE §2 "Ensembles") combined its networks by a weighted mean of
their per-file predictions, the weights fitted on the validation set by a greedy search or
by hyperopt (1,000 evaluations) maximising foreground + background MAP. This module does
the same with:

* **members** — per-file prediction tables, one per model, read by :func:`load_member`
  from any of

  - a ``birdnet-tf predict`` CSV (``file, start_s, end_s, <labels>``, one row per file),
  - a run's ``eval/scores.csv`` (``file, <labels>``; ``file`` is the dataset key), or the
    run folder itself (its ``eval/scores.csv``),
  - an export folder (``saved_model.pb``): scored with :func:`birdnet_tf.infer.predict.predict`
    on given audio, by default on the target files themselves;

* **targets** (:func:`load_targets`) — the foreground and background species of each file,
  from a run's ``split.csv`` (its ``val`` split by default) or a dataset folder's catalog;
* **alignment** (:func:`align`) — members are matched file by file and label by label
  (column order may differ). A member's ``file`` matches a target row when it equals the
  row's key or audio path, or ends with ``/<key>`` (the path predict was given), or does
  so once the extensions are dropped (predictions on the prepared WAVs). Files or labels
  missing from a member are an error that lists them;
* **combination** (:func:`combine`) — the weighted mean of the members' scores, weights
  normalised to sum 1;
* **weight search** (:func:`search_weights`) maximising ``MAP + MAP-bg`` (``mrr + map_bg``
  of :func:`birdnet_tf.evaluate.metrics.evaluate_scores`) with

  - ``greedy`` (OFAI's): start from the best single model, repeatedly add the model
    (repetition allowed) that most improves the objective, at most ``steps`` additions,
    stopping when no addition improves; weights = how often each model was picked;
  - ``optuna``: TPE over one weight in [0, 1] per model (normalised), ``trials``
    evaluations (OFAI's hyperopt did 1,000), seeded; the uniform mixture and every single
    model are evaluated first, so the result is never worse than either. Needs the
    ``optuna`` package (``pip install -e '.[dev]'``);
  - ``random``: the same without optuna — seeded Dirichlet samples on the simplex for
    half the trials, then local refinement around the best (shrinking log-normal
    perturbations) for the rest.

:func:`fit_ensemble` runs it all and writes, atomically and refusing to overwrite
without ``force``, ``weights.json`` (model → weight, objective, method, trials, every
model's metrics) and ``ensemble.csv`` (the ensemble's per-file score table, readable by
:func:`birdnet_tf.infer.outputs.read_score_table`). Saved weights can be applied to other
predictions of the same models (e.g. the test set) with :func:`apply_weights`.

Pure numpy/pandas except where an export is scored; nothing happens at import.
"""

from __future__ import annotations

import math
import os
import posixpath
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from birdnet_tf.errors import BirdnetError

METHODS: tuple[str, ...] = ("greedy", "optuna", "random")
"""Weight-search methods of :func:`search_weights`."""

DEFAULT_TRIALS = 1000
"""Evaluations of the ``optuna`` and ``random`` searches (OFAI's hyperopt ran 1,000)."""

DEFAULT_STEPS = 20
"""Most models the ``greedy`` search adds after the best single one."""

OBJECTIVE = "map+map_bg"
"""Name of the objective: OFAI's foreground MAP (= MRR) plus MAP with background species."""

WEIGHTS_FILE = "weights.json"
ENSEMBLE_FILE = "ensemble.csv"

_SHOWN = 5  # names listed in an error before "and N more"

PathLike = str | os.PathLike


# --------------------------------------------------------------------------
# Members: per-file score tables
# --------------------------------------------------------------------------

@dataclass
class MemberPredictions:
    """One model's per-file predictions.

    Attributes:
        name: How the model is named in tables and ``weights.json`` (the source as given).
        files: ``[files]`` file names as the source wrote them.
        labels: ``[classes]`` label names in column order.
        scores: float64 ``[files, classes]`` scores.
        end_s: float64 ``[files]`` durations from a predict table, or None.
    """

    name: str
    files: list[str]
    labels: list[str]
    scores: np.ndarray
    end_s: np.ndarray | None = None


def _shown(items: Sequence[Any]) -> str:
    items = list(items)
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(str(x) for x in items[:_SHOWN]) + more


def _member_from_table(table: pd.DataFrame, name: str, source: str) -> MemberPredictions:
    if "file" not in table.columns:
        raise BirdnetError(f"{source}: not a prediction table (no 'file' column; expected the csv output of "
                           "birdnet-tf predict or a run's eval/scores.csv)")
    keys = [c for c in ("file", "start_s", "end_s") if c in table.columns]
    labels = [str(c) for c in table.columns if c not in keys]
    if not labels:
        raise BirdnetError(f"{source}: prediction table has no label columns")
    files = [str(f) for f in table["file"].tolist()]
    dupes = sorted(f for f, n in Counter(files).items() if n > 1)
    if dupes:
        raise BirdnetError(f"{source}: {len(dupes)} file(s) have several rows (per-window predictions?): "
                           f"{_shown(dupes)}; ensembles need one row per file (predict without --window-s)")
    try:
        scores = table[labels].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        bad = [c for c in labels if not pd.api.types.is_numeric_dtype(table[c])]
        raise BirdnetError(f"{source}: non-numeric score columns: {_shown(bad)}") from None
    if not np.all(np.isfinite(scores)):
        row, col = np.argwhere(~np.isfinite(scores))[0]
        raise BirdnetError(f"{source}: missing or non-finite scores (first: {files[row]}, {labels[col]!r})")
    end_s = table["end_s"].to_numpy(dtype=np.float64) if "end_s" in table.columns else None
    return MemberPredictions(name, files, labels, scores, end_s)


def read_member(path: PathLike, name: str | None = None) -> MemberPredictions:
    """Reads one model's per-file predictions from a CSV file or a run folder.

    Args:
        path: A ``birdnet-tf predict`` CSV, a run's ``eval/scores.csv``, or a run folder
            (its ``eval/scores.csv``, written by ``birdnet-tf evaluate``).
        name: The member's name (default: ``path`` as given).

    Raises:
        BirdnetError: the file is missing, unreadable, not a per-file score table, has
            several rows for a file, or non-numeric / missing scores.
    """
    p = Path(path)
    name = str(path) if name is None else name
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BirdnetError(f"{p}: a folder that is neither a run (config.json) nor an export (saved_model.pb)")
        p = p / "eval" / "scores.csv"
        if not p.is_file():
            raise BirdnetError(f"{p}: run has no validation scores; run birdnet-tf evaluate {path} first")
    elif not p.exists():
        raise BirdnetError(f"{p}: prediction table not found")
    try:
        table = pd.read_csv(p, dtype={"file": str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise BirdnetError(f"{p}: cannot read prediction table: {e}") from None
    return _member_from_table(table, name, str(p))


def is_export(path: PathLike) -> bool:
    """Whether ``path`` is an export folder (holds ``saved_model.pb``)."""
    return (Path(path) / "saved_model.pb").is_file()


def predict_member(export_dir: PathLike, audio: Sequence[str], name: str | None = None, log=None) -> MemberPredictions:
    """Scores ``audio`` (files and folders) with an export: one row per file (the export's pooling).

    Files that cannot be decoded are skipped (and logged) by
    :func:`birdnet_tf.infer.predict.predict`; alignment then names them as missing.
    """
    from birdnet_tf.infer.predict import predict

    table, _ = predict(export_dir, list(audio), progress=False, log=log)
    return _member_from_table(table, str(export_dir) if name is None else name, str(export_dir))


# --------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------

@dataclass
class Targets:
    """The files an ensemble is fitted on and their species.

    Attributes:
        source: Where the targets came from (for messages).
        keys: ``[files]`` dataset keys (paths relative to the dataset folder).
        primary_labels: ``[files]`` foreground species.
        secondary_labels: ``[files]`` lists of background species.
        audio: ``[files]`` audio paths (may not exist any more), or ``""``.
        durations_s: ``[files]`` durations, NaN where unknown.
    """

    source: str
    keys: list[str]
    primary_labels: list[str]
    secondary_labels: list[list[str]]
    audio: list[str]
    durations_s: np.ndarray
    aliases: list[list[str]] = field(default_factory=list)

    def restrict(self, labels: Sequence[str], log=None) -> Targets:
        """Drops files whose foreground species is not one of ``labels`` (logged with a count)."""
        known = set(labels)
        keep = [i for i, p in enumerate(self.primary_labels) if p in known]
        if not keep:
            raise BirdnetError(f"{self.source}: no target file has a foreground species among the models' labels "
                               f"(e.g. {_shown(sorted(set(self.primary_labels)))})")
        if len(keep) < len(self.keys) and log is not None:
            dropped = sorted({p for p in self.primary_labels if p not in known})
            log(f"note: {len(self.keys) - len(keep)} target file(s) skipped: their species is not a label of the "
                f"models ({_shown(dropped)})")
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return Targets(self.source, pick(self.keys), pick(self.primary_labels), pick(self.secondary_labels),
                       pick(self.audio), self.durations_s[keep], pick(self.aliases))

    def arrays(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(primary_idx int [files], background bool [files, classes])`` in ``labels`` order."""
        index = {label: i for i, label in enumerate(labels)}
        primary = np.asarray([index[p] for p in self.primary_labels], np.int64)
        background = np.zeros((len(self.keys), len(labels)), bool)
        for row, names in enumerate(self.secondary_labels):
            for n in names:
                if n in index:
                    background[row, index[n]] = True
        return primary, background


def _secondary(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v)]
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return []
    return [s.strip() for s in str(value).split(";") if s.strip()]


def _norm(path: str) -> str:
    return posixpath.normpath(str(path).replace("\\", "/"))


def load_targets(source: PathLike, split: str = "val") -> Targets:
    """Targets from a run folder's ``split.csv`` or a dataset folder.

    Args:
        source: A run folder (``split.csv``) or any dataset folder
            :func:`birdnet_tf.data.catalog.load_catalog` reads.
        split: ``val`` (default), ``train`` or ``all``; a dataset without a ``split``
            column always gives all its files.

    Raises:
        BirdnetError: ``source`` is neither, or the split holds no file.
    """
    p = Path(source)
    if (p / "split.csv").is_file():
        from birdnet_tf.runs import read_split

        what = p / "split.csv"
        table = read_split(what, split)  # the run's one split.csv reader: its columns and split checked
        audio = table["wav_path"].tolist() if "wav_path" in table.columns else [""] * len(table)
        durations = pd.to_numeric(table.get("duration_s", pd.Series([np.nan] * len(table))), errors="coerce")
    elif p.is_dir():
        from birdnet_tf.data.catalog import load_catalog

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = load_catalog(p, check_files=False)
        what = p
        audio = [str(x) for x in table["path"].tolist()]
        durations = pd.Series([np.nan] * len(table))
    else:
        raise BirdnetError(f"{p}: targets must be a run folder (split.csv) or a dataset folder"
                           + ("" if p.exists() else " (path does not exist)"))
    if split != "all" and "split" in table.columns:
        rows = (table["split"].astype(str) == split).to_numpy()
        if not rows.any():
            raise BirdnetError(f"{what}: no files in split '{split}' (choose val, train or all)")
    else:
        rows = np.ones(len(table), bool)
    table = table[rows]
    keys = [_norm(k) for k in table["key"].astype(str)]
    audio = [str(a) for a, r in zip(audio, rows) if r]
    aliases = [[k] + ([_norm(a)] if a else []) for k, a in zip(keys, audio)]
    return Targets(str(what), keys, [str(v).strip() for v in table["primary_label"]],
                   [_secondary(v) for v in table["secondary_labels"]] if "secondary_labels" in table.columns
                   else [[] for _ in keys],
                   audio, durations.to_numpy(dtype=np.float64)[rows], aliases)


# --------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------

def _suffixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


def _match_files(files: Sequence[str], targets: Targets) -> list[int | None]:
    """The target row each of ``files`` is (or None)."""
    exact: dict[str, int] = {}
    for row, names in enumerate(targets.aliases or [[k] for k in targets.keys]):
        for n in names:
            exact.setdefault(n, row)
    by_key = {k: i for i, k in enumerate(targets.keys)}
    stems: dict[str, int | None] = {}
    for i, k in enumerate(targets.keys):
        stem = posixpath.splitext(k)[0]
        stems[stem] = None if stem in stems else i  # ambiguous without the extension
    out: list[int | None] = []
    for f in files:
        n = _norm(f)
        hit = exact.get(n)
        if hit is None:
            hit = next((by_key[s] for s in _suffixes(n) if s in by_key), None)
        if hit is None:
            hit = next((stems[s] for s in _suffixes(posixpath.splitext(n)[0]) if stems.get(s) is not None), None)
        out.append(hit)
    return out


@dataclass
class Aligned:
    """Members on common files and labels.

    Attributes:
        names: ``[models]`` member names.
        files: ``[files]`` file names (target keys when aligned to targets).
        labels: ``[classes]`` the first member's label order.
        stack: float64 ``[models, files, classes]``.
        end_s: ``[files]`` durations (NaN where unknown).
    """

    names: list[str]
    files: list[str]
    labels: list[str]
    stack: np.ndarray
    end_s: np.ndarray


def align(members: Sequence[MemberPredictions], targets: Targets | None = None) -> Aligned:
    """Puts members on the same files and labels.

    The files are the target files (in their order), or without ``targets`` the first
    member's files; every member must cover all of them (matched as described in the
    module docstring: same name or path, or a path ending with the key); extra files are
    ignored.
    Labels: every member must have the first member's label set (any column order).

    Raises:
        BirdnetError: no members, repeated names, or a member lacking files or labels
            (each listed), or a file of a member matching two rows.
    """
    if not members:
        raise BirdnetError("no models to ensemble")
    names = [m.name for m in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BirdnetError(f"model(s) given twice: {_shown(repeated)}")
    labels = list(members[0].labels)
    for m in members[1:]:
        lacks, extra = [x for x in labels if x not in set(m.labels)], [x for x in m.labels if x not in set(labels)]
        if lacks or extra:
            parts = ([f"lacks label(s) {_shown(lacks)}"] if lacks else []) + \
                    ([f"has label(s) {_shown(extra)} that {members[0].name} lacks"] if extra else [])
            raise BirdnetError(f"{m.name}: labels differ from {members[0].name}'s: {'; '.join(parts)}")
    if targets is None:  # the first member's files are the keys the others are matched to
        first = [_norm(f) for f in members[0].files]
        targets = Targets(members[0].name, first, [""] * len(first), [[] for _ in first], [""] * len(first),
                          np.full(len(first), np.nan), [[f] for f in first])
        files = [str(f) for f in members[0].files]
    else:
        files = list(targets.keys)
    rows_of = []
    for m in members:
        hits = _match_files(m.files, targets)
        where: dict[int, int] = {}
        for i, h in enumerate(hits):
            if h is None:
                continue
            if h in where:
                raise BirdnetError(f"{m.name}: files {m.files[where[h]]} and {m.files[i]} both match the "
                                   f"file {files[h]}")
            where[h] = i
        lacks = [files[i] for i in range(len(files)) if i not in where]
        if lacks:
            raise BirdnetError(f"{m.name}: lacks predictions for {len(lacks)} of the {len(files)} "
                               f"file(s) of {targets.source}: {_shown(lacks)}")
        rows_of.append([where[i] for i in range(len(files))])
    end_s = np.asarray(targets.durations_s, np.float64).copy()
    for m, rows in zip(members, rows_of):
        if m.end_s is not None:
            unknown = np.isnan(end_s)
            end_s[unknown] = m.end_s[rows][unknown]
    stack = np.stack([m.scores[np.asarray(rows, np.int64)][:, [m.labels.index(x) for x in labels]]
                      for m, rows in zip(members, rows_of)])
    return Aligned(names, files, labels, stack, end_s)


# --------------------------------------------------------------------------
# Combination and objective
# --------------------------------------------------------------------------

def normalise_weights(weights: Sequence[float], n_models: int) -> np.ndarray:
    """Weights as float64 ``[n_models]`` summing to 1.

    Raises:
        BirdnetError: wrong count, a negative or non-finite weight, or all zero.
    """
    w = np.asarray(weights, np.float64).reshape(-1)
    if w.size != n_models:
        raise BirdnetError(f"{w.size} weight(s) for {n_models} model(s)")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise BirdnetError(f"weights must be finite and non-negative, got {w.tolist()}")
    if w.sum() <= 0:
        raise BirdnetError("weights are all zero")
    return w / w.sum()


def combine(tables: Sequence[MemberPredictions] | np.ndarray, weights: Sequence[float] | None = None):
    """Weighted mean of the members' scores (weights normalised; default uniform).

    Args:
        tables: Either members (aligned by :func:`align` without targets first) or a
            float array ``[models, files, classes]``.
        weights: ``[models]`` non-negative weights, not all zero.

    Returns:
        For members a :class:`MemberPredictions` named ``ensemble`` on the first member's files and
        labels; for an array the float64 ``[files, classes]`` mixture.
    """
    if isinstance(tables, np.ndarray):
        stack = np.asarray(tables, np.float64)
        if stack.ndim != 3:
            raise ValueError(f"expected scores [models, files, classes], got shape {stack.shape}")
        w = normalise_weights(np.ones(len(stack)) if weights is None else weights, len(stack))
        return np.tensordot(w, stack, axes=1)
    aligned = align(tables)
    mixed = combine(aligned.stack, weights)
    end_s = tables[0].end_s
    return MemberPredictions("ensemble", list(aligned.files), list(aligned.labels), mixed,
                  None if end_s is None else np.asarray(end_s))


class Objective:
    """``MAP + MAP-bg`` of score matrices, fast (vectorised over files).

    Equal to ``m["mrr"] + m["map_bg"]`` of :func:`~birdnet_tf.evaluate.metrics.evaluate_scores`
    (pessimistic ties), without the per-class metrics.

    Args:
        primary_idx: int ``[files]``.
        background: bool ``[files, classes]`` or None.
    """

    def __init__(self, primary_idx: np.ndarray, background: np.ndarray | None, n_classes: int):
        p = np.asarray(primary_idx, np.int64)
        rel = np.zeros((len(p), n_classes), bool)
        if background is not None:
            rel |= np.asarray(background, bool)
        rel[np.arange(len(p)), p] = True
        self.primary = p
        self.rel = rel
        self.fi, self.ci = np.nonzero(rel)  # every relevant (file, class)
        self.n_rel = rel.sum(axis=1)
        self.evaluations = 0

    def parts(self, scores: np.ndarray) -> tuple[float, float]:
        """``(map, map_bg)`` of ``scores [files, classes]``."""
        s = np.asarray(scores, np.float64)
        own = s[np.arange(len(s)), self.primary]
        mrr = float(np.mean(1.0 / np.sum(s >= own[:, None], axis=1)))
        at = s[self.fi, self.ci]
        above = s[self.fi] >= at[:, None]  # [relevant, classes]
        rank = above.sum(axis=1)
        hits = (above & self.rel[self.fi]).sum(axis=1)
        per_file = np.bincount(self.fi, weights=hits / rank, minlength=len(s)) / self.n_rel
        return mrr, float(np.mean(per_file))

    def __call__(self, scores: np.ndarray) -> float:
        self.evaluations += 1
        fg, bg = self.parts(scores)
        return fg + bg


# --------------------------------------------------------------------------
# Weight search
# --------------------------------------------------------------------------

@dataclass
class SearchResult:
    """Outcome of :func:`search_weights`.

    Attributes:
        weights: float64 ``[models]`` normalised weights.
        value: The objective (``MAP + MAP-bg``) of the mixture.
        method: ``greedy``, ``optuna`` or ``random``.
        trials: Objective evaluations made.
        counts: ``greedy`` only: how often each model was picked.
        path: ``greedy``: the objective after each step; others: the best so far after each trial.
    """

    weights: np.ndarray
    value: float
    method: str
    trials: int
    counts: list[int] | None = None
    path: list[float] = field(default_factory=list)


def _greedy(stack: np.ndarray, objective: Objective, steps: int) -> SearchResult:
    n = len(stack)
    singles = [objective(stack[i]) for i in range(n)]
    counts = np.zeros(n, np.int64)
    best = int(np.argmax(singles))
    counts[best] = 1
    total = stack[best].copy()
    value, path = singles[best], [singles[best]]
    for _ in range(steps):
        k = counts.sum()
        trials = [objective((total + stack[i]) / (k + 1)) for i in range(n)]
        pick = int(np.argmax(trials))
        if trials[pick] <= value:
            break
        counts[pick] += 1
        total += stack[pick]
        value = trials[pick]
        path.append(value)
    return SearchResult(counts / counts.sum(), float(value), "greedy", objective.evaluations,
                        [int(c) for c in counts], path)


def _starts(n: int) -> list[np.ndarray]:
    """The uniform mixture and every single model."""
    return [np.full(n, 1.0 / n), *np.eye(n)]


def _random(stack: np.ndarray, objective: Objective, trials: int, seed: int) -> SearchResult:
    n = len(stack)
    rng = np.random.default_rng(seed)
    best_w, best_v, path = None, -np.inf, []

    def consider(w: np.ndarray) -> None:
        nonlocal best_w, best_v
        w = w / w.sum()
        v = objective(combine(stack, w))
        if v > best_v:
            best_w, best_v = w, v
        path.append(float(best_v))

    candidates = _starts(n)
    for w in candidates[:trials]:
        consider(w)
    explore = max(0, trials // 2 - len(candidates))
    for w in rng.dirichlet(np.ones(n), size=explore):
        consider(w)
    refine = trials - len(path)
    for t in range(refine):
        scale = 1.0 * (0.02 / 1.0) ** (t / max(1, refine - 1))  # log-normal sigma from 1 down to 0.02
        w = best_w * np.exp(rng.normal(0.0, scale, n))
        if rng.random() < 0.2:  # sometimes drop a model entirely
            w[rng.integers(n)] = 0.0
        if w.sum() > 0:
            consider(w)
        else:
            path.append(float(best_v))
    return SearchResult(best_w, float(best_v), "random", objective.evaluations, None, path)


def _optuna(stack: np.ndarray, objective: Objective, trials: int, seed: int) -> SearchResult:
    try:
        import optuna
    except ImportError:
        raise BirdnetError("--method optuna needs the optuna package (pip install -c constraints.txt optuna, "
                           "or install birdnet-tf with its dev extras); --method random needs nothing") from None
    n = len(stack)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for w in _starts(n)[:trials]:
        study.enqueue_trial({f"w{i}": float(w[i]) for i in range(n)})
    path: list[float] = []

    def run(trial) -> float:
        w = np.asarray([trial.suggest_float(f"w{i}", 0.0, 1.0) for i in range(n)])
        v = objective(combine(stack, w)) if w.sum() > 0 else -1.0
        path.append(max(v, path[-1]) if path else v)
        return v

    study.optimize(run, n_trials=trials, show_progress_bar=False)
    w = np.asarray([study.best_params[f"w{i}"] for i in range(n)])
    return SearchResult(w / w.sum(), float(study.best_value), "optuna", objective.evaluations, None, path)


def search_weights(stack: np.ndarray, primary_idx: np.ndarray, background: np.ndarray | None = None,
                   method: str = "greedy", trials: int = DEFAULT_TRIALS, steps: int = DEFAULT_STEPS,
                   seed: int = 0) -> SearchResult:
    """Fits ensemble weights on validation predictions, maximising ``MAP + MAP-bg``.

    Args:
        stack: float ``[models, files, classes]`` per-file scores of each model.
        primary_idx: int ``[files]`` foreground class of each file.
        background: bool ``[files, classes]`` background species, or None.
        method: ``greedy`` | ``optuna`` | ``random`` (see the module docstring).
        trials: Objective evaluations of ``optuna`` / ``random``.
        steps: Most additions of ``greedy``.
        seed: Seed of ``optuna`` / ``random``.

    Returns:
        The weights found, their objective value and the search's trace.
    """
    stack = np.asarray(stack, np.float64)
    if stack.ndim != 3 or len(stack) == 0:
        raise ValueError(f"expected scores [models, files, classes], got shape {stack.shape}")
    if method not in METHODS:
        raise BirdnetError(f"unknown weight search '{method}'; choose one of {', '.join(METHODS)}")
    if trials < 1 or steps < 0:
        raise BirdnetError(f"--trials must be >= 1 and --steps >= 0 (got {trials}, {steps})")
    objective = Objective(primary_idx, background, stack.shape[2])
    if method == "greedy":
        return _greedy(stack, objective, steps)
    if method == "random":
        return _random(stack, objective, trials, seed)
    return _optuna(stack, objective, trials, seed)


# --------------------------------------------------------------------------
# The whole job
# --------------------------------------------------------------------------

def load_predictions(sources: Sequence[str], audio: Sequence[str] | None = None, targets: Targets | None = None,
                     log=None) -> list[MemberPredictions]:
    """Members from CSV files, run folders and export folders (scored on ``audio`` or the target files).

    Raises:
        BirdnetError: an export is given without audio and without targets whose audio exists.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    members = []
    for src in sources:
        if is_export(src):
            inputs = list(audio or [])
            if not inputs and targets is not None:
                inputs = [a for a in targets.audio if a and Path(a).is_file()]
            if not inputs:
                raise BirdnetError(f"{src}: an export needs audio to score: pass --audio DIR, or --targets whose "
                                   "audio files exist")
            log(f"scoring {len(inputs)} input(s) with {src}")
            members.append(predict_member(src, inputs, name=str(src), log=log))
        else:
            members.append(read_member(src, name=str(src)))
    return members


METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("map", "MAP"), ("map_bg", "MAP-bg"), ("top1", "top-1"), ("top5", "top-5"), ("cmap", "cmAP"),
    ("mlrap", "MLRAP"), ("mlrap_bg", "MLRAP-bg"),
)
"""(metric key, column title) of :func:`format_table`."""


def format_table(rows: Sequence[tuple[str, float | None, dict]]) -> str:
    """A text table: one row per model (name, weight, metrics) and the ensemble.

    Args:
        rows: ``(name, weight or None, evaluate_scores dict)``.
    """
    width = max(8, *(len(r[0]) for r in rows))
    head = f"{'model':<{width}}  {'weight':>6}  " + "  ".join(f"{t:>8}" for _, t in METRIC_COLUMNS)
    lines = [head]
    for name, weight, m in rows:
        w = f"{weight:6.3f}" if weight is not None else f"{'':>6}"
        lines.append(f"{name:<{width}}  {w}  " + "  ".join(
            f"{m[k]:8.3f}" if m.get(k) is not None else f"{'-':>8}" for k, _ in METRIC_COLUMNS))
    lines.append("MAP = mean reciprocal rank of the foreground species (= MLRAP without background species); "
                 "MAP-bg = MLRAP with background species (OFAI 2018)")
    return "\n".join(lines)


def _metrics(scores: np.ndarray, primary: np.ndarray, background: np.ndarray) -> dict:
    from birdnet_tf.evaluate.metrics import evaluate_scores

    m = evaluate_scores(scores, primary, background)
    m.pop("per_class_ap", None)
    return m


def _refuse(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise BirdnetError(f"{existing[0]}: already exists; choose another --out or pass --force")


def _write_scores(path: Path, aligned: Aligned, scores: np.ndarray) -> None:
    from birdnet_tf.fileio import atomic_path

    table = pd.DataFrame(scores, columns=aligned.labels)
    table.insert(0, "end_s", np.round(aligned.end_s, 3))
    table.insert(0, "start_s", 0.0)
    table.insert(0, "file", aligned.files)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")


def fit_ensemble(sources: Sequence[str], targets: PathLike, out_dir: PathLike, method: str = "greedy",
                 trials: int = DEFAULT_TRIALS, steps: int = DEFAULT_STEPS, seed: int = 0,
                 audio: Sequence[str] | None = None, split: str = "val", force: bool = False,
                 log: Callable[[str], None] | None = None) -> dict:
    """Fits ensemble weights on validation predictions and writes them with the ensemble's scores.

    Args:
        sources: Prediction CSVs, run folders or export folders, one per model.
        targets: Run folder or dataset folder giving the files' species.
        out_dir: Folder for ``weights.json`` and ``ensemble.csv`` (created).
        method, trials, steps, seed: See :func:`search_weights`.
        audio: Audio to score exports on (default: the target files).
        split: Split of the targets (``val``, ``train``, ``all``).
        force: Replace existing outputs.
        log: Where progress and the table go (default: stderr).

    Returns:
        The ``weights.json`` content plus ``table`` (the printed text) and ``paths``.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out_dir)
    weights_path, scores_path = out / WEIGHTS_FILE, out / ENSEMBLE_FILE
    _refuse([weights_path, scores_path], force)  # before any work
    if method not in METHODS:
        raise BirdnetError(f"unknown weight search '{method}'; choose one of {', '.join(METHODS)}")
    tg = load_targets(targets, split)
    members = load_predictions(sources, audio, tg, log)
    tg = tg.restrict(members[0].labels, log)
    aligned = align(members, tg)
    primary, background = tg.arrays(aligned.labels)
    started = time.perf_counter()
    result = search_weights(aligned.stack, primary, background, method=method, trials=trials, steps=steps,
                            seed=seed)
    mixed = combine(aligned.stack, result.weights)
    singles = {name: _metrics(aligned.stack[i], primary, background) for i, name in enumerate(aligned.names)}
    ens = _metrics(mixed, primary, background)
    rows = [(n, float(w), singles[n]) for n, w in zip(aligned.names, result.weights)]
    rows.append(("ensemble", 1.0, ens))
    table = format_table(rows)
    doc = {
        "method": method,
        "objective": OBJECTIVE,
        "value": result.value,
        "trials": result.trials,
        "steps": steps if method == "greedy" else None,
        "seed": seed if method != "greedy" else None,
        "models": list(aligned.names),
        "weights": {n: float(w) for n, w in zip(aligned.names, result.weights)},
        "counts": dict(zip(aligned.names, result.counts)) if result.counts is not None else None,
        "targets": tg.source,
        "split": split,
        "n_files": len(aligned.files),
        "labels": list(aligned.labels),
        "metrics": {**singles, "ensemble": ens},
        "search_s": round(time.perf_counter() - started, 3),
    }
    from birdnet_tf.fileio import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    _write_scores(scores_path, aligned, mixed)
    write_json_atomic(weights_path, doc)
    log(table)
    log(f"{method}: {OBJECTIVE} {result.value:.4f} after {result.trials} evaluation(s); "
        f"wrote {weights_path} and {scores_path}")
    return {**doc, "table": table, "paths": [weights_path, scores_path]}


def read_weights(path: PathLike) -> dict:
    """Reads a ``weights.json`` of :func:`fit_ensemble`.

    Raises:
        BirdnetError: missing, unreadable, or without ``models`` / ``weights``.
    """
    import json

    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BirdnetError(f"{p}: weights file not found") from None
    except (OSError, ValueError) as e:
        raise BirdnetError(f"{p}: cannot read weights file: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list) or not isinstance(doc.get("weights"), dict):
        raise BirdnetError(f"{p}: not a weights file of birdnet-tf ensemble (needs 'models' and 'weights')")
    return doc


def apply_weights(sources: Sequence[str], weights_file: PathLike, out_dir: PathLike,
                  targets: PathLike | None = None, audio: Sequence[str] | None = None, split: str = "val",
                  force: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Combines other predictions of the same models (e.g. of the test set) with saved weights.

    The weights are applied by position: the i-th source gets the weight of the i-th
    model listed in ``weights_file``. With ``targets`` the ensemble is also evaluated.

    Returns:
        ``weights`` (source → weight), ``table`` (text, with targets), ``paths``.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out_dir)
    scores_path = out / ENSEMBLE_FILE
    _refuse([scores_path], force)
    doc = read_weights(weights_file)
    if len(doc["models"]) != len(sources):
        raise BirdnetError(f"{weights_file}: has weights for {len(doc['models'])} model(s), "
                           f"{len(sources)} given (the i-th source gets the i-th model's weight)")
    weights = [float(doc["weights"][m]) for m in doc["models"]]
    tg = load_targets(targets, split) if targets is not None else None
    members = load_predictions(sources, audio, tg, log)
    if tg is not None:
        tg = tg.restrict(members[0].labels, log)
    aligned = align(members, tg)
    mixed = combine(aligned.stack, weights)
    out.mkdir(parents=True, exist_ok=True)
    _write_scores(scores_path, aligned, mixed)
    w = normalise_weights(weights, len(weights))
    table = ""
    if tg is not None:
        primary, background = tg.arrays(aligned.labels)
        rows = [(n, float(x), _metrics(aligned.stack[i], primary, background))
                for i, (n, x) in enumerate(zip(aligned.names, w))]
        rows.append(("ensemble", 1.0, _metrics(mixed, primary, background)))
        table = format_table(rows)
        log(table)
    log(f"wrote {scores_path} ({len(aligned.files)} file(s), weights from {weights_file})")
    return {"weights": dict(zip(aligned.names, w.tolist())), "table": table, "paths": [scores_path]}
