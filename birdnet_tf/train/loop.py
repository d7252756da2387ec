"""The training loop: dtype policy, the distribution seam, the model built or restored, and ``fit``.

Seams for what comes next:

- **Distribution strategies** (issue 14, ``train.strategy``): :func:`strategy_scope` is the one
  place that opens a ``tf.distribute`` scope; :func:`prepare_model` builds (or restores) the
  model, its optimizer and schedule, its loss and a teacher wrapper inside it. The strategy is
  ``train.strategy``'s (:mod:`birdnet_tf.train.distribute`); non-chief workers get
  ``chief=False`` callbacks (:func:`birdnet_tf.train.callbacks.make_callbacks`). :func:`fit`
  serves ``one_device`` and ``mirrored``; ``multi_worker`` trains with
  :func:`birdnet_tf.train.custom_loop.fit` (Keras' ``fit`` cannot, keras-team/keras#20585).
- **Teachers**: the example source's :meth:`~birdnet_tf.train.sources.ExampleSource.fit_model`
  wraps the student (distillation), inside the same scope.
- **Tuner trials**: a trial is a whole :func:`birdnet_tf.train.trainer.train` call on a config
  (:mod:`birdnet_tf.tune.search`); its summary dict carries the monitored score back.
"""

from __future__ import annotations

import contextlib
import os
import sys

from birdnet_tf.config import Config
from birdnet_tf.runs import RunPaths


def is_tty() -> bool:
    """True when progress bars and Keras' per-step lines suit the terminal (not under CI)."""
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


def distribution_strategy(cfg: Config):
    """The ``tf.distribute`` strategy of ``train.strategy`` (:func:`birdnet_tf.train.distribute.resolve`)."""
    from birdnet_tf.train.distribute import resolve

    return resolve(cfg).strategy


@contextlib.contextmanager
def strategy_scope(cfg: Config):
    """The scope in which every Keras variable of a run is created (model, optimizer, loss, metrics)."""
    with distribution_strategy(cfg).scope():
        yield


def prepare_model(cfg: Config, paths: RunPaths, source, n_classes: int, steps: int, resume: bool,
                  init_weights=None, log=print):
    """The run's model: restored from ``checkpoints/last.keras`` when resuming, else built by the
    example source, started from ``init_weights`` (``train.init_weights``) and compiled.

    Call inside :func:`strategy_scope`.

    Returns:
        ``(model, fit_model, resumed)``: ``fit_model`` is what ``fit`` trains (the model, or its
        teacher wrapper); ``resumed`` is False when the run starts from its first epoch.
    """
    from birdnet_tf.models.objects import load_model
    from birdnet_tf.train.init_weights import apply_init_weights, read_init_weights
    from birdnet_tf.train.optim import make_loss, make_optimizer

    if resume and paths.last.exists():
        model, resumed = load_model(paths.last), True
    else:
        model, resumed = source.build_model(n_classes), False
        if cfg.train.init_weights:  # a run starts from pretrained weights (never on resume)
            apply_init_weights(model, init_weights if init_weights is not None else
                               read_init_weights(cfg, n_classes, log))
        model.compile(optimizer=make_optimizer(cfg, steps), loss=make_loss(cfg))
    return model, source.fit_model(model), resumed


def fit(fit_model, dataset, cfg: Config, steps: int, initial_epoch: int, callbacks) -> None:
    """Keras' ``fit`` from ``initial_epoch`` to ``train.epochs`` (one line per epoch off a terminal)."""
    fit_model.fit(dataset, epochs=cfg.train.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                  shuffle=False, callbacks=callbacks, verbose=1 if is_tty() else 2)
