"""Hyperparameter search with Keras Tuner over any recipe setting (``birdnet-tf tune``).

A search folder holds::

    tune.json      what the search is: recipe (resolved), space, tuner, objective, folds, data
    folds.csv      the recordist folds (key, primary_label, recordist, fold; -1 = always training)
    oracle/        Keras Tuner's project: oracle.json, trial_NN/trial.json (settings, scores, status)
    runs/trial_NN/[fold_K/]   one ordinary run folder per trial (and fold), written by train()
    trials.csv     every trial: status, settings, per-fold and mean scores, spread, time
    best.yaml      the best trial's complete recipe (``birdnet-tf train --config best.yaml``)
    trials.png     objective per trial and against each searched setting
    logs/hparams/  TensorBoard HParams view (``tensorboard --logdir TUNE_DIR/logs``)

Each trial is :func:`birdnet_tf.train.trainer.train` on the recipe with the trial's settings
(``train.monitor`` = the objective), so it uses the same data pipeline, file-level
validation and metric as ``birdnet-tf train``; its score is the best epoch's value of the
objective (what ``best.keras`` is chosen by). With ``folds`` = K ≥ 2 a trial trains K runs,
one per recordist fold (:mod:`birdnet_tf.tune.folds`), and scores their mean.

Running the same search again continues it: Keras Tuner reloads the oracle, finished trials
are kept, and a trial that was running is run again (its run folders resume after their
last finished epoch). Another recipe, space, tuner, objective, fold count or dataset in the
same folder is refused, naming the difference; ``max_trials`` may change.

Hyperband spends epochs: a trial runs ``tuner/epochs − tuner/initial_epoch`` epochs, starting
from the ``best.keras`` of the trial it continues (``train.init_weights``; a fresh
learning-rate schedule), and ``train.epochs`` of the recipe is its most epochs per trial.

Distributed search uses Keras Tuner's chief/worker mode: the chief (``KERASTUNER_TUNER_ID=chief``)
holds the oracle and serves it over gRPC at ``KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT``;
workers (any other ``KERASTUNER_TUNER_ID``) ask it for trials and run them. A worker that is
killed and started again with the same ID gets its unfinished trial back.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from birdnet_tf.config import Config
from birdnet_tf.errors import BirdnetError, ConfigError
from birdnet_tf.fileio import write_json_atomic, write_text_atomic
from birdnet_tf.tune.space import SearchSpace

__all__ = ["TUNERS", "SearchSettings", "check_search_folder", "distributed_role", "load_folds", "run_search",
           "set_distributed_env", "write_results"]

TUNERS = ("random", "bayesian", "hyperband")
PROJECT = "oracle"
#: the validation scores train() logs each epoch that grow when better
OBJECTIVES = ("val_mlrap_bg", "val_mlrap", "val_mrr", "val_cmap", "val_top1", "val_top5")
#: Keras Tuner's own hyperparameters of Hyperband trials
HYPERBAND_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")


@dataclass
class SearchSettings:
    """What one ``birdnet-tf tune`` command asks for."""

    recipe: Config
    space: SearchSpace
    data_dir: Path
    out_dir: Path
    tuner: str = "random"
    max_trials: int = 10
    folds: int = 1  # 1: the recipe's own split; K >= 2: K recordist folds
    objective: str = "val_mlrap_bg"
    seed: int = 0
    max_minutes: float = 0.0  # > 0: start no trial expected (mean trial time) to end after this long (this session)
    cache_dir: Path | None = None
    workers: int = 2
    hyperband_factor: int = 3

    def identity(self) -> dict[str, Any]:
        """What must match when a search folder is continued (``tune.json``)."""
        return {"recipe": self.recipe.to_dict(), "space": self.space.to_dict(), "tuner": self.tuner,
                "objective": self.objective, "folds": self.folds, "seed": self.seed,
                "data": str(Path(self.data_dir).resolve())}


class _BudgetSpent(Exception):
    """Raised before a new trial when ``max_minutes`` have passed."""


def distributed_role() -> str:
    """``chief``, ``worker`` or ``local``, from Keras Tuner's environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "local"
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if not os.environ.get(name):
            raise ConfigError(f"KERASTUNER_ORACLE_IP is set but {name} is not; set both (or use tune --chief / "
                              "--worker)")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def set_distributed_env(chief: str | None, worker: str | None) -> None:
    """Sets Keras Tuner's variables from ``tune --chief HOST:PORT [--worker ID]``."""
    if worker is not None and chief is None:
        raise ConfigError("--worker needs --chief HOST:PORT (where the chief serves the oracle)")
    if chief is None:
        return
    host, sep, port = chief.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--chief must look like HOST:PORT (e.g. 10.0.0.5:8000), not '{chief}'")
    if worker is not None and (not worker.strip() or "chief" in worker):
        raise ConfigError(f"--worker ID must be a name without 'chief' in it, not '{worker}'")
    os.environ.update(KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=port,
                      KERASTUNER_TUNER_ID="chief" if worker is None else worker)


