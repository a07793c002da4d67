"""The models, by the name ``train.py --model`` knows them."""

from tfhier.models.base import ModelOutput, SequenceModel
from tfhier.models.msstcn import MSSTCN

MODELS = {
    "msstcn": MSSTCN,
}


def build_model(name, input_dim, config: dict) -> SequenceModel:
    """The model ``name`` for steps of size ``input_dim``, from its config dict (see each class)."""
    if name not in MODELS:
        raise ValueError(f"--model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](input_dim, **config)


__all__ = ["MODELS", "MSSTCN", "ModelOutput", "SequenceModel", "build_model"]
