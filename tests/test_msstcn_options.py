"""The authors' choices offered as MS-STCN options, each against an independent computation of what the
authors' code (github.com/carl-andersson/MS-STCN) computes; the paper's ablations."""

import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfhier.blocks import DownsamplingWaveNetBlock, UpsamplingWaveNetBlock
from tfhier.heads import make_head

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _randomize(layer, rng):
    for w in layer.weights:
        w.assign(rng.normal(scale=0.5, size=w.shape).astype(np.float32))


def np_causal_conv(x, kernel, bias, d):
    k = kernel.shape[0]
    y = np.zeros(x.shape[:2] + (kernel.shape[2],))
    for t in range(x.shape[1]):
        for j in range(k):
            src = t - (k - 1 - j) * d
            if src >= 0:
                y[:, t] += x[:, src] @ kernel[j]
    return y + (0.0 if bias is None else bias)


def np_sum_pool(x, s):
    b, t, c = x.shape
    return x.reshape(b, t // s, s, c).sum(axis=2) / np.sqrt(s)


def np_gate(a):
    half = a.shape[-1] // 2
    return np.tanh(a[..., :half]) / (1.0 + np.exp(-a[..., half:]))


@pytest.mark.parametrize("in_ch, ch, s, k, d", [(5, 5, 2, 2, 1), (3, 6, 3, 2, 2), (4, 4, 4, 3, 1)])
def test_sum_pool_is_the_authors_block(in_ch, ch, s, k, d):
    """The authors' first block of a downsampled layer: causal conv on the fine grid -> fixed sum-pool / sqrt(S)
    -> gated activation -> bias-free 1x1; identity: (1x1 with bias on a channel change) -> the same pooling."""
    rng = np.random.default_rng(0)
    block = DownsamplingWaveNetBlock(ch, s, mode="sum_pool", kernel_size=k, dilation_rate=d)
    x = rng.normal(size=(2, 4 * s, in_ch)).astype(np.float32)
    block(x)
    _randomize(block, rng)
    assert block.out_conv.bias is None
    a = np_causal_conv(x.astype(np.float64), block.gate_conv.kernel.numpy(), block.gate_conv.bias.numpy(), d)
    residual = np_gate(np_sum_pool(a, s)) @ block.out_conv.kernel.numpy()[0]
    identity = x.astype(np.float64)
    if in_ch != ch:
        identity = identity @ block.skip_proj.kernel.numpy()[0] + block.skip_proj.bias.numpy()
    expected = np_sum_pool(identity, s) + residual
    np.testing.assert_allclose(block(x), expected, rtol=1e-5, atol=1e-5)
    # The streaming step gives the same coarse steps.
    state, outs = block.initial_state(2), []
    for tau in range(4):
        out, state = block.step(state, [tf.constant(x[:, tau * s + j]) for j in range(s)])
        outs.append(out)
    np.testing.assert_allclose(np.stack(outs, axis=1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_ch, ch", [(4, 4), (5, 3)])
def test_repeat_upsampling_is_the_authors_block(in_ch, ch):
    """UpscaleConv1D on both paths: every fine step of a coarse step gets the same output."""
    rng = np.random.default_rng(1)
    s = 3
    block = UpsamplingWaveNetBlock(ch, s, mode="repeat")
    x, cond = rng.normal(size=(2, 4, in_ch)).astype(np.float32), rng.normal(size=(2, 4, 2)).astype(np.float32)
    block(x, cond)
    _randomize(block, rng)
    inp = np.concatenate([x, cond], -1).astype(np.float64)
    a = np_gate(inp @ block.gate_conv.kernel.numpy()[0] + block.gate_conv.bias.numpy())
    coarse = a @ block.out_conv.kernel.numpy()[0]
    identity = x if in_ch == ch else x @ block.skip_proj.kernel.numpy()[0] + block.skip_proj.bias.numpy()
    expected = np.repeat(identity + coarse, s, axis=1)
    np.testing.assert_allclose(block(x, cond), expected, rtol=1e-5, atol=1e-5)
    fine, _ = block.step((), tf.constant(x[:, 1]), tf.constant(cond[:, 1]))
    np.testing.assert_allclose(np.stack(fine, 1), expected[:, s:2 * s], rtol=1e-5, atol=1e-5)


def np_normal_logpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)


@pytest.mark.parametrize("kind, dim", [("gmm", 4), ("handwriting", 3)])
def test_per_dim_mixture_log_prob_is_a_product_of_one_dimensional_mixtures(kind, dim):
    rng = np.random.default_rng(2)
    n = 3
    head = make_head(kind, dim, n, mixture="per_dim")
    eta = rng.normal(size=(2, 5, head.param_size)).astype(np.float32)
    x = rng.normal(size=(2, 5, dim)).astype(np.float32)
    if kind == "handwriting":
        x[..., 2] = rng.random((2, 5)) < 0.3
    got = head.distribution(eta).log_prob(x).numpy()
    start = 1 if kind == "handwriting" else 0
    offsets = dim - start if kind == "gmm" else 2
    logits = eta[..., start:start + n].astype(np.float64)
    log_pi = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    params = eta[..., start + n:].reshape(2, 5, n, 2 * offsets).astype(np.float64)
    mu, sigma = params[..., :offsets], np.clip(np.log1p(np.exp(params[..., offsets:])), 1e-3, 5.0)
    expected = np.zeros((2, 5))
    for dd in range(offsets):
        comp = np_normal_logpdf(x[..., dd, None].astype(np.float64), mu[..., dd], sigma[..., dd]) + log_pi
        expected += np.log(np.exp(comp).sum(-1))
    if kind == "handwriting":
        p = 1 / (1 + np.exp(-eta[..., 0].astype(np.float64)))
        expected += np.where(x[..., 2] > 0, np.log(p), np.log(1 - p))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    joint = make_head(kind, dim, n).distribution(eta).log_prob(x).numpy()
    assert not np.allclose(joint, got)  # the options are different densities


def test_per_dim_mixture_samples_draw_a_component_per_dimension():
    """Well separated components (means 0, 100, 200, tiny scales) tell each draw's component: per dimension the
    frequencies match the weights (chi-square), and the two dimensions' components are independent, which the
    joint mixture (one component for both) is not."""
    from scipy import stats

    head = make_head("gmm", 2, 3, mixture="per_dim")
    weights = np.array([0.2, 0.3, 0.5])
    means = np.array([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0]])
    eta = np.concatenate([np.log(weights), np.concatenate([means, np.full((3, 2), -20.0)], 1).ravel()])
    eta = np.tile(eta.astype(np.float32), (4000, 1))
    samples = head.distribution(eta).sample(seed=tf.constant([1, 2], tf.int32)).numpy()
    comp = np.rint(samples / 100).astype(int)
    for dd in range(2):
        counts = np.bincount(comp[:, dd], minlength=3)
        assert stats.chisquare(counts, weights * len(comp)).pvalue > 1e-3
    table = np.zeros((3, 3))
    np.add.at(table, (comp[:, 0], comp[:, 1]), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3  # independent
    joint = make_head("gmm", 2, 3).distribution(eta).sample(seed=tf.constant([1, 2], tf.int32)).numpy()
    jc = np.rint(joint / 100).astype(int)
    assert (jc[:, 0] == jc[:, 1]).all() and not (comp[:, 0] == comp[:, 1]).all()


def test_per_dim_needs_a_gaussian_mixture_head():
    with pytest.raises(ValueError, match="--mixture=per_dim is for Gaussian-mixture heads"):
        make_head("bernoulli", 4, mixture="per_dim")


def test_chung2015_offset_scale_is_the_authors_x_std():
    from tfhier.data.strokes import offset_scale

    steps = [np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 1.0]]), np.array([[0.0, 4.0, 0.0]])]
    rows = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 4.0]])
    # By hand: E_t[dx + dy] = (3 + 2 + 4) / 3 = 3, E_t[dx^2 + dy^2] = (5 + 10 + 16) / 3 = 31 / 3.
    assert math.isclose(offset_scale(steps, "chung2015"), math.sqrt(31 / 3 - 9), rel_tol=1e-12)
    assert math.isclose(offset_scale(steps, "std"), rows.ravel().std(), rel_tol=1e-12)