def _flat_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b):
        return []
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def check_search_folder(settings: SearchSettings) -> bool:
    """True when ``out_dir`` holds this search to continue; writes ``tune.json`` for a new one.

    Raises:
        ConfigError: The folder holds another search (the difference is named) or other files.
    """
    out = Path(settings.out_dir)
    meta = out / "tune.json"
    ident = json.loads(json.dumps(settings.identity()))  # tuples -> lists, as read back
    if meta.is_file():
        old = json.loads(meta.read_text(encoding="utf-8"))
        diffs = _flat_diff({k: old.get(k) for k in ident}, ident)
        if diffs:
            more = " …" if len(diffs) > 6 else ""
            raise ConfigError(f"{out}: holds another search ({'; '.join(diffs[:6])}{more}); choose a new --out, "
                              "or run the same command to continue that one")
        return True
    if out.exists() and (not out.is_dir() or any(p.name != PROJECT for p in out.iterdir())):
        raise ConfigError(f"{out}: exists and holds no birdnet-tf search (no tune.json); choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    from birdnet_tf import __version__

    write_json_atomic(meta, {"birdnet_tf_version": __version__, **ident, "max_trials": settings.max_trials})
    return False


def make_oracle(settings: SearchSettings):
    """The Keras Tuner oracle of ``settings.tuner`` with the space declared on it."""
    import keras_tuner as kt

    objective = kt.Objective(settings.objective, direction="max")
    hp = kt.HyperParameters()
    settings.space.declare(hp)
    common = dict(objective=objective, hyperparameters=hp, seed=settings.seed, max_consecutive_failed_trials=3)
    if settings.tuner == "random":
        return kt.oracles.RandomSearchOracle(max_trials=settings.max_trials, **common)
    if settings.tuner == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=settings.max_trials,
                                                     num_initial_points=min(3, settings.max_trials), **common)
    if settings.tuner == "hyperband":
        if settings.recipe.train.epochs < settings.hyperband_factor:
            raise ConfigError(f"--tuner hyperband spends train.epochs ({settings.recipe.train.epochs}) as the most "
                              f"epochs of a trial; it needs at least {settings.hyperband_factor}")
        oracle = kt.oracles.HyperbandOracle(max_epochs=settings.recipe.train.epochs,
                                            factor=settings.hyperband_factor, **common)
        oracle.max_trials = settings.max_trials
        return oracle
    raise ConfigError(f"--tuner must be one of {', '.join(TUNERS)}, not '{settings.tuner}'")


def active_values(hp) -> dict[str, Any]:
    """A trial's values of the settings active under its conditions (and Keras Tuner's ``tuner/…``)."""
    out = {}
    for name, value in hp.values.items():
        try:
            active = name.startswith("tuner/") or hp.is_active(name)
        except (KeyError, ValueError):
            active = True
        if active:
            out[name] = value
    return out


