"""The MS-STCN authors' PyTorch model (github.com/carl-andersson/MS-STCN, commit afd3586) as a tfhier MS-STCN.

Two functions, numpy only (no torch: the state dict arrives as numpy arrays):

* :func:`tfhier_config` maps the authors' ``model_options`` (their
  ``default_options.py`` layout) to the tfhier MS-STCN hyperparameters that
  compute the same function, or raises :class:`AuthorsOptionError` naming the
  option tfhier cannot represent;
* :func:`assign_weights` copies every tensor of their ``state_dict`` into the
  built tfhier model and checks that every tfhier weight was set.

How their modules map (``model/VariationalLayers/AutoregressiveLadderLayer.py``,
``model/torch_ext_causal_conv.py``; ladder layer l is
``vae.first_ladder_layer.`` + ``sublayer.`` * l):

================================  =======================================
theirs                            tfhier
================================  =======================================
``inf_pre`` (Wavenet, k=2)        ``bottom_up_{l+1}`` (eq. 8)
``ar_conn`` (identity) + shift    ``Delay``
``gen_pre`` (Wavenet, k=1)        ``top_down_h_{l+1}`` (eq. 9)
``latent_p`` / ``latent_q``       ``prior_{l+1}`` / ``posterior_{l+1}``
``gen_post`` (Wavenet or          ``top_down_g_{l+1}`` (eq. 12, plain or
ConditionedWavenet, upscale)      conditional, upsampling ``repeat``)
``pred`` (1x1 conv)               ``head`` (its ``proj``)
``normalizer`` buffers            ``data_shift`` / ``data_scale``
================================  =======================================

Layouts: a torch ``Conv1d`` weight ``[out, in, k]`` is a tfhier kernel
``[k, in, out]`` (tap 0 the oldest in both); their gated activation is
``tanh(second half) * sigmoid(first half)`` (``AttentionFunction``), tfhier's
``tanh(first half) * sigmoid(second half)``, so the halves of every gate
convolution swap; their posterior reads ``[d, h]``, tfhier's ``[h, d]``; a
block's bias-free residual output plus the biased 1x1 identity projection is
tfhier's biased residual output plus a bias-free projection (the same sum).
Their IAM-OnDB channels are ``[pen, dx, dy]``, tfhier's ``[dx, dy, pen]``.
"""

from __future__ import annotations

import copy
import math

import numpy as np

REPO_URL = "https://github.com/carl-andersson/MS-STCN"
REPO_COMMIT = "afd3586"

#: tfhier data channel i is their channel PERMUTATION[kind][i]
HANDWRITING_ORDER = [1, 2, 0]


class AuthorsOptionError(ValueError):
    """Their options (or state dict) describe a model tfhier cannot represent; the message names the option."""


# -- options -------------------------------------------------------------------------------------------------

def model_options_of(options: dict) -> dict:
    """Their ``model_options`` from a whole options dict (``options.txt`` of a run) or the model options themselves."""
    if not isinstance(options, dict):
        raise AuthorsOptionError(f"the options must be a dict, got {type(options).__name__}")
    if "model_options" in options:
        options = options["model_options"]
    if "vae_options" not in options or "pred_options" not in options:
        raise AuthorsOptionError("the options hold no 'vae_options' and 'pred_options' (expected the authors' "
                                 "model_options, e.g. default_model_options_iamondb, or a whole options dict)")
    return options


def layer_options(model_options: dict) -> list:
    """Their per-layer options, each ``{**default_ar_layer, **layer}`` as ``MultiscaleVAE`` merges them."""
    vae = model_options["vae_options"]
    return [{**vae.get("default_ar_layer", {}), **layer} for layer in vae.get("ar_layers_options", [])]


def _size(layer):
    size = layer.get("size")
    return int(size) if size is not None else int(layer["latent_size"]) * int(layer.get("size_multiplier", 8))


def _module(opts, name):
    return (opts or {}).get("module")


