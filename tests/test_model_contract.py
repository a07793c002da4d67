"""The contract every registered model keeps, checked for each one of them.

A new model is covered by adding one tiny configuration to ``TINY`` (the first
test fails until it is there).  What a model checks of its own (its paper's
equations against numpy) lives in its own test module.

Checked here: the configuration round trip (``get_config`` -> JSON -> an
identical model), unique variable paths (checkpoints are by path), every
weight reached by the gradient of the ELBO, causality with latents drawn from
the priors, padding (garbage in it and its length change nothing), the
checkpoint round trip, cached generation and continuation against the naive
reference (same noise, so the same sequences), the per-layer KL names, a fresh
process's reload of the SavedModel for all three signatures, and finite scores
on real data.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfhier import objectives, runs, serving, training
from tfhier.models import MODELS, build_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SEED = tf.constant([3, 7])
TOL = 1e-5

#: one tiny configuration per registered model (handwriting steps [dx, dy, pen])
TINY = {
    "msstcn": dict(channels=[8, 8, 6], latent_dims=[2, 3, 2], strides=[1, 2, 2], bu_dilations=[[1, 2], [1], [1, 2]],
                   td_blocks=1),
    "wavenet": dict(channels=[8, 8], dilations=[1, 2, 4], output_hidden=[8]),
    "wavenet_dense": dict(channels=[8, 6], dilations=[1, 2], output_hidden=[8], dense_blocks=[0, 3]),
    "stcn": dict(channels=[8, 6], dilations=[1, 2], latent_dims=[2, 3], latent_hidden=[8], output_hidden=[8]),
    "stcn_dense": dict(channels=[8, 6], dilations=[1, 2, 4], latent_dims=[3, 2], latent_hidden=[8],
                       output_hidden=[8], shared_latent_nets=False),
    "vrnn": dict(latent_dims=[3], rnn_units=5, mlp_hidden=[6], feature_units=4),
    "srnn": dict(latent_dims=[3], rnn_units=5, mlp_hidden=[6], feature_units=4),
    "vhrnn": dict(latent_dims=[3], rnn_units=5, mlp_hidden=[6], feature_units=4, hyper_units=4, hyper_hidden=6),
    "vosp": dict(latent_dims=[3], rnn_units=5, mlp_hidden=[6]),
    "vrae": dict(latent_dims=[3], rnn_units=5, mlp_hidden=[6]),
}
#: further configurations of a model that change its structure, checked the same way (case name -> model, overrides)
VARIANTS = {
    "msstcn_authors": ("msstcn", dict(downsampling="sum_pool", upsampling="repeat", mixture="per_dim",
                                      gen_post="plain", stack_input="first_block", resample_padding="block")),
    "msstcn_nolatents": ("msstcn", dict(latents="none")),
    "stcn_per_dim": ("stcn", dict(mixture="per_dim", precision_weighting="authors")),
    "vrnn_smoothing_gru": ("vrnn", dict(posterior="smoothing", res_q=True, cell="gru")),
    "srnn_filtering": ("srnn", dict(posterior="filtering", res_q=False, activation="relu")),
    "vhrnn_gru_latent": ("vhrnn", dict(cell="gru", hyper_input="latent")),
    "vosp_normal_lstm": ("vosp", dict(prior="normal", storn_cell="lstm")),
    "vosp_table2": ("vosp", dict(activation="tanh", output_bias=-0.8, mlp_hidden=[])),
    "vosp_fast_dropout": ("vosp", dict(activation="tanh", head="bernoulli", fast_dropout=0.2)),
    "vrnn_clamp": ("vrnn", dict(scale_fn="clamp")),
    "vrae_normal": ("vrae", dict(prior="normal")),
    "vrae_fast_dropout": ("vrae", dict(activation="tanh", head="bernoulli", fast_dropout=0.2)),
}
CASES = {**{name: (name, {}) for name in MODELS}, **VARIANTS}
NAMES = sorted(CASES)


@pytest.fixture(scope="module", autouse=True)
def fast_graph_building():
    """Grappler's optimisation of every traced sampler costs seconds and changes no value checked here."""
    old = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": old.get("disable_meta_optimizer", False)})


def make(case, **overrides):
    """The tiny model of a case, built, with every zero-initialised weight randomised (so every path matters) and a
    smaller output projection (samples stay O(1), so an absolute tolerance means float rounding)."""
    name, variant = CASES[case]
    config = dict(head="handwriting", head_components=2, **TINY[name])
    config.update(variant)
    config.update(overrides)
    tf.keras.utils.set_random_seed(0)
    model = build_model(name, 3, config).build_for_data()
    rng = np.random.default_rng(1)
    for v in model.weights:
        value = v.numpy()
        if not value.any():
            v.assign(rng.normal(scale=0.3, size=value.shape).astype(np.float32))
    model.head.proj.kernel.assign(model.head.proj.kernel * 0.5)
    return model


