"""Runs the MS-STCN authors' PyTorch model and its tfhier import on the same batch and noise, layer by layer.

    python -m tfhier.tools.authors_equivalence --authors=$S/MS-STCN --config=iamondb
    python -m tfhier.tools.authors_equivalence --authors=$S/MS-STCN --config=blizzard

Needs PyTorch and a checkout of github.com/carl-andersson/MS-STCN at commit afd3586 (``--authors``; the
tests read ``TFHIER_AUTHORS_MSSTCN``).  Their model is built from their own classes with their default
options for IAM-OnDB (``default_model_options_iamondb``) or Blizzard (``default_model_options_blizzard``,
frame width 200), trained a few steps with their own loss (:func:`train_authors`, their ``train.py`` step)
so the weights are not the initial ones, and imported into tfhier
(:mod:`tfhier.tools.authors_msstcn`).  Both then score one batch, with tfhier's posterior noise
(:func:`tfhier.models.base.latent_noise`) injected into their code from the outside: their posterior
sample is ``Normal.rsample``, replaced during the call, and their bottom-up features are read with forward
hooks; none of their files is changed.  Compared, per latent layer: the bottom-up features ``d``, the prior
and posterior means and scales, the sample ``z``, the element-wise KL; then the head's parameters (in the
data's units), the log-likelihood of every step, the ELBO and the loss with linear free bits (their
``calc_ll_estimate``).  Each row reports the largest absolute difference and that divided by the largest
magnitude of their values.
"""

from __future__ import annotations

import contextlib
import copy
import sys

import numpy as np

#: data channels and the batch of each configuration
CONFIGS = {
    "iamondb": {"options": "default_model_options_iamondb", "channels": 3, "length": 64},
    "blizzard": {"options": "default_model_options_blizzard", "channels": 200, "length": 40},
}
TOLERANCE = 1e-5


class _Stats:  # their data.base.Statistics (not imported: their data package imports scipy, lxml, tables)
    def __init__(self, mean, std):
        self.mean, self.std = mean, std


def load_authors(checkout):
    """Their modules from ``checkout`` (imported, not copied): a dict of what the check uses."""
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    import warnings

    warnings.filterwarnings("ignore", message=".*arg_constraints.*")
    import default_options
    from model.base import calc_ll_estimate
    from model.Model import Model

    return {"Model": Model, "calc_ll_estimate": calc_ll_estimate, "default_options": default_options}


def authors_batch(config, batch, length, seed=0):
    """A batch in their layout ``[B, C, T]`` (numpy): IAM-OnDB-like ``[pen, dx, dy]`` or audio frames."""
    g = np.random.RandomState(seed)
    if config == "iamondb":
        pen = (g.uniform(size=(batch, 1, length)) < 0.1).astype(np.float32)
        dxy = (0.3 + 0.8 * g.normal(size=(batch, 2, length))).astype(np.float32)
        return np.concatenate([pen, dxy], 1)
    return g.normal(size=(batch, CONFIGS[config]["channels"], length)).astype(np.float32)


def build_authors(A, config, seed=1234):
    """Their model for ``config`` (their default options), normaliser statistics from a random batch."""
    import torch

    options = copy.deepcopy(getattr(A["default_options"], CONFIGS[config]["options"]))
    n = CONFIGS[config]["channels"]
    if options.get("data_normalize"):
        xs = authors_batch(config, 16, 64, seed=1).transpose(0, 2, 1).reshape(-1, n)
        stats = _Stats(xs.mean(0, keepdims=True).T, xs.std(0, ddof=1, keepdims=True).T)
    else:
        stats = _Stats(0, 1)
    torch.manual_seed(seed)
    return A["Model"](n_channels=n, statistics=stats, **copy.deepcopy(options)), options


FREEBITS_OPTIONS = {"grouping": "", "threshold_behaviour": "linear"}


def train_authors(A, model, x, steps, lr=5e-4, freebits=0.5, seed=0):
    """``steps`` steps of their training step (``train.py`` L48-81: Adam, their loss with linear free bits,
    clipping at 1e4) on batch ``x`` [B, C, T] (torch); returns the losses."""
    import torch

    torch.manual_seed(seed)
    lengths = torch.full((x.shape[0],), x.shape[2], dtype=torch.int64)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0, eps=1e-8)
    losses = []
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        pred, ls = model(x, lengths=lengths, iw_samples=1)
        loss = A["calc_ll_estimate"](x, pred, ls, lengths, 1, 1.0, freebits, FREEBITS_OPTIONS, ll_normalization="",
                                     ind_latentstate=False)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 1e4)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e4)
        opt.step()
        losses.append(float(loss.item()))
    return losses


