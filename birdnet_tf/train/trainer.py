"""Training: run folder, resumable fit, file-level validation, checkpoints, best model.

A run folder holds::

    config.json      resolved config + package version + data folder
    labels.txt       class order of the model outputs
    split.csv        which file went where (train/val), with its prepared WAV
    history.csv      one row per finished epoch (CSVLogger's columns; rewritten atomically each epoch)
    state.json       last finished epoch, best score and epoch
    checkpoints/     last.keras (model + optimizer, for resuming), epoch_NNN.weights.h5
    best.keras       the model of the best epoch by ``train.monitor``
    logs/            TensorBoard
    eval/            report.json and plots (written by evaluate at the end)
    metadata_encoder.json   runs with metadata.use only/combined: the feature encoder fitted on the
                     training files (split.csv then also holds their date, time, latitude,
                     longitude and elevation, so evaluation needs no dataset)

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
from birdnet_tf.fileio import atomic_path, remove_stale_parts, write_json_atomic, write_text_atomic
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


def check_classes(labels, data_dir: Path) -> None:
    """Refuses a dataset of one class: a classifier needs two (one softmax output scores 1.0 always)."""
    if len(labels) < 2:
        raise BirdnetError(f"{data_dir}: the dataset has {len(labels)} class ({', '.join(labels) or 'none'}); "
                           "a classifier needs at least two — add recordings of another species")


def check_input_length(cfg: Config) -> None:
    """Refuses an excerpt shorter than the model's receptive field, before anything is written."""
    from birdnet_tf.models.build import build_model, min_samples

    if cfg.metadata.use == "only":  # the metadata MLP reads no audio
        return
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


def register_schedules() -> dict[str, type]:
    """Defines and registers (once) the learning-rate schedules that Keras lacks; returns them by name.

    Call before loading a ``.keras`` file compiled with one of them (``last.keras``,
    ``best.keras``); :func:`make_optimizer` calls it. All are ``keras.optimizers.schedules.
    LearningRateSchedule`` subclasses serialised as ``birdnet_tf>ClassName``. With
    ``s`` the optimizer step, ``w = warmup_steps`` and ``t = max(0, s - w)`` (steps after warm-up):

    - warm-up (every schedule, ``s < w``): linear from ``0.1 × lr`` to ``lr``, as Keras' ``CosineDecay``;
    - ``ConstantSchedule``: ``lr``;
    - ``StepSchedule``: ``max(min_lr, lr × factor ** floor(t / (step_epochs × steps_per_epoch)))``;
    - ``LinearSchedule``: ``lr + (min_lr − lr) × min(1, t / decay_steps)``;
    - ``RootSchedule`` (the 2018 baseline's ``lr_start / sqrt(epoch)`` with 1-based epochs, made
      continuous per step): ``max(min_lr, lr / sqrt(1 + t / steps_per_epoch))`` — exactly the
      baseline's value at the start of each epoch after warm-up.

    Also registers the frontend-learning-rate optimizers (:mod:`birdnet_tf.train.frontend_lr`).
    """
    from birdnet_tf.train.frontend_lr import lr_scaled_optimizers

    lr_scaled_optimizers()
    if _SCHEDULES:
        return _SCHEDULES
    import keras
    from keras import ops

    class _WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, learning_rate: float, min_learning_rate: float = 0.0, warmup_steps: int = 0,
                     steps_per_epoch: int = 1, decay_steps: int = 1, step_epochs: float = 1.0,
                     step_factor: float = 1.0):
            super().__init__()
            self.learning_rate, self.min_learning_rate = float(learning_rate), float(min_learning_rate)
            self.warmup_steps, self.steps_per_epoch = int(warmup_steps), max(1, int(steps_per_epoch))
            self.decay_steps, self.step_epochs = max(1, int(decay_steps)), float(step_epochs)
            self.step_factor = float(step_factor)

        def _decay(self, t):  # t: float32 steps after warm-up
            raise NotImplementedError

        def __call__(self, step):
            s = ops.cast(step, "float32")
            lr = ops.maximum(self._decay(ops.maximum(s - float(self.warmup_steps), 0.0)), 0.0)
            if self.warmup_steps <= 0:
                return lr
            start = 0.1 * self.learning_rate
            ramp = start + (self.learning_rate - start) * s / float(self.warmup_steps)
            return ops.where(s < float(self.warmup_steps), ramp, lr)

        def get_config(self):
            return {"learning_rate": self.learning_rate, "min_learning_rate": self.min_learning_rate,
                    "warmup_steps": self.warmup_steps, "steps_per_epoch": self.steps_per_epoch,
                    "decay_steps": self.decay_steps, "step_epochs": self.step_epochs,
                    "step_factor": self.step_factor}

    register = keras.saving.register_keras_serializable(package="birdnet_tf")

    @register
    class ConstantSchedule(_WarmupSchedule):
        def _decay(self, t):
            return ops.zeros_like(t) + self.learning_rate

    @register
    class StepSchedule(_WarmupSchedule):
        def _decay(self, t):
            size = max(1.0, self.step_epochs * self.steps_per_epoch)
            lr = self.learning_rate * ops.power(self.step_factor, ops.floor(t / size))
            return ops.maximum(lr, self.min_learning_rate)

    @register
    class LinearSchedule(_WarmupSchedule):
        def _decay(self, t):
            frac = ops.minimum(t / float(self.decay_steps), 1.0)
            return self.learning_rate + (self.min_learning_rate - self.learning_rate) * frac

    @register
    class RootSchedule(_WarmupSchedule):
        def _decay(self, t):
            lr = self.learning_rate / ops.sqrt(1.0 + t / float(self.steps_per_epoch))
            return ops.maximum(lr, self.min_learning_rate)

    _SCHEDULES.update(constant=ConstantSchedule, step=StepSchedule, linear=LinearSchedule, root=RootSchedule)
    return _SCHEDULES