def head_of(pred_options: dict, n_channels: int):
    """``(head, components, kind)`` for their ``pred_options``; kind 'handwriting' means the channel order differs."""
    kind = pred_options.get("type")
    if kind == "combination":
        subs = pred_options.get("sub_dists", [])
        types = [(s.get("type"), s.get("output_size")) for s in subs]
        if n_channels == 3 and types == [("bernoulli", 1), ("normal", 2)]:
            return "handwriting", 1, "handwriting"
        if n_channels == 3 and types == [("bernoulli", 1), ("normal_mixture", 2)]:
            return "handwriting", int(subs[1]["n_components"]), "handwriting"
        raise AuthorsOptionError(f"pred_options: tfhier represents a combination only as [bernoulli(1), normal(2) or "
                                 f"normal_mixture(2)] on 3 channels (IAM-OnDB), got {types}")
    if kind == "normal":
        return "gaussian", 1, "plain"
    if kind == "normal_mixture":
        return "gmm", int(pred_options["n_components"]), "plain"
    if kind == "bernoulli":
        return "bernoulli", 1, "plain"
    raise AuthorsOptionError(f"pred_options.type={kind!r}: tfhier has no head for it (it has normal, "
                             f"normal_mixture, bernoulli and the IAM-OnDB combination)")


def tfhier_config(options: dict, n_channels: int, normaliser=None) -> dict:
    """The tfhier MS-STCN hyperparameters computing what their model with ``options`` computes.

    ``normaliser``: ``(shift, scale)`` lists in tfhier's channel order when their ``data_normalize`` is on
    (from :func:`normaliser_of`). Raises :class:`AuthorsOptionError` naming what tfhier cannot represent.
    """
    mo = model_options_of(copy.deepcopy(options))
    for key in ("positional_encoding",):
        if mo.get(key):
            raise AuthorsOptionError(f"model_options.{key}={mo[key]!r}: not in tfhier's MS-STCN")
    if mo.get("nn_normalization") not in (None, "", "none", "weightnorm"):
        raise AuthorsOptionError(f"model_options.nn_normalization={mo['nn_normalization']!r}: tfhier's MS-STCN has "
                                 f"no batch normalisation (weightnorm is folded into the weights on import)")
    if int(mo.get("dimensions", 1)) != 1:
        raise AuthorsOptionError(f"model_options.dimensions={mo['dimensions']}: tfhier models sequences (1)")
    vae = mo["vae_options"]
    if vae.get("fc_layers_options"):
        raise AuthorsOptionError("vae_options.fc_layers_options: fully connected ladder layers are not in "
                                 "tfhier's MS-STCN")
    layers = layer_options(mo)
    if not layers:
        raise AuthorsOptionError("vae_options.ar_layers_options is empty")
    channels, latents, strides, dilations = [], [], [], []
    kernel, td = set(), set()
    gen_post = set()
    for i, layer in enumerate(layers):
        where = f"vae_options.ar_layers_options[{i}]"
        if int(layer.get("latent_size", 0)) < 1:
            raise AuthorsOptionError(f"{where}.latent_size must be >= 1 (tfhier has a latent in every layer)")
        if float(layer.get("bypass_frac", 1.0)) != 1.0:
            raise AuthorsOptionError(f"{where}.bypass_frac={layer['bypass_frac']}: tfhier passes all of h (1.0)")
        if float(layer.get("ar_conn_frac", 1.0)) != 1.0:
            raise AuthorsOptionError(f"{where}.ar_conn_frac={layer['ar_conn_frac']}: tfhier delays all of d (1.0)")
        for name in ("inf_post_options", "ar_conn_options"):
            if _module(layer.get(name), name) != "SkipConnection1D":
                raise AuthorsOptionError(f"{where}.{name}: tfhier has the identity (SkipConnection1D) there")
        inf = layer.get("inf_pre_options") or {}
        if inf.get("module") != "Wavenet":
            raise AuthorsOptionError(f"{where}.inf_pre_options.module={inf.get('module')!r}: tfhier's bottom-up "
                                     f"network is a Wavenet")
        for name, modules in (("gen_pre_options", ("Wavenet",)), ("gen_post_options", ("Wavenet", "ConditionedWavenet"))):
            o = layer.get(name) or {}
            if o.get("module") not in modules:
                raise AuthorsOptionError(f"{where}.{name}.module={o.get('module')!r}: tfhier has {' or '.join(modules)}")
            if int(o.get("kernel_size", 1)) != 1 or any(int(d) != 1 for d in o.get("dilation", (1,))):
                raise AuthorsOptionError(f"{where}.{name}: tfhier's top-down stacks are 1x1 (kernel_size 1, "
                                         f"dilations 1), got {o}")
            td.add(len(o.get("dilation", (1,))))
        gen_post.add("conditional" if layer["gen_post_options"]["module"] == "ConditionedWavenet" else "plain")
        kernel.add(int(inf.get("kernel_size", 2)))
        channels.append(_size(layer))
        latents.append(int(layer["latent_size"]))
        strides.append(int(layer.get("stride", 1)))
        dilations.append([int(d) for d in inf.get("dilation", (1,))])
    if len(kernel) != 1:
        raise AuthorsOptionError(f"inf_pre_options.kernel_size differs between layers ({sorted(kernel)}); tfhier has "
                                 f"one --kernel_size")
    if len(td) != 1:
        raise AuthorsOptionError(f"gen_pre_options / gen_post_options have different numbers of blocks ({sorted(td)}); "
                                 f"tfhier has one --td_blocks")
    if len(gen_post) != 1:
        raise AuthorsOptionError("gen_post_options.module differs between layers; tfhier has one --gen_post")
    head, components, _ = head_of(mo["pred_options"], n_channels)
    config = {
        "head": head, "head_components": components, "mixture": "per_dim" if head in ("gmm", "handwriting") else "joint",
        "channels": channels, "latent_dims": latents, "strides": strides, "bu_dilations": dilations,
        "td_blocks": td.pop(), "kernel_size": kernel.pop(), "gen_post": gen_post.pop(),
        "downsampling": "sum_pool", "upsampling": "repeat", "latents": "normal", "stack_input": "first_block",
        "resample_padding": "block",
        "data_shift": [], "data_scale": [],
    }
    if mo.get("data_normalize"):
        if normaliser is None:
            raise AuthorsOptionError("model_options.data_normalize is on but the state dict holds no normalizer "
                                     "buffers")
        config["data_shift"], config["data_scale"] = [float(v) for v in normaliser[0]], [float(v) for v in normaliser[1]]
    return config