def state_numpy(model):
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _ladder_layers(model):
    layer, out = model.vae.first_ladder_layer, []
    while layer is not None:
        out.append(layer)
        layer = layer.sublayer
    return out


@contextlib.contextmanager
def injected_noise(eps_by_layer):
    """Their ``Normal.rsample`` returns ``loc + scale * eps`` with the given noise, one array per call in the order
    their model draws (top layer first), each checked against the distribution's shape."""
    import torch

    queue = list(eps_by_layer)
    original = torch.distributions.Normal.rsample

    def rsample(dist, sample_shape=torch.Size()):
        if not queue:
            raise AssertionError("their model drew more posterior samples than injected")
        eps = torch.as_tensor(queue.pop(0))
        if tuple(eps.shape) != tuple(dist.loc.shape) or len(sample_shape):
            raise AssertionError(f"injected noise of shape {tuple(eps.shape)} for a Normal of shape "
                                 f"{tuple(dist.loc.shape)}")
        return dist.loc + eps * dist.scale

    torch.distributions.Normal.rsample = rsample
    try:
        yield queue
    finally:
        torch.distributions.Normal.rsample = original


def run_authors(A, model, x, lengths, eps_their_layout, freebits=0.5):
    """Their forward pass on ``x`` [B, C, T] with the noise injected: a dict of numpy arrays."""
    import torch

    layers = _ladder_layers(model)
    features = [None] * len(layers)
    hooks = [layer.inf_pre.register_forward_hook(
        lambda mod, inp, out, i=i: features.__setitem__(i, out.detach().numpy())) for i, layer in enumerate(layers)]
    model.eval()
    xt, lt = torch.as_tensor(x), torch.as_tensor(lengths, dtype=torch.int64)
    try:
        with torch.no_grad(), injected_noise(eps_their_layout[::-1]) as left:
            pred, ls_arr = model(xt, lengths=lt)
            if left:
                raise AssertionError(f"their model drew {len(eps_their_layout) - len(left)} posterior samples, "
                                     f"{len(eps_their_layout)} injected")
            loss = A["calc_ll_estimate"](xt, pred, ls_arr, lt, 1, 1.0, freebits, FREEBITS_OPTIONS, "", False)
            neg_elbo = A["calc_ll_estimate"](xt, pred, ls_arr, lt, 1, 1.0, 0.0, {}, "", False)
            log_lik = pred.log_prob(xt).sum(1)
            mask = (torch.arange(xt.shape[2])[None, :] < lt[:, None]).float()
    finally:
        for h in hooks:
            h.remove()
    ls_arr = ls_arr[::-1]  # theirs: top layer first
    out = {"d": features, "log_lik": (log_lik * mask).numpy(), "loss": float(loss), "neg_elbo": float(neg_elbo),
           "prior_loc": [], "prior_scale": [], "posterior_loc": [], "posterior_scale": [], "z": [], "kl": []}
    for s in ls_arr:
        out["prior_loc"].append(s.prior.loc.numpy())
        out["prior_scale"].append(s.prior.scale.numpy())
        out["posterior_loc"].append(s.posterior.loc.numpy())
        out["posterior_scale"].append(s.posterior.scale.numpy())
        out["z"].append(s.sample.numpy())
        out["kl"].append(s.kl().numpy())
    out["head"] = _their_head_params(pred)
    return out


def _their_head_params(pred):
    """Their likelihood's parameters in the data's units: {name: [B, ..., T] array}."""
    if hasattr(pred, "dists"):  # IAM-OnDB: Combination([Bernoulli, Normal or mixture])
        out = {"pen_logit": pred.dists[0].logits.numpy()}
        sub = pred.dists[1]
        if hasattr(sub, "before_transform"):
            bt = sub.before_transform
            out.update(loc=bt["loc"].numpy(), scale=bt["scale"].numpy(), logits=bt["logits"].numpy())
        else:
            out.update(loc=sub.loc.numpy(), scale=sub.scale.numpy())
        return out
    if hasattr(pred, "before_transform"):
        bt = pred.before_transform
        return {"loc": bt["loc"].numpy(), "scale": bt["scale"].numpy(), "logits": bt["logits"].numpy()}
    return {"loc": pred.loc.numpy(), "scale": pred.scale.numpy()}


