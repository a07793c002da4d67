"""Training under tf.distribute.MirroredStrategy (2 logical CPU devices) is one device's training.

Run in a subprocess: logical devices must be configured before TensorFlow
initialises, which other tests in this process have already done.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfhier import training
    from tfhier.models import MSSTCN

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = MSSTCN(3, channels=[8, 8], latent_dims=[2, 2], strides=[1, 2], bu_dilations=[[1], [1]],
                       td_blocks=1, head_components=2).build_for_data()
        s = training.TrainSettings()
        model.compile(optimizer=training.make_optimizer(s), objective=training.make_objective(s))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 3)).astype(np.float32)
    x[..., 2] = rng.random((8, 16)) < 0.2
    mask = np.ones((8, 16), np.float32)

    def fit(x):
        before = [w.numpy() for w in model.trainable_weights]
        model.fit(tf.data.Dataset.from_tensors((x, mask)).repeat(), epochs=1, steps_per_epoch=1, verbose=0)
        return max(float(np.abs(a - w.numpy()).max()) for a, w in zip(before, model.trainable_weights))

    moved = fit(x)
    poisoned = x.copy()
    poisoned[5, 3, 0] = np.nan  # one sequence on the second replica
    moved_nan = fit(poisoned)
    print("RESULT", moved, moved_nan, int(model.optimizer.iterations.numpy()))
""")


def test_mirrored_training_step_applies_and_skips_nonfinite_on_all_replicas():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
    assert lines, out.stderr[-3000:]
    moved, moved_nan, iterations = lines[0].split()[1:]
    assert float(moved) > 0  # a finite step updates the mirrored weights
    assert float(moved_nan) == 0.0  # a NaN on one replica skips the update everywhere
    assert int(iterations) == 1


PER_REPLICA_INPUT = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.data.ops.multi_device_iterator_ops import OwnedMultiDeviceIterator
    from tfhier import training
    from tfhier.data.pipeline import make_dataset

    strategy = training.make_strategy("mirrored", cpu_devices=2)
    seqs = [np.full((n, 3), n, np.float32) for n in range(5, 25)]
    ds = make_dataset(seqs, 4, training=True, seq_len=8, seed=1)
    it = iter(training.distribute(strategy, ds, 4))
    got = [next(it) for _ in range(3)]
    want = list(ds.take(3).as_numpy_iterator())
    same = all(np.array_equal(np.concatenate([v.numpy() for v in strategy.experimental_local_results(g[0])]), w[0])
               for g, w in zip(got, want))
    kinds = {type(worker._iterator).__name__ for worker in it._iterators}
    print("RESULT", same, any(isinstance(w._iterator, OwnedMultiDeviceIterator) for w in it._iterators), kinds)