def channel_order(options: dict, n_channels: int) -> list:
    """tfhier channel i is their channel ``channel_order(...)[i]``."""
    _, _, kind = head_of(model_options_of(options)["pred_options"], n_channels)
    return list(HANDWRITING_ORDER) if kind == "handwriting" else list(range(n_channels))


def n_channels_of(state: dict) -> int:
    """Their data channels: the input channels of the first bottom-up convolution."""
    key = "vae.first_ladder_layer.inf_pre.layers.0.layers.0.conv.weight"
    w = _weight(state, key[: -len(".weight")])
    return int(w.shape[1])


def normaliser_of(state: dict, options: dict, n_channels: int):
    """``(shift, scale)`` in tfhier's channel order from their ``normalizer`` buffers, or None without them."""
    mo = model_options_of(options)
    if not mo.get("data_normalize"):
        return None
    kind = mo["pred_options"]["type"]
    if kind == "combination":
        shift, scale = [], []
        for i, sub in enumerate(mo["pred_options"]["sub_dists"]):
            prefix = f"normalizer.normalizers.{i}."
            off = _array(state, prefix + "offset").reshape(-1)
            shift += list(off)
            scale += list(_array(state, prefix + "scale").reshape(-1)) if sub["type"].startswith("normal") else \
                [1.0] * len(off)
    else:
        shift = list(_array(state, "normalizer.offset").reshape(-1))
        scale = list(_array(state, "normalizer.scale").reshape(-1)) if kind.startswith("normal") else \
            [1.0] * len(shift)
    order = channel_order(options, n_channels)
    return [float(shift[c]) for c in order], [float(scale[c]) for c in order]


# -- weights -------------------------------------------------------------------------------------------------

def _array(state, key):
    if key not in state:
        raise AuthorsOptionError(f"the state dict has no {key!r} (is it a state dict of this configuration?)")
    return np.asarray(state[key], dtype=np.float32)