def trial_config(settings: SearchSettings, values: dict[str, Any], trial_id: str) -> Config:
    """The recipe with a trial's settings (and, for Hyperband, its epochs and starting weights)."""
    overrides = settings.space.overrides(values)
    overrides["train.monitor"] = settings.objective
    cfg = settings.recipe.replace(overrides, f"trial {trial_id}")
    if "tuner/epochs" in values:
        epochs = int(values["tuner/epochs"]) - int(values.get("tuner/initial_epoch", 0))
        cfg = cfg.replace({"train.epochs": max(1, epochs)}, f"trial {trial_id}")
    return cfg


def _run_dir(out: Path, trial_id: str, fold: int | None) -> Path:
    root = out / "runs" / f"trial_{trial_id}"
    return root if fold is None else root / f"fold_{fold}"


def _tuner_class():
    import keras_tuner as kt
    from keras_tuner.engine import base_tuner

    class RecipeTuner(base_tuner.BaseTuner):
        """Runs each trial as ordinary training runs (one per fold) of the trial's recipe."""

        def __init__(self, oracle, settings: SearchSettings, folds: pd.DataFrame | None, log, **kwargs):
            super().__init__(oracle, directory=str(settings.out_dir), project_name=PROJECT, **kwargs)
            self.settings, self.folds, self.log = settings, folds, log
            self.t0, self.trial_t0, self.durations = time.time(), time.time(), []

        def pre_create_trial(self):
            # --max-minutes: no trial that would end (at the mean length of this session's trials) after it
            s, durations = self.settings, self.durations
            expected = float(np.mean(durations)) if durations else 0.0
            if s.max_minutes and time.time() - self.t0 + expected > 60 * s.max_minutes:
                raise _BudgetSpent()

        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            self.trial_t0 = time.time()

        def run_trial(self, trial, *args, **kwargs):
            from birdnet_tf.train.trainer import train

            s, tid = self.settings, trial.trial_id
            values = active_values(trial.hyperparameters)
            try:
                cfg = trial_config(s, values, tid)
            except ConfigError as e:
                raise kt.errors.FailedTrialError(str(e)) from None
            shown = ", ".join(f"{k}={v}" for k, v in s.space.overrides(values).items())
            self.log(f"trial {tid} on {self.tuner_id}: {shown}"
                     + (f" ({cfg.train.epochs} epochs)" if "tuner/epochs" in values else ""))
            folds = [None] if self.folds is None else sorted(f for f in self.folds["fold"].unique() if f >= 0)
            scores, t0 = [], time.time()
            for fold in folds:
                fold_cfg = cfg
                parent = values.get("tuner/trial_id")
                if parent:
                    start = _run_dir(s.out_dir, str(parent), fold) / "best.keras"
                    if start.is_file():
                        fold_cfg = cfg.replace({"train.init_weights": str(start)}, f"trial {tid}")
                    else:
                        self.log(f"warning: trial {tid}: {start} is not here (run on another machine?); "
                                 "this fold starts from scratch")
                val_keys = None if fold is None else list(self.folds.loc[self.folds["fold"] == fold, "key"])
                try:
                    summary = train(fold_cfg, s.data_dir, _run_dir(s.out_dir, tid, fold), cache_dir=s.cache_dir,
                                    workers=s.workers, evaluate=False, log=self.log, val_keys=val_keys)
                except BirdnetError as e:  # a setting that cannot train (or diverged): the search goes on
                    raise kt.errors.FailedTrialError(f"trial {tid}: {e}") from None
                scores.append(float(summary["best"]))
                if fold is not None:
                    self.log(f"trial {tid} fold {fold}: {s.objective} {scores[-1]:.4f}")
            metrics = {s.objective: float(np.mean(scores)), "time_s": round(time.time() - t0, 1)}
            if fold is not None:
                metrics.update({f"{s.objective}_fold{f}": v for f, v in zip(folds, scores)})
                metrics[f"{s.objective}_std"] = float(np.std(scores))
            write_hparams(s, tid, values, metrics)
            self.log(f"trial {tid}: {s.objective} {metrics[s.objective]:.4f}"
                     + (f" ± {metrics[s.objective + '_std']:.4f} over {len(folds)} folds" if fold is not None else ""))
            return metrics

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self.durations.append(time.time() - self.trial_t0)
            if trial.status != "COMPLETED":
                last = (trial.message or "").strip().splitlines()[-1:] or [""]
                self.log(f"trial {trial.trial_id}: {trial.status}: "
                         f"{last[0].replace('keras_tuner.src.errors.FailedTrialError: ', '')}")
            if self._is_worker():
                return
            try:
                write_results(self.settings, log=lambda *_: None)
            except Exception as e:  # noqa: BLE001 - reporting must not end a search
                self.log(f"warning: could not write the results: {e}")

    return RecipeTuner


