"""tfhier's MS-STCN against the authors' PyTorch code (github.com/carl-andersson/MS-STCN, commit afd3586).

The comparisons run when PyTorch is installed and ``TFHIER_AUTHORS_MSSTCN`` names a checkout of their code
(docs/authors_equivalence.md says how to set both up); otherwise they are skipped (CI has no torch).
The option mapping's refusals and the torch-free parts run everywhere.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfhier.tools import authors_msstcn as am

CHECKOUT = os.environ.get("TFHIER_AUTHORS_MSSTCN")


def _authors_available():
    if not CHECKOUT:
        return "TFHIER_AUTHORS_MSSTCN is not set (a checkout of github.com/carl-andersson/MS-STCN at afd3586)"
    if not os.path.isfile(os.path.join(CHECKOUT, "model", "Model.py")):
        return f"TFHIER_AUTHORS_MSSTCN={CHECKOUT} is not a checkout of the authors' MS-STCN (no model/Model.py)"
    try:
        import torch  # noqa: F401
    except ImportError:
        return "PyTorch is not installed (pip install 'tfhier[authors]')"
    return None


SKIP = _authors_available()
needs_authors = pytest.mark.skipif(SKIP is not None, reason=f"the authors' code cannot run here: {SKIP}")


def _worst(rows):
    return max(rel for _, _, rel in rows)


def _failed(rows, tol):
    return [name for name, _, rel in rows if rel > tol]


# -- with the authors' code ----------------------------------------------------------------------------

@needs_authors
def test_iamondb_configuration_equals_authors_layer_by_layer():
    from tfhier.tools import authors_equivalence as eq

    rows, model, _ = eq.check(CHECKOUT, "iamondb", batch=3, length=64, train_steps=3)
    assert not _failed(rows, eq.TOLERANCE), eq.format_table(rows)
    names = [r[0] for r in rows]
    assert len([n for n in names if n.endswith("bottom-up d")]) == 5 and "head: pen_logit" in names
    assert model.hparams["stack_input"] == "first_block" and model.hparams["head_components"] == 1


@needs_authors
def test_iamondb_ragged_batch_equals_authors():
    """Lengths that are no multiple of the downsampling factors: their per-block padding and per-layer masking."""
    from tfhier.tools import authors_equivalence as eq

    rows, _, _ = eq.check(CHECKOUT, "iamondb", batch=3, length=61, lengths=[61, 53, 37], train_steps=2)
    assert not _failed(rows, eq.TOLERANCE), eq.format_table(rows)


@needs_authors
def test_blizzard_fw200_configuration_equals_authors_layer_by_layer():
    from tfhier.tools import authors_equivalence as eq

    rows, model, _ = eq.check(CHECKOUT, "blizzard", batch=2, length=40, train_steps=2)
    assert not _failed(rows, eq.TOLERANCE), eq.format_table(rows)
    assert model.hparams["gen_post"] == "conditional" and model.hparams["strides"] == [1, 5, 5, 4, 1]


@needs_authors
@pytest.mark.parametrize("weight", ["bottom_up_3/block_1/gate_conv/kernel", "posterior_4/bias",
                                    "top_down_g_2/block_0/skip_proj/kernel", "head/proj/bias"])
def test_a_perturbed_weight_fails_the_check(weight):
    from tfhier.tools import authors_equivalence as eq

    rows, _, _ = eq.check(CHECKOUT, "iamondb", batch=2, length=32, train_steps=0, perturb=weight)
    assert _failed(rows, eq.TOLERANCE), f"changing {weight} went unnoticed:\n{eq.format_table(rows)}"


@needs_authors
def test_imported_run_loads_and_scores_their_loss(tmp_path):
    """Their model trained a few steps with their loss, saved as their ModelState.save_model does, imported
    with the tool: tfhier.load_run rebuilds it, and its -ELBO with tfhier's noise injected into their code is
    their calc_ll_estimate."""
    import tensorflow as tf
    import torch

    import tfhier
    from tfhier.models.base import latent_noise
    from tfhier.tools import authors_equivalence as eq
    from tfhier.tools.import_authors_msstcn import import_run

    A = eq.load_authors(CHECKOUT)
    theirs, options = eq.build_authors(A, "iamondb")
    eq.train_authors(A, theirs, torch.as_tensor(eq.authors_batch("iamondb", 4, 64, seed=5)), 3)
    ckpt = tmp_path / "model.pt"
    torch.save({"epoch": 3, "model": theirs.state_dict(), "freebits": 0.5, "annealing": 1.0}, ckpt)
    (tmp_path / "options.txt").write_text(json.dumps({"dataset": "iamondb", "model_options": options}))
    run_dir = tmp_path / "run"
    import_run(str(ckpt), str(tmp_path / "options.txt"), str(run_dir), dataset="hershey")
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "best").is_dir()
    run = tfhier.load_run(str(run_dir))  # R/best, as the import writes it
    assert run.step == 3 and run.model.hparams["data_shift"]

    x_theirs = eq.authors_batch("iamondb", 2, 48, seed=9)
    lengths = np.array([48, 41])
    mask = (np.arange(48)[None] < lengths[:, None]).astype(np.float32)
    x_theirs = x_theirs * mask[:, None]
    x = np.ascontiguousarray(np.transpose(x_theirs, (0, 2, 1))[..., [1, 2, 0]])
    seed = tf.constant([3, 1], tf.int32)
    scores = run.model.score(x, mask, seed=seed)
    model = run.model
    eps = [tf.transpose(latent_noise(seed, l, int(np.ceil(48 / f)), 2, model.latent_dims_[l]), [1, 2, 0]).numpy()
           for l, f in enumerate(model.factors)]
    out = eq.run_authors(A, theirs, x_theirs, lengths, eps)
    ours = float(np.mean(-scores["elbo"]))
    assert abs(ours - out["neg_elbo"]) <= 1e-5 * abs(out["neg_elbo"]), (ours, out["neg_elbo"])


# -- everywhere ----------------------------------------------------------------------------------------

IAM_LAYER = {'latent_size': 8, 'size_multiplier': 8, 'bypass_frac': 1.0, 'ar_conn_frac': 1, 'stride': 1,
             'inf_post_options': {'module': "SkipConnection1D"},
             'inf_pre_options': {'module': "Wavenet", 'kernel_size': 2, 'dilation': (1, 1, 1, 1)},
             'gen_pre_options': {'module': "Wavenet", 'kernel_size': 1, 'dilation': (1, 1)},
             'gen_post_options': {'module': "Wavenet", 'kernel_size': 1, 'dilation': (1, 1)},
             'ar_conn_options': {'module': "SkipConnection1D"}}
IAM = {'vae_options': {'default_ar_layer': IAM_LAYER,
                       'ar_layers_options': [{}, {'latent_size': 8, 'stride': 2}, {'latent_size': 8, 'stride': 2},
                                             {'latent_size': 4, 'stride': 2},
                                             {'latent_size': 2, 'stride': 1, 'inf_pre_options':
                                              {'module': "Wavenet", 'kernel_size': 2, 'dilation': (1, 2, 4, 8)}}],
                       'default_fc_layer': {}, 'fc_layers_options': []},
       'pred_options': {"type": "combination", "sub_dists": [{"type": "bernoulli", "output_size": 1},
                                                             {"type": "normal", "output_size": 2}]},
       'nn_normalization': "", 'data_normalize': True, "dimensions": 1}


def test_their_iamondb_options_map_to_the_documented_tfhier_options():
    config = am.tfhier_config({"model_options": IAM}, 3, ([0.1, 0.2, 0.05], [0.7, 0.8, 1.0]))
    assert config["channels"] == [64, 64, 64, 32, 16] and config["latent_dims"] == [8, 8, 8, 4, 2]
    assert config["strides"] == [1, 2, 2, 2, 1] and config["bu_dilations"][-1] == [1, 2, 4, 8]
    assert (config["head"], config["head_components"], config["mixture"]) == ("handwriting", 1, "per_dim")
    assert (config["gen_post"], config["downsampling"], config["upsampling"]) == ("plain", "sum_pool", "repeat")
    assert (config["stack_input"], config["resample_padding"]) == ("first_block", "block")
    assert am.channel_order(IAM, 3) == [1, 2, 0]


@pytest.mark.parametrize("change, named", [
    (lambda o: o["vae_options"]["default_ar_layer"].update(bypass_frac=0.5), "bypass_frac"),
    (lambda o: o.update(nn_normalization="batchnorm"), "nn_normalization"),
    (lambda o: o["vae_options"]["ar_layers_options"][2].update(
        gen_pre_options={'module': "Wavenet", 'kernel_size': 1, 'dilation': (1, 1, 1)}), "gen_post_options"),
    (lambda o: o["vae_options"].update(fc_layers_options=[{}]), "fc_layers_options"),
    (lambda o: o.update(pred_options={"type": "bernoulli_mixture", "n_components": 2}), "pred_options"),
    (lambda o: o["vae_options"]["ar_layers_options"][1].update(latent_size=0), "latent_size"),
])
def test_options_tfhier_cannot_represent_are_refused_by_name(change, named):
    import copy

    options = copy.deepcopy(IAM)
    change(options)
    with pytest.raises(am.AuthorsOptionError, match=named):
        am.tfhier_config(options, 3, ([0.0] * 3, [1.0] * 3))


def test_head_rows_of_their_mixture_layout():
    # theirs (gmm, D=2, n=2): [mu(d*n+k) x4, s x4, logits x2]; tfhier: [logits(2), k0: mu(2) s(2), k1: mu(2) s(2)]
    assert am.head_rows("gmm", 2, 10, 2) == [8, 9, 0, 2, 4, 6, 1, 3, 5, 7]
    assert am.head_rows("handwriting", 1, 6, 3) == [0, -1, 1, 2, 3, 4]


def test_importing_tfhier_does_not_import_torch_and_the_tool_names_torch_when_missing(tmp_path):
    code = ("import sys, tfhier, tfhier.tools.authors_msstcn, tfhier.models, tfhier.api\n"
            "assert 'torch' not in sys.modules, 'tfhier imported torch'\n"
            "sys.modules['torch'] = None\n"  # as if PyTorch were not installed
            "from tfhier.tools.import_authors_msstcn import read_state, ImportError_\n"
            "try:\n    read_state('x.pt')\nexcept ImportError_ as e:\n    print(e)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "needs PyTorch" in out.stdout and "tfhier[authors]" in out.stdout
