"""STORN's initialisation of its RNNs (Bayer & Osendorfer 2014, appendix, "Details on learning" and Table 2).

STORN draws the input and recurrent weight matrices from N(0, sigma^2) (Table 2: sigma^2 in {0.1, 0.01, 0.001,
0.0001}) and follows Sutskever et al. (2013, its ref. [27]): at most nu incoming connections per unit (Table 2:
15, 25, 35, 50 or all) and the recurrent matrix scaled to a spectral radius rho (1.0, 1.05, 1.1 or 1.2).
:class:`SparseNormal` is that initialiser, with climin's semantics (the optimisation library of STORN's authors:
``sparsify_columns`` keeps ``nu`` random entries of every column, a column being a unit's incoming weights in
the ``[inputs, units]`` layout Keras shares; ``bound_spectral_radius`` rescales the matrix so that its largest
eigenvalue modulus is exactly rho). The paper does not say whether nu limits the input matrix as well; both
matrices are sparsified here, each to nu entries per column, as a unit's incoming connections include both.
One variance serves both matrices: with rho set, the recurrent matrix's scale is rho's, whatever its variance.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

#: STORN's ``storn_init`` choices: Keras' (glorot-uniform inputs, orthogonal recurrence) or Table 2's.
RNN_INITS = ("keras", "table2")


@keras.saving.register_keras_serializable(package="tfhier")
class SparseNormal(keras.initializers.RandomNormal):
    """N(0, ``variance``) weights; ``max_incoming`` > 0 keeps that many random entries per column (the others
    0); ``spectral_radius`` > 0 (square matrices only) scales the result to that spectral radius."""

    def __init__(self, variance=0.01, max_incoming=0, spectral_radius=0.0, seed=None):
        if variance <= 0:
            raise ValueError(f"SparseNormal: variance must be > 0, got {variance}")
        super().__init__(mean=0.0, stddev=float(np.sqrt(variance)), seed=seed)
        self.variance, self.max_incoming, self.spectral_radius = float(variance), int(max_incoming), float(spectral_radius)

    def __call__(self, shape, dtype=None):
        weights = super().__call__(shape, dtype=dtype)
        fan_in = int(shape[0])
        if 0 < self.max_incoming < fan_in:
            # A random rank per entry of each column; the ``max_incoming`` lowest ranks survive. An integer seed s
            # draws the normal from s and the ranks from s + 1 (two instances seeded s and s + 1 share a stream).
            seed = self.seed + 1 if isinstance(self.seed, int) else self.seed
            noise = keras.random.uniform(shape, seed=seed)
            ranks = tf.argsort(tf.argsort(noise, axis=0), axis=0)
            weights = tf.where(ranks < self.max_incoming, weights, tf.zeros_like(weights))
        if self.spectral_radius > 0:
            if len(shape) != 2 or shape[0] != shape[1]:
                raise ValueError(f"SparseNormal: a spectral radius needs a square matrix, got shape {tuple(shape)}")
            radius = tf.reduce_max(tf.abs(tf.linalg.eigvals(tf.cast(weights, tf.float64))))
            scale = tf.where(radius > 0, self.spectral_radius / tf.maximum(radius, 1e-300), 1.0)
            weights = weights * tf.cast(scale, weights.dtype)
        return weights

    def get_config(self):
        return {"variance": self.variance, "max_incoming": self.max_incoming,
                "spectral_radius": self.spectral_radius, **super().get_config()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("mean", None), config.pop("stddev", None)
        return cls(**config)


def rnn_initializers(hp):
    """``{"kernel_initializer", "recurrent_initializer"}`` for a STORN RNN from its hyperparameters (empty for
    ``storn_init='keras'``: the cells' own defaults)."""
    if hp["storn_init"] == "keras":
        return {}
    return {"kernel_initializer": SparseNormal(hp["init_variance"], hp["max_incoming"]),
            "recurrent_initializer": SparseNormal(hp["init_variance"], hp["max_incoming"], hp["spectral_radius"])}
