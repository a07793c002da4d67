"""Tests for tfhier.heads: every head's log_prob against numpy written from the
documented parameter layout (MS-STCN A.2), sampling, temperature, config."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import log_softmax, logsumexp

from tfhier import heads
from tfhier.heads import (BernoulliHead, BernoulliMixtureHead, GaussianHead, GaussianMixtureHead, HandwritingHead,
                          make_head)

B, T = 2, 3
SEED = [11, 29]  # stateless sampling seed: deterministic tests


# ---------------------------------------------------------------- numpy reference pieces

def np_scale(s):
    """A.2: softplus, clamped to [1e-3, 5]."""
    return np.clip(np.logaddexp(0.0, s), 1e-3, 5.0)


def np_normal_logpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)


def np_bernoulli_logpmf(x, logit):
    # log sigmoid(l) = -softplus(-l); log (1 - sigmoid(l)) = -softplus(l)
    return -x * np.logaddexp(0.0, -logit) - (1 - x) * np.logaddexp(0.0, logit)


def np_gaussian_ref(eta, x, dim, temp=1.0):
    mu, s = eta[..., :dim], eta[..., dim:]
    return np_normal_logpdf(x, mu, np_scale(s) * temp).sum(-1)


def np_bernoulli_ref(eta, x, temp=1.0):
    return np_bernoulli_logpmf(x, eta / temp).sum(-1)


def np_gmm_split(eta, dim, n):
    """``[logits(n), then per component k: mu_k(D), sigma_pre_k(D)]`` (A.2: n weights first, the rest
    parameterises the n base distributions)."""
    logits = eta[..., :n]
    params = eta[..., n:].reshape(eta.shape[:-1] + (n, 2 * dim))
    return logits, params[..., :dim], params[..., dim:]


def np_gmm_ref(eta, x, dim, n, temp=1.0):
    """Joint mixture: logsumexp_k [log w_k + sum_d log N(x_d | mu_kd, s_kd)]."""
    logits, mu, s = np_gmm_split(eta, dim, n)
    log_w = log_softmax(logits / temp, axis=-1)
    comp = np_normal_logpdf(x[..., None, :], mu, np_scale(s) * temp).sum(-1)  # [..., n]
    return logsumexp(log_w + comp, axis=-1)


def np_gmm_per_dim_ref(eta, x, dim, n):
    """The *wrong* model: an independent mixture per dimension (sum_d logsumexp_k)."""
    logits, mu, s = np_gmm_split(eta, dim, n)
    log_w = log_softmax(logits, axis=-1)[..., :, None]
    comp = np_normal_logpdf(x[..., None, :], mu, np_scale(s))  # [..., n, D]
    return logsumexp(log_w + comp, axis=-2).sum(-1)


def np_bernoulli_mixture_ref(eta, x, dim, n, temp=1.0):
    logits = eta[..., :n]
    comp_logits = eta[..., n:].reshape(eta.shape[:-1] + (n, dim))
    log_w = log_softmax(logits / temp, axis=-1)
    comp = np_bernoulli_logpmf(x[..., None, :], comp_logits / temp).sum(-1)
    return logsumexp(log_w + comp, axis=-1)


def np_handwriting_split(eta, n):
    """HandwritingHead docstring: ``eta = [pen_logit, mixture_logits(n), per component: mu_k(2), sigma_pre_k(2)]``."""
    pen = eta[..., 0]
    logits = eta[..., 1:1 + n]
    per_component = eta[..., 1 + n:1 + 5 * n].reshape(eta.shape[:-1] + (n, 4))
    return pen, logits, per_component[..., :2], per_component[..., 2:]


def np_handwriting_ref(eta, x, n, temp=1.0):
    pen, logits, mu, s = np_handwriting_split(eta, n)
    log_w = log_softmax(logits / temp, axis=-1)
    comp = np_normal_logpdf(x[..., None, :2], mu, np_scale(s) * temp).sum(-1)
    return logsumexp(log_w + comp, axis=-1) + np_bernoulli_logpmf(x[..., 2], pen / temp)


def _lp(head, eta, x, temperature=1.0):
    dist = head.distribution(tf.constant(eta, tf.float32), temperature=temperature)
    out = dist.log_prob(tf.constant(x, tf.float32))
    assert out.shape == x.shape[:-1]
    return out.numpy().astype(np.float64)


def _close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=2e-4, atol=2e-3)


# ---------------------------------------------------------------- gaussian_scale

def test_gaussian_scale_is_clamped_softplus():
    s = np.array([-40.0, -8.0, -6.0, -1.0, 0.0, 1.0, 4.0, 5.5, 30.0], np.float32)
    got = heads.gaussian_scale(tf.constant(s)).numpy()
    np.testing.assert_allclose(got, np_scale(s.astype(np.float64)), rtol=1e-5)
    assert got[0] == pytest.approx(1e-3) and got[-1] == pytest.approx(5.0)  # both clamps active


# ---------------------------------------------------------------- log_prob vs numpy

def _gaussian_eta_and_x(rng, dim):
    mu = rng.normal(size=(B, T, dim))
    s = rng.normal(size=(B, T, dim))
    s[0, 0, :] = -30.0  # lower clamp: softplus ~ 1e-13 -> 1e-3
    s[1, 2, :] = 25.0  # upper clamp: softplus 25 -> 5
    x = mu + rng.normal(size=(B, T, dim)) * np_scale(s)
    x[0, 0, :] = mu[0, 0, :] + np.array([5e-4, -1e-3, 2e-3])[:dim]  # right next to a clamped-low mean
    return np.concatenate([mu, s], -1).astype(np.float32), x.astype(np.float32)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_gaussian_head_log_prob(temperature):
    rng = np.random.default_rng(0)
    dim = 3
    head = GaussianHead(dim)
    assert head.param_size == 2 * dim
    eta, x = _gaussian_eta_and_x(rng, dim)
    _close(_lp(head, eta, x, temperature), np_gaussian_ref(eta.astype(np.float64), x, dim, temperature))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_bernoulli_head_log_prob(temperature):
    rng = np.random.default_rng(1)
    dim = 4
    head = BernoulliHead(dim)
    assert head.param_size == dim
    eta = (3 * rng.normal(size=(B, T, dim))).astype(np.float32)
    eta[0, 0, 0], eta[0, 0, 1] = 40.0, -40.0  # saturated logits stay finite
    x = rng.integers(0, 2, size=(B, T, dim)).astype(np.float32)
    _close(_lp(head, eta, x, temperature), np_bernoulli_ref(eta.astype(np.float64), x, temperature))


def _gmm_eta(rng, dim, n):
    logits = rng.normal(size=(B, T, n))
    params = rng.normal(size=(B, T, n, 2 * dim)) * 1.5
    params[0, 0, :, dim:] = -30.0  # every component of one step at the lower clamp
    params[1, 1, 0, dim:] = 25.0  # one component at the upper clamp
    params[1, 2, :, dim:] = 25.0
    return np.concatenate([logits, params.reshape(B, T, -1)], -1).astype(np.float32)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gaussian_mixture_head_log_prob_is_joint(temperature):
    rng = np.random.default_rng(2)
    dim, n = 2, 3
    head = GaussianMixtureHead(dim, components=n)
    assert head.param_size == 2 * dim * n + n
    eta = _gmm_eta(rng, dim, n)
    _, mu, _ = np_gmm_split(eta.astype(np.float64), dim, n)
    x = rng.normal(size=(B, T, dim)).astype(np.float32)
    # step (0, 0): all scales 1e-3; x mixes coordinates of two components, which only a per-dim
    # mixture would explain well
    x[0, 0, 0], x[0, 0, 1] = mu[0, 0, 0, 0] + 4e-4, mu[0, 0, 1, 1] - 6e-4
    x[0, 1] = mu[0, 1, 2]  # exactly at a component mean
    joint = np_gmm_ref(eta.astype(np.float64), x, dim, n, temperature)
    got = _lp(head, eta, x, temperature)
    _close(got, joint)
    if temperature == 1.0:
        # the reference really distinguishes a joint mixture from a per-dimension one
        per_dim = np_gmm_per_dim_ref(eta.astype(np.float64), x, dim, n)
        assert np.max(np.abs(per_dim - joint)) > 1.0
        assert not np.allclose(got, per_dim, rtol=2e-4, atol=2e-3)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_bernoulli_mixture_head_log_prob(temperature):
    rng = np.random.default_rng(3)
    dim, n = 3, 4
    head = BernoulliMixtureHead(dim, components=n)
    assert head.param_size == dim * n + n
    eta = (2 * rng.normal(size=(B, T, head.param_size))).astype(np.float32)
    x = rng.integers(0, 2, size=(B, T, dim)).astype(np.float32)
    _close(_lp(head, eta, x, temperature), np_bernoulli_mixture_ref(eta.astype(np.float64), x, dim, n, temperature))


def _handwriting_eta_and_x(rng, n):
    eta = rng.normal(size=(B, T, 1 + 5 * n))
    eta[..., 1 + 3 * n:] = rng.normal(size=(B, T, 2 * n))
    eta[0, 0, 1 + 3 * n:] = -30.0  # all sigma_pre of one step at the lower clamp
    eta[1, 2, 1 + 3 * n:] = 25.0  # ... and at the upper clamp
    eta = eta.astype(np.float32)
    _, _, mu, _ = np_handwriting_split(eta.astype(np.float64), n)
    x = np.concatenate([rng.normal(size=(B, T, 2)), rng.integers(0, 2, size=(B, T, 1))], -1)
    x[0, 0, :2] = mu[0, 0, 0] + np.array([3e-4, -5e-4])  # next to a clamped-low component mean
    return eta, x.astype(np.float32)


def test_handwriting_head_log_prob_documented_layout():
    """``eta = [pen_logit, mixture_logits(n), mu(n,2), sigma_pre(n,2)]`` (class docstring)."""
    rng = np.random.default_rng(4)
    n = 3
    head = HandwritingHead(components=n)
    assert head.param_size == 1 + 5 * n
    eta, x = _handwriting_eta_and_x(rng, n)
    _close(_lp(head, eta, x), np_handwriting_ref(eta.astype(np.float64), x, n))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_handwriting_head_single_component_log_prob(temperature):
    """components=1 (the authors' public head); also checks temperature on pen logit, logits and scales."""
    rng = np.random.default_rng(5)
    head = HandwritingHead(components=1)
    eta, x = _handwriting_eta_and_x(rng, 1)
    _close(_lp(head, eta, x, temperature), np_handwriting_ref(eta.astype(np.float64), x, 1, temperature))


def test_handwriting_head_rejects_other_dims():
    with pytest.raises(ValueError, match="dim"):
        HandwritingHead(dim=2)


# ---------------------------------------------------------------- projection (call)

@pytest.mark.parametrize("kind", sorted(heads.HEADS))
def test_head_call_is_a_1x1_projection(kind):
    rng = np.random.default_rng(6)
    head = make_head(kind, 3, components=2)
    g = rng.normal(size=(B, 5, 7)).astype(np.float32)
    eta = head(tf.constant(g))
    assert eta.shape == (B, 5, head.param_size)
    assert len(head.trainable_weights) == 2  # the projection's kernel and bias are tracked (saved, trained)
    head.proj.bias.assign(rng.normal(size=head.param_size).astype(np.float32))
    w = head.proj.kernel.numpy().astype(np.float64)
    assert w.shape == (1, 7, head.param_size)
    expected = g.astype(np.float64) @ w[0] + head.proj.bias.numpy()
    np.testing.assert_allclose(head(tf.constant(g)).numpy(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- sampling

@pytest.mark.parametrize("kind", sorted(heads.HEADS))
def test_sample_shapes_and_dtypes(kind):
    rng = np.random.default_rng(7)
    dim = 3
    head = make_head(kind, dim, components=4)
    eta = tf.constant(rng.normal(size=(B, T, head.param_size)), tf.float32)
    dist = head.distribution(eta)
    one = dist.sample(seed=SEED)
    many = dist.sample(5, seed=SEED)
    assert one.shape == (B, T, dim) and one.dtype == tf.float32
    assert many.shape == (5, B, T, dim) and many.dtype == tf.float32
    assert np.all(np.isfinite(many.numpy()))
    if kind in ("bernoulli", "bernoulli_mixture"):
        assert set(np.unique(many.numpy())) <= {0.0, 1.0}
    if kind == "handwriting":
        assert set(np.unique(many.numpy()[..., 2])) <= {0.0, 1.0}
    # samples are scored by the same distribution (shape [5, B, T])
    assert dist.log_prob(many).shape == (5, B, T)


def _within(freq, p, n, k=4.0):
    se = np.sqrt(p * (1 - p) / n)
    assert abs(freq - p) < k * se, (freq, p, se)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_handwriting_pen_frequency(temperature):
    n = 20000
    head = HandwritingHead(components=2)
    eta = np.zeros((1, 1, head.param_size), np.float32)
    eta[..., 0] = 0.7
    samples = head.distribution(tf.constant(eta), temperature=temperature).sample(n, seed=SEED).numpy()
    p = 1.0 / (1.0 + np.exp(-0.7 / temperature))
    _within(samples[:, 0, 0, 2].mean(), p, n)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_gmm_sample_component_frequencies_and_joint_component(temperature):
    n, dim, k = 20000, 2, 3
    head = GaussianMixtureHead(dim, components=k)
    logits = np.array([0.5, -0.3, 1.0])
    means = np.array([[-10.0, 10.0], [0.0, 0.0], [10.0, -10.0]])
    scale = 0.5
    s_pre = np.log(np.expm1(scale))
    params = np.concatenate([means, np.full_like(means, s_pre)], -1)  # per component [mu(2), s(2)]
    eta = np.concatenate([logits, params.ravel()]).astype(np.float32)[None, None]
    x = head.distribution(tf.constant(eta), temperature=temperature).sample(n, seed=SEED).numpy()[:, 0, 0]
    comp_dim0 = np.argmin(np.abs(x[:, :1] - means[None, :, 0]), axis=1)
    comp_dim1 = np.argmin(np.abs(x[:, 1:] - means[None, :, 1]), axis=1)
    # one component for the whole step: both coordinates come from the same component
    assert np.array_equal(comp_dim0, comp_dim1)
    probs = np.exp(log_softmax(logits / temperature))
    sd = scale * temperature
    for j in range(k):
        sel = comp_dim0 == j
        _within(sel.mean(), probs[j], n)
        m = sel.sum()
        np.testing.assert_allclose(x[sel].mean(0), means[j], atol=4 * sd / np.sqrt(m))
        np.testing.assert_allclose(x[sel].std(0), sd, atol=4 * sd / np.sqrt(2 * m))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gaussian_and_bernoulli_sample_moments(temperature):
    n = 20000
    mu = np.array([1.0, -2.0])
    s = np.array([0.3, 25.0])  # second one at the upper clamp (scale 5)
    eta = np.concatenate([mu, s]).astype(np.float32)[None, None]
    x = GaussianHead(2).distribution(tf.constant(eta), temperature=temperature).sample(n, seed=SEED).numpy()[:, 0, 0]
    sd = np_scale(s) * temperature
    assert np.all(np.abs(x.mean(0) - mu) < 4 * sd / np.sqrt(n)), (x.mean(0), mu)
    assert np.all(np.abs(x.std(0) - sd) < 4 * sd / np.sqrt(2 * n)), (x.std(0), sd)

    logits = np.array([-1.0, 0.0, 2.0], np.float32)
    xb = BernoulliHead(3).distribution(tf.constant(logits[None, None]), temperature=temperature)
    freq = xb.sample(n, seed=SEED).numpy()[:, 0, 0].mean(0)
    for f, l in zip(freq, logits):
        _within(f, 1.0 / (1.0 + np.exp(-l / temperature)), n)


def test_bernoulli_mixture_sample_is_joint():
    """Two components (all ones / all zeros): a joint draw never mixes them within a step."""
    n = 5000
    head = BernoulliMixtureHead(3, components=2)
    eta = np.array([0.3, -0.2] + [30.0] * 3 + [-30.0] * 3, np.float32)[None, None]
    x = head.distribution(tf.constant(eta)).sample(n, seed=SEED).numpy()[:, 0, 0]
    assert np.all((x.sum(-1) == 0) | (x.sum(-1) == 3))
    _within((x[:, 0] == 1).mean(), np.exp(log_softmax([0.3, -0.2]))[0], n)


# ---------------------------------------------------------------- make_head / config

def test_make_head_builds_each_kind():
    expected = {"gaussian": GaussianHead, "gmm": GaussianMixtureHead, "bernoulli": BernoulliHead,
                "bernoulli_mixture": BernoulliMixtureHead, "handwriting": HandwritingHead}
    assert set(heads.HEADS) == set(expected)
    for kind, cls in expected.items():
        head = make_head(kind, 3, components=7)
        assert type(head) is cls and head.dim == 3
        if cls in (GaussianMixtureHead, BernoulliMixtureHead, HandwritingHead):
            assert head.components == 7
    assert make_head("gmm", 2, components=5).param_size == 2 * 2 * 5 + 5
    assert make_head("handwriting", 3, components=5).param_size == 26


@pytest.mark.parametrize("bad", ["gausian", "Gaussian", "mdn", ""])
def test_make_head_rejects_unknown_kind(bad):
    with pytest.raises(ValueError, match="unknown output head") as info:
        make_head(bad, 3)
    msg = str(info.value)
    assert repr(bad) in msg and "gaussian" in msg and "handwriting" in msg


@pytest.mark.parametrize("cls,kwargs", [
    (GaussianHead, {"dim": 4}),
    (BernoulliHead, {"dim": 5}),
    (GaussianMixtureHead, {"dim": 2, "components": 6}),
    (BernoulliMixtureHead, {"dim": 3, "components": 4}),
    (HandwritingHead, {"dim": 3, "components": 7}),
])
def test_get_config_round_trip(cls, kwargs):
    head = cls(name="my_head", **kwargs)
    cfg = head.get_config()
    clone = cls.from_config(cfg)
    assert type(clone) is cls and clone.name == "my_head"
    assert clone.dim == kwargs["dim"] and clone.param_size == head.param_size
    assert getattr(clone, "components", None) == kwargs.get("components")
    assert clone.get_config() == cfg
