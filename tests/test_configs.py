"""Every flagfile in configs/ parses with train.py's flags and builds its model."""

from pathlib import Path

import pytest
from absl import flags

from tfhier.data import DEFAULT_HEADS, dataset_shape
from tfhier.models import build_model, config_from_flags

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.cfg"))



def load_train_module():
    import tfhier.cli.train

    return tfhier.cli.train


def test_configs_exist():
    assert {"demo.cfg", "iam.cfg"} <= {c.name for c in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_builds(config):
    train = load_train_module()
    fv = flags.FLAGS
    fv.unparse_flags()
    fv(["train.py", f"--flagfile={config}"])
    try:
        kind, dim = dataset_shape(fv.dataset, fv.frame_width)
        model_config = train.model_config_from_flags(dim, kind)
        assert model_config["head"] in {DEFAULT_HEADS[kind], fv.head}
        if "timit" in config.name or config.name.startswith("speech"):
            return  # 10-15 M parameters: building the weights is slow and checks nothing more
        model = build_model(fv.model, dim, model_config).build_for_data()
        assert model.count_params() > 0
    finally:
        fv.unparse_flags()


def test_iam_config_is_the_paper_setting():
    train = load_train_module()
    fv = flags.FLAGS
    fv.unparse_flags()
    fv(["train.py", f"--flagfile={REPO / 'configs' / 'iam.cfg'}", "--seed=3"])
    try:
        cfg = build_model("msstcn", 3, train.model_config_from_flags(3, "handwriting")).get_config()
        assert cfg["channels"] == [64] * 5 and cfg["latent_dims"] == [8, 8, 8, 4, 2]
        assert cfg["strides"] == [1, 2, 2, 2, 1]
        assert cfg["bu_dilations"] == [[1, 1, 1, 1]] * 4 + [[1, 2, 4, 8]]
        assert cfg["td_blocks"] == 2 and cfg["head"] == "handwriting" and cfg["head_components"] == 10
        assert fv.learning_rate == 5e-4 and fv.free_bits == 0.5 and fv.free_bits_halving_steps == 300_000
        assert fv.seed == 3  # later flags override the flagfile
    finally:
        fv.unparse_flags()