_SCHEDULES: dict[str, type] = {}

SCHEDULES = ("cosine", "constant", "step", "linear", "root", "plateau")
OPTIMIZERS = ("adamw", "adam", "sgd", "nesterov")


def make_schedule(cfg: Config, steps_per_epoch: int):
    """The learning rate of ``cfg.train`` for ``steps_per_epoch`` optimizer steps per epoch.

    ``cosine`` is Keras' ``CosineDecay`` (to ``min_learning_rate`` at the end of the run),
    ``constant`` without warm-up a plain float; the others are the schedules of
    :func:`register_schedules`. Warm-up lasts ``warmup_epochs × steps_per_epoch`` steps
    (at most all steps but one) and runs from ``0.1 × learning_rate`` to ``learning_rate``.

    Returns:
        A float or a ``keras.optimizers.schedules.LearningRateSchedule`` (step → learning rate).
    """
    import keras

    t = cfg.train
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, not '{t.schedule}'")
    if t.learning_rate <= 0 or t.min_learning_rate < 0:
        raise ConfigError(f"train.learning_rate must be > 0 and train.min_learning_rate >= 0 (got "
                          f"{t.learning_rate}, {t.min_learning_rate})")
    if t.schedule == "step" and (t.lr_step_epochs <= 0 or not 0 < t.lr_step_factor <= 1):
        raise ConfigError(f"train.schedule=step needs train.lr_step_epochs > 0 and 0 < train.lr_step_factor <= 1 "
                          f"(got {t.lr_step_epochs}, {t.lr_step_factor})")
    if t.schedule == "plateau" and (t.lr_plateau_patience < 1 or t.lr_plateau_drops < 0
                                    or not 0 < t.lr_step_factor <= 1):
        raise ConfigError(f"train.schedule=plateau needs train.lr_plateau_patience >= 1, train.lr_plateau_drops >= 0 "
                          f"and 0 < train.lr_step_factor <= 1 (got {t.lr_plateau_patience}, {t.lr_plateau_drops}, "
                          f"{t.lr_step_factor})")
    if t.schedule == "plateau":  # a plain rate the PlateauDecay callback lowers (and ramps during warm-up)
        return float(t.learning_rate)
    steps_per_epoch = max(1, int(steps_per_epoch))
    total = max(1, t.epochs * steps_per_epoch)
    warm = min(int(round(t.warmup_epochs * steps_per_epoch)), total - 1)
    if t.schedule == "cosine":  # exactly as before the other schedules existed
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=t.learning_rate * (0.1 if warm else 1.0),
            decay_steps=max(1, total - warm), alpha=t.min_learning_rate / t.learning_rate,
            warmup_target=t.learning_rate if warm else None, warmup_steps=warm)
    if t.schedule == "constant" and not warm:
        return t.learning_rate
    return register_schedules()[t.schedule](
        learning_rate=t.learning_rate, min_learning_rate=t.min_learning_rate, warmup_steps=warm,
        steps_per_epoch=steps_per_epoch, decay_steps=max(1, total - warm), step_epochs=t.lr_step_epochs,
        step_factor=t.lr_step_factor)


def make_optimizer(cfg: Config, steps_per_epoch: int):
    """The Keras optimizer of ``cfg.train`` with its learning-rate schedule (:func:`make_schedule`).

    ``adamw`` (the default) and ``adam`` are Keras' AdamW / Adam, ``sgd`` is SGD with
    ``train.momentum`` (0 = plain SGD) and ``nesterov`` SGD with Nesterov momentum.
    ``train.weight_decay`` goes to every optimizer's ``weight_decay`` argument: Keras 3 applies
    it decoupled from the gradient (``w -= lr × weight_decay × w`` each step), so ``adam`` with
    weight decay behaves as ``adamw``; set ``train.weight_decay=0`` for the classic Adam / SGD.
    With ``frontend.frontend_lr_scale != 1`` the same optimizers come from
    :func:`birdnet_tf.train.frontend_lr.lr_scaled_optimizers`: the frontend layers' updates
    use ``frontend_lr_scale × learning_rate``.
    """
    import keras

    t = cfg.train
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, not '{t.optimizer}'")
    if t.weight_decay < 0 or not 0 <= t.momentum < 1:
        raise ConfigError(f"train.weight_decay must be >= 0 and 0 <= train.momentum < 1 "
                          f"(got {t.weight_decay}, {t.momentum})")
    lr = make_schedule(cfg, steps_per_epoch)
    opt = {"AdamW": keras.optimizers.AdamW, "Adam": keras.optimizers.Adam, "SGD": keras.optimizers.SGD}
    scale, kw = cfg.frontend.frontend_lr_scale, {}
    if scale != 1.0:  # OFAI's first_params_eta_scale
        if not scale > 0:
            raise ConfigError(f"frontend.frontend_lr_scale must be > 0, not {scale}")
        from birdnet_tf.train.frontend_lr import lr_scaled_optimizers

        scaled = lr_scaled_optimizers()
        opt, kw = {"AdamW": scaled["adamw"], "Adam": scaled["adam"], "SGD": scaled["sgd"]}, {"lr_scale": scale}
    if t.optimizer == "adamw":
        return opt["AdamW"](learning_rate=lr, weight_decay=t.weight_decay, **kw)
    decay = t.weight_decay or None
    if t.optimizer == "adam":
        return opt["Adam"](learning_rate=lr, weight_decay=decay, **kw)
    return opt["SGD"](learning_rate=lr, momentum=t.momentum, nesterov=t.optimizer == "nesterov",
                      weight_decay=decay, **kw)


