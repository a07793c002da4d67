"""Time a training step of a public PyTorch SRNN / VRNN on CPU: the peer anchor for tfhier's bench/recurrent.py.

    PY=$S/torchenv/bin/python
    $PY bench_recurrent_peer.py --model=srnn --peer_dir=$S/benchmarking-lvms
    $PY bench_recurrent_peer.py --model=vrnn --peer_dir=$S/DVAE
    $PY bench_recurrent_peer.py --model=srnn --peer_dir=... --count_only      # build, print the parameters only

The peer is recognised from its checkout (--peer_dir) and its model classes are imported from there; nothing of
its code is copied here.  Peers (setup and how to run them: docs/benchmarks.md, "Recurrent models"):

  blvm  JakobHavtorn/benchmarking-lvms  blvm.models.srnn.SRNN / blvm.models.vrnn.VRNN, likelihood
                                        blvm.modules.distributions.BernoulliDense; the ELBO loss is the model's own
  dvae  XiaoyuBIE1994/DVAE              dvae.model.srnn.SRNN / dvae.model.vrnn.VRNN; the loss as dvae/learning_algo.py
                                        builds it (reconstruction + loss_KLD of dvae/utils/loss.py, both / (T*B)),
                                        the reconstruction a Bernoulli NLL on the model's output taken as logits

One training step = zero_grad + forward + ELBO loss + backward + global-norm gradient clipping (tfhier's optimizer
clips too: bench/recurrent.py's TrainSettings, clip_norm 1.0) + Adam step, on random 0/1 inputs
(batch x seq_len x 88, P(1) = --density, as bench/recurrent.py's 0.05), timed after --warmup steps.
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types

INPUT_DIM = 88
PEERS = {
    "blvm": {"repo": "JakobHavtorn/benchmarking-lvms", "marker": os.path.join("blvm", "models", "srnn.py")},
    "dvae": {"repo": "XiaoyuBIE1994/DVAE", "marker": os.path.join("dvae", "model", "srnn.py")},
}

# tfhier's sizes (configs/srnn_jsb.cfg, configs/vrnn_jsb.cfg) the configurations below map onto.
SRNN = dict(rnn=300, z=100, mlp=500, features=500)
VRNN = dict(rnn=32, z=32, mlp=32, features=32)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["srnn", "vrnn"], required=True)
    p.add_argument("--peer_dir", required=True, help="checkout of JakobHavtorn/benchmarking-lvms or XiaoyuBIE1994/DVAE")
    p.add_argument("--batch_size", type=int, default=16, help="sequences per step (configs/srnn_jsb.cfg: 16)")
    p.add_argument("--seq_len", type=int, default=200, help="steps per sequence (configs/*_jsb.cfg: 200)")
    p.add_argument("--density", type=float, default=0.05, help="P(x=1) of the random piano roll")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip_norm", type=float, default=1.0, help="global-norm clipping (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count_only", action="store_true", help="build the model and report its parameters only")
    a = p.parse_args(argv)
    a.peer_dir = os.path.abspath(os.path.expanduser(a.peer_dir))
    if a.steps < 1 or a.warmup < 0 or a.batch_size < 1 or a.seq_len < 2:
        p.error("--steps >= 1, --warmup >= 0, --batch_size >= 1, --seq_len >= 2")
    return a


def detect_peer(peer_dir):
    for name, info in PEERS.items():
        if os.path.exists(os.path.join(peer_dir, info["marker"])):
            return name
    raise SystemExit(f"{peer_dir}: neither a benchmarking-lvms nor a DVAE checkout "
                     f"(no {' / '.join(i['marker'] for i in PEERS.values())})")


def git_commit(peer_dir):
    def git(*cmd):
        return subprocess.run(["git", "-C", peer_dir, *cmd], capture_output=True, text=True, check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown", None


# -- benchmarking-lvms --------------------------------------------------------------------------------------------

class _StandIn(types.ModuleType):
    """An importable name for a package that benchmarking-lvms' package __init__ files import but that the SRNN /
    VRNN path never calls; any use of it raises."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unusable(f"{self.__name__}.{name}")