def _weight(state, prefix):
    """A conv's weight ``[out, in, k]`` (weight norm folded: ``g * v / ||v||``)."""
    if prefix + ".weight" in state:
        return _array(state, prefix + ".weight")
    if prefix + ".weight_v" in state:
        v, g = _array(state, prefix + ".weight_v"), _array(state, prefix + ".weight_g")
        return g * v / np.sqrt(np.sum(v ** 2, axis=(1, 2), keepdims=True))
    raise AuthorsOptionError(f"the state dict has no {prefix + '.weight'!r} (is it a state dict of this "
                             f"configuration?)")


def _kernel(w):
    """torch ``[out, in, k]`` -> tfhier ``[k, in, out]``."""
    return np.ascontiguousarray(np.transpose(w, (2, 1, 0)))


def _swap_halves(x, axis=-1):
    a, b = np.split(x, 2, axis=axis)
    return np.concatenate([b, a], axis=axis)


class _Assigner:
    def __init__(self, state):
        self.state = state
        self.used = set()
        self.set = {}

    def get(self, key):
        self.used.add(key)
        return _array(self.state, key)

    def weight(self, prefix):
        self.used.update({prefix + ".weight", prefix + ".weight_v", prefix + ".weight_g"})
        return _weight(self.state, prefix)

    def has(self, prefix):
        return prefix + ".weight" in self.state or prefix + ".weight_v" in self.state

    def assign(self, variable, value):
        value = np.asarray(value, np.float32)
        if tuple(variable.shape) != value.shape:
            raise AuthorsOptionError(f"{variable.path}: shape {tuple(variable.shape)} but their tensor gives "
                                     f"{value.shape}")
        variable.assign(value)
        self.set[variable.path] = True


def _skip_prefix(block_prefix, state):
    """Their identity path's 1x1 conv in a block (plain, or inside a Down/UpscaleConv1D), or None."""
    for p in (".skip.skip.conv", ".skip.skip.conv.skip.conv"):
        if block_prefix + p + ".weight" in state or block_prefix + p + ".weight_v" in state:
            return block_prefix + p
    return None


def _assign_block(a, block, prefix, in_perm=None):
    """Their ``WavenetBlock`` / ``ConditionedWavenetBlock`` at ``prefix`` into a tfhier WaveNet block."""
    gate_w = a.weight(prefix + ".layers.0.conv")
    skip = _skip_prefix(prefix, a.state)
    skip_w = a.weight(skip) if skip else None
    if in_perm is not None:
        gate_w = gate_w[:, in_perm]
        skip_w = None if skip_w is None else skip_w[:, in_perm]
    a.assign(block.gate_conv.kernel, _swap_halves(_kernel(gate_w)))
    a.assign(block.gate_conv.bias, _swap_halves(a.get(prefix + ".layers.0.conv.bias")))
    a.assign(block.out_conv.kernel, _kernel(a.weight(prefix + ".layers.2.conv")))
    if (skip is None) != (block.skip_proj is None):
        raise AuthorsOptionError(f"{prefix}: their block {'has no' if skip is None else 'has an'} identity projection, "
                                 f"{block.path} {'has one' if skip is None else 'has none'}")
    skip_b = a.get(skip + ".bias") if skip is not None and skip + ".bias" in a.state else None
    if skip_w is not None:
        a.assign(block.skip_proj.kernel, _kernel(skip_w))
    if block.out_conv.bias is not None:  # their identity projection's bias moves to the residual output
        a.assign(block.out_conv.bias, skip_b if skip_b is not None else np.zeros(block.out_conv.bias.shape))
    elif block.skip_proj is not None and block.skip_proj.bias is not None:
        a.assign(block.skip_proj.bias, skip_b)


def _assign_stack(a, stack, prefix, in_perm=None):
    n = len(stack.blocks)
    if f"{prefix}.layers.{n}.layers.0.conv.weight" in a.state or not a.has(f"{prefix}.layers.{n - 1}.layers.0.conv"):
        raise AuthorsOptionError(f"{prefix}: their stack does not have {n} blocks")
    if stack.in_proj is not None:
        raise AuthorsOptionError(f"{stack.path}: has an input projection (build with stack_input='first_block')")
    for i, block in enumerate(stack.blocks):
        _assign_block(a, block, f"{prefix}.layers.{i}", in_perm if i == 0 else None)


