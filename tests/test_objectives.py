"""Tests for tfhier.objectives against numpy / scipy / Monte Carlo references."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy.special import logsumexp
from scipy.stats import norm

from tfhier import objectives
from tfhier.models.base import ModelOutput
from tfhier.objectives import ELBO as Objective

tfd = tfp.distributions

B = 2


def _normal(loc, scale):
    return tfd.Normal(tf.constant(loc, tf.float32), tf.constant(scale, tf.float32))


def _gaussian_likelihood(loc, scale):
    return tfd.Independent(_normal(loc, scale), reinterpreted_batch_ndims=1)


def _two_layer_output(rng, latents=None):
    """A fake model output: layer 1 [B, 4, 3], layer 2 [B, 2, 2]; the data is [B, 4, 2]."""
    shapes = [(B, 4, 3), (B, 2, 2)]
    masks = [np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32), np.array([[1, 1], [1, 0]], np.float32)]
    q_params, p_params = [], []
    for shape, m in zip(shapes, masks):
        mq, sq = rng.normal(size=shape), np.exp(0.4 * rng.normal(size=shape))
        mp, sp = rng.normal(size=shape), np.exp(0.4 * rng.normal(size=shape))
        # padded steps: posterior far from the prior (a large KL there if it were counted)
        mq = np.where(m[..., None] > 0, mq, 25.0)
        sq = np.where(m[..., None] > 0, sq, 0.05)
        q_params.append((mq.astype(np.float32), sq.astype(np.float32)))
        p_params.append((mp.astype(np.float32), sp.astype(np.float32)))
    x = rng.normal(size=(B, 4, 2)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    lik = (rng.normal(size=x.shape).astype(np.float32), np.exp(0.3 * rng.normal(size=x.shape)).astype(np.float32))
    if latents is None:
        latents = [(mq + sq * rng.normal(size=mq.shape)).astype(np.float32) for mq, sq in q_params]
    out = ModelOutput(likelihood=_gaussian_likelihood(*lik), likelihood_params=None,
                      posteriors=[_normal(*qp) for qp in q_params], priors=[_normal(*pp) for pp in p_params],
                      latents=[tf.constant(z) for z in latents], latent_masks=[tf.constant(m) for m in masks])
    return out, dict(q=q_params, p=p_params, masks=masks, x=x, mask=mask, lik=lik, latents=latents)


def _np_nll(x, mask, loc, scale):
    lp = norm.logpdf(x.astype(np.float64), loc, scale).sum(-1)
    return -(lp * mask).sum(-1)


# ---------------------------------------------------------------- KL

def test_kl_per_layer_matches_monte_carlo_with_masks():
    rng = np.random.default_rng(0)
    out, ref = _two_layer_output(rng)
    terms = objectives.elbo_terms(out, tf.constant(ref["x"]), tf.constant(ref["mask"]))
    kl = terms.kl_per_layer.numpy()
    assert kl.shape == (B, 2)

    n = 100_000
    for layer, ((mq, sq), (mp, sp), m) in enumerate(zip(ref["q"], ref["p"], ref["masks"])):
        mq, sq, mp, sp = (a.astype(np.float64) for a in (mq, sq, mp, sp))
        z = mq + sq * rng.standard_normal((n,) + mq.shape)
        log_ratio = (norm.logpdf(z, mq, sq) - norm.logpdf(z, mp, sp)) * m[..., None]
        per_seq = log_ratio.sum(axis=(2, 3))  # [n, B]
        est, se = per_seq.mean(0), per_seq.std(0) / np.sqrt(n)
        assert np.all(np.abs(kl[:, layer] - est) < 5 * se + 1e-3), (layer, kl[:, layer], est, se)
        # masked elements are exactly zero; unmasked ones are positive
        elems = terms.kl_elements[layer].numpy()
        assert elems.shape == mq.shape
        assert np.all(elems[m == 0] == 0.0)
        assert np.all(elems[m > 0] > 0.0)

    # the padded steps would have dominated the KL had they been counted
    unmasked = sum(tfd.kl_divergence(q, p).numpy().sum(axis=(1, 2)) for q, p in zip(out.posteriors, out.priors))
    assert np.all(unmasked > kl.sum(-1) + 100.0)
    np.testing.assert_allclose(terms.kl.numpy(), kl.sum(-1), rtol=1e-6)


def test_elbo_terms_nll_elbo_and_steps():
    rng = np.random.default_rng(1)
    out, ref = _two_layer_output(rng)
    terms = objectives.elbo_terms(out, tf.constant(ref["x"]), tf.constant(ref["mask"]))
    nll = _np_nll(ref["x"], ref["mask"], *ref["lik"])
    np.testing.assert_allclose(terms.nll.numpy(), nll, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(terms.num_steps.numpy(), [3, 2])
    # closed-form Gaussian KL (independent of TFP's)
    kl = 0.0
    for (mq, sq), (mp, sp), m in zip(ref["q"], ref["p"], ref["masks"]):
        mq, sq, mp, sp = (a.astype(np.float64) for a in (mq, sq, mp, sp))
        e = np.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5
        kl = kl + (e * m[..., None]).sum(axis=(1, 2))
    np.testing.assert_allclose(terms.elbo.numpy(), -(nll + kl), rtol=1e-5, atol=1e-3)


def test_elbo_terms_without_latent_layers():
    x = tf.zeros((3, 5, 2))
    out = ModelOutput(_gaussian_likelihood(np.zeros((3, 5, 2), np.float32), np.ones((3, 5, 2), np.float32)),
                      None, [], [], [], [])
    terms = objectives.elbo_terms(out, x, tf.ones((3, 5)))
    assert terms.kl_per_layer.shape == (3, 0)
    np.testing.assert_allclose(terms.kl.numpy(), 0.0)
    np.testing.assert_allclose(terms.nll.numpy(), np.full(3, 5 * 2 * 0.5 * np.log(2 * np.pi)), rtol=1e-6)


# ---------------------------------------------------------------- sequence NLL

def test_sequence_nll_with_masks():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5, 2)).astype(np.float32)
    loc = rng.normal(size=x.shape).astype(np.float32)
    scale = np.exp(0.3 * rng.normal(size=x.shape)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    x[1, 3:] = 1e6  # far-out padding: would dominate if it leaked in
    got = objectives.sequence_nll(_gaussian_likelihood(loc, scale), tf.constant(x), tf.constant(mask)).numpy()
    assert got.shape == (3,)
    np.testing.assert_allclose(got, _np_nll(x, mask, loc, scale), rtol=1e-5, atol=1e-4)
    assert got[2] == 0.0

    logits = rng.normal(size=(2, 4, 3)).astype(np.float32)
    xb = rng.integers(0, 2, size=logits.shape).astype(np.float32)
    mb = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
    bern = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), reinterpreted_batch_ndims=1)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    ref = -((xb * np.log(p) + (1 - xb) * np.log1p(-p)).sum(-1) * mb).sum(-1)
    np.testing.assert_allclose(objectives.sequence_nll(bern, xb, mb).numpy(), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- importance weights / IWAE

def test_log_importance_weight_vs_numpy():
    rng = np.random.default_rng(3)
    out, ref = _two_layer_output(rng)
    got = objectives.log_importance_weight(out, tf.constant(ref["x"]), tf.constant(ref["mask"])).numpy()
    expected = -_np_nll(ref["x"], ref["mask"], *ref["lik"])
    for (mq, sq), (mp, sp), z, m in zip(ref["q"], ref["p"], ref["latents"], ref["masks"]):
        z = z.astype(np.float64)
        expected += ((norm.logpdf(z, mp, sp) - norm.logpdf(z, mq, sq)) * m[..., None]).sum(axis=(1, 2))
    assert got.shape == (B,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_iwae_bound_vs_numpy():
    rng = np.random.default_rng(4)
    for k in (1, 7, 64):
        lw = (rng.normal(size=(k, 3)) * 5 - 2000.0).astype(np.float32)  # large magnitudes: needs a stable logsumexp
        got = objectives.iwae_bound(tf.constant(lw)).numpy()
        ref = logsumexp(lw.astype(np.float64), axis=0) - np.log(k)
        np.testing.assert_allclose(got, ref, rtol=1e-6)
        assert np.all(got >= lw.mean(0) - 1e-3)  # Jensen
        assert np.all(np.isfinite(got))
    np.testing.assert_allclose(objectives.iwae_bound(tf.constant([[1.0, 2.0]] * 5)).numpy(), [1.0, 2.0], rtol=1e-6)


def test_iwae_of_a_conjugate_model_approaches_the_marginal():
    """z ~ N(0, 1), x | z ~ N(z, 1), so p(x) = N(0, 2); q(z) = N(0.3, 0.8).  K samples folded into the batch."""
    rng = np.random.default_rng(5)
    k, x0 = 4000, 0.9
    mq, sq = 0.3, 0.8
    z = (mq + sq * rng.standard_normal((k, 1, 1))).astype(np.float32)
    ones = np.ones((k, 1, 1), np.float32)
    out = ModelOutput(likelihood=_gaussian_likelihood(z, ones), likelihood_params=None,
                      posteriors=[_normal(mq * ones, sq * ones)], priors=[_normal(0 * ones, ones)],
                      latents=[tf.constant(z)], latent_masks=[tf.ones((k, 1))])
    log_w = objectives.log_importance_weight(out, tf.fill((k, 1, 1), x0), tf.ones((k, 1)))
    bound = objectives.iwae_bound(tf.reshape(log_w, (k, 1))).numpy()[0]
    true = norm.logpdf(x0, 0.0, np.sqrt(2.0))
    # the bias of the IWAE bound is ~ var(w)/(2 K mean(w)^2): small here; and it is a lower bound on average
    assert abs(bound - true) < 0.02
    elbo = np.mean(log_w.numpy())
    assert elbo < bound


# ---------------------------------------------------------------- free bits

KL_VALUES = np.array([0.0, 0.1, 0.25, 0.49, 0.5, 1.0, 2.0], np.float32)
LAM = 0.5


def _value_and_grad(fn, kl, lam):
    kl = tf.constant(kl)
    with tf.GradientTape() as tape:
        tape.watch(kl)
        y = fn(kl, lam)
        total = tf.reduce_sum(y)
    return y.numpy(), tape.gradient(total, kl).numpy()


@pytest.mark.parametrize("lam", [LAM, "variable"])
def test_linear_free_bits_value_and_gradient(lam):
    lam_t = tf.Variable(LAM) if lam == "variable" else LAM
    value, grad = _value_and_grad(objectives.linear_free_bits, KL_VALUES, lam_t)
    k = KL_VALUES.astype(np.float64)
    below = k < LAM
    np.testing.assert_allclose(value, np.where(below, k ** 2 / LAM, k), rtol=1e-6, atol=1e-7)
    # stop_gradient on the factor: the gradient is KL/lambda below (not 2 KL/lambda), 1 above
    np.testing.assert_allclose(grad, np.where(below, k / LAM, 1.0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(value[[1, 2, 5]], [0.02, 0.125, 1.0], rtol=1e-6)
    np.testing.assert_allclose(grad[[1, 2, 5]], [0.2, 0.5, 1.0], rtol=1e-6)


def test_linear_free_bits_is_elementwise():
    kl = np.array([[[0.1, 3.0], [0.2, 0.4]]], np.float32)
    value, grad = _value_and_grad(objectives.linear_free_bits, kl, LAM)
    np.testing.assert_allclose(value, [[[0.02, 3.0], [0.08, 0.32]]], rtol=1e-6)
    np.testing.assert_allclose(grad, [[[0.2, 1.0], [0.4, 0.8]]], rtol=1e-6)


def test_free_bits_value_and_gradient():
    k = np.array([0.1, 0.25, 1.0, 2.0], np.float32)
    value, grad = _value_and_grad(objectives.free_bits, k, LAM)
    np.testing.assert_allclose(value, [0.5, 0.5, 1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(grad, [0.0, 0.0, 1.0, 1.0])


# ---------------------------------------------------------------- Objective

def test_free_bits_lambda_schedule():
    obj = Objective("linear_free_bits", free_bits=0.8)
    assert obj.free_bits_lambda.numpy() == pytest.approx(0.8)
    for step, expected in [(0, 0.8), (300_000, 0.4), (600_000, 0.2), (150_000, 0.8 * 2 ** -0.5), (30_000, 0.8 * 0.5 ** 0.1)]:
        obj.update(step)
        assert obj.free_bits_lambda.numpy() == pytest.approx(expected, rel=1e-5), step
        assert obj.kl_weight.numpy() == 1.0
    fast = Objective("free_bits", free_bits=2.0, free_bits_halving_steps=100)
    fast.update(tf.constant(250, tf.int64))
    assert fast.free_bits_lambda.numpy() == pytest.approx(2.0 * 0.5 ** 2.5, rel=1e-5)


def test_anneal_weight_schedule():
    obj = Objective("anneal", beta_start=0.2, anneal_steps=100)
    assert obj.kl_weight.numpy() == pytest.approx(0.2)
    for step, expected in [(0, 0.2), (25, 0.4), (50, 0.6), (100, 1.0), (1000, 1.0)]:
        obj.update(step)
        assert obj.kl_weight.numpy() == pytest.approx(expected, rel=1e-6), step
    assert Objective("anneal").kl_weight.numpy() == 0.0  # default beta_start


def _masked_kl(rng):
    shapes = [(B, 4, 3), (B, 2, 2)]
    masks = [np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32), np.array([[1, 1], [1, 0]], np.float32)]
    # spread around lambda so both branches of the free-bits rules are used
    kls = [rng.uniform(0.0, 1.5, size=s).astype(np.float32) * m[..., None] for s, m in zip(shapes, masks)]
    return kls, masks


@pytest.mark.parametrize("reg", ["linear_free_bits", "free_bits", "anneal", "none"])
def test_regularized_kl_with_masks(reg):
    rng = np.random.default_rng(6)
    kls, masks = _masked_kl(rng)
    lam = 0.6
    obj = Objective(reg, free_bits=lam, beta_start=0.3, anneal_steps=10)
    obj.update(0)
    expected = np.zeros(B)
    for kl, m in zip(kls, masks):
        k = kl.astype(np.float64)
        m3 = np.broadcast_to(m[..., None], k.shape)
        if reg == "linear_free_bits":
            e = np.where(k < lam, k ** 2 / lam, k)
        elif reg == "free_bits":
            e = np.maximum(k, lam)
        elif reg == "anneal":
            e = 0.3 * k
        else:
            e = k
        expected += (e * m3).sum(axis=(1, 2))
    got = obj.regularized_kl([tf.constant(k) for k in kls], [tf.constant(m) for m in masks]).numpy()
    assert got.shape == (B,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    # padded elements contribute nothing, even with a threshold: padding a sequence further changes nothing
    padded_kls = [np.concatenate([k, np.zeros_like(k)], axis=1) for k in kls]
    padded_masks = [np.concatenate([m, np.zeros_like(m)], axis=1) for m in masks]
    got_padded = obj.regularized_kl([tf.constant(k) for k in padded_kls], [tf.constant(m) for m in padded_masks])
    np.testing.assert_allclose(got_padded.numpy(), expected, rtol=1e-5)


def test_per_sequence_loss_is_nll_plus_regularized_kl():
    rng = np.random.default_rng(7)
    out, ref = _two_layer_output(rng)
    terms = objectives.elbo_terms(out, tf.constant(ref["x"]), tf.constant(ref["mask"]))
    lam = 0.3
    obj = Objective("free_bits", free_bits=lam)
    expected = _np_nll(ref["x"], ref["mask"], *ref["lik"])
    for (mq, sq), (mp, sp), m in zip(ref["q"], ref["p"], ref["masks"]):
        mq, sq, mp, sp = (a.astype(np.float64) for a in (mq, sq, mp, sp))
        e = np.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5
        expected += (np.maximum(e, lam) * m[..., None]).sum(axis=(1, 2))
    np.testing.assert_allclose(obj.per_sequence_loss(terms).numpy(), expected, rtol=1e-5, atol=1e-3)
    # 'none' is the negative ELBO
    np.testing.assert_allclose(Objective("none").per_sequence_loss(terms).numpy(), -terms.elbo.numpy(), rtol=1e-6)


def test_objective_state_restores_from_checkpoint(tmp_path):
    obj = Objective("anneal", free_bits=0.5, beta_start=0.1, anneal_steps=100)
    obj.update(300_000 // 2)
    path = tf.train.Checkpoint(objective=obj).write(str(tmp_path / "ckpt"))
    fresh = Objective("anneal", free_bits=0.5, beta_start=0.1, anneal_steps=100)
    tf.train.Checkpoint(objective=fresh).read(path).assert_consumed()
    assert fresh.free_bits_lambda.numpy() == pytest.approx(0.5 * 2 ** -0.5, rel=1e-5)
    assert fresh.kl_weight.numpy() == pytest.approx(1.0)
    assert Objective(**obj.get_config()).get_config() == obj.get_config()


@pytest.mark.parametrize("kwargs,flag", [
    (dict(kl_regularizer="bogus"), "--kl_regularizer"),
    (dict(kl_regularizer="linear_free_bits", free_bits=0.0), "--free_bits"),
    (dict(kl_regularizer="free_bits", free_bits=-1.0), "--free_bits"),
    (dict(kl_regularizer="linear_free_bits", free_bits=float("nan")), "--free_bits"),
    (dict(free_bits_halving_steps=0), "--free_bits_halving_steps"),
    (dict(anneal_steps=-5), "--anneal_steps"),
])
def test_objective_rejects_invalid_arguments(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        Objective(**kwargs)


def test_objective_accepts_zero_free_bits_without_a_threshold():
    for reg in ("anneal", "none"):
        Objective(reg, free_bits=0.0)