_CACHE = {}


def tiny(name):
    if name not in _CACHE:
        _CACHE[name] = make(name)
    return _CACHE[name]


def handwriting(b, t, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, t, 3)).astype(np.float32)
    x[..., 2] = rng.random((b, t)) < 0.2
    return x


def test_every_registered_model_has_a_tiny_configuration():
    assert set(TINY) == set(MODELS), f"add a tiny configuration for {sorted(set(MODELS) - set(TINY))} to TINY"
    assert all(model in MODELS for model, _ in VARIANTS.values())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_name_and_declared_hyperparameters(name):
    cls = MODELS[name]
    assert cls.NAME == name and cls.DESCRIPTION
    names = [h.name for h in cls.HPARAMS]
    assert len(names) == len(set(names)) and {"head", "head_components"} <= set(names)
    with pytest.raises(ValueError, match="no hyperparameter"):
        build_model(name, 3, {"not_a_hyperparameter": 1})


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip_rebuilds_an_identical_model(name):
    model = tiny(name)
    config = json.loads(json.dumps(model.get_config()))  # what config.json holds
    assert set(config) == {"input_dim", "noise_seed"} | {h.name for h in type(model).HPARAMS}
    clone = build_model(type(model).NAME, 3, config).build_for_data()
    assert clone.get_config() == config
    assert [v.path for v in clone.weights] == [v.path for v in model.weights]
    clone.set_weights(model.get_weights())
    x, mask = handwriting(2, 12), np.ones((2, 12), np.float32)
    for key in ("elbo", "nll", "kl"):
        np.testing.assert_allclose(clone.score(x, mask, SEED)[key], model.score(x, mask, SEED)[key], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_variable_paths_are_unique_and_every_weight_gets_a_gradient(name):
    model = tiny(name)
    paths = [v.path for v in model.weights]
    assert len(paths) == len(set(paths)), "checkpoints are by path: paths must be unique"
    x, mask = handwriting(2, 16), np.ones((2, 16), np.float32)
    with tf.GradientTape() as tape:
        out = model.forward(x, mask, seed=SEED)
        loss = -tf.reduce_mean(objectives.elbo_terms(out, x, mask).elbo)
    grads = tape.gradient(loss, model.trainable_variables)
    unused = [v.path for v, g in zip(model.trainable_variables, grads) if g is None or not np.any(g.numpy())]
    assert not unused


@pytest.mark.parametrize("name", NAMES)
def test_causal_with_latents_from_the_priors(name):
    """Changing x_t changes no likelihood parameter of steps <= t and no prior parameter of a latent step
    serving steps <= t; and the check can fail (later steps do depend on x_t)."""
    model = tiny(name)
    t_len = 12
    x, mask = handwriting(1, t_len), np.ones((1, t_len), np.float32)

    def params(xx):
        out = model.forward(xx, mask, seed=SEED, latents="prior")
        return out.likelihood_params.numpy(), [(p.loc.numpy(), p.scale.numpy()) for p in out.priors]

    eta0, priors0 = params(x)
    changed_later = 0
    for t in range(t_len):
        x1 = x.copy()
        x1[0, t] += np.array([3.0, -2.0, 1.0], np.float32)
        eta1, priors1 = params(x1)
        np.testing.assert_allclose(eta1[:, : t + 1], eta0[:, : t + 1], atol=1e-6,
                                   err_msg=f"likelihood at steps <= {t} depends on x_{t}")
        for l, ((loc0, sc0), (loc1, sc1)) in enumerate(zip(priors0, priors1)):
            served = t // model.latent_factors[l] + 1
            np.testing.assert_allclose(loc1[:, :served], loc0[:, :served], atol=1e-6,
                                       err_msg=f"prior of layer {l + 1} depends on x_{t}")
            np.testing.assert_allclose(sc1[:, :served], sc0[:, :served], atol=1e-6)
        if t < t_len - 1 and not np.allclose(eta1[:, t + 1:], eta0[:, t + 1:], atol=1e-6):
            changed_later += 1
    if model.autoregressive:
        assert changed_later >= t_len - 2
    else:  # generated from latents alone (VRAE): with prior latents the data change nothing at all
        assert changed_later == 0


@pytest.mark.parametrize("name", NAMES)
def test_padding_changes_nothing(name):
    """Garbage in the padding changes no score; a sequence scores the same alone or padded far."""
    model = tiny(name)
    x = handwriting(2, 16)
    mask = tf.sequence_mask([9, 16], 16, dtype=tf.float32).numpy()
    garbage = x.copy()
    garbage[0, 9:] = 1e3
    a, b = model.score(x * mask[..., None], mask, SEED), model.score(garbage, mask, SEED)
    for key in ("elbo", "nll", "kl", "num_steps"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-5, err_msg=key)
    alone = model.score(x[:1, :9], np.ones((1, 9), np.float32), SEED)
    long_x = np.concatenate([x[:1, :9], np.full((1, 23, 3), 7.0, np.float32)], axis=1)
    long_mask = np.concatenate([np.ones((1, 9)), np.zeros((1, 23))], axis=1).astype(np.float32)
    long = model.forward(long_x, long_mask, seed=SEED, latents="prior", temperature=0.0)
    short = model.forward(x[:1, :9], np.ones((1, 9), np.float32), seed=SEED, latents="prior", temperature=0.0)
    np.testing.assert_allclose(long.likelihood_params[:, :9], short.likelihood_params, atol=1e-5)
    assert np.isfinite(alone["elbo"].numpy()).all()


@pytest.mark.parametrize("name", NAMES)
def test_nan_and_inf_in_the_padding_change_nothing_and_gradients_stay_finite(name):
    model = tiny(name)
    x = handwriting(2, 14)
    mask = tf.sequence_mask([8, 14], 14, dtype=tf.float32).numpy()
    clean = x * mask[..., None]
    dirty = clean.copy()
    dirty[0, 8:11] = np.nan
    dirty[0, 11:] = np.inf
    a, b = model.score(clean, mask, SEED), model.score(dirty, mask, SEED)
    for key in ("elbo", "nll", "kl"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-5, err_msg=key)
    with tf.GradientTape() as tape:
        loss = -tf.reduce_sum(model.score(dirty, mask, SEED)["elbo"])
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is None or np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_gives_identical_scores(name, tmp_path):
    model = tiny(name)
    path = tf.train.Checkpoint(model=training.model_variables(model)).save(str(tmp_path / "ckpt"))
    fresh = build_model(type(model).NAME, 3, model.get_config()).build_for_data()
    runs.restore_model_weights(fresh, path)
    x, mask = handwriting(2, 10), np.ones((2, 10), np.float32)
    for key in ("elbo", "nll", "kl"):
        np.testing.assert_array_equal(fresh.score(x, mask, SEED)[key], model.score(x, mask, SEED)[key])


@pytest.mark.parametrize("name", NAMES)
def test_kl_names_match_the_latent_layers(name):
    model = tiny(name)
    names = model.latent_layer_names
    assert len(names) == len(model.latent_dims) == len(model.latent_factors)
    x, mask = handwriting(2, 8), np.ones((2, 8), np.float32)
    assert model.score(x, mask, SEED)["kl"].shape == (2, len(names))
    out = model.forward(x, mask, seed=SEED)
    assert len(out.posteriors) == len(out.priors) == len(out.latents) == len(out.latent_masks) == len(names)
    for z, dim in zip(out.latents, model.latent_dims):
        assert z.shape[-1] == dim
    model.compile(optimizer=tf.keras.optimizers.Adam(), objective=objectives.ELBO())
    metric_names = {m.name for m in model.metrics}
    assert {f"kl_{n}" for n in names} <= metric_names
    assert not {m for m in metric_names if m.startswith("kl_")} - {f"kl_{n}" for n in names}


@pytest.mark.parametrize("name", NAMES)
def test_cached_generation_equals_the_naive_reference(name):
    model = tiny(name)
    model.xla_generation = True  # the users' default (tests/conftest.py turns it off elsewhere)
    if not model.has_cached_generator:
        pytest.skip(f"{name} declares no cached generator")
    cached = model.generate(3, 14, SEED, 0.7)
    naive = model.generate_naive(3, 14, SEED, 0.7)
    assert cached.shape == (3, 14, 3) and np.isfinite(naive).all()
    np.testing.assert_allclose(cached, naive, atol=TOL)
    assert set(np.unique(cached.numpy()[..., 2])) <= {0.0, 1.0}
    if model.autoregressive:  # (a VRAE decodes its whole latent sequence at once: its steps see later latents)
        np.testing.assert_allclose(model.generate(3, 6, SEED, 0.7), cached[:, :6], atol=1e-6)  # a prefix of it


@pytest.mark.parametrize("name", NAMES)
def test_cached_continuation_equals_the_naive_reference(name):
    model = tiny(name)
    model.xla_generation = True  # the users' default (tests/conftest.py turns it off elsewhere)
    if not model.has_cached_generator:
        pytest.skip(f"{name} declares no cached generator")
    x, lengths = handwriting(3, 11), np.array([11, 5, 8], np.int32)
    cached = model.continue_sequences(x, lengths, 9, SEED, 0.5)
    naive = model.continue_sequences_naive(x, lengths, 9, SEED, 0.5)
    np.testing.assert_allclose(cached, naive, atol=TOL)
    garbage = x.copy()
    garbage[1, 5:] = 50.0  # padding after a prefix is ignored
    np.testing.assert_array_equal(model.continue_sequences(garbage, lengths, 9, SEED, 0.5), cached)
    changed = x.copy()
    changed[1, :5, :2] += 1.0
    other = model.continue_sequences(changed, lengths, 9, SEED, 0.5).numpy()
    if CASES[name][1].get("head") != "bernoulli":  # (a tiny model's binary draws seldom flip: test_fast_dropout.py)
        assert not np.allclose(other[1], cached[1])  # the continuation follows its prefix
    np.testing.assert_allclose(other[[0, 2]], cached.numpy()[[0, 2]], atol=1e-6)


RELOAD = r'''
import sys
import numpy as np
import tensorflow as tf

path, inputs_path, out_path = sys.argv[1:4]
i = dict(np.load(inputs_path))
f = tf.saved_model.load(path).signatures
score = f["serving_default"](x=tf.constant(i["x"]), lengths=tf.constant(i["lengths"]), seed=tf.constant(i["seed"]))
sample = f["sample"](num_samples=tf.constant(3), num_steps=tf.constant(10), seed=tf.constant(i["seed"]),
                     temperature=tf.constant(0.8))
cont = f["continue"](prefix=tf.constant(i["x"]), prefix_lengths=tf.constant(i["lengths"]), num_steps=tf.constant(7),
                     seed=tf.constant(i["seed"]), temperature=tf.constant(0.8))
np.savez(out_path, elbo=score["elbo"].numpy(), kl=score["kl"].numpy(), samples=sample["samples"].numpy(),
         continuations=cont["continuations"].numpy(), loaded_tfhier="tfhier" in sys.modules)
'''


@pytest.mark.parametrize("name", NAMES)
def test_saved_model_reloaded_in_a_fresh_process_agrees(name, tmp_path):
    model = tiny(name)
    path = serving.write_saved_model(model, tmp_path / "export", serving.Limits(max_steps=64, max_samples=8))
    x, lengths, seed = handwriting(2, 9), np.array([9, 6], np.int32), np.array([4, 5], np.int32)
    np.savez(tmp_path / "inputs.npz", x=x, lengths=lengths, seed=seed)
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), path, str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
                          cwd=tmp_path, env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = dict(np.load(tmp_path / "out.npz"))
    assert not got["loaded_tfhier"]
    mask = tf.sequence_mask(lengths, 9, dtype=tf.float32)
    score = model.score(x, mask, seed)
    np.testing.assert_allclose(got["elbo"], score["elbo"], rtol=1e-4)
    assert got["kl"].shape == (2, len(model.latent_layer_names))
    np.testing.assert_allclose(got["samples"], model.generate(3, 10, seed, 0.8), atol=1e-5)
    np.testing.assert_allclose(got["continuations"], model.continue_sequences(x, lengths, 7, seed, 0.8), atol=1e-5)


@pytest.fixture(scope="module")
def iam_lines():
    if not (SHARED / "iam_ondb" / "lineStrokes").is_dir():
        pytest.skip("../shared/data/iam_ondb is not here")
    from tfhier.data import load_dataset

    return load_dataset("iam_ondb", str(SHARED / "iam_ondb")).test[:4]


@pytest.mark.parametrize("name", NAMES)
def test_score_is_finite_on_real_handwriting(name, iam_lines):
    model = tiny(name)
    t = max(len(s) for s in iam_lines)
    x = np.zeros((len(iam_lines), t, 3), np.float32)
    for i, s in enumerate(iam_lines):
        x[i, : len(s)] = s
    mask = tf.sequence_mask([len(s) for s in iam_lines], t, dtype=tf.float32)
    score = model.score(x, mask, SEED)
    assert np.isfinite(score["elbo"].numpy()).all() and np.isfinite(score["kl"].numpy()).all()
    np.testing.assert_array_equal(score["num_steps"], [len(s) for s in iam_lines])
