"""STORN (Bayer & Osendorfer 2014, "Learning stochastic recurrent networks"): VOSP and VRAE, with the
Wiener-process prior of §3.3.

Paper: arXiv:1411.7610.

**VOSP**, the variational one-step predictor (§3.2): a recognition RNN whose
deterministic state ``h_t`` summarises ``x_{1:t}``, a posterior
``q(z_t | h_t)`` and a generating MLP ``p(x_t | h_{t-1}, z_t)``; the past
enters the prediction only through ``h`` (the latents have no recurrence of
their own, beyond the prior's)::

    h_t = RNN(h_{t-1}, x_t),  q(z_t | h_t) = N(MLP_q(h_t)),  p(x_t | h_{t-1}, z_t) = head(MLP_x([h_{t-1}, z_t]))

Its posterior is a filter (``q(z_t)`` sees ``x_{<=t}``), so it has the
recurrent step interface and takes FIVO.

**VRAE**, the variational recurrent auto-encoder of §3.1 (the STORN paper's
definition, *not* Fabius & van Amersfoort's sequence-level VRAE with one
latent vector per sequence): a latent sequence ``z_{1:T}`` connected to
every ``x_t``, with bidirectional RNNs for both the recognition model
``q(z_t | x_{1:T})`` and the generating model ``p(x_t | z_{1:T})``.  It is not
autoregressive in x: generation draws ``z_{1:T}`` from the prior and decodes
it (O(T) in all, by its nature).  Continuation (our definition, the paper
has none): the latents of the prefix come from the posterior given the
prefix alone (the recognition RNN runs over the prefix's steps only), those
after it from the prior (for the Wiener prior: the random walk continued from
the prefix's last latent), and ``z_{1:L+N}`` is decoded jointly; the
continuation is drawn from ``p(x_t | z_{1:L+N})`` for ``t >= L``.

**Priors** (``prior``): ``'normal'``, isotropic ``N(0, I)`` per step, or
``'wiener'``, the Wiener process of §3.3: ``z_t = z_{t-1} + eps_t``,
``z_0 = 0``, i.e. ``z_{1:T,i} ~ N(0, Sigma)`` with ``Sigma_{s,t} = min(s, t)``.
Its KL is computed on the increments ``g(z) = (z_1, z_2 - z_1, ...)``
(volume preserving, so KL(q(g(z)) || N(0, I)) = KL(q(z) || Wiener)), which
for a diagonal q is analytic and per step:
``1/2 [sigma_t^2 + sigma_{t-1}^2 + (mu_t - mu_{t-1})^2 - 1 - 2 log sigma_t]``
(:func:`wiener_kl`).  Importance weights and FIVO use the prior's own
density, ``prod_t N(z_t; z_{t-1}, 1)``.

Choices where the paper is silent or that we do not follow:

* ``cell='simple'`` is eq. 2's RNN (tanh); ``'lstm'`` and ``'gru'`` are
  offered too.
* The paper's fast-dropout RNNs (FD-RNNs, its appendix) are ``fast_dropout``
  (a rate; 0, none, by default; :mod:`tfhier.models.fast_dropout`): the RNNs,
  both MLPs and the Bernoulli output carry means and variances, every weight
  matrix's input is dropped at that rate, and the recognition model's keep
  rates (its RNNs' and posterior network's) are learned
  (``learn_recognition_dropout``; the appendix's "learned noise injection").
  Where the paper is silent: the posterior's parameters are the means of its
  network's outputs (their variances are not used), and ``z`` enters the
  generating networks as an exact input.  VOSP's RNN is also what its
  generating MLP reads, so learned rates there shape the generating model too
  (they rise towards 1 in training; ``learn_recognition_dropout=False`` keeps
  them fixed).
* MLPs (the posterior's and the emission's) have ``mlp_hidden`` hidden layers
  of ``activation``: ReLU by default, tanh as Table 2 (one hidden layer of
  200, 400 or 600 tanh units for the music sets; ``configs/vosp_jsb.cfg``,
  ``configs/vrae_jsb.cfg``); ``output_bias`` initialises the head's
  projection bias (Table 2's b_y = -0.8).  The RNNs keep Keras' initialisers
  by default (``storn_init='keras'``: glorot-uniform input weights, an
  orthogonal recurrent matrix, spectral radius 1); ``storn_init='table2'``
  draws them as Table 2 and its ref. [27] do (N(0, ``init_variance``), at most
  ``max_incoming`` weights into each unit, the recurrent matrix scaled to
  ``spectral_radius``; :mod:`tfhier.models.initializers`).  The MLPs keep
  Keras' initialisers either way: Table 2 names only the RNNs' matrices.
* The latent scale: the paper does not say; STORN applies SGVB with Kingma &
  Welling's Gaussian recognition model, whose network outputs log sigma^2, so
  ``scale_fn='exp'`` (``sigma = exp(out / 2)``) by default; the latent
  networks' last layers start at zero.
* VRAE's bidirectional RNNs concatenate the two directions, each of
  ``rnn_units``, and skip padded steps (masking), so a sequence decodes the
  same whatever padding follows it.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfhier.blocks import PointwiseMLP, matmul_last
from tfhier.models import cells, fast_dropout
from tfhier.models.initializers import RNN_INITS, rnn_initializers
from tfhier.models.base import (ACTIVATION_HELP, ModelOutput, SequenceModel, gather_continuations, graph_call,
                                head_hparams, latent_normal, make_model_head)
from tfhier.models.hparams import HParam, HParamError
from tfhier.noise import generation_latent_seed, latent_noise, masked_inputs
from tfhier.models.recurrent import RECURRENT_MIXED_PRECISION, RecurrentModel
from tfhier.models.vrnn import cell_state, run_cell

tfd = tfp.distributions

PRIORS = ("wiener", "normal")
STORN_CELLS = ("simple", "lstm", "gru")


def wiener_kl(loc, scale, mask):
    """KL(q || Wiener) per element ``[B, T, Z]`` for a diagonal Gaussian q with ``loc``/``scale`` [B, T, Z] over
    the real steps (``mask`` [B, T], padding after them): the KL of the increments against N(0, I)."""
    mask = tf.cast(mask, loc.dtype)[..., None]
    loc, var = loc * mask, tf.square(scale) * mask
    prev_loc = tf.pad(loc, [[0, 0], [1, 0], [0, 0]])[:, :-1]
    prev_var = tf.pad(var, [[0, 0], [1, 0], [0, 0]])[:, :-1]
    kl = 0.5 * (var + prev_var + tf.square(loc - prev_loc) - 1.0 - tf.math.log(tf.where(mask > 0, var, 1.0)))
    return kl * mask


def _storn_cell(kind, units, name, initializers=None):
    if kind == "simple":
        return keras.layers.SimpleRNNCell(units, name=name, **(initializers or {}))
    if kind == "lstm":
        return keras.layers.LSTMCell(units, name=name)
    return keras.layers.GRUCell(units, name=name)


def _cell_state(kind, batch, units):
    return cell_state("lstm" if kind == "lstm" else "gru", batch, units)


def _run_cell(kind, cell, x, state):
    return run_cell("lstm" if kind == "lstm" else "gru", cell, x, state)


STORN_HPARAMS = head_hparams("bernoulli", 10, "exp") + (
    HParam("latent_dims", "ints", [16], "Latent units per step of each layer (recurrent models: one layer)."),
    HParam("rnn_units", "int", 128, "Units of the recurrent cell (VRNN/VHRNN: h; SRNN: d)."),
    HParam("mlp_hidden", "ints", [128], "Hidden ReLU layers of every MLP of a recurrent model."),
    HParam("activation", "str", "relu", ACTIVATION_HELP, choices=("relu", "tanh")),
    HParam("output_bias", "float", 0.0, "Initial bias of the output head's projection (STORN's Table 2: b_y = -0.8 "
           "on the logits for the music sets)."),
    HParam("prior", "str", "wiener", "vosp/vrae: the latent prior: the Wiener process of STORN §3.3 (wiener) or "
           "N(0, I) per step (normal).", choices=PRIORS),
    HParam("storn_cell", "str", "simple", "vosp/vrae: the recurrent cell: simple (eq. 2's tanh RNN), lstm or gru.",
           choices=STORN_CELLS),
    HParam("fast_dropout", "float", 0.0, "vosp/vrae: the dropout rate of fast dropout (STORN's FD-RNNs; appendix: 0.1) on "
           "the input of every weight matrix; 0: none. Needs --storn_cell=simple, --activation=tanh and "
           "--head=bernoulli.", stored_default=0.0),
    HParam("storn_init", "str", "keras", "vosp/vrae: the RNNs' initial weights: keras (glorot-uniform input, "
           "orthogonal recurrent weights) or table2 (STORN's Table 2 and Sutskever et al. 2013: N(0, "
           "--init_variance), at most --max_incoming weights into each unit, the recurrent matrix scaled to "
           "--spectral_radius). table2 needs --storn_cell=simple.", choices=RNN_INITS, stored_default="keras"),
    HParam("init_variance", "float", 0.01, "vosp/vrae with --storn_init=table2: the variance of the RNNs' input "
           "and recurrent weights (Table 2: 0.1, 0.01, 0.001 or 0.0001)."),
    HParam("max_incoming", "int", 15, "vosp/vrae with --storn_init=table2: nonzero weights into each RNN unit from "
           "the input and from the recurrence, each (Table 2's nu: 15, 25, 35 or 50; 0: all)."),
    HParam("spectral_radius", "float", 1.1, "vosp/vrae with --storn_init=table2: the recurrent matrix's spectral "
           "radius (Table 2's rho: 1.0, 1.05, 1.1 or 1.2)."),
    HParam("learn_recognition_dropout", "bool", True, "vosp/vrae with --fast_dropout: learn the recognition "
           "model's keep rates (its RNNs' and posterior network's; STORN appendix), starting at 1 - --fast_dropout; "
           "the generating model's stay fixed.", stored_default=True),
)


def _fd_bernoulli_logits(head, keep, mean, var):
    """The Bernoulli head's logits of ``E[sigmoid(v)]``, ``v`` its projection of hidden units of ``mean`` / ``var``
    with input keep probability ``keep`` (STORN appendix, E[v_t] and V[v_t])."""
    out_mean = head(keep * mean)  # d_o E[h] W_out + b_y
    out_var = matmul_last(keep * (1.0 - keep) * tf.square(mean) + keep * var, tf.square(head.proj.kernel[0]))
    return fast_dropout.bernoulli_logits(out_mean, out_var)


def _check_storn(name, hp):
    if len(hp["latent_dims"]) != 1 or hp["latent_dims"][0] < 1:
        raise HParamError(f"{name}: --latent_dims is one positive number (one latent layer), got {hp['latent_dims']}")
    if hp["rnn_units"] < 1 or min(hp["mlp_hidden"], default=1) < 1:
        raise HParamError(f"{name}: --rnn_units and --mlp_hidden entries must be >= 1")
    rate = hp["fast_dropout"]
    if not 0.0 <= rate < 1.0:
        raise HParamError(f"{name}: --fast_dropout is a dropout rate in [0, 1), got {rate}")
    if rate > 0 and (hp["storn_cell"], hp["activation"], hp["head"]) != ("simple", "tanh", "bernoulli"):
        raise HParamError(f"{name}: --fast_dropout propagates moments through tanh units and a Bernoulli output: it "
                          f"needs --storn_cell=simple --activation=tanh --head=bernoulli, got --storn_cell="
                          f"{hp['storn_cell']} --activation={hp['activation']} --head={hp['head']}")
    table2_only = {h.name: h.default for h in STORN_HPARAMS if h.name in ("init_variance", "max_incoming",
                                                                           "spectral_radius")}
    changed = [n for n, default in table2_only.items() if hp[n] != default]
    if hp["storn_init"] != "table2" and changed:
        raise HParamError(f"{name}: --{changed[0]} is a setting of --storn_init=table2; --storn_init="
                          f"{hp['storn_init']} keeps Keras' initialisers")
    if hp["storn_init"] == "table2":
        if hp["storn_cell"] != "simple":
            raise HParamError(f"{name}: --storn_init=table2 initialises STORN's tanh RNN (eq. 2): it needs "
                              f"--storn_cell=simple, got --storn_cell={hp['storn_cell']}")
        for flag, bad, expected in (("init_variance", hp["init_variance"] <= 0, "> 0"),
                                    ("spectral_radius", hp["spectral_radius"] <= 0, "> 0"),
                                    ("max_incoming", hp["max_incoming"] < 0, ">= 0 (0: all)")):
            if bad:
                raise HParamError(f"{name}: --{flag} must be {expected}, got {hp[flag]}")


@keras.saving.register_keras_serializable(package="tfhier")
class VOSP(RecurrentModel):
    """VOSP, STORN's variational one-step predictor (see the module docstring)."""

    NAME = "vosp"
    DESCRIPTION = "VOSP (Bayer & Osendorfer 2014): a recognition RNN, q(z_t | h_t), p(x_t | h_{t-1}, z_t)"
    HPARAMS = STORN_HPARAMS
    #: graph mode: about twice XLA's steps/s at the configs' sizes (ELBO 16 x 200; bench/recurrent.py)
    jit_compile_default = False

    def __init__(self, input_dim, noise_seed=0, **kwargs):
        super().__init__(input_dim, noise_seed=noise_seed, **kwargs)
        hp = self.hparams
        _check_storn(self.NAME, hp)
        self.head_name = hp["head"]
        self.z_dim, self.units, self.kind, self.wiener = (hp["latent_dims"][0], hp["rnn_units"], hp["storn_cell"],
                                                          hp["prior"] == "wiener")
        self.fast_dropout = hp["fast_dropout"] > 0
        if self.fast_dropout:  # STORN's FD-RNNs (appendix): every unit a mean and a variance
            keep, learn = 1.0 - hp["fast_dropout"], hp["learn_recognition_dropout"]
            self.output_keep = keep
            self.rnn = fast_dropout.FastDropoutRNN(self.units, keep, learn, name="rnn", **rnn_initializers(hp))
            self.posterior_net = fast_dropout.FastDropoutMLP(hp["mlp_hidden"], 2 * self.z_dim, keep, learn,
                                                             out_initializer="zeros", name="posterior")
            self.emission_net = fast_dropout.FastDropoutMLP(hp["mlp_hidden"], keep=keep, name="emission")
        else:
            self.rnn = _storn_cell(self.kind, self.units, "rnn", rnn_initializers(hp))
            self.posterior_net = PointwiseMLP(hp["mlp_hidden"], 2 * self.z_dim, activation=hp["activation"],
                                              out_initializer="zeros", name="posterior")
            self.emission_net = PointwiseMLP(hp["mlp_hidden"], activation=hp["activation"], name="emission")
        self.head = make_model_head(self, output_bias=hp["output_bias"])

    @property
    def weight_decay_exempt(self):
        layers = [self.rnn, self.posterior_net, self.emission_net]
        return fast_dropout.learned_keep_logits(layers if self.fast_dropout else [])

    @property
    def latent_dim(self):
        return self.z_dim

    def initial_state(self, batch):
        state = self.rnn.initial_state(batch) if self.fast_dropout else _cell_state(self.kind, batch, self.units)
        return {**state, "z": tf.zeros(tf.stack([batch, self.z_dim]))}

    def prior(self, state, prepared_t):
        loc = state["z"] if self.wiener else tf.zeros_like(state["z"])  # Wiener: z_t = z_{t-1} + N(0, 1)
        return tfd.Normal(loc, tf.ones_like(loc))

    def _recognise(self, state, x_t):
        rnn_state = {k: v for k, v in state.items() if k != "z"}
        return self.rnn.step(x_t, rnn_state) if self.fast_dropout else _run_cell(self.kind, self.rnn, x_t, rnn_state)

    def _posterior(self, h):
        """q(z_t | h_t) from the recognition state; with fast dropout its parameters are the means of the
        posterior network's outputs (the paper does not say what it did with their variances)."""
        if self.fast_dropout:
            return latent_normal(self.posterior_net(h["h"], h["h_var"])[0], self.scale_fn)
        return latent_normal(self.posterior_net(h["h"]), self.scale_fn)

    def posterior(self, state, prior, x_t, prepared_t):
        return self._posterior(self._recognise(state, x_t))

    def emission(self, state, z, prepared_t):
        return self.emission_net(tf.concat([state["h"], z], -1))

    def emission_params(self, state, z, prepared_t):
        """The Bernoulli logits of p(x_t | h_{t-1}, z_t); with fast dropout those of E[sigmoid(v_t)], from the
        output pre-activation's moments (STORN appendix, E[v_t], V[v_t]; :func:`fast_dropout.bernoulli_logits`)."""
        if not self.fast_dropout:
            return self.head(self.emission(state, z, prepared_t))
        mean, var = self.emission_net(tf.concat([state["h"], z], -1),
                                      tf.concat([state["h_var"], tf.zeros_like(z)], -1))
        return _fd_bernoulli_logits(self.head, self.output_keep, mean, var)

    def transition(self, state, z, x_t, prepared_t):
        return {**self._recognise(state, x_t), "z": z}

    def analytic_kl(self, q_loc, q_scale, mask):
        return [wiener_kl(q_loc, q_scale, mask)] if self.wiener else None

    # -- the time-parallel split: the recognition RNN reads x alone, so only z_t = loc + scale * eps remains ----
    def sequence_features(self, x, mask):
        # h_{1:T}: the recognition state after x_t (with fast dropout its mean and variance)
        h = dict(zip(("h", "h_var"), self.rnn(x))) if self.fast_dropout else {"h": cells.scan(self.rnn, x)}
        q = self._posterior(h)
        # h_{t-1}, h_0 = 0
        previous = {f"{k}_prev": tf.pad(v[:, :-1], [[0, 0], [1, 0], [0, 0]]) for k, v in h.items()}
        return {**previous, "q_loc": q.loc, "q_scale": q.scale}

    def latent_state(self, batch):
        return {"z": tf.zeros(tf.stack([batch, self.z_dim]))}

    def record_sizes(self):
        return {"z_prev": self.z_dim, "z": self.z_dim}

    def latent_step(self, carry, features_t, eps_t):
        z = features_t["q_loc"] + features_t["q_scale"] * eps_t
        return {"z": z}, {"z_prev": carry["z"], "z": z}

    def scan_latents(self, features, eps, batch, num_steps):
        """No loop: every ``z_t`` is drawn from features computed beforehand."""
        z = features["q_loc"] + features["q_scale"] * tf.transpose(eps, [1, 0, 2])
        return {"z_prev": tf.pad(z[:, :-1], [[0, 0], [1, 0], [0, 0]]), "z": z}

    def readout(self, features, records):
        prior = self.prior({"z": records["z_prev"]}, {})
        posterior = tfd.Normal(features["q_loc"], features["q_scale"])
        state = {k[:-len("_prev")]: v for k, v in features.items() if k.endswith("_prev")}
        return prior, posterior, self.emission_params(state, records["z"], {})


