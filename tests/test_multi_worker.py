"""Training under tf.distribute.MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 (ports picked
here) train as one process does on the same global batches; only the chief writes the run directory, and its
checkpoint resumes in a single process.

Every process is bounded in time and stops by itself (a test that hangs on a collective fails at its timeout).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
TIMEOUT = 300

TINY = ["--dataset=hershey", "--num_lines=16", "--channels=8,8", "--latent_dims=2,2", "--strides=1,2",
        "--bu_dilations=1,2;1", "--td_blocks=1", "--kernel_size=2", "--head_components=2", "--batch_size=4",
        "--seq_len=32", "--eval_every=2", "--eval_batches=1", "--log_every=1", "--checkpoint_every=2",
        "--sample_every=1000", "--num_samples=1", "--sample_steps=8", "--free_bits_halving_steps=10",
        "--adam_epsilon=1e-4", "--verbose=0"]
# (Adam's epsilon well above float32 rounding: see tests/test_distributed.py.)

# One worker (or, with no TF_CONFIG, the single-process reference): a VRNN trained with FIVO for 4 steps with
# the library's trainer; each process saves the weights it ends with.
WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from tfhier import training

    run_dir, out, strategy_name = sys.argv[1:4]
    strategy = training.make_strategy(strategy_name)
    from tfhier.data.vhrnn_synthetic import make_vhrnn_synthetic

    data = make_vhrnn_synthetic(num_train=8, num_valid=4, num_test=4, seq_len=24, seed=3)
    config = dict(latent_dims=[2], rnn_units=4, mlp_hidden=[4], feature_units=4, head="gaussian")
    s = training.TrainSettings(train_steps=4, batch_size=4, seq_len=16, eval_every=2, eval_batches=1, log_every=1,
                               checkpoint_every=2, sample_every=1000, num_samples=0, objective="fivo",
                               num_particles=3, clip_norm=0.5, adam_epsilon=1e-4, verbose=0)
    model, history = training.train(run_dir, "vrnn", config, data, s, strategy=strategy)
    np.savez(out, *[w.numpy() for w in model.weights],
             bounds=np.array(history["val_neg_fivo_per_step"]), steps=int(model.optimizer.iterations.numpy()))
    print("saved", out, flush=True)
""")


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def run_workers(args_for, tmp_path, name):
    """Starts the two workers, waits for both (killing both at the timeout); returns their outputs."""
    ports = free_ports(2)
    procs, scratch = [], []
    for i in range(2):
        tmp = tmp_path / f"{name}_tmp{i}"
        tmp.mkdir()
        scratch.append(tmp)
        env = {**ENV, "TF_CONFIG": tf_config(ports, i), "TMPDIR": str(tmp)}
        procs.append(subprocess.Popen([sys.executable, *args_for(i)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"worker {i} exited {p.returncode}:\n{out[-4000:]}"
    # The non-chief's scratch copy of the run is gone: it wrote nothing that outlives it.
    assert not any(scratch[1].iterdir()), list(scratch[1].iterdir())
    return outs


def run_single(args):
    out = subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def checkpoint_values(prefix):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(str(prefix))
            if name.startswith("model/")}


def test_two_workers_end_with_the_weights_of_one_process(tmp_path):
    """VRNN with FIVO (clipping active): both workers end with the same weights, the single process's, and
    report the single process's validation bound; the chief alone wrote the run directory."""
    run_workers(lambda i: ["-c", WORKER, str(tmp_path / "mw_run"), str(tmp_path / f"w{i}.npz"), "multi_worker"],
                tmp_path, "lib")
    run_single(["-c", WORKER, str(tmp_path / "single_run"), str(tmp_path / "single.npz"), "default"])
    w0, w1, ref = (np.load(tmp_path / f) for f in ("w0.npz", "w1.npz", "single.npz"))
    assert int(w0["steps"]) == int(w1["steps"]) == int(ref["steps"]) == 4
    arrays = [k for k in ref.files if k.startswith("arr_")]
    assert arrays and set(arrays) == {k for k in w0.files if k.startswith("arr_")}
    for k in arrays:
        np.testing.assert_array_equal(w0[k], w1[k])
        np.testing.assert_allclose(w0[k], ref[k], rtol=0, atol=1e-5)
    np.testing.assert_allclose(w0["bounds"], ref["bounds"], rtol=1e-5)
    assert (tmp_path / "mw_run" / "checkpoints" / "ckpt-4.index").exists()


def test_train_cli_multi_worker_and_resume_in_one_process(tmp_path):
    """``train.py --strategy=multi_worker`` (MS-STCN) on two workers to step 2, resumed by ``train.py`` in one
    process to step 4: the checkpoint of one process trained straight to step 4."""
    mw = tmp_path / "mw"
    outs = run_workers(lambda i: [str(REPO / "train.py"), *TINY, f"--run_dir={mw}", "--strategy=multi_worker",
                                  "--train_steps=2"], tmp_path, "cli")
    assert f"done: {mw}" in outs[0] and f"done: {mw}" in outs[1]
    assert (mw / "checkpoints" / "ckpt-2.index").exists() and (mw / "flags.cfg").exists()
    printed = run_single([str(REPO / "train.py"), *TINY, f"--run_dir={mw}", "--train_steps=4"])
    assert "resumed from" in printed
    single = tmp_path / "single"
    run_single([str(REPO / "train.py"), *TINY, f"--run_dir={single}", "--train_steps=4"])
    resumed, reference = checkpoint_values(mw / "checkpoints" / "ckpt-4"), checkpoint_values(
        single / "checkpoints" / "ckpt-4")
    assert resumed.keys() == reference.keys() and len(reference) > 10
    for name in reference:
        np.testing.assert_allclose(resumed[name], reference[name], rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("tf_config_value, expected", [
    (None, "TF_CONFIG is not set"),
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "task index 3"),
])
def test_multi_worker_without_a_usable_tf_config_is_one_clear_error(tmp_path, tf_config_value, expected):
    env = {k: v for k, v in ENV.items() if k != "TF_CONFIG"}
    if tf_config_value is not None:
        env["TF_CONFIG"] = tf_config_value
    out = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY, f"--run_dir={tmp_path / 'r'}",
                          "--strategy=multi_worker"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode != 0
    assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "r").exists()