def head_rows(head, components, param_size, dim) -> list:
    """Row ``r`` of tfhier's head projection is their row ``head_rows(...)[r]`` (-1: a zero row)."""
    n = components
    if head == "handwriting":  # theirs: [pen, then normal: mu(2), s(2) | mixture: mu(2n: d*n+k), s(2n), logits(n)]
        if n == 1:
            return [0, -1, 1, 2, 3, 4]
        rows = [0] + [1 + 4 * n + k for k in range(n)]
        for k in range(n):
            rows += [1 + d * n + k for d in range(2)] + [1 + 2 * n + d * n + k for d in range(2)]
        return rows
    if head == "gmm":  # theirs: [mu (D*n: d*n+k), s (D*n), logits(n)]
        rows = [2 * dim * n + k for k in range(n)]
        for k in range(n):
            rows += [d * n + k for d in range(dim)] + [dim * n + d * n + k for d in range(dim)]
        return rows
    return list(range(param_size))


def assign_weights(model, state: dict, options: dict) -> None:
    """Copies their ``state`` (name -> numpy array) into the built tfhier ``model`` (from :func:`tfhier_config`);
    raises :class:`AuthorsOptionError` when a weight is missing on either side."""
    a = _Assigner(state)
    n_channels = model.input_dim
    order = channel_order(options, n_channels)
    n = len(model.channels)
    for l in range(n):
        p = "vae.first_ladder_layer" + ".sublayer" * l
        _assign_stack(a, model.bottom_up[l], p + ".inf_pre", order if l == 0 else None)
        _assign_stack(a, model.top_down_h[l], p + ".gen_pre")
        _assign_stack(a, model.top_down_g[l], p + ".gen_post")
        a.assign(model.prior_proj[l].kernel, _kernel(a.weight(p + ".latent_p.layer.layers.0.conv")))
        a.assign(model.prior_proj[l].bias, a.get(p + ".latent_p.layer.layers.0.conv.bias"))
        q = a.weight(p + ".latent_q.layer.layers.0.conv")  # their input [d, h]; tfhier's [h, d]
        c_d = model.channels[l]
        a.assign(model.posterior_proj[l].kernel, _kernel(np.concatenate([q[:, c_d:], q[:, :c_d]], axis=1)))
        a.assign(model.posterior_proj[l].bias, a.get(p + ".latent_q.layer.layers.0.conv.bias"))
    if "vae.first_ladder_layer" + ".sublayer" * n + ".inf_pre.layers.0.layers.0.conv.weight" in state:
        raise AuthorsOptionError(f"the state dict has more than {n} ladder layers")
    head = model.head
    w, b = a.weight("pred.layer.layers.0.conv")[:, :, 0], a.get("pred.layer.layers.0.conv.bias")
    rows = head_rows(model.hparams["head"], head.components if hasattr(head, "components") else 1,
                     head.param_size, n_channels)
    if len(rows) != head.param_size or max(rows) + 1 != w.shape[0]:
        raise AuthorsOptionError(f"pred.layer: their head has {w.shape[0]} outputs, tfhier's {head.param_size}")
    kw = np.stack([w[r] if r >= 0 else np.zeros(w.shape[1], np.float32) for r in rows], axis=1)
    kb = np.array([b[r] if r >= 0 else 0.0 for r in rows], np.float32)
    a.assign(head.proj.kernel, kw[None])
    a.assign(head.proj.bias, kb)
    missing = [v.path for v in model.weights if v.path not in a.set]
    if missing:
        raise AuthorsOptionError(f"no tensor of theirs for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    fixed = ("downscale_weight", "upscale_weight", "normalizer.")
    unused = [k for k in state if k not in a.used and not any(f in k for f in fixed)]
    if unused:
        raise AuthorsOptionError(f"their tensors {unused[:5]} have no place in the tfhier model")
    _check_fixed(state)


def _check_fixed(state):
    """Their resampling buffers must be the fixed sum-pool (1/sqrt(S)) and repetition (1) kernels."""
    for key, value in state.items():
        v = np.asarray(value)
        if key.endswith("downscale_weight") and not np.allclose(v, 1.0 / math.sqrt(v.shape[-1])):
            raise AuthorsOptionError(f"{key} is not the fixed sum-pool kernel 1/sqrt(S)")
        if key.endswith("upscale_weight") and not np.allclose(v, 1.0):
            raise AuthorsOptionError(f"{key} is not the fixed repetition kernel")
