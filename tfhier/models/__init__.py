"""The models, by the name ``train.py --model`` knows them (the registry).

Adding a model: write its module (a :class:`SequenceModel` subclass with
``NAME``, ``HPARAMS`` and ``forward``), add one line to :data:`MODELS`, and one
tiny configuration to ``tests/test_model_contract.py``.  ``train.py``,
evaluation, sampling and export work through the common interface only.
"""

from tfhier.models import hparams
from tfhier.models.base import ModelOutput, SequenceModel
from tfhier.models.msstcn import MSSTCN
from tfhier.models.srnn import SRNN
from tfhier.models.stcn import STCN, STCNDense
from tfhier.models.storn import VOSP, VRAE
from tfhier.models.vhrnn import VHRNN
from tfhier.models.vrnn import VRNN
from tfhier.models.wavenet import WaveNetDense, WaveNetModel

MODELS = {cls.NAME: cls for cls in (MSSTCN, WaveNetModel, WaveNetDense, STCN, STCNDense, VRNN, SRNN, VHRNN, VOSP,
                                    VRAE)}


def model_class(name):
    if name not in MODELS:
        raise ValueError(f"--model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name]


def build_model(name, input_dim, config: dict) -> SequenceModel:
    """The model ``name`` for steps of size ``input_dim`` from its config: ``get_config()`` of an earlier
    model (as a run's config.json stores it) or hyperparameters (missing ones take the model's defaults)."""
    config = {k: v for k, v in dict(config).items() if k != "input_dim"}
    return model_class(name)(input_dim, **config)


def stored_model_config(name, model_config: dict) -> dict:
    """A run's stored ``model_config`` completed with the values it was trained with for hyperparameters added
    since it was written (:func:`tfhier.models.hparams.complete_stored`); unknown model names are left alone."""
    if name not in MODELS:
        return dict(model_config)
    return hparams.complete_stored(MODELS[name], model_config)


#: the output heads that are densities of each kind of data
HEADS_FOR_KIND = {"handwriting": ("handwriting", "gaussian", "gmm"), "binary": ("bernoulli", "bernoulli_mixture"),
                  "audio": ("gaussian", "gmm"), "real": ("gaussian", "gmm")}


def config_for_data(name, values: dict, kind: str) -> dict:
    """Hyperparameters ``values`` for data of ``kind``: ``head`` 'auto' (or unset) becomes the kind's head; a
    head that is no density of that kind of data (a Bernoulli on pen offsets) is an error naming --head."""
    from tfhier.data import DEFAULT_HEADS

    values = dict(values)
    if values.get("head", "auto") == "auto":
        values["head"] = DEFAULT_HEADS[kind]
    if kind in HEADS_FOR_KIND and values["head"] not in HEADS_FOR_KIND[kind]:
        raise hparams.HParamError(f"--head={values['head']} does not fit {kind} data; expected one of "
                                  f"{list(HEADS_FOR_KIND[kind])} (or auto: {DEFAULT_HEADS[kind]})")
    model_class(name)  # a clear error for an unknown name
    return values


def config_from_flags(name, flag_values, kind: str, model_config=None) -> dict:
    """The hyperparameters ``train.py``'s flags give model ``name`` for data of ``kind`` (see
    :func:`tfhier.models.hparams.config_from_flags`)."""
    return config_for_data(name, hparams.config_from_flags(MODELS, name, flag_values, model_config), kind)


def define_flags(flag_values, module_name, reserved=()):
    """Defines every model's hyperparameter flags (``train.py`` calls it)."""
    hparams.define_flags(MODELS, flag_values, module_name, reserved)


__all__ = ["MODELS", "MSSTCN", "ModelOutput", "SRNN", "STCN", "STCNDense", "SequenceModel", "VHRNN", "VOSP", "VRAE",
           "VRNN", "WaveNetDense", "WaveNetModel",
           "build_model", "config_for_data", "config_from_flags", "define_flags", "model_class", "stored_model_config"]