def run_tfhier(model, x, mask, seed, freebits=0.5):
    """tfhier's pass on ``x`` [B, T, D] (tfhier's channel order): numpy arrays in tfhier's layout."""
    import tensorflow as tf

    from tfhier import objectives
    from tfhier.heads import gaussian_scale

    t = x.shape[1]
    y = model.network_input(x, mask, t if model.resample_padding == "block" else
                            -(-t // model.time_multiple) * model.time_multiple)
    d = [v.numpy() for v in model.bottom_up_features(y, mask.sum(-1))]
    out = model.forward(x, mask, seed=seed)
    terms = objectives.elbo_terms(out, x, mask)
    objective = objectives.ELBO(kl_regularizer="linear_free_bits", free_bits=freebits)
    loss = objective.per_sequence_loss(terms)
    log_lik = tf.where(mask > 0, out.likelihood.log_prob(x), 0.0)
    res = {"d": [v[:, : int(np.ceil(t / f))] for v, f in zip(d, model.factors)], "log_lik": log_lik.numpy(),
           "loss": float(tf.reduce_mean(loss)), "neg_elbo": float(tf.reduce_mean(-terms.elbo)),
           "prior_loc": [p.loc.numpy() for p in out.priors], "prior_scale": [p.scale.numpy() for p in out.priors],
           "posterior_loc": [q.loc.numpy() for q in out.posteriors],
           "posterior_scale": [q.scale.numpy() for q in out.posteriors],
           "z": [z.numpy() for z in out.latents], "kl": [k.numpy() for k in terms.kl_elements]}
    eta = out.likelihood_params.numpy()
    head = model.head
    res["head"] = _tfhier_head_params(head, eta, gaussian_scale)
    return res


def _tfhier_head_params(head, eta, gaussian_scale):
    """tfhier's head parameters in the data's units, from eta and the head's documented layout."""
    shift = None if head.shift is None else np.array(head.shift, np.float32)
    scale = None if head.scale is None else np.array(head.scale, np.float32)
    n = getattr(head, "components", 1)

    def gauss(mu, s, dims):
        sig = gaussian_scale(s).numpy()
        if shift is not None:
            return mu * scale[dims] + shift[dims], sig * scale[dims]
        return mu, sig

    name = type(head).__name__
    if name == "HandwritingHead":
        p = min(max(shift[2], 1e-3), 1 - 1e-3) if shift is not None else None
        out = {"pen_logit": eta[..., :1] + (np.log(p / (1 - p)) if p is not None else 0.0)}
        logits = eta[..., 1:1 + n]
        params = eta[..., 1 + n:].reshape(eta.shape[:-1] + (n, 4))
        mu, sig = gauss(params[..., :2], params[..., 2:], [0, 1])  # [B, T, n, 2]
        if n == 1:
            out.update(loc=mu[..., 0, :], scale=sig[..., 0, :])
        else:
            out.update(loc=mu, scale=sig, logits=logits)
        return out
    if name == "GaussianMixtureHead":
        dim = head.dim
        params = eta[..., n:].reshape(eta.shape[:-1] + (n, 2 * dim))
        mu, sig = gauss(params[..., :dim], params[..., dim:], list(range(dim)))
        return {"loc": mu, "scale": sig, "logits": eta[..., :n]}
    dim = head.dim
    mu, sig = gauss(eta[..., :dim], eta[..., dim:], list(range(dim)))
    return {"loc": mu, "scale": sig}


def _head_to_tfhier_layout(value):
    """Their head parameter, channels (or components) before time, in tfhier's layout (time before them)."""
    if value.ndim == 4:  # mixture loc / scale [B, C, n, T] -> [B, T, n, C]
        return np.transpose(value, (0, 3, 2, 1))
    return np.transpose(value, (0, 2, 1))  # [B, C, T] (their IAM offsets are tfhier's channels 0, 1) or [B, n, T]


def compare(ours, theirs):
    """Rows ``(quantity, max |diff|, max |diff| / max |theirs|)``."""
    rows = []

    def row(name, a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise AssertionError(f"{name}: shapes differ, tfhier {a.shape} vs theirs {b.shape}")
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        ref = float(np.max(np.abs(b))) if b.size else 0.0
        rows.append((name, diff, diff / ref if ref > 0 else diff))

    n = len(ours["d"])
    for l in range(n):
        row(f"layer {l + 1}: bottom-up d", ours["d"][l], np.transpose(theirs["d"][l], (0, 2, 1)))
        for key in ("prior_loc", "prior_scale", "posterior_loc", "posterior_scale", "z", "kl"):
            row(f"layer {l + 1}: {key.replace('_', ' ')}", ours[key][l], np.transpose(theirs[key][l], (0, 2, 1)))
    for key, value in theirs["head"].items():
        row(f"head: {key}", ours["head"][key], _head_to_tfhier_layout(value))
    row("log-likelihood per step", ours["log_lik"], theirs["log_lik"])
    row("-ELBO (batch mean)", ours["neg_elbo"], theirs["neg_elbo"])
    row("loss, linear free bits 0.5 (batch mean)", ours["loss"], theirs["loss"])
    return rows


def check(checkout, config="iamondb", batch=3, length=None, train_steps=3, seed=(7, 11), lengths=None,
          perturb=None):
    """The comparison for ``config``: ``(rows, tfhier model, their model)``.

    ``perturb``: the path of one tfhier weight to change (by 1e-3 of its scale) after the import, to show the
    comparison catches a wrong weight.
    """
    import tensorflow as tf
    import torch

    from tfhier.noise import latent_noise
    from tfhier.tools import authors_msstcn as am
    from tfhier.tools.import_authors_msstcn import build_model

    torch.set_num_threads(1)
    A = load_authors(checkout)
    length = length or CONFIGS[config]["length"]
    theirs_model, options = build_authors(A, config)
    x_theirs = authors_batch(config, batch, length, seed=3)
    if train_steps:
        train_authors(A, theirs_model, torch.as_tensor(authors_batch(config, 4, length, seed=5)), train_steps)
    state = state_numpy(theirs_model)
    ours_model = build_model(state, options)
    if perturb is not None:
        v = {w.path: w for w in ours_model.weights}[perturb]
        v.assign_add(tf.fill(v.shape, 1e-3 * (float(tf.reduce_max(tf.abs(v))) + 1e-3)))
    order = am.channel_order(options, ours_model.input_dim)
    lengths = np.full((batch,), length, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)
    x_theirs = x_theirs * mask[:, None, :]  # their data loader pads with zeros
    x_ours = np.ascontiguousarray(np.transpose(x_theirs, (0, 2, 1))[..., order])
    seed_t = tf.constant(list(seed), tf.int32)
    ours = run_tfhier(ours_model, x_ours, mask, seed_t)
    eps = []
    for l in range(len(ours_model.channels)):
        steps = ours["z"][l].shape[1]
        e = tf.transpose(latent_noise(seed_t, l, steps, batch, ours_model.latent_dims_[l]), [1, 2, 0])  # [B, Z, T_l]
        eps.append(e.numpy())
    theirs = run_authors(A, theirs_model, x_theirs, lengths, eps)
    return compare(ours, theirs), ours_model, theirs_model


def format_table(rows, tolerance=TOLERANCE) -> str:
    lines = ["| quantity | max abs diff | relative | within 1e-5 |", "|---|---:|---:|---|"]
    for name, diff, rel in rows:
        lines.append(f"| {name} | {diff:.2e} | {rel:.2e} | {'yes' if rel <= tolerance else 'NO'} |")
    return "\n".join(lines)


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--authors", required=True, help="checkout of github.com/carl-andersson/MS-STCN at afd3586")
    p.add_argument("--config", choices=sorted(CONFIGS), default="iamondb")
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--length", type=int, default=None)
    p.add_argument("--lengths", default=None, help="comma-separated lengths per sequence (default: all full)")
    p.add_argument("--train_steps", type=int, default=3)
    a = p.parse_args(argv)
    lengths = [int(v) for v in a.lengths.split(",")] if a.lengths else None
    rows, _, _ = check(a.authors, a.config, a.batch, a.length, a.train_steps, lengths=lengths)
    print(format_table(rows))
    worst = max(r[2] for r in rows)
    print(f"worst relative difference {worst:.2e} ({'within' if worst <= TOLERANCE else 'ABOVE'} {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
