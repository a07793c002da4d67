"""SRNN: the stochastic recurrent neural network (Fraccaro et al., NIPS 2016), eqs. 1-12 and appendix A.

A deterministic GRU and a
state-space layer glued together, with u_t = x_{t-1}::

    d_t = GRU(d_{t-1}, phi_x(x_{t-1}))                                   (1), d_0 = 0, x_0 = 0
    prior      p(z_t | z_{t-1}, d_t)      = N(NN_p([z_{t-1}, d_t]))        (3), z_0 = 0
    emission   p(x_t | z_t, d_t)          = head(NN_x([z_t, d_t]))         (1)
    inference  q(z_t | z_{t-1}, a_t)      = N(NN_q([z_{t-1}, a_t]))        (7), (10)
      smoothing: a_t = GRU_back(a_{t+1}, [d_t, phi_x(x_t)]), a_{T+1} = 0   (7)
      filtering: a_t = NN_a([d_t, phi_x(x_t)])
      Res_q:     mu_q = mu_p(z_{t-1}, d_t) + NN_q(...)                     (11)-(12)

``mu_p`` in eq. 12 is the prior mean at the sampled ``z_{t-1}`` (eq. 11's
Monte Carlo estimate "reusing the samples"), so with Res_q the KL depends on
the residual only.  All four variants of Table 1 are
``posterior`` in {smoothing, filtering} x ``res_q`` in {true, false}.

Choices (appendix A gives the sizes; where it is silent):

* Appendix A.2 (music): GRUs of 300 units, z of 100, networks of 1 layer of
  500 units (``rnn_units``, ``latent_dims``, ``mlp_hidden``); one feature
  extractor ``phi_x`` (a layer of ``feature_units``) shared by the
  generative and inference networks (A.1: "we share a neural network to
  extract features"); leaky rectifiers with leakiness 1/3 clipped at +-3
  (``activation='clipped_leaky_relu'``, A.1).
* A Gaussian's mean and scale come from one network with two outputs (the
  paper's NN_1, NN_2 share their input); the second output is the
  log-variance of eqs. (3) and (10), ``sigma = exp(log v / 2)``
  (``scale_fn='exp'``, also for a Gaussian output head; ``clamp`` is
  MS-STCN's A.2 clamp, which runs stored before ``scale_fn`` existed used);
  the latent networks' last layers start at zero.
* KL warm-up (appendix A: beta from 0.2 to 1) is the ELBO's
  ``--kl_regularizer=anneal --beta_start=0.2 --anneal_steps=N``
  (``configs/srnn_jsb.cfg``).

The time-parallel split (scoring, training, FIVO): ``d_{1:T}`` depends on
``x`` alone, so the forward GRU, ``phi_x``, the backward GRU (or the filtering
network ``NN_a``) run over the whole sequence before the loop, each GRU with
its input products computed for all steps at once; the loop carries only
``z_{t-1}`` and draws ``z_t`` from q (eq. 7, and with Res_q the prior mean of
eq. 12); the prior (eq. 3, without Res_q), the emission network and the head
run after it on all steps at once.

Priming a continuation from a smoothing posterior uses only the observed
prefix: the backward GRU runs over the prefix's steps (every step after it is
masked), so ``q(z_t | ...)`` for a prefix step sees ``x_{t:len}``, never the
steps being generated.  Cached and naive generation share that rule
(:mod:`tfhier.models.recurrent`).
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfhier.blocks import PointwiseMLP
from tfhier.models import cells
from tfhier.models.base import ACTIVATION_HELP, head_hparams, latent_normal, make_model_head
from tfhier.models.hparams import HParam, HParamError
from tfhier.models.recurrent import RecurrentModel
from tfhier.models.vrnn import reverse_rnn, reverse_rnn_layer

tfd = tfp.distributions

ACTIVATIONS = ("clipped_leaky_relu", "relu", "tanh")


@keras.saving.register_keras_serializable(package="tfhier")
class SRNN(RecurrentModel):
    """SRNN (see the module docstring)."""

    NAME = "srnn"
    DESCRIPTION = "SRNN (Fraccaro et al. 2016): a GRU and a state-space layer, smoothing posterior, Res_q"
    #: graph mode: 1.1-1.6x XLA's steps/s at srnn_jsb.cfg's sizes (ELBO 16 x 200) with 1.2 GB peak memory against
    #: 2.0 GB (bench/recurrent.py, docs/benchmarks.md)
    jit_compile_default = False
    HPARAMS = head_hparams("gaussian", 10, "exp") + (
        HParam("latent_dims", "ints", [100], "Latent units per step of each layer (recurrent models: one layer)."),
        HParam("rnn_units", "int", 300, "Units of the recurrent cell (VRNN/VHRNN: h; SRNN: d)."),
        HParam("mlp_hidden", "ints", [500], "Hidden ReLU layers of every MLP of a recurrent model."),
        HParam("feature_units", "int", 500, "Output size of the feature extractors phi_x, phi_z."),
        HParam("posterior", "str", "smoothing", "q(z_t | x_t, state) (filtering) or with a reverse RNN over the "
               "future observations (smoothing).", choices=("filtering", "smoothing")),
        HParam("res_q", "bool", True, "The posterior mean is the prior mean plus a learned residual (SRNN eq. 12)."),
        HParam("activation", "str", "clipped_leaky_relu", ACTIVATION_HELP, choices=ACTIVATIONS),
    )

    def __init__(self, input_dim, noise_seed=0, **kwargs):
        super().__init__(input_dim, noise_seed=noise_seed, **kwargs)
        hp = self.hparams
        if len(hp["latent_dims"]) != 1 or hp["latent_dims"][0] < 1:
            raise HParamError(f"srnn: --latent_dims is one positive number (one latent layer), got {hp['latent_dims']}")
        if hp["rnn_units"] < 1 or hp["feature_units"] < 1 or min(hp["mlp_hidden"], default=1) < 1:
            raise HParamError("srnn: --rnn_units, --feature_units and --mlp_hidden entries must be >= 1")
        self.head_name = hp["head"]
        self.z_dim, self.units = hp["latent_dims"][0], hp["rnn_units"]
        self.smoothing, self.res_q = hp["posterior"] == "smoothing", hp["res_q"]
        act, hidden = hp["activation"], hp["mlp_hidden"]
        self.phi_x = PointwiseMLP([hp["feature_units"]], activation=act, name="phi_x")
        self.gru = keras.layers.GRUCell(self.units, name="d_gru")
        self.forward_d = keras.layers.RNN(self.gru, return_sequences=True, name="d_rnn")
        self.prior_net = PointwiseMLP(hidden, 2 * self.z_dim, activation=act, out_initializer="zeros", name="prior")
        self.posterior_net = PointwiseMLP(hidden, 2 * self.z_dim, activation=act, out_initializer="zeros",
                                          name="posterior")
        self.emission_net = PointwiseMLP(hidden, activation=act, name="emission")
        if self.smoothing:
            self.backward_a = reverse_rnn_layer("gru", self.units, "a_rnn")
            self.filter_net = None
        else:
            self.backward_a = None
            self.filter_net = PointwiseMLP(hidden, self.units, activation=act, name="a_net")
        self.head = make_model_head(self)

    @property
    def latent_dim(self):
        return self.z_dim

    # -- the step interface ----------------------------------------------------------------
    def _d_step(self, d, x):
        out, _ = self.gru(self.phi_x(x), [d])
        return out

    def initial_state(self, batch):
        zeros = tf.zeros(tf.stack([batch, self.units]))
        d1 = self._d_step(zeros, tf.zeros(tf.stack([batch, self.input_dim])))  # d_1 = f(d_0 = 0, x_0 = 0)
        return {"d": d1, "z": tf.zeros(tf.stack([batch, self.z_dim]))}

    def prepare(self, x, mask):
        """Smoothing: ``a_{1:T}`` of the backward GRU over ``[d_t, phi_x(x_t)]`` (the d of eq. 1 recomputed by the
        same GRU over the whole sequence)."""
        if not self.smoothing:
            return {}
        previous = tf.pad(x, [[0, 0], [1, 0], [0, 0]])[:, :-1]  # x_{t-1}, with x_0 = 0
        d = self.forward_d(self.phi_x(previous))
        return {"a": reverse_rnn(self.backward_a, tf.concat([d, self.phi_x(x)], -1), mask)}

    def prior(self, state, prepared_t):
        return latent_normal(self.prior_net(tf.concat([state["z"], state["d"]], -1)), self.scale_fn)

    def posterior(self, state, prior, x_t, prepared_t):
        if self.smoothing:
            a = prepared_t["a"]
        else:
            a = self.filter_net(tf.concat([state["d"], self.phi_x(x_t)], -1))
        return self._posterior_from(state["z"], a, prior)

    def _posterior_from(self, z_previous, a, prior):
        q = latent_normal(self.posterior_net(tf.concat([z_previous, a], -1)), self.scale_fn)
        if self.res_q:  # eq. 12
            q = type(q)(prior.loc + q.loc, q.scale)
        return q

    def emission(self, state, z, prepared_t):
        return self.emission_net(tf.concat([z, state["d"]], -1))

    def transition(self, state, z, x_t, prepared_t):
        return {"d": self._d_step(state["d"], x_t), "z": z}

    # -- the time-parallel split -----------------------------------------------------------
    def sequence_features(self, x, mask):
        phi = self.phi_x(x)
        phi_previous = tf.concat([self.phi_x(tf.zeros_like(x[:, :1])), phi[:, :-1]], 1)  # phi_x(x_{t-1}), x_0 = 0
        d = cells.scan(self.gru, phi_previous)  # eq. 1, d_0 = 0
        features = tf.concat([d, phi], -1)
        a = (cells.scan(self.backward_a.cell, features, mask, reverse=True) if self.smoothing else
             self.filter_net(features))
        z, u = self.z_dim, self.units
        # the first layers' products with d_t and a_t (their inputs are [z_{t-1}, d_t] and [z_{t-1}, a_t])
        out = {"d": d, "q_first": self.posterior_net.first_product(a, z, z + u, bias=True)}
        if self.res_q:
            out["p_first"] = self.prior_net.first_product(d, z, z + u, bias=True)
        return out

    def latent_state(self, batch):
        return {"z": tf.zeros(tf.stack([batch, self.z_dim]))}

    def record_sizes(self):
        z = self.z_dim
        sizes = {"z_prev": z, "q_loc": z, "q_scale": z, "z": z}
        return {**sizes, "p_loc": z, "p_scale": z} if self.res_q else sizes

    def latent_step(self, carry, features_t, eps_t):
        z_prev, n = carry["z"], self.z_dim
        record = {"z_prev": z_prev}
        q = latent_normal(self.posterior_net.from_first(
            self.posterior_net.first_product(z_prev, 0, n) + features_t["q_first"]), self.scale_fn)
        if self.res_q:  # eq. 12
            prior = latent_normal(self.prior_net.from_first(
                self.prior_net.first_product(z_prev, 0, n) + features_t["p_first"]), self.scale_fn)
            record.update(p_loc=prior.loc, p_scale=prior.scale)
            q = type(q)(prior.loc + q.loc, q.scale)
        z = q.loc + q.scale * eps_t
        record.update(q_loc=q.loc, q_scale=q.scale, z=z)
        return {"z": z}, record

    def readout(self, features, records):
        state = {"z": records["z_prev"], "d": features["d"]}
        prior = tfd.Normal(records["p_loc"], records["p_scale"]) if self.res_q else self.prior(state, {})
        return (prior, tfd.Normal(records["q_loc"], records["q_scale"]),
                self.emission_params(state, records["z"], {}))


__all__ = ["ACTIVATIONS", "SRNN"]