def write_hparams(settings: SearchSettings, trial_id: str, values: dict, metrics: dict) -> None:
    """One TensorBoard HParams record of a finished trial under ``logs/hparams/trial_NN``."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    hparams = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
               for k, v in settings.space.overrides(values).items()}
    with tf.summary.create_file_writer(str(settings.out_dir / "logs" / "hparams" / f"trial_{trial_id}")).as_default():
        hp_api.hparams(hparams, trial_id=f"trial_{trial_id}")
        for name, value in metrics.items():
            tf.summary.scalar(name, value, step=0)


def write_hparams_config(settings: SearchSettings) -> None:
    """The HParams view's columns: every searched setting with its domain, and the scores."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    params = []
    for p in settings.space.params:
        if p.kind == "choice":
            domain = hp_api.Discrete(list(p.values))
        elif p.kind == "bool":
            domain = hp_api.Discrete([False, True])
        elif p.kind == "int":
            domain = hp_api.IntInterval(int(p.min), int(p.max))
        else:
            domain = hp_api.RealInterval(float(p.min), float(p.max))
        params.append(hp_api.HParam(p.key, domain))
    obj = settings.objective
    metrics = [hp_api.Metric(obj, display_name=f"{obj} (mean over folds)" if settings.folds > 1 else obj)]
    if settings.folds > 1:
        metrics.append(hp_api.Metric(f"{obj}_std", display_name=f"{obj} std over folds"))
    metrics.append(hp_api.Metric("time_s", display_name="trial time (s)"))
    with tf.summary.create_file_writer(str(settings.out_dir / "logs" / "hparams")).as_default():
        hp_api.hparams_config(hparams=params, metrics=metrics)


def load_folds(settings: SearchSettings, log=print) -> pd.DataFrame | None:
    """The recordist folds of the dataset (``folds.csv`` written), or None without folds."""
    if settings.folds <= 1:
        return None
    from birdnet_tf.data.dataset import prepared_catalog
    from birdnet_tf.tune.folds import assign_folds

    catalog = prepared_catalog(settings.data_dir, settings.recipe.audio.sample_rate_hz, settings.cache_dir,
                               workers=settings.workers, progress=False, log=log)
    folds = assign_folds(catalog, settings.folds, settings.seed)
    path = settings.out_dir / "folds.csv"
    text = folds.to_csv(index=False)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)
    never = int((folds["fold"] < 0).sum())
    sizes = ", ".join(str(int((folds["fold"] == f).sum())) for f in range(settings.folds))
    log(f"{settings.folds} recordist folds of {len(folds)} files: {sizes} validation files each"
        + (f"; {never} file(s) of recordists that alone hold a class always train" if never else ""))
    return folds


