"""Training: run folder, resumable fit, file-level validation, checkpoints, best model.

A run folder holds::

    config.json      resolved config + package version + data folder
    labels.txt       class order of the model outputs
    split.csv        which file went where (train/val), with its prepared WAV
    history.csv      one row per finished epoch (Keras CSVLogger, appended on resume)
    state.json       last finished epoch, best score and epoch
    checkpoints/     last.keras (model + optimizer, for resuming), epoch_NNN.weights.h5
    best.keras       the model of the best epoch by ``train.monitor``
    logs/            TensorBoard
    eval/            report.json and plots (written by evaluate at the end)

Running ``train`` again on the same folder with the same config resumes after the
last finished epoch; with a different config it refuses instead of mixing runs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from birdnet_tf.config import Config, read_config_json, save_config
from birdnet_tf.fileio import write_json_atomic
from birdnet_tf.errors import BirdnetError, ConfigError


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path: return self.root / "config.json"
    @property
    def labels(self) -> Path: return self.root / "labels.txt"
    @property
    def split(self) -> Path: return self.root / "split.csv"
    @property
    def history(self) -> Path: return self.root / "history.csv"
    @property
    def state(self) -> Path: return self.root / "state.json"
    @property
    def checkpoints(self) -> Path: return self.root / "checkpoints"
    @property
    def last(self) -> Path: return self.root / "checkpoints" / "last.keras"
    @property
    def best(self) -> Path: return self.root / "best.keras"
    @property
    def logs(self) -> Path: return self.root / "logs"
    @property
    def eval(self) -> Path: return self.root / "eval"


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)) and list(va) == list(vb)):
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def check_run_folder(paths: RunPaths, cfg: Config) -> bool:
    """True when ``paths`` holds an earlier run of ``cfg`` to resume; raises if it holds something else."""
    if not paths.root.exists():
        return False
    if not paths.root.is_dir():
        raise BirdnetError(f"{paths.root}: exists and is not a folder")
    if not paths.config.exists():
        if any(paths.root.iterdir()):
            raise BirdnetError(
                f"{paths.root}: folder is not empty and holds no birdnet-tf run (no config.json); "
                "refusing to write into it — choose a new --out")
        return False
    old, _ = read_config_json(paths.config)
    diffs = _diff(old.to_dict(), cfg.to_dict())
    if diffs:
        raise ConfigError(
            f"{paths.root}: holds a run with a different config ({'; '.join(diffs[:6])}"
            f"{' …' if len(diffs) > 6 else ''}); choose a new --out to start another run")
    return True


def check_input_length(cfg: Config) -> None:
    """Refuses an excerpt shorter than the model's receptive field, before anything is written."""
    from birdnet_tf.models.build import build_model, min_samples

    need = min_samples(build_model(cfg, 1), cfg)
    if cfg.excerpt_samples < need:
        raise ConfigError(f"data.excerpt_s={cfg.data.excerpt_s} is shorter than the {cfg.model.name} model's "
                          f"receptive field ({need / cfg.audio.sample_rate_hz:.2f} s with these frontend "
                          "settings); raise data.excerpt_s")


def _is_tty() -> bool:
    return sys.stdout.isatty() and not os.environ.get("CI")


