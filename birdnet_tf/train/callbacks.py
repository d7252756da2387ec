"""The callbacks of a training run: file-level validation, run checkpoints, the plateau schedule.

:func:`make_callbacks` puts them in the order they must run: :class:`FileValidation` adds the
``val_*`` metrics to the epoch logs, :class:`PlateauDecay` (``train.schedule=plateau``) reads them
and lowers the rate, :class:`RunCheckpoint` saves the epoch (``last.keras``, ``best.keras``,
``history.csv``, ``state.json``, counters of the plateau schedule included) and stops early.

Distribution strategies (issue 14): only the chief may write run files, so a multi-worker run
passes ``chief=False`` and the paths of a temporary folder to :func:`make_callbacks` on the
other workers: their :class:`RunCheckpoint` saves there (every worker saves, as TensorFlow's
multi-worker guidance asks) and they get no TensorBoard writer
(:mod:`birdnet_tf.train.custom_loop` runs them).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from birdnet_tf.config import Config
from birdnet_tf.errors import BirdnetError
from birdnet_tf.fileio import atomic_path, write_json_atomic, write_text_atomic
from birdnet_tf.runs import RunPaths


#: The validation metrics of :func:`file_metrics` (logged as ``val_<name>``).
FILE_METRICS = ("loss", "mlrap", "mlrap_bg", "mrr", "cmap", "top1", "top5")


class FileValidation(keras.callbacks.Callback):
    """Scores validation files at each epoch's end (windows pooled per file) and adds
    ``val_loss``, ``val_mlrap``, ``val_mlrap_bg``, ``val_mrr``, ``val_cmap``,
    ``val_top1``, ``val_top5`` to the epoch logs (:data:`FILE_METRICS`).

    ``predict(model, windows)`` scores the windows (default: Keras' ``predict``)."""

    def __init__(self, windows, primary_idx, background, targets, pooling, loss, predict=None):
        super().__init__()
        self.windows, self.primary_idx, self.background = windows, primary_idx, background
        self.targets, self.pooling, self.loss, self.predict = targets, pooling, loss, predict

    def on_epoch_end(self, epoch, logs=None):
        from birdnet_tf.distill.teachers import plain_model
        from birdnet_tf.evaluate.run import pool_by_file, predict_windows

        windows = self.windows
        scores = pool_by_file((self.predict or predict_windows)(plain_model(self.model), windows),
                              windows.file_index, len(self.primary_idx), self.pooling)
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
        from birdnet_tf.distill.teachers import plain_model

        model = plain_model(self.model)  # a distiller's student, with the shared optimizer
        if improved:
            save_model_atomic(model, self.paths.best)
            self.state.update(best=value, best_epoch=epoch + 1, best_time_s=logs["time_s"])
        with atomic_path(self.paths.checkpoints / f"epoch_{epoch + 1:03d}.weights.h5",
                         suffix=".weights.h5") as tmp:
            model.save_weights(str(tmp))
        save_model_atomic(model, self.paths.last)
        self.state.update(epoch=epoch + 1, monitor=self.monitor,
                          **{f"last_{k}": float(v) for k, v in logs.items() if np.isscalar(v)})
        # history before state: a kill between the two leaves a row that the rerun trims
        append_history_row(self.paths.history, epoch, logs)
        write_json_atomic(self.paths.state, self.state)
        marker = " *best*" if improved else ""
        print(f"epoch {epoch + 1}: {self.monitor} {value:.4f} (best {self.state['best']:.4f} "
              f"at epoch {self.state['best_epoch']}){marker}", flush=True)
        if self.patience and epoch + 1 - self.state["best_epoch"] >= self.patience:
            print(f"early stopping: no improvement of {self.monitor} for {self.patience} epochs", flush=True)
            self.state["stopped_early"] = True
            write_json_atomic(self.paths.state, self.state)
            self.model.stop_training = True

class PlateauDecay(keras.callbacks.Callback):
    """OFAI's learning-rate decay (``train.schedule=plateau``): the rate is multiplied by
    ``factor`` when ``monitor`` has not improved for ``patience`` epochs, at most ``drops``
    times, never below ``min_lr``; during the first ``warmup_steps`` optimizer steps it ramps
    linearly from 0.1 × to 1 × the current level. Its counters live in ``state["plateau"]``
    (saved to ``state.json`` by :class:`RunCheckpoint`, which must come after it) and the
    rate itself in the optimizer, so a resumed run goes on where it stopped."""

    def __init__(self, monitor: str, patience: int, factor: float, drops: int, base_lr: float,
                 min_lr: float, warmup_steps: int, state: dict, log=print):
        super().__init__()
        self.monitor, self.patience, self.factor, self.max_drops = monitor, patience, factor, drops
        self.base_lr, self.min_lr, self.warmup_steps = base_lr, min_lr, int(warmup_steps)
        self.state, self.log = state, log
        self.state.setdefault("plateau", {"best": None, "wait": 0, "drops": 0})
        self.warmed_up = self.warmup_steps <= 0

    @property
    def level(self) -> float:
        return max(self.min_lr, self.base_lr * self.factor ** self.state["plateau"]["drops"])

    def on_train_batch_begin(self, batch, logs=None):
        if self.warmed_up:  # no per-step work after the warm-up
            return
        step = int(self.model.optimizer.iterations.numpy())
        self.warmed_up = step >= self.warmup_steps
        if step < self.warmup_steps:
            self.model.optimizer.learning_rate.assign(self.level * (0.1 + 0.9 * step / self.warmup_steps))
        elif step == self.warmup_steps:
            self.model.optimizer.learning_rate.assign(self.level)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        p = self.state["plateau"]
        value = logs.get(self.monitor)
        if value is None or math.isnan(float(value)):
            return  # RunCheckpoint reports a missing or NaN monitor
        if p["best"] is None or float(value) > p["best"]:
            p.update(best=float(value), wait=0)
        else:
            p["wait"] += 1
            if p["wait"] >= self.patience and p["drops"] < self.max_drops:
                p.update(drops=p["drops"] + 1, wait=0)
                self.model.optimizer.learning_rate.assign(self.level)
                self.log(f"plateau: {self.monitor} did not improve for {self.patience} epochs; learning rate "
                         f"× {self.factor:g} → {self.level:.3g} (drop {p['drops']} of {self.max_drops})")
        logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())


