"""``train.py --mixed_precision``: the convolutional models compute in bfloat16, their distributions in float32.

Each check compares the mixed-precision model with the same weights run in float32 (an independent
computation of the same function), so a layer left in float32 by mistake, a distribution built from bfloat16
parameters or a loss reduced in bfloat16 shows up.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfhier import objectives, runs, training
from tfhier.data.hershey import make_hershey_handwriting
from tfhier.models import MODELS, build_model
from tfhier.models.base import precision_policy

from test_model_contract import CASES, TINY, handwriting

REPO = Path(__file__).resolve().parents[1]
SEED = tf.constant([3, 7])
CONV_CASES = sorted(c for c, (name, _) in CASES.items() if MODELS[name].mixed_precision)


def _pair(case):
    """The case's tiny model twice, with equal (random, non-zero) weights: in float32 and under mixed precision."""
    name, variant = CASES[case]
    config = dict(head="handwriting", head_components=2, **TINY[name], **variant)
    full = build_model(name, 3, config).build_for_data()
    with precision_policy(True):
        mixed = build_model(name, 3, config).build_for_data()
    rng = np.random.default_rng(1)
    assert len(full.weights) == len(mixed.weights)
    for a, b in zip(full.weights, mixed.weights):
        assert a.path == b.path and b.dtype == "float32", (a.path, b.path, b.dtype)
        value = rng.normal(scale=0.3, size=a.shape).astype(np.float32)
        a.assign(value)
        b.assign(value)
    return full, mixed


def test_the_recurrent_models_refuse_it_by_name():
    refused = sorted(n for n, cls in MODELS.items() if not cls.mixed_precision)
    assert {"vrnn", "srnn", "vhrnn", "vosp", "vrae"} <= set(refused)
    assert {"msstcn", "wavenet", "wavenet_dense", "stcn", "stcn_dense"} <= set(CONV_CASES)
    with pytest.raises(ValueError, match=r"--mixed_precision: vrnn trains in float32 only"):
        training.check_settings_for("vrnn", training.TrainSettings(mixed_precision=True))
    training.check_settings_for("vrnn", training.TrainSettings())  # no flag: nothing to refuse


@pytest.mark.parametrize("case", CONV_CASES)
def test_layers_in_bfloat16_distributions_and_bound_in_float32_close_to_float32(case):
    full, mixed = _pair(case)
    dtypes = {layer.compute_dtype for layer in mixed._flatten_layers(include_self=False)}
    assert "bfloat16" in dtypes, dtypes
    # Exactly the layers whose outputs parameterise a distribution compute in float32.
    expected = [mixed.head.proj] + [getattr(net, "out", net) for name in ("prior_proj", "posterior_proj",
                                                                         "prior_nets", "likelihood_nets")
                                    for net in (getattr(mixed, name, None) or [])]
    for layer in mixed._flatten_layers(include_self=False):
        if layer.weights and not layer._layers:  # a layer with its own weights (not a container)
            assert (layer.compute_dtype == "float32") == any(layer is e for e in expected), layer.path
    x, mask = handwriting(2, 16), np.ones((2, 16), np.float32)
    mask[1, 11:] = 0
    outputs, bounds, grads = {}, {}, {}
    for key, model in (("full", full), ("mixed", mixed)):
        with tf.GradientTape() as tape:
            out = model.forward(x, mask, seed=SEED, training=True)
            terms = objectives.elbo_terms(out, x, mask)
            loss = -tf.reduce_sum(terms.elbo)
        outputs[key], bounds[key] = out, terms.elbo.numpy()
        grads[key] = np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, model.trainable_variables)])
        assert terms.elbo.dtype == tf.float32 and out.likelihood_params.dtype == tf.float32
        for dist in out.priors + out.posteriors:
            assert dist.loc.dtype == tf.float32 and dist.scale.dtype == tf.float32
    # bfloat16 keeps 8 significant bits: a few tenths of a percent per layer.
    np.testing.assert_allclose(outputs["mixed"].likelihood_params, outputs["full"].likelihood_params,
                               atol=0.05 + 0.03 * np.abs(outputs["full"].likelihood_params).max(), rtol=0.03)
    # The authors' layout (stacks without an input projection, per-block padding) accumulates more bfloat16
    # rounding on this tiny random model: 3.9% on the first sequence's bound.
    np.testing.assert_allclose(bounds["mixed"], bounds["full"], rtol=0.05 if case == "msstcn_authors" else 0.03)
    assert np.all(np.isfinite(grads["mixed"]))
    cosine = grads["mixed"] @ grads["full"] / np.linalg.norm(grads["mixed"]) / np.linalg.norm(grads["full"])
    assert cosine > 0.99, cosine


def test_a_mixed_precision_run_evaluates_samples_and_resumes_in_float32(tmp_path):
    data = make_hershey_handwriting(num_train=16, num_valid=4, num_test=4, seed=1)
    config = dict(head="handwriting", head_components=2, channels=[8, 8], latent_dims=[2, 2], strides=[1, 2],
                  bu_dilations=[[1, 2], [1]], td_blocks=1, kernel_size=2)
    settings = dict(train_steps=4, batch_size=4, seq_len=32, eval_every=2, eval_batches=1, log_every=1,
                    checkpoint_every=2, sample_every=4, num_samples=1, sample_steps=8, verbose=0)
    run = tmp_path / "run"
    trained, history = training.train(str(run), "msstcn", config, data,
                                      training.TrainSettings(mixed_precision=True, **settings))
    assert trained.bottom_up[0].compute_dtype == "bfloat16" and np.all(np.isfinite(history["loss"]))
    assert "mixed" not in (run / "config.json").read_text()  # the model's configuration is precision-free
    assert list((run / "samples").iterdir()), "training-time samples are drawn by the mixed-precision model"
    # The checkpoint holds float32 weights: evaluate.py / sample.py / export rebuild the model in float32.
    loaded = runs.load_model(str(run))[0]
    assert loaded.bottom_up[0].compute_dtype == "float32"
    for a, b in zip(trained.weights, loaded.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x, mask = handwriting(2, 16), np.ones((2, 16), np.float32)
    scores = {}
    for key, model in (("trained", trained), ("loaded", loaded)):
        scores[key] = objectives.elbo_terms(model.forward(x, mask, seed=SEED), x, mask).elbo.numpy()
    np.testing.assert_allclose(scores["trained"], scores["loaded"], rtol=0.03)
    # The mixed-precision model's cached continuation (a bfloat16 bottom-up pass over the prefix, float32 steps).
    lengths = np.array([16, 9], np.int32)
    continued = trained.continue_sequences(x, lengths, 6, SEED).numpy()
    assert continued.shape == (2, 6, 3) and np.all(np.isfinite(continued))
    # A float32 resume of the same run continues from that checkpoint.
    resumed, _ = training.train(str(run), "msstcn", config, data,
                                training.TrainSettings(**{**settings, "train_steps": 6}))
    assert int(resumed.optimizer.iterations.numpy()) == 6


def test_cli_refuses_it_for_a_recurrent_model_before_reading_data(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--model=vrnn", "--mixed_precision",
                           "--dataset=iam_ondb", f"--data_dir={tmp_path / 'nope'}", f"--run_dir={tmp_path / 'r'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0
    assert "train.py: error: --mixed_precision: vrnn trains in float32 only" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()
