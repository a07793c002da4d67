"""Keras recurrent cells run with their input products taken out of the time loop.

A Keras ``LSTMCell`` / ``GRUCell`` / ``SimpleRNNCell`` computes, at every
step, ``x_t @ kernel`` (the input product) and ``h_{t-1} @ recurrent_kernel``.
Only the second depends on the previous step.  The functions here compute the
input products of a whole sequence as one matrix product over ``B * T`` rows
(:func:`input_projection`) and leave the loop one product per step
(:func:`recur`); :func:`scan` runs a whole sequence that way.  They read the
cell's own weights, so a model keeps its variables (and checkpoints) and may
still call the cell itself where a step is taken one at a time (generation).

The arithmetic is Keras 3's for each cell (TF backend, default activations:
``tanh`` and ``sigmoid``): LSTM gates in the order i, f, c, o; GRU with
``reset_after`` (the candidate's recurrent product is multiplied by the reset
gate after its bias) or without; the simple RNN ``tanh(x W + b + h U)``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfhier.blocks import loop_steps, matmul_last

KINDS = ("lstm", "gru", "simple")


def cell_kind(cell) -> str:
    """``'lstm'``, ``'gru'`` or ``'simple'`` for a Keras cell."""
    if isinstance(cell, keras.layers.LSTMCell):
        return "lstm"
    if isinstance(cell, keras.layers.GRUCell):
        return "gru"
    if isinstance(cell, keras.layers.SimpleRNNCell):
        return "simple"
    raise TypeError(f"no input projection for a {type(cell).__name__}")


def _check_activations(cell):
    # The arithmetic below is written for the cells' default activations.
    act = getattr(cell, "activation", None)
    rec = getattr(cell, "recurrent_activation", keras.activations.sigmoid)
    if act is not keras.activations.tanh or rec is not keras.activations.sigmoid:
        raise ValueError(f"{cell.name}: the time-parallel path assumes tanh / sigmoid activations")


def _input_bias(cell):
    if not cell.use_bias:
        return None
    if isinstance(cell, keras.layers.GRUCell) and cell.reset_after:
        return cell.bias[0]
    return cell.bias


def input_projection(cell, x, kernel_rows=None, bias=True):
    """The input product of every step, ``[..., G]``: ``x @ kernel (+ input bias)``.

    ``kernel_rows``: ``(start, stop)`` to use only those rows of the kernel
    (the part of the cell's input that ``x`` is; the product of the other part
    is added to the projection inside the loop), in which case no bias is
    added unless ``start == 0``.  ``bias=False``: the product alone.
    """
    _check_activations(cell)
    kernel = cell.kernel
    bias = _input_bias(cell) if bias else None
    if kernel_rows is not None:
        start, stop = kernel_rows
        kernel = kernel[start:stop]
        if start != 0:
            bias = None
    return matmul_last(x, kernel, bias)


def recur(cell, projection, state):
    """One step from the step's input projection ``[B, G]`` and ``state`` ({'h'} or {'h', 'c'}): the new state."""
    h = state["h"]
    if isinstance(cell, keras.layers.LSTMCell):
        z = projection + tf.matmul(h, cell.recurrent_kernel)
        i, f, g, o = tf.split(z, 4, axis=-1)
        c = tf.sigmoid(f) * state["c"] + tf.sigmoid(i) * tf.tanh(g)
        return {"h": tf.sigmoid(o) * tf.tanh(c), "c": c}
    if isinstance(cell, keras.layers.GRUCell):
        x_z, x_r, x_h = tf.split(projection, 3, axis=-1)
        if cell.reset_after:
            inner = tf.matmul(h, cell.recurrent_kernel)
            if cell.use_bias:
                inner = tf.nn.bias_add(inner, cell.bias[1])
            r_z, r_r, r_h = tf.split(inner, 3, axis=-1)
            z, r = tf.sigmoid(x_z + r_z), tf.sigmoid(x_r + r_r)
            hh = tf.tanh(x_h + r * r_h)
        else:
            units = cell.units
            r_z, r_r = tf.split(tf.matmul(h, cell.recurrent_kernel[:, :2 * units]), 2, axis=-1)
            z, r = tf.sigmoid(x_z + r_z), tf.sigmoid(x_r + r_r)
            hh = tf.tanh(x_h + tf.matmul(r * h, cell.recurrent_kernel[:, 2 * units:]))
        return {"h": z * h + (1.0 - z) * hh}
    return {"h": tf.tanh(projection + tf.matmul(h, cell.recurrent_kernel))}


def zero_state(cell, batch) -> dict:
    zeros = tf.zeros(tf.stack([batch, cell.units]))
    return {"h": zeros, "c": zeros} if isinstance(cell, keras.layers.LSTMCell) else {"h": zeros}


def scan(cell, inputs, mask=None, reverse=False, projected=False):
    """The cell over a whole sequence: ``h_{1:T}`` ``[B, T, units]``.

    ``inputs`` [B, T, C] (or their input projections ``[B, T, G]`` with
    ``projected=True``); ``mask`` [B, T]: a padded step keeps the state and
    outputs zero (so a reverse pass starts at each sequence's own last step);
    ``reverse``: from the last step to the first (the outputs stay in time
    order).  Equal to ``keras.layers.RNN(cell, go_backwards=reverse)`` followed
    by tfhier's masking of padded outputs.
    """
    xp = inputs if projected else input_projection(cell, inputs)
    b, t_len = tf.shape(xp)[0], tf.shape(xp)[1]
    steps = loop_steps(xp)
    m = None if mask is None else loop_steps(tf.cast(mask, tf.float32))
    state0 = zero_state(cell, b)

    def body(i, state, out):
        t = t_len - 1 - i if reverse else i
        new = recur(cell, steps.read(t), state)
        if m is not None:
            keep = m.read(t)[:, None] > 0
            new = {k: tf.where(keep, v, state[k]) for k, v in new.items()}
            h = tf.where(keep, new["h"], 0.0)
        else:
            h = new["h"]
        return i + 1, new, out.write(t, h)

    out = tf.TensorArray(tf.float32, size=t_len, element_shape=tf.TensorShape([None, cell.units]))
    _, _, out = tf.while_loop(lambda i, *_: i < t_len, body, (tf.constant(0), state0, out),
                              maximum_iterations=t_len)
    return tf.transpose(out.stack(), [1, 0, 2])


__all__ = ["KINDS", "cell_kind", "input_projection", "recur", "scan", "zero_state"]