def make_loss(cfg: Config):
    """The Keras loss of ``train.loss``: ``cce``, ``bce`` or ``ce_bgtopk:k`` (:mod:`birdnet_tf.train.losses`)."""
    from birdnet_tf.train.losses import make_loss as _make_loss

    return _make_loss(cfg.train.loss, cfg.train.label_smoothing)


def read_init_weights(cfg: Config, n_classes: int, log=print) -> dict[str, list[np.ndarray]]:
    """Reads ``train.init_weights`` for a new model of ``cfg`` with ``n_classes`` outputs.

    A ``.keras`` model's layers are matched to the new model's by name and weight shapes.
    A ``.weights.h5`` file (e.g. ``checkpoints/epoch_NNN.weights.h5``) holds no layer names:
    it is loaded, layer by layer in Keras' order, into a model of ``cfg``'s architecture and
    the layers whose shapes fit are kept. With ``train.init_skip_output`` the output layer
    ``frame_logits`` is never taken, so a model trained on other classes can be fine-tuned.

    Args:
        cfg: The new run's config (``train.init_weights``, ``train.init_skip_output``, model).
        n_classes: Classes of the new model.
        log: Where the counts of loaded and skipped layers are reported.

    Returns:
        ``{layer name: weights}`` to ``set_weights`` on the new model's layers.

    Raises:
        BirdnetError: The file does not exist or cannot be read, no layer matches, or (without
            ``train.init_skip_output``) its number of classes differs from ``n_classes``.
    """
    from birdnet_tf.models.build import build_model, load_keras_model

    path, skip_output = Path(cfg.train.init_weights), cfg.train.init_skip_output
    if not path.is_file():
        raise BirdnetError(f"{path}: train.init_weights file does not exist")
    target = build_model(cfg, n_classes)
    mine = {layer.name: layer for layer in target.layers if layer.weights}
    hint = "set train.init_skip_output=true to fine-tune on new classes"
    if path.name.endswith(".keras"):
        register_schedules()
        source = load_keras_model(path)
        theirs = {layer.name: layer.get_weights() for layer in source.layers if layer.weights}
        if "frame_logits" in theirs and not skip_output and "frame_logits" in mine:
            n_theirs = theirs["frame_logits"][-1].shape[-1]
            if n_theirs != n_classes:
                raise BirdnetError(f"{path}: has {n_theirs} classes, this run {n_classes}; {hint}")
    elif path.name.endswith(".weights.h5"):
        before = {name: [np.array(w) for w in layer.get_weights()] for name, layer in mine.items()}
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                target.load_weights(str(path), skip_mismatch=True)
        except Exception as e:  # noqa: BLE001 - any reader error becomes one clear message
            raise BirdnetError(f"{path}: cannot read weights for a {cfg.model.name} model "
                               f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
        theirs = {}
        for name, layer in mine.items():
            now = layer.get_weights()
            if any(not np.array_equal(a, b) for a, b in zip(before[name], now)):
                theirs[name] = now
        if "frame_logits" not in theirs and not skip_output and len(theirs) > 0:
            raise BirdnetError(f"{path}: its output layer frame_logits does not fit this run's {n_classes} "
                               f"classes (a different number of classes); {hint}")
    else:
        raise BirdnetError(f"{path}: train.init_weights must be a .keras model or a .weights.h5 file")
    loaded, skipped = {}, []
    for name, layer in mine.items():
        weights = theirs.get(name)
        if (skip_output and name == "frame_logits") or weights is None or \
                [tuple(w.shape) for w in layer.weights] != [tuple(np.shape(w)) for w in weights]:
            skipped.append(name)
        else:
            loaded[name] = weights
    if not loaded:
        raise BirdnetError(f"{path}: none of its layers matches the {cfg.model.name} model of this config "
                           "by name and shape; nothing to start from")
    log(f"init weights from {path}: {len(loaded)} layer(s) loaded, {len(skipped)} skipped"
        f"{' (' + ', '.join(skipped[:8]) + (' …' if len(skipped) > 8 else '') + ')' if skipped else ''}")
    return loaded


def apply_init_weights(model, weights: dict[str, list[np.ndarray]]) -> None:
    """Sets the layers of ``model`` named in ``weights`` (from :func:`read_init_weights`)."""
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)


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

            from birdnet_tf.distill.teachers import plain_model

            scores = score_windows(plain_model(self.model), self.windows, len(self.primary_idx), self.pooling)
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
                _atomic_save(model, self.paths.best)
                self.state.update(best=value, best_epoch=epoch + 1, best_time_s=logs["time_s"])
            with atomic_path(self.paths.checkpoints / f"epoch_{epoch + 1:03d}.weights.h5",
                             suffix=".weights.h5") as tmp:
                model.save_weights(str(tmp))
            _atomic_save(model, self.paths.last)
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

    return FileValidation, RunCheckpoint, PlateauDecay


