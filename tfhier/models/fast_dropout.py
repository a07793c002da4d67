"""Fast dropout: dropout's expectation and variance propagated through a network (Wang & Manning 2013) and
through a recurrent network (FD-RNNs, Bayer et al. 2013), as STORN's appendix ("FD RNNs") writes it.

Every unit is described by its mean and variance.  A linear layer whose
inputs ``u`` (independent units, mean ``m``, variance ``s``) are each kept
with probability ``d`` (the *complementary* dropout rate, ``d = 1 - rate``)
and not rescaled, ``a = (b * u) W + c`` with ``b_i ~ Bernoulli(d)``, has
(STORN appendix, the first two lines)::

    E[a] = d m W + c,        V[a] = (d (1 - d) m^2 + d s) W^2

(:func:`linear_moments`; the sum of independent terms is taken as Gaussian,
the central-limit argument of fast dropout).  A tanh unit's moments are the
integrals ``f^E(a) = int tanh(x) N(x | E[a], V[a]) dx`` and ``f^V`` (the
appendix's f_h^E, f_h^V), computed by Gauss-Hermite quadrature
(:func:`tanh_moments`: within 1e-3 of Monte Carlo for ``V[a] <= 1``, the
regime of a rate of 0.1; the error grows to about 0.1 at ``V[a] = 10``, where
tanh is nearly a step).  The appendix does not say how it solved them; the
closed-form sigmoid approximations of Wang & Manning are within 0.02 for the
mean but off by up to 0.1 for the variance at small ``V[a]``, hence quadrature.

A sigmoid output (a Bernoulli head's probability) is ``E[y] = int
sigmoid(x) N(x | E[v], V[v]) dx ~= sigmoid(E[v] / sqrt(1 + pi V[v] / 8))``
(MacKay's probit approximation, Wang & Manning's eq. for logistic units):
the head's logits divided by ``sqrt(1 + pi V / 8)`` (:func:`bernoulli_logits`).
The network is deterministic, the same in training and evaluation, so its
bounds are bounds of one well-defined model.

Keep rates are scalars per weight matrix's input.  A fixed rate is a
constant; a learned one (STORN: "we can release the fixed dropout rates of the
recognition models and instead integrate them into the set of adaptable
parameters") is ``sigmoid(logit)``, a trainable logit started at the fixed
rate.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tfhier.blocks import matmul_last

#: Gauss-Hermite nodes of :func:`tanh_moments`
QUADRATURE_NODES = 16
_NODES, _WEIGHTS = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)


def linear_moments(mean, var, kernel, bias, keep):
    """``(E[a], V[a])`` of ``a = (b * u) W + bias`` with ``b_i ~ Bernoulli(keep)`` and independent inputs ``u`` of
    ``mean`` / ``var`` ``[..., C]`` (``var`` None: exact inputs, e.g. data); ``kernel`` [C, U], ``bias`` [U] or
    None; ``keep`` a scalar."""
    second = keep * (1.0 - keep) * tf.square(mean)
    if var is not None:
        second = second + keep * var
    return matmul_last(keep * mean, kernel, bias), matmul_last(second, tf.square(kernel))


def tanh_moments(mean, var):
    """``(E[tanh(a)], V[tanh(a)])`` for ``a ~ N(mean, var)`` element-wise (Gauss-Hermite, :data:`QUADRATURE_NODES`
    nodes)."""
    nodes = tf.constant(_NODES, mean.dtype)
    weights = tf.constant(_WEIGHTS / math.sqrt(math.pi), mean.dtype)
    x = mean[..., None] + tf.sqrt(2.0 * tf.maximum(var, 0.0))[..., None] * nodes
    t = tf.tanh(x)
    first = tf.reduce_sum(weights * t, -1)
    second = tf.reduce_sum(weights * tf.square(t), -1)
    return first, tf.maximum(second - tf.square(first), 0.0)


def bernoulli_logits(mean, var):
    """The logits of ``E[sigmoid(v)]`` for ``v ~ N(mean, var)``: ``mean / sqrt(1 + pi var / 8)``."""
    return mean * tf.math.rsqrt(1.0 + (math.pi / 8.0) * var)


class KeepRate(keras.layers.Layer):
    """One keep probability ``d``: fixed (a constant) or learned (``sigmoid`` of a trainable logit started at
    ``keep``)."""

    def __init__(self, keep, learned=False, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"{self.name}: the keep probability must be in (0, 1], got {keep}")
        if learned and keep >= 1.0:
            raise ValueError(f"{self.name}: a learned keep probability starts below 1, got {keep}")
        self.keep, self.learned = float(keep), bool(learned)

    def build(self, input_shape=None):
        if self.learned:
            logit = math.log(self.keep / (1.0 - self.keep))
            self.logit = self.add_weight(name="logit", shape=(), initializer=keras.initializers.Constant(logit))

    def value(self):
        """The keep probability, a scalar tensor."""
        if not self.built:
            self.build()
        return tf.sigmoid(self.logit) if self.learned else tf.constant(self.keep)

    def get_config(self):
        return {**super().get_config(), "keep": self.keep, "learned": self.learned}


def learned_keep_logits(layers):
    """The trainable logits of the learned keep rates of fast-dropout ``layers`` (built)."""
    return [rate.logit for layer in layers for rate in layer.keep_rates() if rate.learned]


@keras.saving.register_keras_serializable(package="tfhier")
class FastDropoutDense(keras.layers.Layer):
    """A dense layer on moments: ``(mean, var) -> (E[a], V[a])`` before any transfer function
    (:func:`linear_moments`); ``keep`` / ``learn_keep``: its input's keep probability."""

    def __init__(self, units, keep=0.9, learn_keep=False, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 **kwargs):
        super().__init__(**kwargs)
        self.units, self.keep, self.learn_keep = int(units), float(keep), bool(learn_keep)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.rate = KeepRate(self.keep, self.learn_keep, name="keep")

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.units),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
        self.rate.build()

    def call(self, mean, var=None):
        return linear_moments(mean, var, self.kernel, self.bias, self.rate.value())

    def keep_rates(self):
        return [self.rate]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "keep": self.keep, "learn_keep": self.learn_keep,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