def run_search(settings: SearchSettings, log=print) -> dict:
    """Runs (or continues) a search; returns a summary: trials done, best trial and score, folder.

    The role comes from the environment (:func:`distributed_role`): a chief serves the oracle
    until every trial is done, a worker runs trials the chief hands out, a local search both.
    """
    role = distributed_role()
    if settings.tuner not in TUNERS:
        raise ConfigError(f"--tuner must be one of {', '.join(TUNERS)}, not '{settings.tuner}'")
    if settings.max_trials < 1:
        raise ConfigError(f"--max-trials must be at least 1, not {settings.max_trials}")
    if not Path(settings.data_dir).is_dir():
        raise BirdnetError(f"{settings.data_dir}: dataset folder does not exist")
    settings.out_dir = Path(settings.out_dir)
    settings.recipe.replace({"train.monitor": settings.objective}, "--objective")
    if settings.objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be a validation score that grows when better ({', '.join(OBJECTIVES)}), "
                          f"not '{settings.objective}'")
    resumed = check_search_folder(settings)
    meta = json.loads((settings.out_dir / "tune.json").read_text(encoding="utf-8"))
    if meta.get("max_trials") != settings.max_trials and role != "worker":
        meta["max_trials"] = settings.max_trials
        write_json_atomic(settings.out_dir / "tune.json", meta)
    log(f"{'continuing' if resumed else 'starting'} a {settings.tuner} search of {settings.max_trials} trials "
        f"({role}) in {settings.out_dir}; space:\n  " + "\n  ".join(p.describe() for p in settings.space.params))
    folds = None if role == "chief" else load_folds(settings, log)
    oracle = make_oracle(settings)
    if role == "chief":  # trials.csv, best.yaml and the plot as each trial ends, as a local search has them
        end_trial = oracle.end_trial

        def end_trial_and_report(trial):
            end_trial(trial)
            try:
                write_results(settings, log=lambda *_: None)
            except Exception as e:  # noqa: BLE001 - reporting must not end a search
                log(f"warning: could not write the results: {e}")

        oracle.end_trial = end_trial_and_report
    if role != "worker" and not resumed:
        write_hparams_config(settings)
    tuner = _tuner_class()(oracle, settings, folds, log)
    if resumed and role != "worker":
        tuner.oracle.max_trials = settings.max_trials  # may grow or shrink between sessions
    # Keras Tuner reloads its oracle only when the tuner's own file exists: write it now, so a
    # search interrupted in its first trial continues (and redoes that trial) instead of starting over
    tuner.save()
    try:
        tuner.search()
    except RuntimeError as e:  # Keras Tuner gives up after 3 failed trials in a row
        if "consecutive failures" not in str(e):
            raise
        last = [line for line in str(e).splitlines() if line.strip()]
        raise BirdnetError(f"{settings.out_dir}: 3 trials in a row failed, the search stops; the last: "
                           f"{last[-1] if last else '?'} (every trial's status is in trials.csv)") from None
    except _BudgetSpent:
        log(f"--max-minutes {settings.max_minutes:g}: another trial would end after it; no new trial started "
            "(run again to go on)")
    if role == "worker":
        return {"out_dir": str(settings.out_dir), "role": role}
    return write_results(settings, log)


def read_trials(settings: SearchSettings) -> list:
    """The Keras Tuner trials of the search folder, in trial order."""
    from keras_tuner.engine.trial import Trial

    files = sorted((settings.out_dir / PROJECT).glob("trial_*/trial.json"))
    return [Trial.load(str(f)) for f in files]


