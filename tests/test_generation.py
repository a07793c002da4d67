"""Cached generation (tfhier.generation) against the naive reference, seeds, priming.

The naive generator re-runs ``forward`` over the whole buffer at every step;
the cached one advances per-layer state.  Both follow the noise contract of
tfhier.models.base, so for the same seed they must give the same sequences up
to float rounding, for every layer/stride setting, downsampling mode, gen_post
mode and head, with and without a prefix.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfhier.models import MSSTCN
from tfhier.noise import latent_noise

SEED = tf.constant([5, 11])
TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def fast_graph_building():
    """Grappler's graph optimisation costs ~2 s per traced sampler here and is irrelevant to the values checked:
    switched off while this module runs."""
    old = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": old.get("disable_meta_optimizer", False)})


def tiny(**overrides):
    config = dict(head="handwriting", head_components=2, channels=[8, 8, 6], latent_dims=[2, 3, 2],
                  strides=[1, 2, 2], bu_dilations=[[1, 2], [1], [1, 2]], td_blocks=1, kernel_size=2)
    config.update(overrides)
    tf.keras.utils.set_random_seed(0)
    model = MSSTCN(3 if config["head"] == "handwriting" else 4, **config).build_for_data()
    model.xla_generation = True  # the users' default (tests/conftest.py turns it off elsewhere)
    # Random (not zero) latent projections so every latent path matters; a smaller output projection
    # keeps samples O(1) over the steps drawn, so an absolute tolerance means float rounding.
    for layer in model.prior_proj + model.posterior_proj:
        layer.kernel.assign(tf.random.normal(layer.kernel.shape, stddev=0.5))
    model.head.proj.kernel.assign(model.head.proj.kernel * 0.5)
    return model


CONFIGS = {
    # The paper's layout: strided downsampling, conditional top-down, dilations > 1, handwriting head.
    "strides_1_2_2": {},
    # The authors' code's downsampling (an unstrided dilated conv at the finer rate, then sum-pooling), a first
    # layer already downsampled, a stride-1 layer in between; mixture-of-Gaussians head.
    "strides_2_1_3_sum_pool_gmm": dict(strides=[2, 1, 3], downsampling="sum_pool", head="gmm",
                                       bu_dilations=[[2], [1, 2], [2, 1]]),
    # No downsampling at all; Bernoulli head.
    "strides_1_1_bernoulli": dict(channels=[8, 6], latent_dims=[2, 3], strides=[1, 1], head="bernoulli",
                                  bu_dilations=[[1, 2, 4], [1]]),
    # gen_post='plain' (a Wavenet_1x1 on [h, z]) with upsampling; Gaussian head.
    "strides_2_1_3_plain_gaussian": dict(strides=[2, 1, 3], gen_post="plain", head="gaussian",
                                         bu_dilations=[[1], [1, 2], [2]]),
}
# generate() (no prefix) is checked on these; continue_sequences() on all.
GENERATE = {"strides_1_2_2", "strides_2_1_3_sum_pool_gmm", "strides_1_1_bernoulli"}


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = tiny(**CONFIGS[name])
        return cache[name]

    return get


def prefix_batch(model, lengths, t0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(lengths), t0, model.input_dim)).astype(np.float32)
    if model.head_name == "handwriting":
        x[..., 2] = rng.random(x.shape[:2]) < 0.2
    elif model.head_name == "bernoulli":
        x = (x > 0).astype(np.float32)
    return x, np.asarray(lengths, np.int32)


def assert_same(cached, naive):
    cached, naive = np.asarray(cached), np.asarray(naive)
    assert cached.shape == naive.shape
    assert np.isfinite(naive).all()
    diff = np.abs(cached - naive).max()
    assert diff <= TOL, f"cached and naive differ by {diff:.3g} (samples up to {np.abs(naive).max():.3g})"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_continuation_matches_naive(models, name):
    """Prefix lengths differ within the batch and are not all multiples of the strides; temperature 0.5."""
    model = models(name)
    x, lengths = prefix_batch(model, [11, 5, 8], 11)
    cached = model.continue_sequences(x, lengths, 13, SEED, 0.5)
    naive = model.continue_sequences_naive(x, lengths, 13, SEED, 0.5)
    assert cached.shape == (3, 13, model.input_dim)
    assert_same(cached, naive)


@pytest.mark.parametrize("name", sorted(GENERATE))
def test_cached_generation_matches_naive(models, name):
    model = models(name)
    temperature = 1.0 if name == "strides_1_2_2" else 0.5
    cached = model.generate(3, 22, SEED, temperature)
    naive = model.generate_naive(3, 22, SEED, temperature)
    assert cached.shape == (3, 22, model.input_dim)
    assert_same(cached, naive)
    if model.head_name in ("handwriting", "bernoulli"):
        binary = cached.numpy()[..., -1]
        assert set(np.unique(binary)) <= {0.0, 1.0}


def test_inner_loops_match_unrolled(models):
    """A layer whose children exceed max_unroll loops over them with tf.while_loop: same samples."""
    model = models("strides_2_1_3_plain_gaussian")
    expected = model.generate(2, 14, SEED).numpy()
    for max_unroll in (1, 2):  # 2: layer 3 (stride 3) loops; 1: layers 1 and 3 loop
        gen = model.generator(max_unroll=max_unroll)
        assert gen.unroll == ([False, True, False] if max_unroll == 1 else [True, True, False])
        got = tf.function(lambda: gen.sample(2, 14, SEED), autograph=False)()
        np.testing.assert_allclose(got, expected, atol=TOL)
        x, lengths = prefix_batch(model, [7, 3], 7)
        got = tf.function(lambda: gen.continue_sequences(x, lengths, 6, SEED), autograph=False)()
        np.testing.assert_allclose(got, model.continue_sequences(x, lengths, 6, SEED), atol=TOL)


def test_top_steps_per_xla_call_and_plain_graph_mode(models):
    """However many top-layer steps one XLA computation runs, the same samples; with xla_generation off (plain
    graph mode: other random numbers for a seed) cached and naive still agree, and differ from XLA's draw."""
    model = models("strides_1_2_2")  # 4 fine steps per top step: 13 steps end inside a launch
    expected = model.generate(2, 13, SEED).numpy()
    x, lengths = prefix_batch(model, [6, 2], 6)
    expected_cont = model.continue_sequences(x, lengths, 5, SEED).numpy()
    for calls in (1, 3):
        gen = model.generator(top_steps_per_call=calls)
        np.testing.assert_allclose(tf.function(lambda: gen.sample(2, 13, SEED), autograph=False)(), expected,
                                   atol=TOL)
        got = tf.function(lambda: gen.continue_sequences(x, lengths, 5, SEED), autograph=False)()
        np.testing.assert_allclose(got, expected_cont, atol=TOL)
    model.xla_generation = False
    try:
        graph = tf.function(lambda: model.generator().sample(2, 13, SEED), autograph=False)().numpy()
        naive = tf.function(lambda: model._naive_sample(None, None, 13, SEED, 1.0, num_samples=2),
                            autograph=False)().numpy()
    finally:
        model.xla_generation = True
    assert_same(graph, naive)
    assert np.abs(graph - expected).max() > 1e-2


