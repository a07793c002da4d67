"""STORN's Table 2 initialisation of its RNNs (tfhier.models.initializers), checked with numpy: the number of
weights into each unit, their distribution, and the recurrent matrix's eigenvalues."""

import keras
import numpy as np
import pytest

from tfhier.models import build_model, stored_model_config
from tfhier.models.hparams import HParamError
from tfhier.models.initializers import SparseNormal

TABLE2 = dict(storn_init="table2", init_variance=0.01, max_incoming=5, spectral_radius=1.2)
SMALL = dict(head="bernoulli", latent_dims=[2], rnn_units=12, mlp_hidden=[6], activation="tanh")


def nonzeros_per_column(w):
    return (np.asarray(w) != 0).sum(axis=0)


def spectral_radius(w):
    return np.abs(np.linalg.eigvals(np.asarray(w, np.float64))).max()


def test_sparse_normal_keeps_nu_weights_into_each_unit_drawn_from_the_normal():
    keras.utils.set_random_seed(1)
    w = np.asarray(SparseNormal(0.04, max_incoming=30)((400, 500)))
    assert (nonzeros_per_column(w) == 30).all()
    kept = w[w != 0]
    # 15,000 draws of N(0, 0.04): the variance within 5% and the fourth moment of a normal (3 sigma^4) within 10%
    assert abs(kept.var() / 0.04 - 1) < 0.05 and abs(np.mean(kept ** 4) / (3 * 0.04 ** 2) - 1) < 0.1
    # the kept rows are random, not the same rows in every column: every row is used, about 30/400 of columns each
    per_row = (w != 0).sum(axis=1)
    assert per_row.min() > 0 and per_row.std() > 1
    dense = np.asarray(SparseNormal(0.04, max_incoming=0)((50, 20)))
    assert (dense != 0).all()
    assert (np.asarray(SparseNormal(0.04, max_incoming=80)((50, 20))) != 0).all()  # nu above the fan-in: all


@pytest.mark.parametrize("radius", [1.0, 1.2])
def test_sparse_normal_scales_a_square_matrix_to_the_spectral_radius(radius):
    keras.utils.set_random_seed(2)
    w = np.asarray(SparseNormal(0.1, max_incoming=15, spectral_radius=radius)((100, 100)))
    assert spectral_radius(w) == pytest.approx(radius, rel=1e-5)
    assert (nonzeros_per_column(w) == 15).all()
    with pytest.raises(ValueError, match="square matrix"):
        SparseNormal(0.1, spectral_radius=1.1)((10, 20))
    with pytest.raises(ValueError, match="variance"):
        SparseNormal(0.0)


def test_sparse_normal_config_round_trips_and_its_seed_repeats_the_draw():
    init = SparseNormal(0.001, max_incoming=25, spectral_radius=1.05, seed=3)
    again = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert again.get_config() == init.get_config()
    np.testing.assert_array_equal(np.asarray(again((30, 30))), np.asarray(init((30, 30))))


@pytest.mark.parametrize("name", ["vosp", "vrae"])
@pytest.mark.parametrize("fast_dropout", [0.0, 0.1])
def test_table2_initialises_every_storn_rnn(name, fast_dropout):
    keras.utils.set_random_seed(4)
    model = build_model(name, 7, dict(SMALL, fast_dropout=fast_dropout, **TABLE2)).build_for_data()
    rnns = [model.rnn] if name == "vosp" else [*model.recognition, *model.generator]
    cells = [getattr(rnn, "cell", rnn) for rnn in rnns]
    for cell in cells:
        assert (nonzeros_per_column(cell.kernel) == min(5, cell.kernel.shape[0])).all()  # VRAE's generator reads z
        assert (nonzeros_per_column(cell.recurrent_kernel) == 5).all()
        assert spectral_radius(cell.recurrent_kernel) == pytest.approx(1.2, rel=1e-5)
        assert not np.asarray(cell.bias).any()  # Table 2: b_h = 0
    if name == "vrae":  # each RNN its own draw
        assert not np.array_equal(np.asarray(cells[0].recurrent_kernel), np.asarray(cells[1].recurrent_kernel))


def test_the_run_seed_repeats_the_table2_weights():
    def weights():
        keras.utils.set_random_seed(6)
        model = build_model("vrae", 7, dict(SMALL, fast_dropout=0.1, **TABLE2)).build_for_data()
        return [np.asarray(v) for v in model.weights]

    first, second = weights(), weights()
    assert len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second))


def test_fast_dropout_rnn_config_round_trips_with_table2_initializers():
    from tfhier.models.fast_dropout import FastDropoutRNN

    rnn = FastDropoutRNN(12, 0.9, kernel_initializer=SparseNormal(0.01, 5),
                         recurrent_initializer=SparseNormal(0.01, 5, 1.2))
    again = FastDropoutRNN.from_config(rnn.get_config())
    again.build((None, None, 7))
    assert (nonzeros_per_column(again.kernel) == 5).all()
    assert spectral_radius(again.recurrent_kernel) == pytest.approx(1.2, rel=1e-5)
    assert FastDropoutRNN(3).get_config()["recurrent_initializer"] == "orthogonal"


def test_keras_initialisation_stays_the_default_and_old_runs_rebuild_with_it():
    keras.utils.set_random_seed(5)
    model = build_model("vosp", 7, dict(SMALL)).build_for_data()
    w = np.asarray(model.rnn.recurrent_kernel)
    np.testing.assert_allclose(w @ w.T, np.eye(12), atol=1e-5)  # orthogonal
    assert (np.asarray(model.rnn.kernel) != 0).all()
    stored = {k: v for k, v in model.get_config().items() if k != "storn_init"}
    assert stored_model_config("vosp", stored)["storn_init"] == "keras"


@pytest.mark.parametrize("bad, match", [
    (dict(storn_cell="lstm"), "needs --storn_cell=simple"),
    (dict(init_variance=0.0), "--init_variance must be > 0, got 0.0"),
    (dict(max_incoming=-1), "--max_incoming must be >= 0"),
    (dict(spectral_radius=0.0), "--spectral_radius must be > 0, got 0.0"),
])
def test_bad_table2_settings_are_refused_by_name(bad, match):
    with pytest.raises(HParamError, match=match):
        build_model("vrae", 7, {**SMALL, **TABLE2, **bad})


def test_table2_settings_without_table2_are_refused():
    with pytest.raises(HParamError, match="--max_incoming is a setting of --storn_init=table2"):
        build_model("vosp", 7, dict(SMALL, max_incoming=25))
    build_model("vosp", 7, dict(SMALL, max_incoming=15))  # the default value changes nothing: accepted
