"""STCN and STCN-dense against the paper's equations (Aksan & Hilliges 2019, eqs. 8-12, 9, 15), in numpy."""

import numpy as np
import pytest
import tensorflow as tf

from tfhier import objectives
from tfhier.models import STCN, build_model
from tfhier.models.stcn import precision_weighted

SEED = tf.constant([2, 9])


def tiny(name="stcn", **overrides):
    config = dict(head="gaussian", channels=[6, 5, 4], dilations=[1, 2], latent_dims=[3, 2, 2], latent_hidden=[7, 5],
                  output_hidden=[6])
    config.update(overrides)
    tf.keras.utils.set_random_seed(0)
    model = build_model(name, 2, config).build_for_data()
    rng = np.random.default_rng(0)
    for v in model.weights:  # the zero-initialised projections too, so every term matters
        v.assign(rng.normal(scale=0.4, size=v.shape).astype(np.float32))
    return model


def np_mlp(net, x):
    """A PointwiseMLP in numpy: ReLU hidden layers, linear output."""
    for layer in net.layers_:
        x = np.maximum(x @ layer.kernel.numpy()[0] + layer.bias.numpy(), 0.0)
    if net.out is not None:
        x = x @ net.out.kernel.numpy()[0] + net.out.bias.numpy()
    return x


def np_normal(params):
    mu, s = np.split(params, 2, axis=-1)
    return mu, np.clip(np.log1p(np.exp(s)), 1e-3, 5.0)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("weighting", ["variance", "authors"])
def test_posterior_is_the_precision_weighted_prior_and_likelihood(shared, weighting):
    """Eqs. (8), (10)-(12) layer by layer in numpy, given the TCN outputs d^l and the sampled z^{l+1}."""
    model = tiny(shared_latent_nets=shared, precision_weighting=weighting)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 2)).astype(np.float32)
    out = model.forward(x, np.ones((2, 9), np.float32), seed=SEED)
    d = [t.numpy().astype(np.float64) for t in model.tcn_features(tf.constant(x))]
    n = len(d)
    for l in reversed(range(n)):
        d_prev = np.concatenate([np.zeros_like(d[l][:, :1]), d[l][:, :-1]], axis=1)  # d^l_{t-1}, zeros at t = 0
        above = [] if l == n - 1 else [out.latents[l + 1].numpy()]
        mu_p, s_p = np_normal(np_mlp(model.prior_nets[l], np.concatenate([d_prev] + above, -1)))
        lik_net = model.prior_nets[l] if shared else model.likelihood_nets[l]
        mu_h, s_h = np_normal(np_mlp(lik_net, np.concatenate([d[l]] + above, -1)))
        precision = s_h ** -2 + s_p ** -2
        mu_q = (mu_h * s_h ** -2 + mu_p * s_p ** -2) / precision
        s_q = precision ** -0.5 if weighting == "variance" else 1.0 / precision
        np.testing.assert_allclose(out.priors[l].loc, mu_p, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.priors[l].scale, s_p, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.posteriors[l].loc, mu_q, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.posteriors[l].scale, s_q, rtol=1e-4, atol=1e-5)
        if weighting == "variance":  # the posterior is narrower than both, and its mean lies between theirs
            assert np.all(s_q <= np.minimum(s_h, s_p) + 1e-6)
            assert np.all((mu_q - np.minimum(mu_h, mu_p) >= -1e-5) & (np.maximum(mu_h, mu_p) - mu_q >= -1e-5))


def test_precision_weighting_is_the_normalised_product_of_the_densities():
    """N(mu_h, s_h) N(mu_p, s_p) is proportional to N(mu_q, s_q): check on a grid by numerical integration."""
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    a, b = tfd.Normal(0.7, 0.5), tfd.Normal(-1.0, 1.3)
    q = precision_weighted(a, b)
    grid = np.linspace(-8, 8, 20001)
    product = np.exp(a.log_prob(grid).numpy() + b.log_prob(grid).numpy())
    product /= np.trapezoid(product, grid)
    mean = np.trapezoid(grid * product, grid)
    var = np.trapezoid((grid - mean) ** 2 * product, grid)
    np.testing.assert_allclose([float(q.loc), float(q.scale) ** 2], [mean, var], rtol=1e-4)
    with pytest.raises(ValueError, match="precision weighting"):
        precision_weighted(a, b, "other")


