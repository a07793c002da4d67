"""VRNN: the variational recurrent neural network (Chung et al. 2015), as VHRNN §2-3 and FIVO use it.

The VHRNN paper (Deng et al. 2020) defines it as VHRNN's base (eqs. 1-5 without
the hypernetworks); the only TensorFlow home it had is FIVO's archived TF1
code (``fivo/models/vrnn.py``).  With ``h_t`` the LSTM state after step t::

    phi_x(x_t), phi_z(z_t)                       feature extractors (MLPs)
    prior      p(z_t | h_{t-1})        = N(MLP_p(h_{t-1}))                       (3)
    posterior  q(z_t | x_t, h_{t-1})   = N(MLP_q([phi_x(x_t), h_{t-1}]))         (5)
    emission   p(x_t | z_t, h_{t-1})   = head(MLP_e([phi_z(z_t), h_{t-1}]))      (2)
    recurrence h_t = LSTM([phi_x(x_t), phi_z(z_t)], h_{t-1})                     (1)

Choices (each a hyperparameter; the VHRNN paper's synthetic VRNN is
``configs/vrnn_synthetic.cfg``):

* every MLP has ``mlp_hidden`` ReLU layers and a linear output; the feature
  extractors output ``feature_units``; the latent networks output
  ``[mu, sigma_pre]`` with ``sigma = softplus(sigma_pre) + 1e-4`` and no cap
  (``scale_fn='softplus'``, also for a Gaussian output head: Chung et al.'s
  code puts a softplus on the standard deviation, FIVO's
  ``max(softplus(raw + 0.25), sigma_min)``) and start at zero.
* ``posterior='filtering'`` is eq. 5.  ``'smoothing'`` is FIVO's smoothing
  proposal: a reverse LSTM (``rnn_units``) over ``phi_x(x_{t:T})`` replaces
  ``phi_x(x_t)`` in the posterior's input.  The VHRNN paper's parameter
  counts of its synthetic VRNNs (Table 1: 2,612 for z = 8, 1,516 for z = 6)
  are those of FIVO's VRNN with two hidden layers of z units and that
  reverse LSTM, which ``posterior='smoothing'`` reproduces.
* ``res_q``: the posterior mean is the prior mean plus the network's output
  (FIVO's learned proposals always do this; Chung et al. do not, the
  default).
* ``cell='lstm'`` (the papers) or ``'gru'`` (VHRNN appendix D's variant).

The step interface and everything built on it (forward, cached generation,
FIVO) come from :class:`tfhier.models.recurrent.RecurrentModel`.  The
time-parallel split (scoring, training, FIVO): ``phi_x(x_{1:T})``, the
smoothing proposal's reverse LSTM and the LSTM's input product of ``phi_x``
run over the whole sequence before the loop; the loop draws ``z_t`` and steps
the LSTM (its ``phi_z`` and recurrent products); the prior, which reads only
``h_{t-1}`` (eq. 3), and the emission and head run after it on all steps at
once.  With ``res_q`` the prior's mean is needed inside the loop and runs
there.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfhier.blocks import PointwiseMLP
from tfhier.models import cells
from tfhier.models.base import head_hparams, latent_normal, make_model_head
from tfhier.models.hparams import HParam, HParamError
from tfhier.models.recurrent import RecurrentModel

tfd = tfp.distributions

CELLS = ("lstm", "gru")


def make_cell(kind, units, name):
    if kind == "lstm":
        return keras.layers.LSTMCell(units, name=name)
    return keras.layers.GRUCell(units, name=name)


def cell_state(kind, batch, units):
    zeros = tf.zeros(tf.stack([batch, units]))
    return {"h": zeros, "c": zeros} if kind == "lstm" else {"h": zeros}


def run_cell(kind, cell, x, state):
    """One step of an LSTM or GRU cell on ``x`` [B, C] from ``state`` ({'h'[, 'c']}); the new state dict."""
    if kind == "lstm":
        h, (h2, c2) = cell(x, [state["h"], state["c"]])
        return {"h": h, "c": c2}
    h, _ = cell(x, [state["h"]])
    return {"h": h}


def reverse_rnn_layer(kind, units, name):
    """A Keras RNN running a cell backwards in time (see :func:`reverse_rnn`)."""
    return keras.layers.RNN(make_cell(kind, units, name=f"{name}_cell"), return_sequences=True, go_backwards=True,
                            name=name)


def reverse_rnn(layer, inputs, mask):
    """``a_t = cell(a_{t+1}, inputs_t)`` from ``a_{T+1} = 0`` backwards over ``inputs`` [B, T, C] (``layer``: a
    :func:`reverse_rnn_layer`), padded steps (``mask`` 0) skipped so the recursion of every sequence starts at
    its own last step: ``[B, T, units]``, zero on padded steps."""
    out = layer(inputs, mask=tf.cast(mask, tf.bool))
    return tf.reverse(out, axis=[1]) * tf.cast(mask, tf.float32)[..., None]


@keras.saving.register_keras_serializable(package="tfhier")
class VRNN(RecurrentModel):
    """VRNN (see the module docstring)."""

    NAME = "vrnn"
    DESCRIPTION = "VRNN (Chung et al. 2015): an LSTM with a latent variable per step, prior from its state"
    HPARAMS = head_hparams("gaussian", 10, "softplus") + (
        HParam("latent_dims", "ints", [8], "Latent units per step of each layer (recurrent models: one layer)."),
        HParam("rnn_units", "int", 8, "Units of the recurrent cell (VRNN/VHRNN: h; SRNN: d)."),
        HParam("mlp_hidden", "ints", [8, 8], "Hidden ReLU layers of every MLP of a recurrent model."),
        HParam("feature_units", "int", 8, "Output size of the feature extractors phi_x, phi_z."),
        HParam("posterior", "str", "filtering", "q(z_t | x_t, state) (filtering) or with a reverse RNN over the "
               "future observations (smoothing).", choices=("filtering", "smoothing")),
        HParam("res_q", "bool", False, "The posterior mean is the prior mean plus a learned residual (SRNN eq. 12)."),
        HParam("cell", "str", "lstm", "Recurrent cell: lstm or gru.", choices=CELLS),
    )

    def __init__(self, input_dim, noise_seed=0, **kwargs):
        super().__init__(input_dim, noise_seed=noise_seed, **kwargs)
        hp = self.hparams
        self._check(hp)
        self.head_name = hp["head"]
        self.z_dim, self.units, self.cell_kind = hp["latent_dims"][0], hp["rnn_units"], hp["cell"]
        self.smoothing, self.res_q = hp["posterior"] == "smoothing", hp["res_q"]
        hidden, features = hp["mlp_hidden"], hp["feature_units"]
        self.phi_x = PointwiseMLP(hidden, features, name="phi_x")
        self.phi_z = PointwiseMLP(hidden, features, name="phi_z")
        self.prior_net = PointwiseMLP(hidden, 2 * self.z_dim, out_initializer="zeros", name="prior")
        self.posterior_net = PointwiseMLP(hidden, 2 * self.z_dim, out_initializer="zeros", name="posterior")
        self.emission_net = PointwiseMLP(hidden, name="emission")
        self.rnn = make_cell(self.cell_kind, self.units, name="rnn")
        self.reverse = reverse_rnn_layer(self.cell_kind, self.units, "reverse_rnn") if self.smoothing else None
        self.head = make_model_head(self)

    def _check(self, hp):
        if len(hp["latent_dims"]) != 1 or hp["latent_dims"][0] < 1:
            raise HParamError(f"{self.NAME}: --latent_dims is one positive number for a recurrent model (one latent "
                              f"layer), got {hp['latent_dims']}")
        if hp["rnn_units"] < 1 or hp["feature_units"] < 1 or min(hp["mlp_hidden"], default=1) < 1:
            raise HParamError(f"{self.NAME}: --rnn_units, --feature_units and --mlp_hidden entries must be >= 1")

    @property
    def latent_dim(self):
        return self.z_dim

    # -- the step interface ----------------------------------------------------------------
    def initial_state(self, batch):
        return cell_state(self.cell_kind, batch, self.units)

    def prepare(self, x, mask):
        if not self.smoothing:
            return {}
        return {"a": reverse_rnn(self.reverse, self.phi_x(x), mask)}

    def prior(self, state, prepared_t):
        return latent_normal(self.prior_net(state["h"]), self.scale_fn)

    def posterior(self, state, prior, x_t, prepared_t):
        evidence = prepared_t["a"] if self.smoothing else self.phi_x(x_t)
        return self._posterior_from(evidence, state["h"], prior)

    def emission(self, state, z, prepared_t):
        return self.emission_net(tf.concat([self.phi_z(z), state["h"]], -1))

    def transition(self, state, z, x_t, prepared_t):
        inputs = tf.concat([self.phi_x(x_t), self.phi_z(z)], -1)
        return run_cell(self.cell_kind, self.rnn, inputs, state)

    # -- the time-parallel split -----------------------------------------------------------
    def sequence_features(self, x, mask):
        phi = self.phi_x(x)
        evidence = cells.scan(self.reverse.cell, phi, mask, reverse=True) if self.smoothing else phi
        # the posterior's first layer (its input is [evidence_t, h_{t-1}]): the evidence's product, for all steps
        return {"q_first": self.posterior_net.first_product(evidence, 0, evidence.shape[-1], bias=True),
                "x_product": self._x_product(phi)}

    def _x_product(self, phi):
        """The recurrence's input product of ``phi_x(x_t)`` (the first half of the cell's input), with its bias."""
        return cells.input_projection(self.rnn, phi, kernel_rows=(0, self.hparams["feature_units"]))

    def _recur(self, carry, z, x_product_t):
        """The recurrence (eq. 1) from the step's input product of ``phi_x(x_t)``."""
        f = self.hparams["feature_units"]
        z_product = cells.input_projection(self.rnn, self.phi_z(z), kernel_rows=(f, 2 * f))
        return cells.recur(self.rnn, x_product_t + z_product, carry)

    def record_sizes(self):
        z = self.z_dim
        sizes = {"h_prev": self.units, "q_loc": z, "q_scale": z, "z": z}
        return {**sizes, "p_loc": z, "p_scale": z} if self.res_q else sizes

    def latent_step(self, carry, features_t, eps_t):
        h = carry["h"]
        record = {"h_prev": h}
        prior = None
        if self.res_q:
            prior = self.prior(carry, {})
            record.update(p_loc=prior.loc, p_scale=prior.scale)
        e = self.units if self.smoothing else self.hparams["feature_units"]
        q = latent_normal(self.posterior_net.from_first(
            features_t["q_first"] + self.posterior_net.first_product(h, e, e + self.units)), self.scale_fn)
        if self.res_q:
            q = tfd.Normal(prior.loc + q.loc, q.scale)
        z = q.loc + q.scale * eps_t
        record.update(q_loc=q.loc, q_scale=q.scale, z=z)
        return self._recur(carry, z, features_t["x_product"]), record

    def _posterior_from(self, evidence, h, prior):
        q = latent_normal(self.posterior_net(tf.concat([evidence, h], -1)), self.scale_fn)
        return tfd.Normal(prior.loc + q.loc, q.scale) if self.res_q else q

    def readout(self, features, records):
        h = {"h": records["h_prev"]}
        prior = tfd.Normal(records["p_loc"], records["p_scale"]) if self.res_q else self.prior(h, {})
        return prior, tfd.Normal(records["q_loc"], records["q_scale"]), self.emission_params(h, records["z"], {})


__all__ = ["CELLS", "VRNN", "cell_state", "make_cell", "reverse_rnn", "reverse_rnn_layer", "run_cell"]
