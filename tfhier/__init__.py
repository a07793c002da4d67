"""tfhier: deep stochastic autoregressive sequence models in TensorFlow 2 / Keras 3 / TFP.

    import tfhier
    run = tfhier.load_run("runs/demo")      # see tfhier.api

``import tfhier`` itself imports no TensorFlow; :func:`load_run` does, when called.
"""

__version__ = "0.1.0"


def load_run(run_dir, checkpoint: str = "best", *, data_dir=None):
    """A trained run as a :class:`tfhier.api.LoadedRun` (score, sample, continue, evaluate); see :mod:`tfhier.api`."""
    from tfhier.api import load_run as _load_run

    return _load_run(run_dir, checkpoint, data_dir=data_dir)


__all__ = ["__version__", "load_run"]