@pytest.mark.skipif(not (SHARED / "iam_ondb").is_dir(), reason="../shared/data/iam_ondb is not here")
def test_chung2015_on_iam_is_about_sqrt2_times_the_std():
    from tfhier.data import load_dataset

    std = load_dataset("iam_ondb", str(SHARED / "iam_ondb")).info["offset_scale"]
    chung = load_dataset("iam_ondb", str(SHARED / "iam_ondb"), offset_scale="chung2015").info["offset_scale"]
    assert 1.3 < chung / std < 1.5


def test_authors_framing_puts_samples_T_apart_in_a_step():
    from tfhier.data.audio import frame_rows, frames_to_waveform

    row = np.arange(12.0)[None]  # one row of 12 samples, W = 3, T = 4
    np.testing.assert_array_equal(frame_rows(row, 3)[0], [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    np.testing.assert_array_equal(frame_rows(row, 3, "authors")[0], [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]])
    info = {"frame_width": 3, "mean": 0.0, "std": 1.0, "framing": "authors"}
    np.testing.assert_array_equal(frames_to_waveform(frame_rows(row, 3, "authors")[0], info), row[0])


def test_ablation_configs_are_the_papers():
    from tfhier.runs import parse_flags_text

    for name, channels, latents in [("iam_nomultiscale", "64,64,64,64,64", "8,8,8,4,2"),
                                    ("speech_fw200_nomultiscale", "256,256,256,256,256", "64,64,64,64,64"),
                                    ("speech_fw25_nomultiscale", "96,96,96,96,96", "24,24,24,24,24"),
                                    ("speech_fw2_nomultiscale", "26,26,26,26,26", "1,1,1,1,1")]:
        flags = parse_flags_text((REPO / "configs" / f"{name}.cfg").read_text())
        assert flags["strides"] == "1,1,1,1,1" and flags["channels"] == channels and flags["latent_dims"] == latents
    nolatents = parse_flags_text((REPO / "configs" / "speech_fw2_nolatents.cfg").read_text())
    assert nolatents["latents"] == "none" and nolatents["strides"] == "1,5,5,4,1"


def test_input_dropout_acts_in_training_only_and_is_seeded():
    from tfhier.models import MSSTCN

    model = MSSTCN(3, head="handwriting", head_components=2, channels=[6, 6], latent_dims=[2, 2], strides=[1, 2],
                   bu_dilations=[[1], [1]], td_blocks=1, input_dropout=0.5).build_for_data()
    x = np.random.default_rng(0).normal(size=(2, 8, 3)).astype(np.float32)
    mask = np.ones((2, 8), np.float32)
    seed = tf.constant([1, 2])
    run = lambda training, s=seed: model.forward(x, mask, seed=s, training=training).likelihood_params.numpy()  # noqa
    np.testing.assert_array_equal(run(False), run(False))
    np.testing.assert_array_equal(run(True), run(True))  # stateless: the same seed drops the same inputs
    assert not np.allclose(run(True), run(False)) and not np.allclose(run(True), run(True, tf.constant([1, 3])))
    with pytest.raises(ValueError, match="input_dropout"):
        MSSTCN(3, input_dropout=1.0)
