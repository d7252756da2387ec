"""Learning-rate schedules that Keras lacks (``train.schedule`` = constant, step, linear, root).

They live under ``models/`` because a compiled ``.keras`` file (``last.keras``, ``best.keras``)
names them: :mod:`birdnet_tf.models.objects` must know them to load any model, while the
choice of schedule from a config (:func:`birdnet_tf.train.optim.make_schedule`) belongs to
training. Every class is a ``keras.optimizers.schedules.LearningRateSchedule`` registered as
``birdnet_tf>ClassName`` when this module is imported.

With ``s`` the optimizer step, ``w = warmup_steps`` and ``t = max(0, s - w)`` (steps after warm-up):

- warm-up (every schedule, ``s < w``): linear from ``0.1 × lr`` to ``lr``, as Keras' ``CosineDecay``;
- ``ConstantSchedule``: ``lr``;
- ``StepSchedule``: ``max(min_lr, lr × factor ** floor(t / (step_epochs × steps_per_epoch)))``;
- ``LinearSchedule``: ``lr + (min_lr − lr) × min(1, t / decay_steps)``;
- ``RootSchedule`` (the 2018 baseline's ``lr_start / sqrt(epoch)`` with 1-based epochs, made
  continuous per step): ``max(min_lr, lr / sqrt(1 + t / steps_per_epoch))`` — exactly the
  baseline's value at the start of each epoch after warm-up.
"""

from __future__ import annotations

import keras
from keras import ops

register = keras.saving.register_keras_serializable(package="birdnet_tf")


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The shared warm-up and arguments of the schedules below (not used on its own)."""

    def __init__(self, learning_rate: float, min_learning_rate: float = 0.0, warmup_steps: int = 0,
                 steps_per_epoch: int = 1, decay_steps: int = 1, step_epochs: float = 1.0,
                 step_factor: float = 1.0):
        super().__init__()
        self.learning_rate, self.min_learning_rate = float(learning_rate), float(min_learning_rate)
        self.warmup_steps, self.steps_per_epoch = int(warmup_steps), max(1, int(steps_per_epoch))
        self.decay_steps, self.step_epochs = max(1, int(decay_steps)), float(step_epochs)
        self.step_factor = float(step_factor)

    def decay(self, t):
        """The rate ``t`` (float32) steps after warm-up."""
        raise NotImplementedError

    def __call__(self, step):
        s = ops.cast(step, "float32")
        lr = ops.maximum(self.decay(ops.maximum(s - float(self.warmup_steps), 0.0)), 0.0)
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


@register
class ConstantSchedule(WarmupSchedule):
    def decay(self, t):
        return ops.zeros_like(t) + self.learning_rate


@register
class StepSchedule(WarmupSchedule):
    def decay(self, t):
        size = max(1.0, self.step_epochs * self.steps_per_epoch)
        lr = self.learning_rate * ops.power(self.step_factor, ops.floor(t / size))
        return ops.maximum(lr, self.min_learning_rate)


@register
class LinearSchedule(WarmupSchedule):
    def decay(self, t):
        frac = ops.minimum(t / float(self.decay_steps), 1.0)
        return self.learning_rate + (self.min_learning_rate - self.learning_rate) * frac


@register
class RootSchedule(WarmupSchedule):
    def decay(self, t):
        lr = self.learning_rate / ops.sqrt(1.0 + t / float(self.steps_per_epoch))
        return ops.maximum(lr, self.min_learning_rate)


#: ``train.schedule`` name → class, for the schedules defined here.
SCHEDULE_CLASSES: dict[str, type] = {"constant": ConstantSchedule, "step": StepSchedule,
                                     "linear": LinearSchedule, "root": RootSchedule}
