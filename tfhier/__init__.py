"""tfhier: deep stochastic autoregressive sequence models in TensorFlow 2 / Keras 3 / TFP.

    import tfhier
    run = tfhier.load_run("runs/demo")      # see tfhier.api
    run = tfhier.fit(model="vrnn", train=[...arrays...], run_dir="runs/mine", train_steps=500)  # tfhier.fitting

``import tfhier`` itself imports no TensorFlow; :func:`load_run` does, when called.
"""

__version__ = "0.1.0"


def load_run(run_dir, checkpoint: str = "best", *, data_dir=None):
    """A trained run as a :class:`tfhier.api.LoadedRun` (score, sample, continue, evaluate); see :mod:`tfhier.api`."""
    from tfhier.api import load_run as _load_run

    return _load_run(run_dir, checkpoint, data_dir=data_dir)


def fit(model: str = "msstcn", train=None, valid=None, test=None, *, run_dir, **kwargs):
    """Trains (or resumes) ``model`` on arrays in ``run_dir`` as ``train.py`` would, and returns the run as
    :func:`load_run` gives it; see :func:`tfhier.fitting.fit`."""
    from tfhier.fitting import fit as _fit

    return _fit(model, train, valid, test, run_dir=run_dir, **kwargs)


__all__ = ["__version__", "fit", "load_run"]