class _Unusable:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unusable(f"{self._name}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} was called, but it is an import stand-in (the package is not installed)")


# torchaudio: blvm.data.transforms / loaders import it at module level (MelSpectrogram, torchaudio.load), reached
#   through blvm.models -> base_model/srnn -> blvm.data; no torchaudio release is built for torch 2.13 (installing
#   one replaces torch).  wandb: a logging client that blvm.evaluation.metrics / tracker import; called only in
#   Tracker.log and a confusion-matrix metric.  Neither is used by a training step of SRNN or VRNN.
BLVM_STAND_INS = {"torchaudio": ["torchaudio", "torchaudio.transforms"], "wandb": ["wandb"]}


def import_blvm(peer_dir):
    """Import the peer's modules from its checkout; returns (modules, stand-ins used)."""
    # blvm/settings.py asks for its data root on stdin (and writes it to BLVM.env in the checkout) when it is not
    # in the environment, then makes folders under it.
    os.environ.setdefault("BLVM_DATA_ROOT_DIRECTORY", os.path.join(tempfile.gettempdir(), "blvm-data"))
    used = []
    for package, names in BLVM_STAND_INS.items():
        if importlib.util.find_spec(package) is None:
            for name in names:
                sys.modules[name] = _StandIn(name)
            used.append(package)
    sys.path.insert(0, peer_dir)
    from blvm.models.srnn import SRNN as BlvmSRNN
    from blvm.models.vrnn import VRNN as BlvmVRNN
    from blvm.modules.distributions import BernoulliDense
    return types.SimpleNamespace(SRNN=BlvmSRNN, VRNN=BlvmVRNN, BernoulliDense=BernoulliDense), used


def bernoulli_likelihood(m, features):
    """The peer's Bernoulli output layer.  Its mode() reads self.reduce_dim, which BernoulliDense.__init__ never
    sets, and SRNN.forward / VRNN.forward call mode(): without the attribute the forward pass raises
    AttributeError.  -1 (the event dimension) is the value it evidently means."""
    lik = m.BernoulliDense(features, INPUT_DIM)
    lik.reduce_dim = -1
    return lik


