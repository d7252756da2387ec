"""A learning-rate multiplier for the frontend's parameters (OFAI's ``first_params_eta_scale``).

``frontend.frontend_lr_scale = k`` makes the learnable frontend (the layers named ``mel``
and ``magnitude``, see :func:`birdnet_tf.frontend.frontend_layers`) learn ``k`` times
faster than the rest of the network: their update uses ``k × learning_rate``.

How: :class:`FrontendLrAdamW`, :class:`FrontendLrAdam` and :class:`FrontendLrSGD` subclass
Keras' ``AdamW``, ``Adam`` and ``SGD`` and override ``update_step`` — the per-variable step
every Keras 3 optimizer goes through — to multiply the learning rate for the variables whose
path names one of ``scaled_layers`` (found in ``build``, so the choice needs no variable
objects and survives saving). This scales the *update*, not the gradient: Adam normalises
gradients away, so scaling them would do nothing there, whereas scaling the step is what a
per-parameter learning rate means for every optimizer (for plain SGD the two are the same).
Decoupled weight decay still uses the base learning rate. The classes are registered Keras
serialisables (``birdnet_tf>FrontendLrAdamW`` …) with ``lr_scale`` and ``scaled_layers`` in
their config, so a compiled ``.keras`` file (``last.keras``) saves and resumes with the
multiplier. They live under ``models/`` because saved models name them
(:mod:`birdnet_tf.models.objects`); :func:`birdnet_tf.train.optim.make_optimizer` picks them.
"""

from __future__ import annotations

import keras

#: Layer names whose variables the multiplier applies to by default.
FRONTEND_LAYERS = ("mel", "magnitude")


class FrontendLrMixin:
    """The multiplier on top of a Keras optimizer (put first among the bases).

    Takes the base optimizer's arguments plus ``lr_scale`` (float) and ``scaled_layers``
    (layer names; a variable is scaled when any component of its ``path`` but the last,
    e.g. ``mel`` in ``mel/mel_offsets``, is one of them).
    """

    def __init__(self, *args, lr_scale=1.0, scaled_layers=FRONTEND_LAYERS, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_scale = float(lr_scale)
        self.scaled_layers = tuple(scaled_layers)
        self._scaled_keys = set()

    def build(self, variables):
        super().build(variables)
        names = set(self.scaled_layers)
        self._scaled_keys = {self._var_key(v) for v in variables
                            if names & set(str(getattr(v, "path", v.name)).split("/")[:-1])}

    def scaled_variable(self, variable) -> bool:
        """True when ``variable`` (a Keras or backend variable) learns with ``lr_scale``."""
        return self._var_key(variable) in self._scaled_keys

    def update_step(self, gradient, variable, learning_rate):
        if self.lr_scale != 1.0 and self._var_key(variable) in self._scaled_keys:
            learning_rate = learning_rate * self.lr_scale
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "lr_scale": self.lr_scale, "scaled_layers": list(self.scaled_layers)}


@keras.saving.register_keras_serializable(package="birdnet_tf")
class FrontendLrAdamW(FrontendLrMixin, keras.optimizers.AdamW):
    pass


@keras.saving.register_keras_serializable(package="birdnet_tf")
class FrontendLrAdam(FrontendLrMixin, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable(package="birdnet_tf")
class FrontendLrSGD(FrontendLrMixin, keras.optimizers.SGD):
    pass


def lr_scaled_optimizers() -> dict[str, type]:
    """``{adamw, adam, sgd}`` → the learning-rate-scaled optimizer class."""
    return {"adamw": FrontendLrAdamW, "adam": FrontendLrAdam, "sgd": FrontendLrSGD}