""")


def test_mirrored_input_is_one_pipeline_per_replica_without_device_buffers():
    # TensorFlow's per-device buffers (a MultiDeviceIterator) autotune whatever the pipeline's options say, and
    # ending an iterator waits up to 60 s for their tuning threads (tfhier.training.distribute): under mirrored
    # every replica reads its own pipeline instead, and the replicas together still hold the global batch.
    out = subprocess.run([sys.executable, "-c", PER_REPLICA_INPUT], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
    assert lines, out.stderr[-3000:]
    same, multi_device, kinds = lines[0].split(maxsplit=3)[1:]
    assert same == "True", lines[0]
    assert multi_device == "False", lines[0]


# ------------------------------------------------------------------------- N replicas == one device

EQUALITY = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from tfhier import training
    from tfhier.data.hershey import make_hershey_handwriting

    strategy = training.make_strategy("mirrored", cpu_devices=2)
    assert strategy.num_replicas_in_sync == 2
    root = sys.argv[1]
    data = make_hershey_handwriting(num_train=12, num_valid=5, num_test=2, seed=1)  # 5: an uneven last batch
    CASES = {
        "msstcn": ("msstcn", dict(head="handwriting", head_components=2, channels=[8, 8], latent_dims=[2, 2],
                                  strides=[1, 2], bu_dilations=[[1, 2], [1]], td_blocks=1, kernel_size=2,
                                  input_dropout=0.2), dict(objective="elbo")),
        "stcn": ("stcn", dict(head="handwriting", head_components=2, channels=[8, 6], dilations=[1, 2],
                              latent_dims=[2, 3], latent_hidden=[8], output_hidden=[8]), dict(objective="iwae",
                                                                                              num_particles=2)),
        "vrnn": ("vrnn", dict(head="handwriting", head_components=2, latent_dims=[3], rnn_units=5, mlp_hidden=[6],
                              feature_units=4), dict(objective="fivo", num_particles=3)),
    }

    # Adam's epsilon well above float32 rounding of the gradients: Adam divides each coordinate's update by
    # its gradient's own scale, so a coordinate whose gradient is zero up to rounding (a sum of cancelling
    # terms, summed in another order on 2 replicas) would step by +-lr on either side at Keras' 1e-7, and
    # the weights could differ by ~lr however exact the distribution is (seen: a bias 1.1e-5 apart).
    def settings(steps, **kw):
        return training.TrainSettings(train_steps=steps, batch_size=4, seq_len=24, eval_every=3, eval_batches=0,
                                      log_every=1, checkpoint_every=1, sample_every=1000, clip_norm=0.5,
                                      free_bits_halving_steps=10, adam_epsilon=1e-4, verbose=0, **kw)

    def weights(model):
        return {v.path: v.numpy() for v in model.weights}

    def compare(a, b):
        return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)

    out, reference = {}, {}
    for case, (name, config, objective) in CASES.items():
        one, h1 = training.train(f"{root}/{case}_one", name, config, data, settings(5, **objective))
        reference[case] = weights(one)
        two, h2 = training.train(f"{root}/{case}_two", name, config, data, settings(5, **objective),
                                 strategy=strategy)
        keys = sorted(set(h1) & set(h2))
        out[case] = {"weights": compare(weights(one), weights(two)),
                     "metrics": max(abs(float(a) - float(b)) / max(1.0, abs(float(a)))
                                    for k in keys for a, b in zip(h1[k], h2[k])),
                     "worst": max(keys, key=lambda k: max(abs(float(a) - float(b)) / max(1.0, abs(float(a)))
                                                          for a, b in zip(h1[k], h2[k]))),
                     "keys": keys, "grad_norm": [float(v) for v in h1["grad_norm"]]}
    # A checkpoint written under 2 replicas resumes under 1 and under 2.
    name, config, objective = CASES["msstcn"]
    training.train(f"{root}/resume_1", name, config, data, settings(3), strategy=strategy)
    one, _ = training.train(f"{root}/resume_1", name, config, data, settings(5))
    training.train(f"{root}/resume_2", name, config, data, settings(3), strategy=strategy)
    two, _ = training.train(f"{root}/resume_2", name, config, data, settings(5), strategy=strategy)
    # (The reference: one device's 5 steps above, trained in the same two intervals, [0, 3) and [3, 5).)
    out["resume"] = {"under_1": compare(reference["msstcn"], weights(one)),
                     "under_2": compare(reference["msstcn"], weights(two))}
    print("RESULT " + json.dumps(out))
""")


def test_two_replicas_train_exactly_as_one_device(tmp_path):
    """MS-STCN (ELBO, input dropout), STCN (IWAE) and VRNN (FIVO): 5 steps with gradient clipping active on 2
    mirrored logical CPUs give the weights, bounds, per-layer KLs and gradient norms of one device on the same
    global batches; a checkpoint of 2 replicas resumes under 1 and under 2 to what one device reaches."""
    import json

    out = subprocess.run([sys.executable, "-c", EQUALITY, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, out.stderr[-4000:]
    result = json.loads(lines[0][len("RESULT "):])
    for case in ("msstcn", "stcn", "vrnn"):
        r = result[case]
        assert r["weights"] < 1e-5, (case, r)
        assert r["metrics"] < 1e-5, (case, r)
        assert {"grad_norm", "val_neg_elbo_per_step"} <= set(r["keys"]), r["keys"]
        assert any(k.startswith("val_kl_") for k in r["keys"]), r["keys"]
        assert max(r["grad_norm"]) > 0.5  # clipping was active: a per-replica clip would have differed
    assert result["resume"]["under_1"] < 1e-5 and result["resume"]["under_2"] < 1e-5, result["resume"]