def test_kl_is_the_analytic_kl_of_each_layer():
    """Eq. (15): KL(q || p) of diagonal Gaussians per layer, summed over steps and units, in numpy."""
    model = tiny()
    x = np.random.default_rng(2).normal(size=(2, 7, 2)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3], np.float32)
    out = model.forward(x, mask, seed=SEED)
    terms = objectives.elbo_terms(out, x, mask)
    for l, (q, p) in enumerate(zip(out.posteriors, out.priors)):
        mq, sq, mp, sp = (v.numpy().astype(np.float64) for v in (q.loc, q.scale, p.loc, p.scale))
        kl = np.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5
        np.testing.assert_allclose(terms.kl_per_layer[:, l], (kl * mask[..., None]).sum(axis=(1, 2)), rtol=1e-4)


@pytest.mark.parametrize("name, dependent", [("stcn", [True, False, False]), ("stcn_dense", [True, True, True])])
def test_observation_depends_on_z1_only_or_on_every_layer(name, dependent):
    """Eq. (9): STCN's p(x_t | z^1_t); STCN-dense's p(x_t | z^1_t ... z^L_t): gradient of the output parameters
    with respect to each z^l."""
    model = tiny(name)
    out = model.forward(np.ones((1, 5, 2), np.float32), np.ones((1, 5), np.float32), seed=SEED)
    zs = [tf.Variable(z) for z in out.latents]
    with tf.GradientTape() as tape:
        eta = model.head(model.output_net(model.observation_input([tf.convert_to_tensor(z) for z in zs])))
        loss = tf.reduce_sum(eta)
    grads = tape.gradient(loss, zs)
    assert [g is not None and bool(np.any(g.numpy())) for g in grads] == dependent


def test_prior_sees_the_past_and_the_posterior_the_present():
    """p(z_t) is a function of x_{<t} (the Delay of d), q(z_t) of x_{<=t}: change x_t and compare at t."""
    model = tiny()
    x = np.random.default_rng(3).normal(size=(1, 8, 2)).astype(np.float32)
    mask = np.ones((1, 8), np.float32)
    x1 = x.copy()
    x1[0, 4] += 2.0
    a, b = model.forward(x, mask, seed=SEED), model.forward(x1, mask, seed=SEED)
    top = len(model.channels) - 1  # its prior and posterior see d^L only (no z above, which would carry x_t)
    np.testing.assert_allclose(a.priors[top].loc[:, :5], b.priors[top].loc[:, :5], atol=1e-6)
    assert not np.allclose(a.posteriors[top].loc[:, 4], b.posteriors[top].loc[:, 4])
    assert not np.allclose(a.priors[top].loc[:, 5], b.priors[top].loc[:, 5])


def test_iam_configuration_sizes():
    """The authors' IAM-OnDB STCN: 5 layers of 6 blocks (dilations 1..32) of 256 filters, latents [32,16,8,4,2]."""
    model = STCN(3, head="handwriting", head_components=20)
    assert model.channels == [256] * 5 and model.dilations == [1, 2, 4, 8, 16, 32]
    assert model.latent_dims == [32, 16, 8, 4, 2]
    model.build_for_data()
    # TCN layer 1, counted independently: block 0 (3 -> 256: k=2 gate conv, 1x1 out conv, bias-free 1x1 identity
    # projection) and 5 blocks 256 -> 256.
    block = lambda c_in, c: 2 * c_in * 2 * c + 2 * c + c * c + c  # noqa: E731
    assert model.tcn[0].count_params() == block(3, 256) + 3 * 256 + 5 * block(256, 256)
    # The shared latent network of the top layer: d^5 (256) -> 256 -> 256 -> 2 x 2.
    assert model.prior_nets[4].count_params() == (256 * 256 + 256) * 2 + 256 * 4 + 4
    assert model.likelihood_nets is None  # shared with the prior (the paper's theta = phi)


def test_invalid_configuration_is_named():
    with pytest.raises(ValueError, match="latent_dims"):
        tiny(latent_dims=[2, 2])
    with pytest.raises(ValueError, match="precision_weighting"):
        tiny(precision_weighting="mean")
    with pytest.raises(ValueError, match="dilations"):
        tiny(dilations=[])