def save_model_atomic(model, path: Path) -> None:
    """Saves ``model`` to ``path`` (``.keras``) through a temporary file, so a kill never leaves half a file."""
    with atomic_path(path, suffix=".keras") as tmp:  # Keras insists on the suffix
        model.save(str(tmp))


def file_metrics(scores: np.ndarray, primary_idx: np.ndarray, background: np.ndarray,
                 targets: np.ndarray, loss: str = "bce") -> dict[str, float]:
    """The validation metrics logged each epoch, from pooled file scores; ``loss`` is the
    training loss (``train.loss``) computed on the file scores, so it compares with ``loss``."""
    from birdnet_tf.evaluate.metrics import evaluate_scores
    from birdnet_tf.train.losses import loss_value

    m = evaluate_scores(scores, primary_idx, background)
    value = loss_value(loss, targets, scores)
    return {"loss": value, **{k: float(m[k]) if m[k] is not None else float("nan") for k in FILE_METRICS[1:]}}


def read_history_rows(history: Path) -> pd.DataFrame:
    """The rows of ``history.csv``; an empty or unreadable file (a run killed by an older
    version while Keras' CSVLogger was writing) counts as no rows."""
    try:
        return pd.read_csv(history)
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return pd.DataFrame()


def append_history_row(history: Path, epoch: int, logs: dict) -> None:
    """Adds (or replaces) the row of 0-based ``epoch`` in ``history.csv``, rewriting the file
    atomically, in Keras CSVLogger's layout (``epoch`` then the metrics in sorted order)."""
    df = read_history_rows(history)
    if "epoch" in df.columns:
        df = df[df["epoch"] < epoch]
    row = {"epoch": epoch, **{k: float(v) for k, v in sorted(logs.items()) if np.isscalar(v)}}
    df = pd.concat([df, pd.DataFrame([row])], ignore_index=True) if len(df) else pd.DataFrame([row])
    write_text_atomic(history, df.to_csv(index=False))


def trim_history(history: Path, keep_epochs: int) -> None:
    """Drops history rows of epochs after the last checkpoint (they will be run again)."""
    if not history.exists():
        return
    df = read_history_rows(history)
    if "epoch" not in df.columns:  # empty or broken: the finished epochs' rows are lost, not the run
        history.unlink()
    elif (df["epoch"] >= keep_epochs).any():
        write_text_atomic(history, df[df["epoch"] < keep_epochs].to_csv(index=False))


def make_callbacks(cfg: Config, paths: RunPaths, windows, val_primary, val_background, val_targets,
                   steps: int, state: dict, log=print, chief: bool = True) -> list[keras.callbacks.Callback]:
    """The callbacks of a run of ``cfg``, in order (see the module docstring).

    Args:
        windows, val_primary, val_background, val_targets: The validation files' evaluation
            windows (:class:`~birdnet_tf.data.pipeline.WindowSet`) and their labels.
        steps: Optimizer steps per epoch (the plateau schedule's warm-up is counted in steps).
        state: The run's state (``state.json``), updated in place by the callbacks.
        chief: False on a non-chief worker of a multi-worker run: ``paths`` is then its temporary
            folder, and it gets no TensorBoard writer.
    """
    t = cfg.train
    plateau = [] if t.schedule != "plateau" else [PlateauDecay(
        t.monitor, t.lr_plateau_patience, t.lr_step_factor, t.lr_plateau_drops, t.learning_rate, t.min_learning_rate,
        min(int(round(t.warmup_epochs * steps)), max(0, t.epochs * steps - 1)), state, log)]
    board = [keras.callbacks.TensorBoard(log_dir=str(paths.logs), write_graph=False, profile_batch=0)]
    return [FileValidation(windows, val_primary, val_background, val_targets, cfg.data.file_pooling, t.loss),
            *plateau,  # before RunCheckpoint, which saves its counters
            RunCheckpoint(paths, t.monitor, t.early_stopping_patience, state),
            *(board if chief else [])]