def configure_precision(cfg: Config, log=print) -> str:
    """Sets Keras' global dtype policy: mixed_float16 on a GPU when asked for, else float32."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    policy = "mixed_float16" if (gpus and cfg.train.mixed_precision) else "float32"
    keras.mixed_precision.set_global_policy(policy)
    log(f"devices: {len(gpus)} GPU(s); dtype policy {policy}")
    return policy


def make_optimizer(cfg: Config, steps_per_epoch: int):
    import keras

    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    if t.schedule == "constant":
        lr = t.learning_rate
    elif t.schedule == "cosine":
        warm = int(round(t.warmup_epochs * steps_per_epoch))
        warm = min(warm, total - 1)
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=t.learning_rate * (0.1 if warm else 1.0),
            decay_steps=max(1, total - warm), alpha=t.min_learning_rate / t.learning_rate,
            warmup_target=t.learning_rate if warm else None, warmup_steps=warm)
    else:
        raise ConfigError(f"train.schedule must be cosine or constant, not '{t.schedule}'")
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=t.weight_decay)


def make_loss(cfg: Config):
    import keras

    if cfg.train.loss == "bce":
        return keras.losses.BinaryCrossentropy(label_smoothing=cfg.train.label_smoothing)
    if cfg.train.loss == "cce":
        return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing)
    raise ConfigError(f"train.loss must be bce or cce, not '{cfg.train.loss}'")


def _callbacks_module():
    import keras

    class FileValidation(keras.callbacks.Callback):
        """Scores validation files at each epoch's end (windows pooled per file) and adds
        ``val_loss``, ``val_mlrap``, ``val_mlrap_bg``, ``val_mrr``, ``val_cmap``,
        ``val_top1``, ``val_top5`` to the epoch logs."""

        def __init__(self, windows, primary_idx, background, targets, pooling, loss):
            super().__init__()
            self.windows, self.primary_idx, self.background = windows, primary_idx, background
            self.targets, self.pooling, self.loss = targets, pooling, loss

        def on_epoch_end(self, epoch, logs=None):
            from birdnet_tf.evaluate.run import score_windows

            scores = score_windows(self.model, self.windows, len(self.primary_idx), self.pooling)
            metrics = file_metrics(scores, self.primary_idx, self.background, self.targets, self.loss)
            if logs is not None:
                logs.update({f"val_{k}": v for k, v in metrics.items()})

    class RunCheckpoint(keras.callbacks.Callback):
        """Saves ``last.keras`` + ``epoch_NNN.weights.h5`` every epoch, ``best.keras`` on
        improvement of ``monitor``, and ``state.json``; stops early after ``patience``."""

        def __init__(self, paths: RunPaths, monitor: str, patience: int, state: dict):
            super().__init__()
            self.paths, self.monitor, self.patience = paths, monitor, patience
            self.state = state
            self.t0 = time.time()

        def on_train_begin(self, logs=None):
            # wall time accumulates over resumed sessions
            self.t0 = time.time() - float(self.state.get("elapsed_s", 0.0))

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            logs["time_s"] = round(time.time() - self.t0, 1)
            self.state["elapsed_s"] = logs["time_s"]
            value = logs.get(self.monitor)
            if value is None:
                raise BirdnetError(f"train.monitor '{self.monitor}' is not among the logged metrics "
                                   f"({', '.join(sorted(logs))})")
            if math.isnan(float(value)):
                raise BirdnetError(f"train.monitor '{self.monitor}' is NaN at epoch {epoch + 1}; "
                                   "training diverged (try a lower train.learning_rate)")
            self.paths.checkpoints.mkdir(parents=True, exist_ok=True)
            value = float(value)
            improved = self.state.get("best") is None or value > self.state["best"]
            if improved:
                _atomic_save(self.model, self.paths.best)
                self.state.update(best=value, best_epoch=epoch + 1, best_time_s=logs["time_s"])
            self.model.save_weights(str(self.paths.checkpoints / f"epoch_{epoch + 1:03d}.weights.h5"))
            _atomic_save(self.model, self.paths.last)
            self.state.update(epoch=epoch + 1, monitor=self.monitor,
                              **{f"last_{k}": float(v) for k, v in logs.items() if np.isscalar(v)})
            write_json_atomic(self.paths.state, self.state)
            marker = " *best*" if improved else ""
            print(f"epoch {epoch + 1}: {self.monitor} {value:.4f} (best {self.state['best']:.4f} "
                  f"at epoch {self.state['best_epoch']}){marker}", flush=True)
            if self.patience and epoch + 1 - self.state["best_epoch"] >= self.patience:
                print(f"early stopping: no improvement of {self.monitor} for {self.patience} epochs", flush=True)
                self.state["stopped_early"] = True
                write_json_atomic(self.paths.state, self.state)
                self.model.stop_training = True

    return FileValidation, RunCheckpoint


def _atomic_save(model, path: Path) -> None:
    from birdnet_tf.fileio import atomic_path

    with atomic_path(path, suffix=".keras") as tmp:  # Keras insists on the suffix
        model.save(str(tmp))


def file_metrics(scores: np.ndarray, primary_idx: np.ndarray, background: np.ndarray,
                 targets: np.ndarray, loss: str = "bce") -> dict[str, float]:
    """The validation metrics logged each epoch, from pooled file scores; ``loss`` is the
    training loss (``bce`` or ``cce``) computed on the file scores, so it compares with ``loss``."""
    from birdnet_tf.evaluate.metrics import evaluate_scores

    m = evaluate_scores(scores, primary_idx, background)
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    if loss == "cce":
        t = targets / np.maximum(targets.sum(axis=1, keepdims=True), 1e-7)
        value = float(-np.mean(np.sum(t * np.log(p), axis=1)))
    else:
        value = float(-np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)))
    keys = ("mlrap", "mlrap_bg", "mrr", "cmap", "top1", "top5")
    return {"loss": value, **{k: float(m[k]) if m[k] is not None else float("nan") for k in keys}}


def _trim_history(history: Path, keep_epochs: int) -> None:
    """Drops history rows of epochs after the last checkpoint (they will be run again)."""
    if not history.exists():
        return
    df = pd.read_csv(history)
    if "epoch" in df.columns and (df["epoch"] >= keep_epochs).any():
        df = df[df["epoch"] < keep_epochs]
        df.to_csv(history, index=False)


def train(cfg: Config, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
          cache_dir: str | os.PathLike | None = None, workers: int = 2, evaluate: bool = True,
          log=print) -> dict:
    """Trains a model on a dataset folder into a run folder; resumes an interrupted run.

    Args:
        cfg: The run's config.
        data_dir: A dataset folder (raw or prepared; see :mod:`birdnet_tf.data.dataset`).
        out_dir: The run folder (created; resumed if it holds the same config).
        cache_dir: Where raw audio is prepared (default: a per-dataset cache folder).
        workers: Processes for decoding audio.
        evaluate: Write the evaluation report of the best model at the end.

    Returns:
        A summary dict: run folder, best epoch and score, epochs run, wall time.
    """
    import keras

    from birdnet_tf.data import pipeline
    from birdnet_tf.data.dataset import prepared_catalog
    from birdnet_tf.data.labels import LabelSet, background_matrix, encode_targets, primary_indices
    from birdnet_tf.data.split import describe_split, split_catalog
    from birdnet_tf.models.build import build_model, load_keras_model

    t0 = time.time()
    paths = RunPaths(Path(out_dir))
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BirdnetError(f"{data_dir}: dataset folder does not exist")
    resume = check_run_folder(paths, cfg)
    check_input_length(cfg)
    state = json.loads(paths.state.read_text()) if resume and paths.state.exists() else {}
    if resume and (state.get("epoch", 0) >= cfg.train.epochs or state.get("stopped_early")):
        log(f"{paths.root}: training already finished (epoch {state.get('epoch')}, "
            f"best {state.get('monitor')} {state.get('best'):.4f} at epoch {state.get('best_epoch')})")
        return _summary(paths, state, t0, epochs_run=0)

    paths.root.mkdir(parents=True, exist_ok=True)
    catalog = prepared_catalog(data_dir, cfg.audio.sample_rate_hz, cache_dir, workers=workers,
                               progress=_is_tty(), log=log)
    if resume and paths.split.exists() and paths.labels.exists():
        labels = LabelSet.load(paths.labels)
        split = pd.read_csv(paths.split)
        side = dict(zip(split["key"], split["split"]))
        missing = set(side) - set(catalog["key"])
        if missing:
            raise BirdnetError(f"{paths.root}: resuming needs {len(missing)} file(s) of the saved split that "
                               f"the dataset no longer has, e.g. {sorted(missing)[0]}")
        catalog = catalog[catalog["key"].isin(side)]
        train_df = catalog[catalog["key"].map(side) == "train"]
        val_df = catalog[catalog["key"].map(side) == "val"]
        log(f"resuming {paths.root} after epoch {state.get('epoch', 0)}")
    else:
        labels = LabelSet.from_catalog(catalog)
        train_df, val_df = split_catalog(catalog, cfg.data.val_fraction, cfg.data.seed, cfg.data.split_by)
        labels.save(paths.labels)
        split = pd.concat([train_df, val_df])[["key", "split", "primary_label", "wav_path", "duration_s"]]
        split["secondary_labels"] = [";".join(v) for v in pd.concat([train_df, val_df])["secondary_labels"]]
        if "recordist" in train_df.columns:
            split["recordist"] = list(pd.concat([train_df, val_df])["recordist"])
        split.to_csv(paths.split, index=False)
        save_config(cfg, paths.config, data_dir=str(data_dir.resolve()), n_classes=len(labels))
    log(describe_split(train_df, val_df))

    policy = configure_precision(cfg, log)
    # seeds initial weights, excerpt positions and augmentation (parallel tf.data and
    # multi-threaded kernels still make runs differ slightly)
    keras.utils.set_random_seed(cfg.data.seed + int(state.get("epoch", 0)))
    targets = encode_targets(train_df, labels, cfg.data.background_weight)
    if cfg.train.loss == "cce":
        targets = targets / np.maximum(targets.sum(axis=1, keepdims=True), 1e-6)
    durations = train_df["duration_s"].to_numpy(float)
    steps = cfg.train.steps_per_epoch or pipeline.steps_in_epoch(durations, cfg)
    train_ds = pipeline.training_dataset(list(train_df["wav_path"]), targets, durations, cfg, repeat=True)
    windows = pipeline.evaluation_windows(list(val_df["wav_path"]), cfg)
    val_primary = primary_indices(val_df, labels)
    val_bg = background_matrix(val_df, labels)
    val_targets = encode_targets(val_df, labels, cfg.data.background_weight)

    initial_epoch = int(state.get("epoch", 0)) if resume else 0
    if resume and paths.last.exists():
        model = load_keras_model(paths.last)
    else:
        initial_epoch, state = 0, {}
        model = build_model(cfg, len(labels))
        model.compile(optimizer=make_optimizer(cfg, steps), loss=make_loss(cfg))
    _trim_history(paths.history, initial_epoch)

    FileValidation, RunCheckpoint = _callbacks_module()
    callbacks = [
        FileValidation(windows, val_primary, val_bg, val_targets, cfg.data.file_pooling, cfg.train.loss),
        RunCheckpoint(paths, cfg.train.monitor, cfg.train.early_stopping_patience, state),
        keras.callbacks.CSVLogger(str(paths.history), append=True),
        keras.callbacks.TensorBoard(log_dir=str(paths.logs), write_graph=False, profile_batch=0),
    ]
    log(f"training {cfg.model.name} ({model.count_params():,} parameters, {policy}) on {len(train_df)} files, "
        f"validating on {len(val_df)} files; {steps} steps/epoch, epochs {initial_epoch + 1}..{cfg.train.epochs}")
    model.fit(train_ds, epochs=cfg.train.epochs, initial_epoch=initial_epoch,
              steps_per_epoch=steps, shuffle=False, callbacks=callbacks, verbose=1 if _is_tty() else 2)
    state = json.loads(paths.state.read_text()) if paths.state.exists() else state
    summary = _summary(paths, state, t0, epochs_run=int(state.get("epoch", 0)) - initial_epoch)
    if evaluate and paths.best.exists():
        from birdnet_tf.evaluate.run import evaluate_run

        summary["report"] = str(evaluate_run(paths.root, log=log)["report_dir"])
    return summary


def _summary(paths: RunPaths, state: dict, t0: float, epochs_run: int) -> dict:
    return {"run_dir": str(paths.root), "best_model": str(paths.best), "best_epoch": state.get("best_epoch"),
            "monitor": state.get("monitor"), "best": state.get("best"), "epochs": state.get("epoch"),
            "best_time_s": state.get("best_time_s"), "epochs_run": epochs_run,
            "wall_s": round(time.time() - t0, 1)}