def _atomic_save(model, path: Path) -> None:
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
    keys = ("mlrap", "mlrap_bg", "mrr", "cmap", "top1", "top5")
    return {"loss": value, **{k: float(m[k]) if m[k] is not None else float("nan") for k in keys}}


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


def _trim_history(history: Path, keep_epochs: int) -> None:
    """Drops history rows of epochs after the last checkpoint (they will be run again)."""
    if not history.exists():
        return
    df = read_history_rows(history)
    if "epoch" not in df.columns:  # empty or broken: the finished epochs' rows are lost, not the run
        history.unlink()
    elif (df["epoch"] >= keep_epochs).any():
        write_text_atomic(history, df[df["epoch"] < keep_epochs].to_csv(index=False))


def train(cfg: Config, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
          cache_dir: str | os.PathLike | None = None, workers: int = 2, evaluate: bool = True,
          log=print, val_keys=None) -> dict:
    """Trains a model on a dataset folder into a run folder; resumes an interrupted run.

    Args:
        cfg: The run's config.
        data_dir: A dataset folder (raw or prepared; see :mod:`birdnet_tf.data.dataset`), or a
            ``birdnet-tf extract`` folder of PNG chunks (``frontend.kind=chunks`` recipes): the model
            then takes the chunk images (``build_model(..., input_kind="image")``), the examples are
            the training files' signal chunks within ``chunks.s2n_interval``, and ``config.json``
            records ``input: chunks``.
        out_dir: The run folder (created; resumed if it holds the same config).
        cache_dir: Where raw audio is prepared (default: a per-dataset cache folder).
        workers: Processes for decoding audio.
        evaluate: Write the evaluation report of the best model at the end.
        val_keys: A fixed validation set (catalog keys; ``birdnet-tf tune``'s recordist folds)
            instead of ``data.split_by``; the other files train. Recordings only, not chunk folders.

    Returns:
        A summary dict: run folder, best epoch and score, epochs run, wall time.
    """
    import keras

    from birdnet_tf.data import pipeline
    from birdnet_tf.data.dataset import prepared_catalog
    from birdnet_tf.data.labels import LabelSet, background_matrix, encode_targets, primary_indices
    from birdnet_tf.data.split import describe_split, split_catalog
    from birdnet_tf.models.build import build_model, load_keras_model

    from birdnet_tf.distill.setup import check_distill_config, resolve_paths, uses_teachers

    t0 = time.time()
    paths = RunPaths(Path(out_dir))
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BirdnetError(f"{data_dir}: dataset folder does not exist")
    cfg = resolve_paths(cfg)  # teachers recorded with absolute paths; a resume must name the same
    check_distill_config(cfg)
    resume = check_run_folder(paths, cfg)
    from birdnet_tf.models.metadata import check_metadata_config, uses_metadata

    check_metadata_config(cfg)
    check_input_length(cfg)
    make_loss(cfg)  # an unknown train.loss fails here, before anything is written
    # a birdnet-tf extract folder: the baseline's PNG chunks, read as images (checked before anything is written)
    chunk_index = pipeline.read_chunk_index(data_dir, cfg) if pipeline.is_chunk_folder(data_dir) else None
    if chunk_index is not None and val_keys is not None:
        raise ConfigError(f"{data_dir}: a given validation set (tune --folds) needs a dataset of recordings, "
                          "not a folder of PNG chunks")
    if chunk_index is not None and uses_metadata(cfg):
        raise ConfigError(f"{data_dir}: metadata.use={cfg.metadata.use} needs a dataset of recordings, "
                          "not a folder of PNG chunks")
    if uses_teachers(cfg) and (chunk_index is not None or uses_metadata(cfg)):
        raise ConfigError("distill.teachers need a waveform model on a dataset of recordings "
                          "(not PNG chunks, not metadata.use only/combined)")
    init_weights = None
    if cfg.train.init_weights and not resume and not Path(cfg.train.init_weights).is_file():
        raise BirdnetError(f"{cfg.train.init_weights}: train.init_weights file does not exist")
    state = json.loads(paths.state.read_text()) if resume and paths.state.exists() else {}
    if resume and (state.get("epoch", 0) >= cfg.train.epochs or state.get("stopped_early")):
        log(f"{paths.root}: training already finished (epoch {state.get('epoch')}, "
            f"best {state.get('monitor')} {state.get('best'):.4f} at epoch {state.get('best_epoch')})")
        return _summary(paths, state, t0, epochs_run=0)

    paths.root.mkdir(parents=True, exist_ok=True)
    catalog = None if chunk_index is not None else prepared_catalog(
        data_dir, cfg.audio.sample_rate_hz, cache_dir, workers=workers, progress=_is_tty(), log=log)
    if chunk_index is not None:
        labels, train_df, val_df, init_weights = _setup_chunk_run(cfg, chunk_index, data_dir, paths, resume, log)
    elif resume and paths.split.exists() and paths.labels.exists():
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
        check_classes(labels, data_dir)
        if val_keys is None:
            train_df, val_df = split_catalog(catalog, cfg.data.val_fraction, cfg.data.seed, cfg.data.split_by)
        else:  # a given validation set (tune's folds)
            in_val = catalog["key"].astype(str).isin({str(k) for k in val_keys})
            if not in_val.any() or in_val.all():
                raise BirdnetError(f"{data_dir}: the given validation set leaves {'no' if not in_val.any() else 'all'} "
                                   f"of the {len(catalog)} files for validation")
            train_df, val_df = catalog[~in_val].copy(), catalog[in_val].copy()
            train_df["split"], val_df["split"] = "train", "val"
            val_df.attrs["split"] = {"by": "given validation set"}
        if cfg.train.init_weights:  # checked before anything is written, applied once the model is built
            init_weights = read_init_weights(cfg, len(labels), log)
        labels.save(paths.labels)
        try:  # BirdCLEF class ids (XML / birdnet-tf sort data) travel with the run: labels.csv
            from birdnet_tf.data.labels import class_ids_from_catalog, write_labels_csv

            class_ids = class_ids_from_catalog(catalog)
        except BirdnetError as e:
            class_ids = None
            log(f"warning: no labels.csv with class ids: {e}")
        if class_ids:
            names = {} if "common_name" not in catalog.columns else {
                label: str(name) for label, name in zip(catalog["primary_label"], catalog["common_name"])
                if isinstance(name, str) and name.strip()}
            write_labels_csv(paths.root / "labels.csv", labels, class_ids, names)
        split = pd.concat([train_df, val_df])[["key", "split", "primary_label", "wav_path", "duration_s"]]
        split["secondary_labels"] = [";".join(v) for v in pd.concat([train_df, val_df])["secondary_labels"]]
        if "recordist" in train_df.columns:
            split["recordist"] = list(pd.concat([train_df, val_df])["recordist"])
        meta_extra = {}
        if uses_metadata(cfg):  # the raw metadata travels with the run: evaluation needs no dataset
            from birdnet_tf.data.metadata import FIELDS
            from birdnet_tf.models.metadata import FEATURES_KEY, num_features

            both = pd.concat([train_df, val_df])
            for column in FIELDS:
                split[column] = list(both[column]) if column in both.columns else pd.NA
            meta_extra = {FEATURES_KEY: num_features(cfg)}
        split.to_csv(paths.split, index=False)
        save_config(cfg, paths.config, data_dir=str(data_dir.resolve()), n_classes=len(labels), **meta_extra)
    log(describe_split(train_df, val_df))
    train_meta = val_meta = None
    if uses_metadata(cfg):
        train_meta, val_meta = metadata_features(cfg, paths, train_df, val_df, log)

    policy = configure_precision(cfg, log)
    # seeds initial weights, excerpt positions and augmentation (parallel tf.data and
    # multi-threaded kernels still make runs differ slightly)
    keras.utils.set_random_seed(cfg.data.seed + int(state.get("epoch", 0)))
    if chunk_index is not None:  # examples = the training files' signal chunks within chunks.s2n_interval
        train_rows, _ = pipeline.select_chunks(chunk_index[chunk_index["in_s2n_interval"]], list(train_df["key"]))
        targets = encode_targets(train_rows, labels, cfg.data.background_weight)
    else:
        targets = encode_targets(train_df, labels, cfg.data.background_weight)
    if cfg.train.loss == "cce":
        targets = targets / np.maximum(targets.sum(axis=1, keepdims=True), 1e-6)
    if chunk_index is not None:
        steps = cfg.train.steps_per_epoch or max(1, math.ceil(len(train_rows) / cfg.data.batch_size))
        train_ds = pipeline.chunk_training_dataset(list(train_rows["png"]), targets, cfg, repeat=True)
        windows, val_df = pipeline.chunk_file_windows(chunk_index, val_df, cfg, cfg.data.max_eval_windows, log)
    elif cfg.metadata.use == "only":  # the metadata MLP: one row per file, no audio read
        from birdnet_tf.models.metadata import metadata_training_dataset, metadata_windows

        durations = train_df["duration_s"].to_numpy(float)
        steps = cfg.train.steps_per_epoch or pipeline.steps_in_epoch(durations, cfg)
        train_ds = metadata_training_dataset(train_meta, targets, durations, cfg, repeat=True)
        windows = metadata_windows(val_meta, cfg)
    else:
        durations = train_df["duration_s"].to_numpy(float)
        steps = cfg.train.steps_per_epoch or pipeline.steps_in_epoch(durations, cfg)
        teachers = tables = None
        if uses_teachers(cfg):
            from birdnet_tf.distill.setup import load_teachers
            from birdnet_tf.distill.targets import TableTargets

            teachers = load_teachers(cfg, list(labels), log)
            if teachers.tables:
                tables = TableTargets(teachers.tables, list(train_df["key"]), list(train_df["wav_path"]),
                                      cfg.distill.temperature, log)
        unlabeled = None
        if cfg.distill.unlabeled:  # pseudo-labels: recordings without labels, taught by the teachers
            from birdnet_tf.distill.pseudo import unlabeled_catalog
            from birdnet_tf.distill.targets import TableTargets

            u = unlabeled_catalog(cfg.distill.unlabeled, cfg.audio.sample_rate_hz, workers=workers, log=log)
            unlabeled = (list(u["wav_path"]), u["duration_s"].to_numpy(float), TableTargets(
                teachers.tables, list(u["key"]), list(u["wav_path"]), cfg.distill.temperature, log)
                if teachers.tables else None)
            log(f"pseudo-labels: {len(u)} unlabelled recordings, {pipeline.unlabeled_per_batch(cfg.distill.pseudo_ratio, cfg.data.batch_size)} "
                f"of every {cfg.data.batch_size} excerpts, teacher confidence >= {cfg.distill.pseudo_min_confidence:g}")
        train_ds = pipeline.training_dataset(list(train_df["wav_path"]), targets, durations, cfg, repeat=True,
                                             metadata=train_meta, tables=tables, unlabeled=unlabeled)
        windows = pipeline.evaluation_windows(list(val_df["wav_path"]), cfg, metadata=val_meta)
    val_primary = primary_indices(val_df, labels)
    val_bg = background_matrix(val_df, labels)
    val_targets = encode_targets(val_df, labels, cfg.data.background_weight)

    initial_epoch = int(state.get("epoch", 0)) if resume else 0
    if resume and paths.last.exists():
        register_schedules()
        model = load_keras_model(paths.last)
    else:
        initial_epoch, state = 0, {}
        model = build_model(cfg, len(labels), input_kind="waveform" if chunk_index is None else "image")
        if cfg.train.init_weights:  # a run starts from pretrained weights (never on resume)
            apply_init_weights(model, init_weights if init_weights is not None else
                               read_init_weights(cfg, len(labels), log))
        model.compile(optimizer=make_optimizer(cfg, steps), loss=make_loss(cfg))
    fit_model = model
    if chunk_index is None and uses_teachers(cfg):  # the student learns from its teachers' soft targets
        from birdnet_tf.distill.teachers import make_distiller

        fit_model = make_distiller(model, teachers.models, len(teachers.tables), teachers.weights,
                                   cfg.distill.alpha, cfg.model.output_activation, cfg.audio.sample_rate_hz,
                                   cfg.distill.pseudo_min_confidence)
        # a SavedModel teacher's call is kept out of XLA (jit_compile "auto" turns XLA on with a GPU)
        exports = any(t.kind == "export" for t in teachers.models)
        fit_model.compile(optimizer=model.optimizer, jit_compile=False if exports else "auto")
        log(f"distilling from {len(teachers.tables)} teacher table(s) and {len(teachers.models)} model teacher(s), "
            f"alpha {cfg.distill.alpha:g}, weights {np.round(teachers.weights, 3).tolist()}")
    if chunk_index is not None:  # the extract's noise/ chunks of the training files
        noise = chunk_index[(chunk_index["kind"] == "noise") & chunk_index["key"].isin(set(train_df["key"]))]
        set_chunk_noise_bank(model, list(noise["png"]), cfg, log)
    elif cfg.metadata.use != "only":
        set_noise_bank(model, list(train_df["wav_path"]), cfg, log)
    _trim_history(paths.history, initial_epoch)
    remove_stale_parts(paths.root, paths.checkpoints)  # temporary files of a killed save

    FileValidation, RunCheckpoint, PlateauDecay = _callbacks_module()
    t = cfg.train
    plateau = [] if t.schedule != "plateau" else [PlateauDecay(
        t.monitor, t.lr_plateau_patience, t.lr_step_factor, t.lr_plateau_drops, t.learning_rate, t.min_learning_rate,
        min(int(round(t.warmup_epochs * steps)), max(0, t.epochs * steps - 1)), state, log)]
    callbacks = [
        FileValidation(windows, val_primary, val_bg, val_targets, cfg.data.file_pooling, cfg.train.loss),
        *plateau,  # before RunCheckpoint, which saves its counters
        RunCheckpoint(paths, cfg.train.monitor, cfg.train.early_stopping_patience, state),
        keras.callbacks.TensorBoard(log_dir=str(paths.logs), write_graph=False, profile_batch=0),
    ]
    on = f"{len(train_rows)} chunks of {len(train_df)} files" if chunk_index is not None else f"{len(train_df)} files"
    if uses_metadata(cfg):
        on += f" with {train_meta.shape[1]} metadata features"
    what = "a metadata MLP" if cfg.metadata.use == "only" else cfg.model.name + (
        " + metadata MLP" if uses_metadata(cfg) else "")
    log(f"training {what} ({model.count_params():,} parameters, {policy}) on {on}, "
        f"validating on {len(val_df)} files; {steps} steps/epoch, epochs {initial_epoch + 1}..{cfg.train.epochs}")
    fit_model.fit(train_ds, epochs=cfg.train.epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, shuffle=False, callbacks=callbacks, verbose=1 if _is_tty() else 2)
    state = json.loads(paths.state.read_text()) if paths.state.exists() else state
    summary = _summary(paths, state, t0, epochs_run=int(state.get("epoch", 0)) - initial_epoch)
    if evaluate and paths.best.exists():
        from birdnet_tf.evaluate.run import evaluate_run

        summary["report"] = str(evaluate_run(paths.root, log=log)["report_dir"])
    return summary


