"""MS-STCN: causality, padding invariance, configuration round trip, sampling."""

import numpy as np
import pytest
import tensorflow as tf

from tfhier import objectives
from tfhier.models import MSSTCN, build_model

SEED = tf.constant([3, 7])


def tiny(**overrides):
    config = dict(head="handwriting", head_components=2, channels=[8, 8, 6], latent_dims=[2, 3, 2],
                  strides=[1, 2, 2], bu_dilations=[[1, 2], [1], [1, 2]], td_blocks=1, kernel_size=2)
    config.update(overrides)
    tf.keras.utils.set_random_seed(0)
    model = MSSTCN(3, **config).build_for_data()
    # Zero-initialised latent projections make q = p = N(0, .69) at first; random weights make the
    # test sensitive to every path.
    for layer in model.prior_proj + model.posterior_proj:
        layer.kernel.assign(tf.random.normal(layer.kernel.shape, stddev=0.5))
    return model


def handwriting_batch(b, t, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, t, 3)).astype(np.float32)
    x[..., 2] = rng.random((b, t)) < 0.2
    return x


@pytest.mark.parametrize("overrides", [
    {},
    {"downsampling": "sum_pool"},
    {"gen_post": "plain"},
    {"strides": [2, 1, 2], "bu_dilations": [[1], [1, 2], [1]]},
])
def test_causal_with_latents_from_priors(overrides):
    """Changing y_t changes no prior parameter of a latent step serving steps <= t, and no
    likelihood parameter of steps <= t (so p(y_t | ...) never sees y_t or later)."""
    model = tiny(**overrides)
    t_len = 16
    x = handwriting_batch(1, t_len)
    mask = np.ones((1, t_len), np.float32)

    def params(xx):
        out = model.forward(xx, mask, seed=SEED, latents="prior")
        return out.likelihood_params.numpy(), [(p.loc.numpy(), p.scale.numpy()) for p in out.priors]

    eta0, priors0 = params(x)
    changed_later = 0
    for t in range(t_len):
        x1 = x.copy()
        x1[0, t] += np.array([3.0, -2.0, 1.0], np.float32)
        eta1, priors1 = params(x1)
        np.testing.assert_allclose(eta1[:, : t + 1], eta0[:, : t + 1], rtol=0, atol=1e-6,
                                   err_msg=f"likelihood at steps <= {t} depends on y_{t}")
        for l, ((loc0, sc0), (loc1, sc1)) in enumerate(zip(priors0, priors1)):
            factor = model.factors[l]
            served = t // factor + 1  # coarse steps tau with factor*tau <= t
            np.testing.assert_allclose(loc1[:, :served], loc0[:, :served], atol=1e-6,
                                       err_msg=f"prior of layer {l + 1} depends on y_{t}")
            np.testing.assert_allclose(sc1[:, :served], sc0[:, :served], atol=1e-6)
        if t < t_len - 1 and not np.allclose(eta1[:, t + 1:], eta0[:, t + 1:], atol=1e-6):
            changed_later += 1
    # The check above must be able to fail: the future does depend on the past.
    assert changed_later >= t_len - 2


def test_padding_garbage_changes_nothing():
    model = tiny()
    x = handwriting_batch(2, 24)
    lengths = [13, 24]
    mask = tf.sequence_mask(lengths, 24, dtype=tf.float32).numpy()
    x_zero = x * mask[..., None]
    x_garbage = x_zero.copy()
    x_garbage[0, 13:] = 1e3
    a = model.score(x_zero, mask, SEED)
    b = model.score(x_garbage, mask, SEED)
    for key in ("elbo", "nll", "kl", "num_steps"):
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-6, atol=1e-5, err_msg=key)
    assert a["num_steps"].numpy().tolist() == lengths


