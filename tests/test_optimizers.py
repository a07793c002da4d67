"""STORN's optimizer, rmsprop with Nesterov momentum (``--optimizer=nesterov_rmsprop``), against climin's update
written out in numpy, and through the trainer: settings, clipping, checkpoints and exact resume."""

import numpy as np
import pytest
import tensorflow as tf

from tfhier import training
from tfhier.training.rmsprop import NesterovRMSprop


def climin_nesterov_rmsprop(theta, grad, steps, lr, decay, momentum, clip=None):
    """climin's RmsProp._iterate in numpy: the look-ahead move, the gradient there, then the scaled step. Returns
    the parameters θ, the last step v and the moving average r (which starts at 1)."""
    theta = np.array(theta, np.float64)
    r, v = np.ones_like(theta), np.zeros_like(theta)
    for _ in range(steps):
        step1 = momentum * v
        theta = theta - step1
        g = grad(theta)
        if clip is not None and np.linalg.norm(g) > clip:
            g = g * clip / np.linalg.norm(g)
        r = decay * r + (1 - decay) * g ** 2
        step2 = lr * g / np.sqrt(r + 1e-8)
        theta = theta - step2
        v = step1 + step2
    return theta, v, r


def grad(theta):  # of sum(theta^4 / 4 - 2 theta^2 + 3 theta): curved, with minima away from 0
    return theta ** 3 - 4.0 * theta + 3.0


def keras_run(optimizer, theta0, steps):
    var = tf.Variable(np.array(theta0, np.float32))
    for _ in range(steps):
        optimizer.apply_gradients([(tf.constant(grad(var.numpy().astype(np.float64)), tf.float32), var)])
    return var, optimizer


@pytest.mark.parametrize("momentum, decay", [(0.9, 0.9), (0.99, 0.8), (0.0, 0.9)])
def test_steps_equal_climins_rmsprop_with_nesterov_momentum(momentum, decay):
    theta0, lr, steps = [2.5, -0.3, 0.05, -3.0], 0.02, 60
    theta, v, r = climin_nesterov_rmsprop(theta0, grad, steps, lr, decay, momentum)
    var, opt = keras_run(NesterovRMSprop(learning_rate=lr, decay=decay, momentum=momentum), theta0, steps)
    # The variable holds the look-ahead point θ − β v; the optimizer's slots hold v and r.
    np.testing.assert_allclose(var.numpy(), theta - momentum * v, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(opt._steps[0].numpy(), v, rtol=2e-4, atol=1e-4 * np.abs(v).max())
    np.testing.assert_allclose(opt._mean_squares[0].numpy(), r, rtol=2e-5)
    assert not np.allclose(theta, theta0, atol=0.1)  # it moved


def test_the_first_step_is_small_for_a_small_gradient():
    """r starts at 1 (climin): a gradient of 1e-3 moves a parameter by about lr * 1e-3, not by lr / sqrt(1 - decay)
    as with r starting at 0."""
    opt = NesterovRMSprop(learning_rate=0.1, decay=0.9, momentum=0.9)
    var = tf.Variable([1.0])
    opt.apply_gradients([(tf.constant([1e-3]), var)])
    # θ̃_1 = θ_0 − (1 + β) v_1 with v_1 = lr g / sqrt(0.9 + 0.1 g²)
    np.testing.assert_allclose(1.0 - var.numpy(), 1.9 * 0.1 * 1e-3 / np.sqrt(0.9 + 1e-7), rtol=1e-3)
    with pytest.raises(ValueError, match="momentum must be in"):
        NesterovRMSprop(momentum=1.0)


def test_make_optimizer_clips_the_global_norm_and_schedules_the_rate():
    s = training.TrainSettings(optimizer="nesterov_rmsprop", learning_rate=0.05, momentum=0.95, rms_decay=0.8,
                               clip_norm=0.5, lr_decay_steps=1_000_000)
    opt = training.make_optimizer(s)
    assert isinstance(opt, NesterovRMSprop) and opt.momentum == 0.95 and opt.decay == 0.8
    theta0 = [2.5, -0.3, 0.05, -3.0]
    var, _ = keras_run(opt, theta0, 20)
    rate = 0.05 * 0.5 ** (np.arange(20) / 1_000_000)  # ~constant over 20 steps
    theta, v, _ = climin_nesterov_rmsprop(theta0, grad, 20, rate.mean(), 0.8, 0.95, clip=0.5)
    np.testing.assert_allclose(var.numpy(), theta - 0.95 * v, rtol=1e-4, atol=1e-5)
    restored = NesterovRMSprop.from_config(opt.get_config())
    assert (restored.decay, restored.momentum, restored.epsilon) == (0.8, 0.95, 1e-8)


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "sgd", "--optimizer must be one of"),
    ("momentum", 1.0, r"--momentum must be in \[0, 1\)"),
    ("rms_decay", -0.1, r"--rms_decay must be in \[0, 1\)"),
])
def test_bad_optimizer_settings_name_the_flag(field, value, message):
    with pytest.raises(ValueError, match=message):
        training.TrainSettings(**{field: value}).validate()


def test_a_resumed_run_continues_exactly(tmp_path):
    """The optimizer's slots (the last step and the moving average) are checkpointed: 4 steps, then 2 more after a
    restart, end at the weights of 6 steps in one go."""
    from tfhier.data.hershey import make_hershey_handwriting

    data = make_hershey_handwriting(num_train=16, num_valid=4, num_test=4, seed=1)
    model_config = dict(head="handwriting", head_components=2, channels=[8, 8], latent_dims=[2, 2], strides=[1, 2],
                        bu_dilations=[[1, 2], [1]], td_blocks=1, kernel_size=2)

    def run(path, steps):
        s = training.TrainSettings(train_steps=steps, batch_size=4, seq_len=32, eval_every=2, eval_batches=1,
                                   log_every=1, checkpoint_every=2, sample_every=100, verbose=0,
                                   optimizer="nesterov_rmsprop", learning_rate=1e-2, momentum=0.9)
        model, _ = training.train(str(path), "msstcn", model_config, data, s)
        return model

    straight = run(tmp_path / "a", 6)
    run(tmp_path / "b", 4)
    resumed = run(tmp_path / "b", 6)
    assert isinstance(resumed.optimizer, NesterovRMSprop) and int(resumed.optimizer.iterations.numpy()) == 6
    for w1, w2 in zip(straight.weights, resumed.weights):
        np.testing.assert_array_equal(w1.numpy(), w2.numpy(), err_msg=w1.path)