def metadata_features(cfg: Config, paths: RunPaths, train_df: pd.DataFrame, val_df: pd.DataFrame,
                      log=print) -> tuple[np.ndarray, np.ndarray]:
    """The metadata features of a run's training and validation files (``metadata.use`` only / combined).

    The encoder (:class:`~birdnet_tf.data.metadata.MetadataEncoder` of ``metadata.date_size`` /
    ``time_size``) is fitted on the training rows and saved as ``metadata_encoder.json`` in the
    run folder, or read from there when the run resumes. How many values of each field parsed,
    were missing or could not be parsed is logged.

    Returns:
        ``(train float32 [train files, F], val float32 [val files, F])``.

    Raises:
        BirdnetError: A saved encoder is unreadable or has other sizes than the config.
    """
    from birdnet_tf.data.metadata import METADATA_ENCODER_FILENAME, MetadataEncoder, describe
    from birdnet_tf.models.metadata import make_encoder

    path = paths.root / METADATA_ENCODER_FILENAME
    if path.is_file():
        encoder = MetadataEncoder.load(path)
        if (encoder.date_size, encoder.time_size) != (cfg.metadata.date_size, cfg.metadata.time_size):
            raise BirdnetError(f"{path}: has date/time sizes {encoder.date_size}/{encoder.time_size}, the config "
                               f"{cfg.metadata.date_size}/{cfg.metadata.time_size}")
        log(f"metadata encoder: {path} (saved)")
    else:
        encoder = make_encoder(cfg).fit(train_df)
        encoder.save(path)
        log(f"metadata encoder fitted on the {len(train_df)} training files: {path}")
    for name, rows in (("training", train_df), ("validation", val_df)):
        log(f"{name} " + describe(rows))
    return encoder.transform(train_df), encoder.transform(val_df)