def build_blvm(model, m, torch):
    nn = torch.nn
    if model == "srnn":
        # As SRNNAudio composes SRNN (blvm/models/srnn.py), with tfhier's sizes: the encoder is phi_x (one layer of
        # 500, shared by the forward GRU's input u_t = x_{t-1} and the backward GRU's input), the decoder NN_x on
        # [z_t, d_t]; GRUs of r_dim = 300; the prior / posterior MLPs are the class's own (3 hidden layers of
        # h_dim = 500, fixed in the class).  LeakyReLU as SRNNAudio's encoder / decoder.
        encoder = nn.Sequential(nn.Linear(INPUT_DIM, SRNN["features"]), nn.LeakyReLU())
        decoder = nn.Sequential(nn.Linear(SRNN["z"] + SRNN["rnn"], SRNN["mlp"]), nn.LeakyReLU())
        net = m.SRNN(encoder=encoder, decoder=decoder, likelihood=bernoulli_likelihood(m, SRNN["mlp"]),
                     x_dim=SRNN["features"], h_dim=SRNN["mlp"], z_dim=SRNN["z"], r_dim=SRNN["rnn"],
                     residual_posterior=True, smoothing=True)
        config = {"class": "blvm.models.srnn.SRNN", "x_dim (encoder out)": SRNN["features"], "h_dim (MLPs)": SRNN["mlp"],
                  "r_dim (GRUs)": SRNN["rnn"], "z_dim": SRNN["z"], "residual_posterior": True, "smoothing": True,
                  "encoder": "Linear(88,500)+LeakyReLU", "decoder": "Linear(400,500)+LeakyReLU",
                  "prior/posterior": "3 x (Linear 500 + LeakyReLU) + DiagonalGaussianDense (class-fixed)",
                  "likelihood": "BernoulliDense(500, 88)"}
    else:
        # VRNN's GRU has 2 * h_dim units (VRNNCell ignores r_dim), so h_dim = 16 gives tfhier's 32-unit state; the
        # MLPs (phi_z 4 layers, prior / posterior 3 + Gaussian layer, default decoder 3) are h_dim wide.
        h = VRNN["rnn"] // 2
        encoder = nn.Sequential(nn.Linear(INPUT_DIM, VRNN["mlp"]), nn.ReLU(), nn.Linear(VRNN["mlp"], VRNN["features"]))
        net = m.VRNN(encoder=encoder, likelihood=bernoulli_likelihood(m, h), x_dim=VRNN["features"], h_dim=h,
                     z_dim=VRNN["z"])
        config = {"class": "blvm.models.vrnn.VRNN", "x_dim (encoder out)": VRNN["features"], "h_dim (MLPs)": h,
                  "GRU units (2*h_dim)": 2 * h, "z_dim": VRNN["z"], "posterior": "filtering",
                  "encoder": "Linear(88,32)+ReLU+Linear(32,32)", "decoder": "class default: 3 x (Linear 16 + ReLU)",
                  "likelihood": f"BernoulliDense({h}, 88)"}
    x_sl = None

    def loss_fn(x):  # the model's own ELBO loss (SRNN / VRNN compute_elbo), beta 1, no free nats
        nonlocal x_sl
        if x_sl is None or x_sl.numel() != x.shape[0]:
            x_sl = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        loss, _, _ = net(x, x_sl)
        return loss

    patches = ["BernoulliDense instance: reduce_dim = -1 (its mode() reads an attribute __init__ never sets)"]
    return net, config, loss_fn, (lambda x: x), patches


# -- DVAE ---------------------------------------------------------------------------------------------------------

def build_dvae(model, peer_dir, torch):
    sys.path.insert(0, peer_dir)
    # dvae/utils/__init__.py imports the speech metrics (pypesq, pystoi, soundfile): load only its loss.py.
    spec = importlib.util.spec_from_file_location("dvae_utils_loss", os.path.join(peer_dir, "dvae", "utils", "loss.py"))
    loss_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loss_mod)
    F = torch.nn.functional
    if model == "srnn":
        from dvae.model.srnn import SRNN as DvaeSRNN
        # LSTMs are the class's cells; dense_hx_g empty: the backward LSTM reads [h_t, x_t] (paper eq. 7).
        kw = dict(x_dim=INPUT_DIM, z_dim=SRNN["z"], activation="relu", dense_x_h=[SRNN["features"]],
                  dim_RNN_h=SRNN["rnn"], num_RNN_h=1, dense_hx_g=[], dim_RNN_g=SRNN["rnn"], num_RNN_g=1,
                  dense_gz_z=[SRNN["mlp"]], dense_hz_z=[SRNN["mlp"]], dense_hz_x=[SRNN["mlp"]], dropout_p=0, beta=1)
        net = DvaeSRNN(device="cpu", **kw)
        config = {"class": "dvae.model.srnn.SRNN", **kw}
    else:
        from dvae.model.vrnn import VRNN as DvaeVRNN
        # tfhier's phi_x / phi_z = hidden 32 + output 32 -> dense lists [32, 32]; prior / posterior / emission one
        # hidden layer of 32; LSTM of 32.
        kw = dict(x_dim=INPUT_DIM, z_dim=VRNN["z"], activation="relu", dense_x=[VRNN["mlp"], VRNN["features"]],
                  dense_z=[VRNN["mlp"], VRNN["features"]], dense_hx_z=[VRNN["mlp"]], dense_hz_x=[VRNN["mlp"]],
                  dense_h_z=[VRNN["mlp"]], dim_RNN=VRNN["rnn"], num_RNN=1, dropout_p=0, beta=1)
        net = DvaeVRNN(device="cpu", **kw)
        config = {"class": "dvae.model.vrnn.VRNN", **kw}

    def loss_fn(x):  # x time-major (T, B, D), the models' input layout
        seq_len, batch = x.shape[0], x.shape[1]
        logits = net(x)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / (seq_len * batch)
        kl = loss_mod.loss_KLD(net.z_mean, net.z_logvar, net.z_mean_p, net.z_logvar_p) / (seq_len * batch)
        return recon + kl

    return net, config, loss_fn, (lambda x: x.transpose(0, 1).contiguous()), []


