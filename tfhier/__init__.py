"""tfhier: deep stochastic autoregressive sequence models in TensorFlow 2 / Keras 3 / TFP."""

__version__ = "0.1.0"
