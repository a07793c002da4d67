"""Where this computation stands in a ``tf.distribute`` strategy: how many replicas, which one, on how many
workers, and the one collective the training step needs (a sum over the replicas).

Outside a strategy's replica context every function here answers as one device does, so models and objectives
call them unconditionally.
"""

from __future__ import annotations

import tensorflow as tf


def all_reduce_sum(context, values):
    """``context.all_reduce(SUM, values)`` on copies made under the replica's device: with one replica per
    worker, MultiWorkerMirroredStrategy places the all-reduce by its inputs' devices, and a read of a
    variable colocated with an uncommitted resource (a metric's) has none."""
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.nest.map_structure(tf.identity, values))


def multi_worker(strategy=None) -> bool:
    """Whether ``strategy`` (default: the current one) spans several workers (MultiWorkerMirroredStrategy with a
    cluster)."""
    extended = (strategy or tf.distribute.get_strategy()).extended
    return bool(getattr(extended, "_in_multi_worker_mode", lambda: False)())


def replica_position():
    """``(replicas in sync, this replica's id)``: ``(1, 0)`` outside a distribution strategy's replica context."""
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return 1, 0
    return replica.num_replicas_in_sync, replica.replica_id_in_sync_group