# -- main ---------------------------------------------------------------------------------------------------------

THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv=None):
    a = parse_args(argv)
    sys.dont_write_bytecode = True  # leave the checkout as it is
    peer = detect_peer(a.peer_dir)
    commit, dirty = git_commit(a.peer_dir)

    load_start = os.getloadavg()[0]
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    stand_ins = []
    if peer == "blvm":
        modules, stand_ins = import_blvm(a.peer_dir)
        net, config, loss_fn, layout, patches = build_blvm(a.model, modules, torch)
    else:
        net, config, loss_fn, layout, patches = build_dvae(a.model, a.peer_dir, torch)

    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    by_module = {name: sum(p.numel() for p in child.parameters()) for name, child in net.named_children()}
    res = {"benchmark": "recurrent_peer", "model": a.model, "peer": peer, "peer_repo": PEERS[peer]["repo"],
           "peer_commit": commit, "peer_checkout_modified": dirty, "peer_config": config, "params": params,
           "params_by_module": {k: v for k, v in by_module.items() if v}}
    if not a.count_only:
        g = torch.Generator().manual_seed(a.seed)
        x = layout((torch.rand(a.batch_size, a.seq_len, INPUT_DIM, generator=g) < a.density).float())
        opt = torch.optim.Adam(net.parameters(), lr=a.lr)
        net.train()
        times, losses = [], []
        for i in range(a.warmup + a.steps):
            if i == a.warmup:
                cpu_start = cpu_seconds()
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(x)
            loss.backward()
            if a.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), a.clip_norm)
            opt.step()
            value = loss.item()
            times.append(time.perf_counter() - start)
            losses.append(value)
        cpu = cpu_seconds() - cpu_start
        timed = times[a.warmup:]
        elapsed = sum(timed)
        res.update({
            "batch_size": a.batch_size, "seq_len": a.seq_len, "input_dim": INPUT_DIM, "density": a.density,
            "warmup_steps": a.warmup, "timed_steps": a.steps,
            "steps_per_second": round(a.steps / elapsed, 4), "seconds_per_step": round(elapsed / a.steps, 4),
            "sequences_per_second": round(a.batch_size * a.steps / elapsed, 3),
            "step_seconds": [round(t, 4) for t in timed], "warmup_seconds": round(sum(times[:a.warmup]), 3),
            "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
            # process CPU seconds / wall seconds over the timed steps: ~threads on an idle machine; far less means
            # the threads waited for cores that other processes held (see RECURRENT_PEER.md, "Reading the numbers")
            "cpu_per_wall_timed": round(cpu / elapsed, 2),
            "step": "zero_grad + forward + ELBO loss + backward" + (f" + clip_grad_norm_({a.clip_norm})"
                                                                   if a.clip_norm > 0 else "") + f" + Adam(lr={a.lr})",
        })
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res.update({"threads": torch.get_num_threads(), "peak_rss_mb": round(rss_kb / 1024, 1),
                "peak_rss_gb": round(rss_kb / 1024 ** 2, 3),
                "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
                "import_stand_ins": stand_ins, "peer_patches": patches, "torch": torch.__version__,
                "python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                "load_average_1min_start": round(load_start, 2),
                "load_average_1min": round(os.getloadavg()[0], 2)})
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
