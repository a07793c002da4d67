"""Training on several devices or workers: the ``tf.distribute`` strategy ``train.py --strategy`` names, and the
data as its replicas take it.

Every replica holds ``batch_size / N`` consecutive sequences of each global batch (:func:`distribute`), and the
noise of a sequence is keyed by its row of the global batch (:mod:`tfhier.noise`), so N replicas compute what
one device computes for the same global batch.  Under multi-worker training one process, the chief
(:func:`is_chief`), writes the run directory.
"""

from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf

from tfhier.data.pipeline import without_autotuning
from tfhier.replicas import multi_worker
from tfhier.training.settings import TrainSettings


STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str = "default", cpu_devices: int = 0,
                  worker_timeout: Optional[float] = None) -> Optional[tf.distribute.Strategy]:
    """The ``tf.distribute`` strategy ``train.py --strategy`` names (None for ``default``: one device).

    ``cpu_devices`` > 1 splits the CPU into that many logical devices first
    (before TensorFlow initialises its devices), so that ``mirrored`` runs on N
    "devices" of one CPU: how distributed training is tested without GPUs.
    ``mirrored``: ``MirroredStrategy`` over every GPU, else over the logical CPUs.
    ``multi_worker``: ``MultiWorkerMirroredStrategy``, cluster and role from the ``TF_CONFIG`` environment
    variable (every GPU of each worker, else its CPU); call it before any other TensorFlow operation.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name}: expected one of {', '.join(STRATEGIES)}")
    from tfhier import cluster  # TF_CONFIG by type, a bounded and interruptible wait for the workers

    problem = cluster.cpu_devices_problem(name, cpu_devices)
    if problem:
        raise ValueError(problem)
    if name == "multi_worker":
        return cluster.multi_worker_strategy(worker_timeout)
    if int(cpu_devices) > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(cpu_devices))
        except RuntimeError:  # already initialised: only an equal split is acceptable
            if len(tf.config.list_logical_devices("CPU")) != int(cpu_devices):
                raise ValueError(f"--cpu_devices={cpu_devices}: TensorFlow's devices are already initialised with "
                                 f"{len(tf.config.list_logical_devices('CPU'))} CPU devices") from None
    if name == "default":
        return None
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def resolve_jit_compile(requested, model, strategy) -> bool:
    """Whether the training and validation steps are XLA-compiled: ``requested`` (``--[no]jit_compile``) if given,
    else the model's ``jit_compile_default`` on one device (Keras' XLA-compiled step does not run under a
    strategy with several replicas: its variables live on one device)."""
    if requested is not None:
        return bool(requested)
    if os.environ.get("TFHIER_XLA_TRAINING", "1") == "0":  # e.g. the test suite: no compilation per tiny model
        return False
    return bool(model.jit_compile_default) and strategy.num_replicas_in_sync == 1 and not is_multi_worker(strategy)


def is_multi_worker(strategy) -> bool:
    return strategy is not None and multi_worker(strategy)


def is_chief(strategy) -> bool:
    """True on the one process that writes the run directory (every process outside multi-worker training)."""
    return not is_multi_worker(strategy) or bool(strategy.extended.should_checkpoint)


def same_on_all_workers(strategy, value) -> bool:
    """Whether every worker holds the same number ``value`` (a collective: every worker must call it)."""
    if not is_multi_worker(strategy):
        return True
    v = tf.constant(float(value), tf.float64)
    per_replica = strategy.run(lambda: tf.stack([v, v * v]))
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None).numpy()
    return abs(mean[1] - mean[0] ** 2) <= 1e-9 * max(1.0, mean[1])


def check_batch_for(strategy, settings: TrainSettings):
    """The global batch must split evenly over the replicas (each replica then holds ``batch_size / N`` consecutive
    sequences of it; see :func:`tfhier.noise.replica_rows`). Validation's last, smaller batch may split
    unevenly: its metrics are weighted by sequences and steps, so they stay those of the whole split."""
    n = strategy.num_replicas_in_sync if strategy is not None else 1
    if settings.batch_size % n:
        raise ValueError(f"--batch_size={settings.batch_size} does not split evenly over the {n} replicas of the "
                         f"strategy (give a multiple of {n})")


def fill_batch(x, mask, batch_size):
    """A last, smaller validation batch filled up to ``batch_size`` with step-less sequences (mask 0), which
    count in no metric (``SequenceModel.test_step``): under N replicas every replica then gets
    ``batch_size / N`` rows, and every sequence's latent noise is that of its row of a full batch, so the
    validation numbers of N replicas are exactly one device's."""
    missing = batch_size - tf.shape(x)[0]
    return (tf.pad(x, [[0, missing], [0, 0], [0, 0]]), tf.pad(mask, [[0, missing], [0, 0]]))


def distribute(strategy, dataset, batch_size):
    """``dataset`` (global batches) as the strategy's replicas take it: replica r gets rows
    ``[r * B/N, (r + 1) * B/N)`` of each global batch, the batch itself unchanged.

    (``strategy.experimental_distribute_dataset``, what Keras would call, rewrites the pipeline's batch
    size to B/N instead, which regroups bucketed and shuffled batches: the replicas would then see other
    sequences than one device does.) With one replica, ``dataset`` itself.

    Under ``MirroredStrategy`` each replica iterates a pipeline of its own on the host
    (``InputReplicationMode.PER_REPLICA``, not fetched ahead to the device): TensorFlow's
    per-device buffers otherwise (a ``MultiDeviceIterator``) are datasets with tf.data autotuning
    on, whatever ``dataset``'s options say, and ending an iterator waits for their autotuning
    threads, which sleep up to 60 s (see :func:`tfhier.data.pipeline.without_autotuning`):
    measured 5.8 s of 93 s at 8 validation intervals of 30 steps on 2 CPU replicas, 0 s this way.
    The price: the host runs the (cheap) batching N times, each replica keeping its rows, and a
    batch is copied to its device when the step starts. ``MultiWorkerMirroredStrategy`` accepts
    only per-worker pipelines, so there the wait remains.
    """
    n = strategy.num_replicas_in_sync if strategy is not None else 1
    if n == 1:
        return dataset
    local = batch_size // n

    def per_worker(context):
        # Each pipeline (one per replica under mirrored, one per worker under multi-worker training) keeps its
        # own replicas' rows of every global batch: workers never train on the same sequences.
        mine = n // context.num_input_pipelines
        first = context.input_pipeline_id * mine

        def split(x, mask):
            parts = lambda v: tf.reshape(v, tf.concat([[n, local], tf.shape(v)[1:]], 0))[first:first + mine]  # noqa
            return tf.data.Dataset.from_tensor_slices((parts(x), parts(mask)))

        # Consecutive elements go to consecutive (local) replicas; a per-replica pipeline holds one replica's.
        return without_autotuning(dataset.flat_map(split))

    options = None
    if not is_multi_worker(strategy):
        options = tf.distribute.InputOptions(
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
            experimental_fetch_to_device=False)
    return strategy.distribute_datasets_from_function(per_worker, options)
