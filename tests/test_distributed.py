"""The shared training step under tf.distribute.MirroredStrategy (2 logical CPU devices).

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