def write_results(settings: SearchSettings, log=print) -> dict:
    """Writes ``trials.csv``, ``best.yaml`` and ``trials.png`` from the trials so far; returns a summary."""
    obj = settings.objective
    rows = []
    for trial in read_trials(settings):
        values = active_values(trial.hyperparameters)
        row: dict[str, Any] = {"trial": trial.trial_id, "status": str(trial.status)}
        for key in settings.space.keys:
            row[key] = values.get(key, "")  # inactive under a condition: empty
        if "tuner/epochs" in values:
            row["epochs"] = int(values["tuner/epochs"]) - int(values.get("tuner/initial_epoch", 0))
            row["continues"] = values.get("tuner/trial_id") or ""
        metrics = trial.metrics
        for name in [obj, f"{obj}_std", *[f"{obj}_fold{f}" for f in range(settings.folds if settings.folds > 1 else 0)],
                     "time_s"]:
            row[name] = metrics.get_last_value(name) if metrics.exists(name) else float("nan")
        row["run_dir"] = str(_run_dir(settings.out_dir, trial.trial_id, None))
        rows.append(row)
    table = pd.DataFrame(rows)
    out = settings.out_dir
    summary: dict[str, Any] = {"out_dir": str(out), "trials": len(table), "best_trial": None, "best": None}
    if table.empty:
        log("no trial finished yet")
        return summary
    write_text_atomic(out / "trials.csv", table.to_csv(index=False))
    done = table[(table["status"] == "COMPLETED") & table[obj].notna()]
    summary["completed"] = len(done)
    if done.empty:
        log(f"{len(table)} trial(s), none completed; see {out / 'trials.csv'}")
        return summary
    best = done.loc[done[obj].idxmax()]
    trial = {t.trial_id: t for t in read_trials(settings)}[best["trial"]]
    cfg = trial_config(settings, active_values(trial.hyperparameters), best["trial"])
    if "tuner/epochs" in trial.hyperparameters.values:  # Hyperband: the full budget, from scratch
        cfg = cfg.replace({"train.epochs": settings.recipe.train.epochs, "train.init_weights": ""}, "best")
    spread = f" ± {best[obj + '_std']:.4f} (std over {settings.folds} recordist folds)" if settings.folds > 1 else ""
    import yaml

    header = (f"# best of {len(done)} completed trials of the {settings.tuner} search in {out}\n"
              f"# trial {best['trial']}: {obj} {best[obj]:.4f}{spread}\n"
              f"# searched: {', '.join(f'{k}={best[k]}' for k in settings.space.keys if best[k] != '')}\n"
              f"# train it: birdnet-tf train --config {out / 'best.yaml'} --data DATA --out RUN_DIR\n")
    write_text_atomic(out / "best.yaml", header + yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())),
                                                                 sort_keys=False))
    plot_trials(table, settings, out / "trials.png")
    summary.update(best_trial=str(best["trial"]), best=float(best[obj]),
                   best_std=float(best[obj + "_std"]) if settings.folds > 1 else None)
    log(f"{len(table)} trials ({len(done)} completed); best: trial {best['trial']} {obj} {best[obj]:.4f}{spread}; "
        f"{out / 'trials.csv'}, {out / 'best.yaml'}, {out / 'trials.png'}")
    return summary


def plot_trials(table: pd.DataFrame, settings: SearchSettings, path: Path) -> None:
    """The objective per trial (with its fold spread) and against each searched setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = settings.objective
    params = settings.space.params
    n = 1 + len(params)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    y = pd.to_numeric(table[obj], errors="coerce")
    ax = axes[0][0]
    err = pd.to_numeric(table[obj + "_std"], errors="coerce") if settings.folds > 1 else None
    ax.errorbar(range(len(table)), y, yerr=err, fmt="o", capsize=3)
    ax.plot(range(len(table)), y.cummax(), "-", alpha=0.5, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(obj)
    ax.legend(fontsize=8)
    for i, p in enumerate(params, start=1):
        ax = axes[i // cols][i % cols]
        x = table[p.key]
        ok = (x != "") & y.notna()
        if p.kind in ("int", "float"):
            ax.scatter(pd.to_numeric(x[ok]), y[ok])
            if p.log:
                ax.set_xscale("log")
            ax.set_xlim(p.min, p.max)  # the searched range
        else:
            cats = [str(v) for v in (p.values if p.kind == "choice" else (False, True))]
            pos = {c: j for j, c in enumerate(cats)}
            ax.scatter([pos.get(str(v), -1) for v in x[ok]], y[ok])
            ax.set_xticks(range(len(cats)), cats, rotation=20, fontsize=8)
        ax.set_xlabel(p.key)
        ax.set_ylabel(obj)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    from birdnet_tf.fileio import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