@keras.saving.register_keras_serializable(package="tfhier")
class FastDropoutMLP(keras.layers.Layer):
    """``hidden`` tanh layers on moments, then an optional linear output layer: ``(mean, var) -> (mean, var)``
    of the output's pre-activation (or of the last hidden layer without one).  Every layer's input is dropped
    with probability ``1 - keep``."""

    def __init__(self, hidden=(), out_units=None, keep=0.9, learn_keep=False, out_initializer="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden = [int(u) for u in hidden]
        self.out_units = None if out_units is None else int(out_units)
        self.keep, self.learn_keep, self.out_initializer = float(keep), bool(learn_keep), out_initializer
        self.layers_ = [FastDropoutDense(u, keep, learn_keep, name=f"hidden_{i}") for i, u in enumerate(self.hidden)]
        self.out = (None if self.out_units is None else
                    FastDropoutDense(self.out_units, keep, learn_keep, kernel_initializer=out_initializer, name="out"))

    def call(self, mean, var=None):
        for layer in self.layers_:
            mean, var = tanh_moments(*layer(mean, var))
        if var is None:
            var = tf.zeros_like(mean)
        return (mean, var) if self.out is None else self.out(mean, var)

    def keep_rates(self):
        return [rate for layer in self.layers_ + [self.out] if layer is not None for rate in layer.keep_rates()]

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "out_units": self.out_units, "keep": self.keep,
                "learn_keep": self.learn_keep, "out_initializer": self.out_initializer}