def set_noise_bank(model, wav_paths: list[str], cfg: Config, log=print, max_chunks: int = 256) -> int:
    """Gives the baseline's ``noise_chunk`` augmentation its bank: noise-only chunks of the training files.

    The on-the-fly counterpart of extract's ``noise/`` set: chunk spectrograms of (a seeded
    sample of) the training recordings whose signal/noise score is below
    ``chunks.signal_threshold``. Returns how many were found (0 when the model has no such
    augmentation).
    """
    if "image_augment" not in {layer.name for layer in model.layers}:
        return 0
    layer = model.get_layer("image_augment")
    if "noise_chunk" not in layer.names:
        return 0
    from birdnet_tf.data.audio import load_audio
    from birdnet_tf.frontend.chunks import chunk_spectrogram, cut_chunks
    from birdnet_tf.frontend.signal_noise import signal_noise_score_tf

    bank: list[np.ndarray] = []
    for path in np.random.default_rng(cfg.data.seed).permutation(wav_paths):
        x, _ = load_audio(path, cfg.chunks.sample_rate_hz)
        _, chunks = cut_chunks(x, cfg.chunks)
        if len(chunks) == 0:
            continue
        images = chunk_spectrogram(chunks, cfg.chunks).numpy()
        bank += list(images[signal_noise_score_tf(images).numpy() < cfg.chunks.signal_threshold])
        if len(bank) >= max_chunks:
            break
    if not bank:
        log("warning: no noise-only chunks in the training files; the noise_chunk augmentation is left out")
        return 0
    layer.set_noise_bank(np.stack(bank[:max_chunks]))
    log(f"noise bank for noise_chunk: {min(len(bank), max_chunks)} noise-only chunks from the training files")
    return min(len(bank), max_chunks)