@keras.saving.register_keras_serializable(package="tfhier")
class VRAE(SequenceModel):
    """VRAE, STORN §3.1's variational recurrent auto-encoder (see the module docstring)."""

    NAME = "vrae"
    DESCRIPTION = "VRAE (STORN §3.1): a latent sequence decoded by a bidirectional RNN; not autoregressive in x"
    HPARAMS = STORN_HPARAMS
    #: graph mode: about twice XLA's steps/s at the configs' sizes (ELBO 16 x 200; bench/recurrent.py)
    jit_compile_default = False
    mixed_precision = False
    mixed_precision_problem = RECURRENT_MIXED_PRECISION
    autoregressive = False

    def __init__(self, input_dim, noise_seed=0, **kwargs):
        super().__init__(input_dim, noise_seed=noise_seed, **kwargs)
        hp = self.hparams
        _check_storn(self.NAME, hp)
        self.head_name = hp["head"]
        self.z_dim, self.wiener = hp["latent_dims"][0], hp["prior"] == "wiener"
        self.fast_dropout = hp["fast_dropout"] > 0
        keep, learn = 1.0 - hp["fast_dropout"], hp["learn_recognition_dropout"]
        self.output_keep = keep

        def birnn(name, learn_keep=False):
            if self.fast_dropout:  # STORN's FD-RNNs (appendix): every unit a mean and a variance
                return tuple(fast_dropout.FastDropoutRNN(hp["rnn_units"], keep, learn_keep, name=f"{name}_{d}",
                                                         **rnn_initializers(hp)) for d in ("fw", "bw"))
            # Two named RNNs rather than keras.layers.Bidirectional, whose inner layers get process-dependent names
            # (checkpoints are by variable path).
            cells = [_storn_cell(hp["storn_cell"], hp["rnn_units"], f"{name}_{d}_cell", rnn_initializers(hp))
                     for d in ("fw", "bw")]
            return (keras.layers.RNN(cells[0], return_sequences=True, name=f"{name}_fw"),
                    keras.layers.RNN(cells[1], return_sequences=True, go_backwards=True, name=f"{name}_bw"))

        self.recognition = birnn("recognition", learn)
        self.generator = birnn("generator")
        if self.fast_dropout:
            self.posterior_net = fast_dropout.FastDropoutMLP(hp["mlp_hidden"], 2 * self.z_dim, keep, learn,
                                                             out_initializer="zeros", name="posterior")
            self.emission_net = fast_dropout.FastDropoutMLP(hp["mlp_hidden"], keep=keep, name="emission")
        else:
            self.posterior_net = PointwiseMLP(hp["mlp_hidden"], 2 * self.z_dim, activation=hp["activation"],
                                              out_initializer="zeros", name="posterior")
            self.emission_net = PointwiseMLP(hp["mlp_hidden"], activation=hp["activation"], name="emission")
        self.head = make_model_head(self, output_bias=hp["output_bias"])

    @property
    def weight_decay_exempt(self):
        layers = [*self.recognition, *self.generator, self.posterior_net, self.emission_net]
        return fast_dropout.learned_keep_logits(layers if self.fast_dropout else [])

    @property
    def latent_layer_names(self):
        return ["z"]

    @property
    def latent_dims(self):
        return [self.z_dim]

    @staticmethod
    def _bidirectional(pair, inputs, mask):
        """Both directions over the real steps (padded ones skipped), concatenated: ``[B, T, 2 units]``."""
        fw, bw = pair
        m = tf.cast(mask, tf.bool)
        out = tf.concat([fw(inputs, mask=m), tf.reverse(bw(inputs, mask=m), axis=[1])], axis=-1)
        return out * tf.cast(mask, tf.float32)[..., None]

    @staticmethod
    def _bidirectional_moments(pair, inputs, mask):
        """Fast dropout's :meth:`_bidirectional`: the two directions' means and variances, each ``[B, T, 2 units]``."""
        fw, bw = pair
        directions = (fw(inputs, step_mask=mask), bw(inputs, step_mask=mask, reverse=True))
        return tuple(tf.concat([d[i] for d in directions], axis=-1) * mask[..., None] for i in (0, 1))

    def _posterior(self, x, mask):
        if self.fast_dropout:  # the posterior's parameters: the means of its network's outputs (module docstring)
            features = self._bidirectional_moments(self.recognition, x, mask)
            return latent_normal(self.posterior_net(*features)[0], self.scale_fn)
        return latent_normal(self.posterior_net(self._bidirectional(self.recognition, x, mask)), self.scale_fn)

    def _emission_params(self, z, mask):
        """The head's parameters of p(x_t | z_{1:T}) for all steps at once."""
        if self.fast_dropout:
            mean, var = self.emission_net(*self._bidirectional_moments(self.generator, z, mask))
            return _fd_bernoulli_logits(self.head, self.output_keep, mean, var)
        return self.head(self.emission_net(self._bidirectional(self.generator, z, mask)))

    def forward(self, x, mask, *, seed, latents="posterior", temperature=1.0, training=False,
                observed_lengths=None) -> ModelOutput:
        """One pass (see :class:`tfhier.models.base.SequenceModel` and the module docstring).  With
        ``observed_lengths`` the recognition RNN sees the observed prefix only, z comes from the posterior
        inside it and from the prior after it (a Wiener walk continues from the prefix's last latent)."""
        if latents not in ("posterior", "prior"):
            raise ValueError(f"latents must be 'posterior' or 'prior', got {latents!r}")
        if observed_lengths is not None and latents != "prior":
            raise ValueError("observed_lengths (priming) goes with latents='prior'")
        mask = tf.cast(mask, tf.float32)
        x = masked_inputs(x, mask)
        b, t_len = tf.shape(x)[0], tf.shape(x)[1]
        eps = tf.transpose(latent_noise(seed, 0, t_len, b, self.z_dim), [1, 0, 2])
        if observed_lengths is not None:
            seen = tf.sequence_mask(observed_lengths, t_len, dtype=tf.float32)
            posterior = self._posterior(masked_inputs(x, seen), seen)
        else:
            seen = None
            posterior = self._posterior(x, mask)
        z_q = posterior.loc + posterior.scale * eps
        if latents == "posterior":
            z = z_q
        else:
            steps = temperature * eps
            if seen is None:
                z = tf.cumsum(steps, axis=1) if self.wiener else steps
            else:
                use_q = seen[..., None] > 0
                if self.wiener:  # the walk from the last posterior latent: z_t = z_q[L-1] + sum_{L <= s <= t} eps_s
                    walk = tf.cumsum(tf.where(use_q, 0.0, steps), axis=1)
                    last_q = tf.gather(z_q, tf.maximum(tf.cast(observed_lengths, tf.int32) - 1, 0), batch_dims=1)
                    z = tf.where(use_q, z_q, last_q[:, None] + walk)
                else:
                    z = tf.where(use_q, z_q, steps)
        eta = self._emission_params(z, mask)
        if self.wiener:
            previous = tf.pad(z, [[0, 0], [1, 0], [0, 0]])[:, :-1]
            prior = tfd.Normal(previous, tf.ones_like(z))
            kl = [wiener_kl(posterior.loc, posterior.scale, mask)]
        else:
            prior = tfd.Normal(tf.zeros_like(z), tf.ones_like(z))
            kl = None
        return ModelOutput(likelihood=self.head.distribution(eta), likelihood_params=eta, posteriors=[posterior],
                           priors=[prior], latents=[z], latent_masks=[mask], kl_elements=kl)

    # -- generation: one decode, O(T) in all ---------------------------------------------------
    def generate(self, num_samples, num_steps, seed, temperature=1.0):
        return graph_call(self, "generate", lambda n, t, s, temp: self._decode_sample(
            tf.zeros(tf.stack([n, t, self.input_dim])), tf.zeros([n], tf.int32), t, s, temp, primed=False),
            num_samples, num_steps, seed, temperature)

    def continue_sequences(self, prefix, prefix_lengths, num_steps, seed, temperature=1.0):
        return graph_call(self, "continue", lambda p, pl, t, s, temp: self._decode_sample(
            p, pl, t, s, temp, primed=True), prefix, prefix_lengths, num_steps, seed, temperature)

    def _decode_sample(self, prefix, lengths, num_steps, seed, temperature, primed):
        seed = tf.cast(seed, tf.int32)
        prefix = tf.cast(prefix, tf.float32)
        lengths = tf.cast(lengths, tf.int32)
        num_steps = tf.cast(num_steps, tf.int32)
        b, t0 = tf.shape(prefix)[0], tf.shape(prefix)[1]
        total = t0 + num_steps if primed else num_steps
        buffer = tf.pad(prefix, [[0, 0], [0, total - t0], [0, 0]]) if primed else prefix
        out = self.forward(buffer, tf.ones(tf.stack([b, total])), seed=generation_latent_seed(seed), latents="prior",
                           temperature=temperature, observed_lengths=lengths if primed else None)
        eta = out.likelihood_params

        def body(t, ta):
            return t + 1, ta.write(t, self.draw_step(eta[:, t], seed, t, temperature))

        _, ta = tf.while_loop(lambda t, _: t < total, body,
                              (tf.constant(0), tf.TensorArray(tf.float32, size=total,
                                                              element_shape=tf.TensorShape([None, self.input_dim]))))
        samples = tf.transpose(ta.stack(), [1, 0, 2])
        return gather_continuations(samples, lengths, num_steps) if primed else samples


__all__ = ["PRIORS", "STORN_CELLS", "VOSP", "VRAE", "wiener_kl"]