def test_same_seed_same_samples_other_seed_other_samples(models):
    model = models("strides_1_2_2")
    a = model.generate(2, 17, SEED).numpy()
    np.testing.assert_array_equal(a, model.generate(2, 17, SEED).numpy())
    assert not np.allclose(a, model.generate(2, 17, tf.constant([5, 12])).numpy())
    assert not np.allclose(a[0], a[1])  # samples in a batch differ
    # The noise of a step does not depend on how many steps are drawn: a shorter call is a prefix.
    np.testing.assert_allclose(model.generate(2, 9, SEED).numpy(), a[:, :9], atol=1e-6)
    # Temperature matters (the latent and output noise both scale with it).
    assert not np.allclose(a, model.generate(2, 17, SEED, 0.5).numpy())


def test_generate_inside_tf_function_is_reproducible(models):
    model = models("strides_1_2_2")
    fn = tf.function(lambda seed, n: model.generate(n, 10, seed, 0.8), autograph=False)
    a = fn(SEED, tf.constant(2)).numpy()
    np.testing.assert_array_equal(a, fn(SEED, tf.constant(2)).numpy())
    np.testing.assert_allclose(a, model.generate(2, 10, SEED, 0.8).numpy(), atol=1e-6)
    assert not np.allclose(a, fn(tf.constant([1, 1]), tf.constant(2)).numpy())


def test_continuation_uses_the_prefix_but_not_its_padding(models):
    model = models("strides_1_2_2")
    x, lengths = prefix_batch(model, [11, 5, 8], 11)
    base = model.continue_sequences(x, lengths, 9, SEED).numpy()
    garbage = x.copy()
    for b, n in enumerate(lengths):
        garbage[b, n:] = 50.0
    np.testing.assert_array_equal(model.continue_sequences(garbage, lengths, 9, SEED).numpy(), base)
    changed = x.copy()
    changed[1, :5, :2] += 1.0  # row 1's observed steps
    other = model.continue_sequences(changed, lengths, 9, SEED).numpy()
    assert not np.allclose(other[1], base[1])
    np.testing.assert_allclose(other[[0, 2]], base[[0, 2]], atol=1e-6)  # rows are independent


def test_forward_priming_rule():
    """observed_lengths: z from q exactly for the latent steps whose whole span is observed, from p elsewhere."""
    model = tiny()
    x, lengths = prefix_batch(model, [16, 7, 4], 16)
    mask = np.ones((3, 16), np.float32)
    t = 0.5
    out = model.forward(x, mask, seed=SEED, latents="prior", temperature=t, observed_lengths=lengths)
    used_q = 0
    for l, (q, p, z) in enumerate(zip(out.posteriors, out.priors, out.latents)):
        steps, dim = z.shape[1], z.shape[2]
        eps = np.transpose(latent_noise(SEED, l, steps, 3, dim).numpy(), (1, 0, 2))
        from_q = np.array([[model.factors[l] * (tau + 1) <= n for tau in range(steps)] for n in lengths])
        expected = np.where(from_q[..., None], q.loc + q.scale * eps, p.loc + t * p.scale * eps)
        np.testing.assert_allclose(z, expected, atol=1e-6, err_msg=f"layer {l + 1}")
        assert not np.allclose(q.loc, p.loc)  # so the check above tells q from p
        used_q += from_q.sum()
    # e.g. layer 1 (factor 1): 16 + 7 + 4 steps from q; layer 3 (factor 4): 4 + 1 + 1.
    assert used_q == (16 + 7 + 4) + (8 + 3 + 2) + (4 + 1 + 1)
    with pytest.raises(ValueError, match="observed_lengths"):
        model.forward(x, mask, seed=SEED, latents="posterior", observed_lengths=lengths)
