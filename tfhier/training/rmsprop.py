"""rmsprop with Nesterov's accelerated gradient: STORN's optimizer (``train.py --optimizer=nesterov_rmsprop``)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable("tfhier")
class NesterovRMSprop(keras.optimizers.Optimizer):
    """rmsprop (Tieleman & Hinton 2012) "enhanced with Nesterov's accelerated gradient", the optimizer of STORN
    (Bayer & Osendorfer 2014, appendix "Details on learning"; Table 2 lists its step rates, momenta and decays).

    With step rate α, decay γ and momentum β, a step from the parameters θ_t and the previous step v_t is::

        g       = ∇f(θ_t − β v_t)                  (the gradient at the look-ahead point)
        r_t     = γ r_{t−1} + (1 − γ) g²
        v_{t+1} = β v_t + α g / √(r_t + ε)
        θ_{t+1} = θ_t − v_{t+1}

    The paper names the method and nothing more; the rest is climin's ``RmsProp`` (the optimizer library of the
    STORN authors' group, BRML): the moving average r starts at 1, not 0, so the first steps are not α / √(1 − γ)
    per parameter whatever the gradient's size, and ε = 1e-8 sits under the square root.

    Keras takes the gradient at the variables' values, so the variables hold the look-ahead point
    θ̃_t = θ_t − β v_t (as Keras' SGD does for its Nesterov momentum), and a step is
    θ̃_{t+1} = θ̃_t + β v_t − (1 + β) v_{t+1}. Training, validation and checkpoints therefore see θ̃, which differs
    from θ by β v, the momentum's next move. ``weight_decay``, clipping and the learning-rate schedule are the
    base optimizer's, as for Keras' own optimizers.
    """

    def __init__(self, learning_rate=1e-3, decay=0.9, momentum=0.9, epsilon=1e-8, name="nesterov_rmsprop",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"NesterovRMSprop: decay must be in [0, 1), got {decay}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"NesterovRMSprop: momentum must be in [0, 1), got {momentum}")
        self.decay = decay
        self.momentum = momentum
        self.epsilon = epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._mean_squares = self.add_optimizer_variables(var_list, "mean_square", initializer="ones")
        self._steps = self.add_optimizer_variables(var_list, "step")

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        r, v = self._mean_squares[index], self._steps[index]
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        beta = self.momentum
        self.assign(r, ops.add(ops.multiply(self.decay, r), ops.multiply(1.0 - self.decay, ops.square(g))))
        new_v = ops.add(ops.multiply(beta, v), ops.divide(ops.multiply(lr, g), ops.sqrt(ops.add(r, self.epsilon))))
        self.assign_add(variable, ops.subtract(ops.multiply(beta, v), ops.multiply(1.0 + beta, new_v)))
        self.assign(v, new_v)

    def get_config(self):
        config = super().get_config()
        config.update(decay=self.decay, momentum=self.momentum, epsilon=self.epsilon)
        return config
