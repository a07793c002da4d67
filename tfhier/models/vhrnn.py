"""VHRNN: the variational hyper RNN (Deng et al. 2020, §3, eqs. 1-5), built on tfhier's VRNN.

No public implementation of VHRNN exists; this one follows the paper and says
what it chose where the paper is silent.  VHRNN is a VRNN whose recurrence
and decoder have their weights modulated, per step, by hypernetworks::

    h_t = g_{theta(z_t, h_{t-1})}(x_t, z_t, h_{t-1})                          (1)
    p(x_t | z_{<=t}, x_{<t}) = phi^dec_{omega(z_t, h_{t-1})}(z_t, h_{t-1})     (2)
    p(z_t | x_{<t}, z_{<t}) = N(phi^prior(h_{t-1}))                            (3)
    q(z_t | x_{<=t}, z_{<t}) = N(phi^enc(x_t, h_{t-1}))                        (5)

* The primary recurrence g is an LSTM-style cell whose input-to-hidden and
  hidden-to-hidden products are scaled row-wise, and whose biases are
  shifted, by the hypernetwork theta::

      gate_* = d_i*(.) o (W_* y_t) + d_h*(.) o (U_* h_{t-1}) + b_* + b_theta*(.),   * in {i, f, g, o}

  with ``y_t = [phi_x(x_t), phi_z(z_t)]`` (VRNN's input) and
  ``d = 1 + Linear(s_t)``, ``b_theta = Linear(s_t)`` read from theta's state
  ``s_t``: theta is itself a recurrent cell (an LSTM, "to capture the
  history of data dynamics") stepping on the hypernetwork input.
* The decoder (VRNN's emission MLP and the head's output projection) has
  every layer's output rows scaled and shifted the same way by omega, an MLP
  with one hidden layer of ``hyper_hidden`` (64 in §5) units.
* The hypernetworks' input is ``hyper_input``: ``'both'`` = ``[z_t, h_{t-1}]``
  (eqs. 1-2), ``'latent'`` = ``z_t``, ``'hidden'`` = ``h_{t-1}`` (Table 3's
  ablation).
* ``cell='gru'`` is appendix D's GRU variant (GRU-style gates and updates for
  g and a GRU for theta), with the same modulation of the input and
  recurrent products.
* The hypernetworks' output layers start at zero, i.e. at scale 1 and bias 0,
  where VHRNN *is* the VRNN with the same primary weights (a test checks it
  to 1e-6), and learn to depart from it.  Everything else (feature
  extractors, prior, posterior incl. the smoothing option, the heads) is
  :class:`tfhier.models.vrnn.VRNN`'s.

Parameter counts: the paper's Table 1 VRNNs (2,612 / 1,516) are reproduced
exactly by ``configs/vrnn_synthetic.cfg``; the paper does not give enough of
VHRNN's layout to reproduce its 1,568 for z = 4 (docs/RESULTS.md gives ours
beside it).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfhier.blocks import PointwiseMLP
from tfhier.models import cells
from tfhier.models.hparams import HParam, HParamError
from tfhier.models.vrnn import VRNN, cell_state, make_cell, run_cell

HYPER_INPUTS = ("both", "latent", "hidden")


@keras.saving.register_keras_serializable(package="tfhier")
class VHRNN(VRNN):
    """VHRNN (see the module docstring)."""

    NAME = "vhrnn"
    DESCRIPTION = "VHRNN (Deng et al. 2020): a VRNN whose recurrence and decoder weights are scaled by hypernetworks"
    HPARAMS = VRNN.HPARAMS + (
        HParam("hyper_input", "str", "both", "vhrnn: what the hypernetworks see: [z_t, h_{t-1}] (both), z_t "
               "(latent) or h_{t-1} (hidden).", choices=HYPER_INPUTS),
        HParam("hyper_units", "int", 8, "vhrnn: units of the recurrent hypernetwork theta."),
        HParam("hyper_hidden", "int", 64, "vhrnn: hidden units of the decoder's hypernetwork omega."),
    )

    def __init__(self, input_dim, noise_seed=0, **kwargs):
        super().__init__(input_dim, noise_seed=noise_seed, **kwargs)
        hp = self.hparams
        if hp["hyper_units"] < 1 or hp["hyper_hidden"] < 1:
            raise HParamError("vhrnn: --hyper_units and --hyper_hidden must be >= 1")
        self.hyper_input = hp["hyper_input"]
        self.hyper_units = hp["hyper_units"]
        gates = 4 if self.cell_kind == "lstm" else 3
        self.gate_units = gates * self.units
        self.theta_cell = make_cell(self.cell_kind, self.hyper_units, name="theta")
        # d_i, d_h (scales of the input and recurrent products) and b_theta, from theta's state.
        self.theta_out = keras.layers.Dense(3 * self.gate_units, kernel_initializer="zeros", name="theta_out")
        self.decoder_units = list(hp["mlp_hidden"]) + [self.head.param_size]
        self.omega = PointwiseMLP([hp["hyper_hidden"]], 2 * sum(self.decoder_units), out_initializer="zeros",
                                  name="omega")
        # The primary cell's and the decoder's weights are read directly (modulated), so they are built here, by
        # calling them (their variables then have the paths VRNN's have: the same weights load into both).
        self.rnn.build((None, 2 * hp["feature_units"]))
        features = self.emission_net(tf.zeros([1, hp["feature_units"] + self.units]))
        self.head(features)

    def _hyper_in(self, z, h):
        if self.hyper_input == "latent":
            return z
        if self.hyper_input == "hidden":
            return h
        return tf.concat([z, h], -1)

    def initial_state(self, batch):
        hyper = {f"theta_{k}": v for k, v in cell_state(self.cell_kind, batch, self.hyper_units).items()}
        return {**super().initial_state(batch), **hyper}

    # -- the modulated decoder (omega) ------------------------------------------------------
    def emission_params(self, state, z, prepared_t):
        modulation = self.omega(self._hyper_in(z, state["h"]))
        scales, shifts = tf.split(modulation, 2, axis=-1)
        scales, shifts = 1.0 + scales, shifts
        a = tf.concat([self.phi_z(z), state["h"]], -1)
        convs = list(self.emission_net.layers_) + [self.head.proj]
        offset = 0
        for i, conv in enumerate(convs):
            n = conv.filters
            s, c = scales[..., offset:offset + n], shifts[..., offset:offset + n]
            a = s * tf.matmul(a, conv.kernel[0]) + conv.bias + c
            if i < len(convs) - 1:
                a = self.emission_net._act(a)
            offset += n
        return a

    # -- the modulated recurrence (theta) ----------------------------------------------------
    def transition(self, state, z, x_t, prepared_t):
        return self._recur(state, z, self._x_product(self.phi_x(x_t)))

    def _x_product(self, phi):
        """``phi_x(x_t) W_x``: the input product's first half (the cell's input is ``y_t = [phi_x, phi_z]``),
        without the bias, which the modulation adds after scaling the product by ``d_i``."""
        return cells.input_projection(self.rnn, phi, kernel_rows=(0, self.hparams["feature_units"]), bias=False)

    def _recur(self, state, z, x_product_t):
        theta_state = {k[len("theta_"):]: v for k, v in state.items() if k.startswith("theta_")}
        theta_state = run_cell(self.cell_kind, self.theta_cell, self._hyper_in(z, state["h"]), theta_state)
        d_i, d_h, b_theta = tf.split(self.theta_out(theta_state["h"]), 3, axis=-1)
        d_i, d_h = 1.0 + d_i, 1.0 + d_h
        f = self.hparams["feature_units"]
        y_w = x_product_t + tf.matmul(self.phi_z(z), self.rnn.kernel[f:])  # y_t W for y_t = [phi_x, phi_z]
        cell, h = self.rnn, state["h"]
        if self.cell_kind == "lstm":
            pre = d_i * y_w + d_h * tf.matmul(h, cell.recurrent_kernel) + cell.bias + b_theta
            i, f, g, o = tf.split(pre, 4, axis=-1)
            c = tf.sigmoid(f) * state["c"] + tf.sigmoid(i) * tf.tanh(g)
            new = {"h": tf.sigmoid(o) * tf.tanh(c), "c": c}
        else:  # Keras' GRU with reset_after: the candidate's recurrent product is reset after the bias
            bias_x, bias_h = tf.unstack(cell.bias) if cell.reset_after else (cell.bias, tf.zeros_like(cell.bias))
            px = d_i * y_w + bias_x + b_theta
            ph = d_h * tf.matmul(h, cell.recurrent_kernel) + bias_h
            xz, xr, xh = tf.split(px, 3, axis=-1)
            hz, hr, hh = tf.split(ph, 3, axis=-1)
            upd, reset = tf.sigmoid(xz + hz), tf.sigmoid(xr + hr)
            new = {"h": upd * h + (1.0 - upd) * tf.tanh(xh + reset * hh)}
        return {**new, **{f"theta_{k}": v for k, v in theta_state.items()}}


__all__ = ["HYPER_INPUTS", "VHRNN"]
