"""Capabilities are declared: a model without a cached generator is warned about or refused, never silently
sampled at quadratic cost (sample.py, training-time samples, export)."""

import numpy as np
import pytest
import tensorflow as tf

from tfhier import serving, training
from tfhier.data import load_dataset
from tfhier.models import MODELS, STCN
from tfhier.models.base import NAIVE_MAX_STEPS, naive_generation_problem

TINY = dict(head="handwriting", head_components=2, channels=[6], dilations=[1], latent_dims=[2], latent_hidden=[4],
            output_hidden=[4])


class NaiveOnlySTCN(STCN):
    """STCN without its cached generator: only the naive reference sampler."""

    NAME = "naive_only_stcn"
    stepwise_generation = False


def test_every_registered_model_declares_a_cached_generator():
    for name, cls in MODELS.items():
        kwargs = {"head": "handwriting"}
        assert cls(3, **kwargs).has_cached_generator, name
    assert not NaiveOnlySTCN(3, **TINY).has_cached_generator


def test_naive_generation_problem_names_the_model_and_the_limit():
    model = NaiveOnlySTCN(3, **TINY).build_for_data()
    assert naive_generation_problem(model, NAIVE_MAX_STEPS) is None
    problem = naive_generation_problem(model, NAIVE_MAX_STEPS + 1)
    assert "naive_only_stcn has no cached generator" in problem and str(NAIVE_MAX_STEPS) in problem
    assert naive_generation_problem(STCN(3, **TINY).build_for_data(), 10 ** 6) is None
    # Without the cached loop, generate() is the naive sampler itself.
    seed = tf.constant([1, 2])
    np.testing.assert_array_equal(model.generate(2, 5, seed), model.generate_naive(2, 5, seed))


@pytest.fixture
def naive_run(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, NaiveOnlySTCN.NAME, NaiveOnlySTCN)
    data = load_dataset("hershey", seed=0, num_lines=8)
    settings = training.TrainSettings(train_steps=2, batch_size=4, seq_len=32, eval_every=2, eval_batches=1,
                                      log_every=1, checkpoint_every=2, sample_every=1, num_samples=2,
                                      sample_steps=NAIVE_MAX_STEPS + 1, verbose=0)
    run_dir = tmp_path / "run"
    training.train(str(run_dir), NaiveOnlySTCN.NAME, TINY, data, settings)
    return run_dir


def test_training_skips_samples_longer_than_the_limit_and_export_refuses(naive_run, tmp_path, caplog):
    assert not (naive_run / "samples").exists()  # sample_every=1, but 1001 naive steps were refused
    with pytest.raises(serving.ExportError, match="no cached generator"):
        serving.export_run(str(naive_run), str(tmp_path / "exports"), limits=serving.Limits(max_steps=5000))
    with pytest.warns(UserWarning, match="no cached generator"):
        result = serving.export_run(str(naive_run), str(tmp_path / "exports"),
                                    limits=serving.Limits(max_steps=None))
    assert result.info["limits"]["max_steps"] == NAIVE_MAX_STEPS
