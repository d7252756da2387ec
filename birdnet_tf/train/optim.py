"""Optimizers, learning-rate schedules and losses of a config's ``train`` section.

Training *chooses* here; the Keras classes a saved model names (the schedules of
:mod:`birdnet_tf.models.schedules`, the optimizers of :mod:`birdnet_tf.models.frontend_lr`,
the loss of :mod:`birdnet_tf.models.losses`) live under ``models/`` so that loading a model
never needs ``train/`` (:mod:`birdnet_tf.models.objects`).

Distribution strategies: everything made here creates Keras variables (optimizer slots, the
schedule's step), so callers build it inside the strategy's scope together with the model —
:func:`birdnet_tf.train.loop.strategy_scope`.
"""

from __future__ import annotations

from birdnet_tf.config import Config
from birdnet_tf.errors import ConfigError

SCHEDULES = ("cosine", "constant", "step", "linear", "root", "plateau")
OPTIMIZERS = ("adamw", "adam", "sgd", "nesterov")


def make_schedule(cfg: Config, steps_per_epoch: int):
    """The learning rate of ``cfg.train`` for ``steps_per_epoch`` optimizer steps per epoch.

    ``cosine`` is Keras' ``CosineDecay`` (to ``min_learning_rate`` at the end of the run),
    ``constant`` without warm-up a plain float; the others are the schedules of
    :mod:`birdnet_tf.models.schedules`. Warm-up lasts ``warmup_epochs × steps_per_epoch`` steps
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
    from birdnet_tf.models.schedules import SCHEDULE_CLASSES

    return SCHEDULE_CLASSES[t.schedule](
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
    :func:`birdnet_tf.models.frontend_lr.lr_scaled_optimizers`: the frontend layers' updates
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
        from birdnet_tf.models.frontend_lr import lr_scaled_optimizers

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
    from birdnet_tf.train import losses

    return losses.make_loss(cfg.train.loss, cfg.train.label_smoothing)