@keras.saving.register_keras_serializable(package="tfhier")
class FastDropoutRNN(keras.layers.Layer):
    """The FD-RNN of STORN's appendix: a tanh RNN (STORN eq. 2) whose state is a mean and a variance::

        E[a_t] = d_x x_t W_in + d_h E[h_{t-1}] W_rec + b
        V[a_t] = d_x (1 - d_x) x_t^2 W_in^2 + (d_h (1 - d_h) E[h_{t-1}]^2 + d_h V[h_{t-1}]) W_rec^2
        (E[h_t], V[h_t]) = f_h(E[a_t], V[a_t])

    for exact inputs ``x`` (data); ``h_0 = 0``.  The input terms are computed for the whole sequence at once
    (:meth:`call`); the loop carries only the state.  :meth:`step` is one step of the same."""

    def __init__(self, units, keep=0.9, learn_keep=False, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", **kwargs):
        super().__init__(**kwargs)
        self.units, self.keep, self.learn_keep = int(units), float(keep), bool(learn_keep)
        # Kept as given and resolved in build: a name's initializer then draws its seed when the weights are made.
        self.kernel_initializer, self.recurrent_initializer = kernel_initializer, recurrent_initializer
        self.input_rate = KeepRate(self.keep, self.learn_keep, name="input_keep")
        self.recurrent_rate = KeepRate(self.keep, self.learn_keep, name="recurrent_keep")

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.units),
                                      initializer=keras.initializers.get(self.kernel_initializer))
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(self.units, self.units),
                                                initializer=keras.initializers.get(self.recurrent_initializer))
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.input_rate.build()
        self.recurrent_rate.build()

    def keep_rates(self):
        return [self.input_rate, self.recurrent_rate]

    def initial_state(self, batch):
        zeros = tf.zeros(tf.stack([batch, self.units]))
        return {"h": zeros, "h_var": zeros}

    def _recur(self, in_mean, in_var, state):
        keep = self.recurrent_rate.value()
        rec_mean, rec_var = linear_moments(state["h"], state["h_var"], self.recurrent_kernel, None, keep)
        mean, var = tanh_moments(in_mean + rec_mean, in_var + rec_var)
        return {"h": mean, "h_var": var}

    def step(self, x_t, state):
        """One step: ``x_t`` [B, C] and the state ``{"h", "h_var"}`` -> the next state."""
        if not self.built:
            self.build(x_t.shape)
        return self._recur(*linear_moments(x_t, None, self.kernel, self.bias, self.input_rate.value()), state)

    def call(self, x, step_mask=None, reverse=False):
        """``x`` [B, T, C] -> ``(E[h_{1:T}], V[h_{1:T}])``, each [B, T, units].  ``step_mask`` [B, T]: a padded
        step keeps the state and outputs zeros (so a reverse pass starts at each sequence's own last step);
        ``reverse``: from the last step to the first (the outputs stay in time order)."""
        t_len = tf.shape(x)[1]
        in_mean, in_var = linear_moments(x, None, self.kernel, self.bias, self.input_rate.value())
        in_mean, in_var = (tf.transpose(v, [1, 0, 2]) for v in (in_mean, in_var))
        keep = None if step_mask is None else tf.transpose(tf.cast(step_mask, tf.float32))[..., None] > 0
        means = tf.TensorArray(tf.float32, size=t_len, element_shape=tf.TensorShape([None, self.units]))
        variances = tf.TensorArray(tf.float32, size=t_len, element_shape=tf.TensorShape([None, self.units]))

        def body(i, state, means, variances):
            t = t_len - 1 - i if reverse else i
            new = self._recur(in_mean[t], in_var[t], state)
            if keep is not None:
                new = {k: tf.where(keep[t], v, state[k]) for k, v in new.items()}
                out = {k: tf.where(keep[t], v, 0.0) for k, v in new.items()}
            else:
                out = new
            return i + 1, new, means.write(t, out["h"]), variances.write(t, out["h_var"])

        _, _, means, variances = tf.while_loop(lambda i, *_: i < t_len, body,
                                               (tf.constant(0), self.initial_state(tf.shape(x)[0]), means, variances))
        return tuple(tf.transpose(v.stack(), [1, 0, 2]) for v in (means, variances))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "keep": self.keep, "learn_keep": self.learn_keep,
                "kernel_initializer": _serialized(self.kernel_initializer),
                "recurrent_initializer": _serialized(self.recurrent_initializer)}


def _serialized(initializer):
    return initializer if isinstance(initializer, str) else keras.initializers.serialize(initializer)


__all__ = ["FastDropoutDense", "FastDropoutMLP", "FastDropoutRNN", "KeepRate", "QUADRATURE_NODES",
           "bernoulli_logits", "learned_keep_logits", "linear_moments", "tanh_moments"]