def set_chunk_noise_bank(model, png_paths: list[str], cfg: Config, log=print, max_chunks: int = 256) -> int:
    """Gives the ``noise_chunk`` augmentation of an image model its bank: up to ``max_chunks`` noise PNGs.

    The PNGs (extract's ``noise/`` chunks, a seeded sample) are read with
    :func:`~birdnet_tf.data.chunk_folder.read_chunk_png`; unreadable ones are skipped with a
    warning. Returns how many were set (0 when the model has no such augmentation).
    """
    if "image_augment" not in {layer.name for layer in model.layers}:
        return 0
    layer = model.get_layer("image_augment")
    if "noise_chunk" not in layer.names:
        return 0
    from birdnet_tf.data.chunk_folder import read_chunk_png

    bank, bad = [], 0
    shape = (cfg.chunks.width, cfg.chunks.height)
    for path in np.random.default_rng(cfg.data.seed).permutation(np.asarray(png_paths, dtype=str)):
        try:
            image = read_chunk_png(path)
        except BirdnetError:
            image = None
        if image is None or image.shape != shape:
            bad += 1
            continue
        bank.append(image)
        if len(bank) >= max_chunks:
            break
    if bad:
        log(f"warning: {bad} noise chunk PNG(s) unreadable or not {shape[0]}x{shape[1]}; left out of the noise bank")
    if not bank:
        log("warning: no noise chunks of the training files in the chunks folder; "
            "the noise_chunk augmentation is left out")
        return 0
    layer.set_noise_bank(np.stack(bank))
    log(f"noise bank for noise_chunk: {len(bank)} noise chunks (PNGs of the training files)")
    return len(bank)


