"""Models own their hyperparameters: flags, --model_config, config.json, and old runs."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from tfhier import training
from tfhier.data import load_dataset
from tfhier.models import MODELS, build_model, hparams
from test_configs import load_train_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fv():
    load_train_module()
    values = flags.FLAGS
    values.unparse_flags()
    yield values
    values.unparse_flags()


def parse(fv, *args):
    fv(["train.py", *args])
    return load_train_module()


def test_help_names_the_models_of_each_flag_and_their_defaults(fv):
    users = sorted(name for name, cls in MODELS.items() if "latent_dims" in {h.name for h in cls.HPARAMS})
    help_text = fv["latent_dims"].help
    assert help_text.startswith(f"[{', '.join(users)}]") and "wavenet" not in help_text
    assert "msstcn: 8,8,8,4,2" in help_text and "stcn: 32,16,8,4,2" in help_text
    assert fv["dense_blocks"].help.startswith("[wavenet_dense]")
    assert fv["strides"].help.startswith("[msstcn]")
    # The model flags are train.py's own (so flags.cfg records them).
    train = load_train_module()
    assert "channels" in {f.name for f in fv.get_key_flags_for_module(train.FLAGS_MODULE)}


def test_a_flag_of_another_model_is_an_error(fv):
    train = parse(fv, "--model=wavenet", "--latent_dims=4,2")
    with pytest.raises(hparams.HParamError, match=r"--latent_dims is a flag of msstcn, .*stcn_dense.*; "
                                                  r"--model=wavenet does not use it"):
        train.model_config_from_flags(3, "handwriting")


def test_flags_given_in_a_flagfile_count_as_given(fv, tmp_path):
    cfg = tmp_path / "x.cfg"
    cfg.write_text("--model=stcn\n--strides=1,2\n")
    train = parse(fv, f"--flagfile={cfg}")
    with pytest.raises(hparams.HParamError, match="--strides is a flag of msstcn"):
        train.model_config_from_flags(3, "handwriting")


def test_model_config_json_overrides_flags_and_fills_from_defaults(fv, tmp_path):
    train = parse(fv, "--model=stcn", "--channels=8,8", "--latent_dims=2,2",
                  '--model_config={"latent_dims": [3, 1], "shared_latent_nets": false}')
    config = train.model_config_from_flags(88, "binary")
    assert config == {"channels": [8, 8], "latent_dims": [3, 1], "shared_latent_nets": False, "head": "bernoulli"}
    full = build_model("stcn", 88, config).get_config()
    assert full["dilations"] == [1, 2, 4, 8, 16, 32] and full["head_components"] == 10
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"channels": [4]}))
    fv.unparse_flags()
    train = parse(fv, "--model=wavenet", f"--model_config={path}")
    assert train.model_config_from_flags(3, "handwriting")["channels"] == [4]


@pytest.mark.parametrize("arg, message", [
    ('--model_config={"no_such": 1}', "stcn has no hyperparameter 'no_such'"),
    ("--model_config={not json", "not valid JSON"),
    ("--model_config=[1, 2]", "neither a JSON object nor a file"),
    ('--model_config={"channels": "a,b"}', "channels must be a comma-separated list of integers"),
    ("--channels=8,x", "--channels must be a comma-separated list of integers, got '8,x'"),
    ("--bu_dilations=1,2;;3", None),
])
def test_bad_values_name_the_flag(fv, arg, message):
    train = parse(fv, "--model=stcn" if "bu_dilations" not in arg else "--model=msstcn", arg)
    if message is None:
        with pytest.raises(ValueError, match="bu_dilations"):
            train.model_config_from_flags(3, "handwriting")
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        train.model_config_from_flags(3, "handwriting")


def test_head_auto_is_the_data_kind_default(fv):
    train = parse(fv, "--model=wavenet")
    assert train.model_config_from_flags(88, "binary") == {"head": "bernoulli"}
    with pytest.raises(ValueError, match="head='auto'"):
        build_model("wavenet", 3, {"head": "auto"})


def test_train_py_has_no_model_specific_branch():
    """train.py names a model only as --model's default; adding a model touches its module, the registry and
    the contract test's table."""
    text = (REPO / "tfhier" / "cli" / "train.py").read_text()
    for name in MODELS:
        for line in text.splitlines():
            if re.search(rf'["\']{name}["\']', line):
                assert line.startswith('flags.DEFINE_enum("model", "msstcn"'), line


def test_config_json_holds_get_config_and_an_old_run_still_resumes(tmp_path):
    """A config.json written before a hyperparameter existed (and with the flag dict, not get_config) still
    identifies its run: a resume with today's defaults is accepted, another value is refused."""
    data = load_dataset("hershey", seed=0, num_lines=8)
    model = build_model("msstcn", 3, dict(channels=[8, 8], latent_dims=[2, 2], strides=[1, 2],
                                          bu_dilations=[[1], [1]], td_blocks=1))
    config = training.run_config(model, data)
    assert config["model_config"] == model.get_config()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = json.loads(json.dumps(config))
    for key in ("kernel_size", "gen_post", "input_dim"):  # as if written by an older tfhier
        old["model_config"].pop(key)
    (run_dir / "config.json").write_text(json.dumps(old))
    assert training.check_run_dir(str(run_dir), config) is True
    other = build_model("msstcn", 3, {**model.get_config(), "gen_post": "plain"})
    with pytest.raises(training.RunDirError, match="gen_post: saved 'conditional', now 'plain'"):
        training.check_run_dir(str(run_dir), training.run_config(other, data))


def test_hparam_kinds_parse_and_reject():
    h = hparams.HParam("x", "int_lists", [[1]], "x")
    assert h.parse("1,2;3", "--x") == [[1, 2], [3]] and h.parse([[1], [2, 3]], "--x") == [[1], [2, 3]]
    assert h.format([[1, 2], [3]]) == "1,2;3"
    with pytest.raises(hparams.HParamError, match="--x must be lists of integers"):
        h.parse("1,a", "--x")
    f = hparams.HParam("f", "float", 1.0, "f")
    for bad in ("nan", "inf", True):
        with pytest.raises(hparams.HParamError, match="--f must be a number"):
            f.parse(bad, "--f")
    b = hparams.HParam("b", "bool", True, "b")
    assert b.parse("false", "--b") is False and b.parse(True, "--b") is True
    i = hparams.HParam("i", "int", 1, "i")
    assert i.parse(3.0, "--i") == 3
    with pytest.raises(hparams.HParamError):
        i.parse(2.5, "--i")
    assert np.array_equal(hparams.HParam("l", "ints", [], "l").parse("", "--l"), [])