def test_padding_length_changes_nothing():
    """The same line scored alone or padded far (latents at their prior means: deterministic)."""
    model = tiny()
    x = handwriting_batch(1, 13)
    short = model.forward(x, np.ones((1, 13), np.float32), seed=SEED, latents="prior", temperature=0.0)
    x_long = np.concatenate([x, np.full((1, 19, 3), 7.0, np.float32)], axis=1)
    mask_long = np.concatenate([np.ones((1, 13)), np.zeros((1, 19))], axis=1).astype(np.float32)
    long = model.forward(x_long, mask_long, seed=SEED, latents="prior", temperature=0.0)
    np.testing.assert_allclose(long.likelihood_params[:, :13], short.likelihood_params, atol=1e-5)
    t_short = objectives.elbo_terms(short, x, np.ones((1, 13), np.float32))
    t_long = objectives.elbo_terms(long, x_long, mask_long)
    np.testing.assert_allclose(t_long.nll, t_short.nll, rtol=1e-5)
    np.testing.assert_allclose(t_long.kl_per_layer, t_short.kl_per_layer, rtol=1e-5, atol=1e-5)
    # Latent masks: layer l's step tau counts while factor*tau < 13.
    for l, m in enumerate(long.latent_masks):
        assert int(m.numpy().sum()) == -(-13 // model.factors[l])


def test_config_round_trip_gives_same_function():
    model = tiny(downsampling="sum_pool")
    clone = build_model("msstcn", 3, {k: v for k, v in model.get_config().items()
                                      if k not in ("name", "trainable", "dtype", "input_dim")}).build_for_data()
    assert clone.count_params() == model.count_params()
    clone.set_weights(model.get_weights())
    x = handwriting_batch(2, 10)
    mask = np.ones((2, 10), np.float32)
    np.testing.assert_allclose(clone.score(x, mask, SEED)["elbo"], model.score(x, mask, SEED)["elbo"], rtol=1e-6)


def test_every_weight_gets_a_gradient():
    model = tiny()
    x = handwriting_batch(2, 16)
    mask = np.ones((2, 16), np.float32)
    with tf.GradientTape() as tape:
        out = model.forward(x, mask, seed=SEED)
        loss = -tf.reduce_mean(objectives.elbo_terms(out, x, mask).elbo)
    grads = tape.gradient(loss, model.trainable_variables)
    unused = [v.path for v, g in zip(model.trainable_variables, grads) if g is None or not np.any(g.numpy())]
    assert not unused


def test_iam_configuration_parameter_count():
    """configs/iam.cfg (paper A.1): 5 layers of 64 filters, latents [8,8,8,4,2], strides [1,2,2,2,1]."""
    model = MSSTCN(3).build_for_data()
    assert model.latent_layer_names == [f"layer_{i}" for i in range(1, 6)]
    assert model.time_multiple == 8
    # Independent count of the bottom-up stack of layer 1: input 1x1 conv (3->64) and 4 blocks of
    # a k=2 gate conv (64->128) and a 1x1 output conv (64->64).
    bu1 = (3 * 64 + 64) + 4 * ((2 * 64 * 128 + 128) + (64 * 64 + 64))
    assert model.input_proj.count_params() + model.bottom_up[0].count_params() == bu1


def test_generate_is_reproducible_and_seeded():
    model = tiny()
    a = model.generate(2, 9, tf.constant([1, 2])).numpy()
    b = model.generate(2, 9, tf.constant([1, 2])).numpy()
    c = model.generate(2, 9, tf.constant([1, 3])).numpy()
    assert a.shape == (2, 9, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert set(np.unique(a[..., 2])) <= {0.0, 1.0}


@pytest.mark.parametrize("bad, flag", [
    ({"latent_dims": [2, 2]}, "latent_dims"),
    ({"strides": [1, 0, 2]}, "strides"),
    ({"bu_dilations": [[1], [], [1]]}, "bu_dilations"),
    ({"gen_post": "sideways"}, "gen_post"),
    ({"downsampling": "avg"}, "downsampling"),
])
def test_invalid_configuration_is_named(bad, flag):
    with pytest.raises(ValueError, match=flag):
        tiny(**bad)