def _setup_chunk_run(cfg: Config, index, data_dir: Path, paths: RunPaths, resume: bool, log):
    """Labels and the file-level split of a run on a ``birdnet-tf extract`` folder; writes the run's
    ``labels.txt``, ``labels.csv`` (when the extract's source has class ids), ``split.csv`` (files with
    their chunk counts) and ``config.json`` (``input: chunks``) for a new run.

    Returns:
        ``(labels, train_files, val_files, init_weights)``; the file tables are
        :func:`~birdnet_tf.data.pipeline.chunk_file_table` rows with ``split`` = train / val.
    """
    from birdnet_tf.data import pipeline
    from birdnet_tf.data.labels import LabelSet
    from birdnet_tf.data.split import split_catalog

    files = pipeline.chunk_file_table(index)
    init_weights = None
    if resume and paths.split.exists() and paths.labels.exists():
        labels = LabelSet.load(paths.labels)
        split = pd.read_csv(paths.split, keep_default_na=False, dtype={"key": str, "split": str})
        side = dict(zip(split["key"], split["split"]))
        missing = set(side) - set(files["key"])
        if missing:
            raise BirdnetError(f"{paths.root}: resuming needs {len(missing)} file(s) of the saved split that "
                               f"the chunks folder no longer has, e.g. {sorted(missing)[0]}")
        files = files[files["key"].isin(side)].copy()
        files["split"] = files["key"].map(side)
        log(f"resuming {paths.root} after epoch {json.loads(paths.state.read_text()).get('epoch', 0) if paths.state.exists() else 0}")
        return labels, files[files["split"] == "train"], files[files["split"] == "val"], None
    labels = LabelSet.from_catalog(files)
    check_classes(labels, data_dir)
    # extract writes split "all" when its dataset had no split: then split the files here
    table = files.drop(columns="split") if (files["split"] == "all").all() else files
    train_df, val_df = split_catalog(table, cfg.data.val_fraction, cfg.data.seed, cfg.data.split_by)
    n_train = int(train_df["s2n_chunks"].sum())
    if n_train == 0:
        lo, hi = cfg.chunks.s2n_interval
        signal = index[(index["kind"] == "signal") & index["key"].isin(set(train_df["key"]))]
        seen = f"; theirs range from {signal['s2n'].min()} to {signal['s2n'].max()}" if len(signal) else ""
        raise BirdnetError(f"{data_dir}: no training chunk has a signal/noise score × 1e4 within "
                           f"chunks.s2n_interval [{lo:g}, {hi:g}] ({len(signal)} signal chunks of {len(train_df)} "
                           f"training files{seen}); widen chunks.s2n_interval")
    if cfg.train.init_weights:
        init_weights = read_init_weights(cfg, len(labels), log)
    labels.save(paths.labels)
    _write_chunk_class_ids(paths, index.attrs.get("extract_config", {}).get("source"), labels, log)
    both = pd.concat([train_df, val_df])
    split = both[["key", "split", "primary_label"]].copy()
    split["secondary_labels"] = [";".join(v) for v in both["secondary_labels"]]
    for column in ("signal_chunks", "s2n_chunks", "noise_chunks"):
        split[column] = both[column].to_numpy()
    split.to_csv(paths.split, index=False)
    save_config(cfg, paths.config, data_dir=str(data_dir.resolve()), n_classes=len(labels),
                input=pipeline.CHUNK_INPUT)
    log(f"chunks: {len(index)} PNGs of {len(files)} files in {data_dir}; {n_train} training chunks within "
        f"chunks.s2n_interval {list(cfg.chunks.s2n_interval)}")
    return labels, train_df, val_df, init_weights


def _write_chunk_class_ids(paths: RunPaths, source, labels, log) -> None:
    """``labels.csv`` (BirdCLEF class ids) from the dataset the chunks were extracted from, when it is there."""
    if not source or not Path(source).is_dir():
        return
    try:
        from birdnet_tf.data.catalog import load_catalog
        from birdnet_tf.data.labels import class_ids_from_catalog, write_labels_csv

        catalog = load_catalog(source, check_files=False)
        class_ids = class_ids_from_catalog(catalog)
        if class_ids and all(label in class_ids for label in labels):
            names = {} if "common_name" not in catalog.columns else {
                label: str(name) for label, name in zip(catalog["primary_label"], catalog["common_name"])
                if isinstance(name, str) and name.strip()}
            write_labels_csv(paths.root / "labels.csv", labels, {k: class_ids[k] for k in labels}, names)
    except BirdnetError as e:
        log(f"warning: no labels.csv with class ids from {source}: {e}")


def _summary(paths: RunPaths, state: dict, t0: float, epochs_run: int) -> dict:
    return {"run_dir": str(paths.root), "best_model": str(paths.best), "best_epoch": state.get("best_epoch"),
            "monitor": state.get("monitor"), "best": state.get("best"), "epochs": state.get("epoch"),
            "best_time_s": state.get("best_time_s"), "epochs_run": epochs_run,
            "wall_s": round(time.time() - t0, 1)}
