"""Starting distributed training within bounds: ``TF_CONFIG`` checked by type, a bounded, interruptible wait for
the other workers, and the logical CPU split limited.

``tf.distribute.MultiWorkerMirroredStrategy()`` waits inside TensorFlow's C++ runtime until every worker of
``TF_CONFIG`` has started; a peer that never starts makes it wait for ever, and while it waits it holds Python's
interpreter lock and has its own SIGTERM handler installed, so SIGTERM and SIGINT (Ctrl-C) go unanswered.
:func:`multi_worker_strategy` therefore first waits in Python (:func:`wait_for_peers`): it listens on its own
port and probes every peer's with a short TCP connect until all answer, at most ``--worker_timeout`` seconds,
then fails naming the addresses that never answered; Ctrl-C and SIGTERM act at once there.  Only with every peer
up does it start TensorFlow's runtime, which then forms the cluster in seconds; for a peer that dies in that
window a watchdog process ends the start at the deadline, naming what does not answer.

Nothing here imports TensorFlow at module level: the command lines check ``TF_CONFIG`` and ``--cpu_devices``
before TensorFlow starts its runtime.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Optional

#: default seconds ``train.py --strategy=multi_worker`` waits for every worker of ``TF_CONFIG`` to start
DEFAULT_WORKER_TIMEOUT = 300.0

#: the most logical CPU devices ``--cpu_devices`` may ask for (each is a full TensorFlow device with its own
#: thread pools; beyond a few dozen, creating them takes minutes and testing gains nothing)
MAX_CPU_DEVICES = 64

JOBS = ("chief", "worker")

EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
           '"task": {"type": "worker", "index": 0}}\'')


def _short(value, limit=80) -> str:
    from tfhier.checks import shown

    return shown(value, limit)


def _address_problem(address) -> Optional[str]:
    if not isinstance(address, str):
        return f"is a {type(address).__name__}, not a \"host:port\" string"
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return "is not of the form \"host:port\""
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return "has no port number in 1..65535"
    return None


def tf_config_problem(text) -> Optional[str]:
    """What is wrong with ``TF_CONFIG``'s value ``text`` for ``MultiWorkerMirroredStrategy`` (None if usable).

    Every field is checked by type: ``"index": true`` or ``"1"`` is refused (JSON's ``true`` is no index), as are
    addresses that are not ``"host:port"`` strings, jobs other than chief and worker, and a repeated address.
    """
    if not text:
        return (f"the environment variable TF_CONFIG is not set: --strategy=multi_worker needs it on every worker, "
                f"e.g. {EXAMPLE}")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as e:
        return f"TF_CONFIG is not JSON ({_short(str(e))})"
    if not isinstance(config, dict):
        return f"TF_CONFIG must be a JSON object, got {type(config).__name__}; e.g. {EXAMPLE}"
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        return f"TF_CONFIG's \"cluster\" must be a non-empty JSON object of jobs, got {_short(cluster)}"
    if not isinstance(task, dict):
        return f"TF_CONFIG's \"task\" must be a JSON object with \"type\" and \"index\", got {_short(task)}"
    unknown = sorted(str(job) for job in cluster if job not in JOBS)
    if unknown:
        return (f"TF_CONFIG's cluster has jobs {_short(unknown)}: MultiWorkerMirroredStrategy takes chief and "
                f"worker")
    seen = {}
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            return (f"TF_CONFIG's cluster job {job!r} must be a non-empty list of \"host:port\" strings, got "
                    f"{_short(addresses)}")
        for i, address in enumerate(addresses):
            problem = _address_problem(address)
            if problem:
                return f"TF_CONFIG's cluster {job}[{i}] = {_short(address)} {problem}"
            if address in seen:
                return f"TF_CONFIG's cluster names {address} twice ({seen[address]} and {job}[{i}])"
            seen[address] = f"{job}[{i}]"
    if len(cluster.get("chief", [])) > 1:
        return f"TF_CONFIG's cluster has {len(cluster['chief'])} chiefs; at most one"
    kind, index = task.get("type"), task.get("index")
    if not isinstance(kind, str) or kind not in cluster:
        return f"TF_CONFIG's task type {_short(kind)} is not a job of its cluster ({', '.join(map(str, cluster))})"
    if isinstance(index, bool) or not isinstance(index, int):
        return (f"TF_CONFIG's task index must be an integer (0, 1, ...), got {_short(index)} "
                f"({type(index).__name__})")
    if not 0 <= index < len(cluster[kind]):
        return f"TF_CONFIG's task index {index} is not an index of the {len(cluster[kind])} {kind!r} addresses"
    return None


def own_address(text) -> str:
    """This process's ``host:port`` in a valid ``TF_CONFIG``."""
    config = json.loads(text)
    return config["cluster"][config["task"]["type"]][config["task"]["index"]]


def wait_for_peers(own: str, peers: list, timeout: float, prog: str = "train.py"):
    """Listens on this worker's port (so that the others see it started) and waits until every peer's port
    accepts a connection, at most ``timeout`` seconds; raises ValueError naming the addresses that never answered.

    Python runs here, unlike inside TensorFlow's start: Ctrl-C raises KeyboardInterrupt and SIGTERM ends the
    process, at any moment. The listening socket is closed (its pending connections reset, no TIME_WAIT on this
    port) before TensorFlow's server binds the same port.
    """
    port = int(own.rpartition(":")[2])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("", port))
            listener.listen(128)
        except OSError as e:
            raise ValueError(f"--strategy=multi_worker: this worker cannot listen on port {port} of its TF_CONFIG "
                             f"address {own} ({e.strerror or e}): is another process using it?") from None
        deadline = time.monotonic() + timeout
        pending = list(peers)
        while True:
            pending = unreachable(pending, timeout=0.5)
            if not pending:
                return
            if time.monotonic() >= deadline:
                named = ", ".join(f"{name} at {address}" for name, address in pending)
                raise ValueError(f"--strategy=multi_worker: the other workers did not all start within "
                                 f"--worker_timeout={timeout:g} s: nothing answers at {named} (start every worker "
                                 f"of TF_CONFIG, or raise --worker_timeout); nothing was written")
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    finally:
        listener.close()


def peer_addresses(text) -> list:
    """``[(name, address)]`` of every task of a valid ``TF_CONFIG`` but this process's own."""
    config = json.loads(text)
    me = (config["task"]["type"], config["task"]["index"])
    return [(f"{job}[{i}]", address) for job, addresses in config["cluster"].items()
            for i, address in enumerate(addresses) if (job, i) != me]


def unreachable(peers, timeout: float = 1.0) -> list:
    """The ``(name, address)`` pairs of ``peers`` that accept no TCP connection within ``timeout`` seconds."""
    out = []
    for name, address in peers:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                pass
        except (OSError, ValueError):
            out.append((name, address))
    return out


def worker_timeout_problem(timeout) -> Optional[str]:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 7 * 24 * 3600 \
            or timeout != timeout:
        return f"--worker_timeout must be a number of seconds in (0, 604800], got {_short(timeout)}"
    return None


def cpu_devices_problem(strategy: str, cpu_devices) -> Optional[str]:
    """Why ``--cpu_devices`` cannot be used with ``--strategy=strategy`` (None if it can)."""
    if isinstance(cpu_devices, bool) or not isinstance(cpu_devices, int) or cpu_devices < 0:
        return f"--cpu_devices must be an integer >= 0 (0: the CPU as it is), got {_short(cpu_devices)}"
    if cpu_devices > MAX_CPU_DEVICES:
        return (f"--cpu_devices={cpu_devices} is more than {MAX_CPU_DEVICES} logical CPU devices (each has its own "
                f"thread pools; the split is for testing --strategy=mirrored without GPUs)")
    if cpu_devices > 1 and strategy != "mirrored":
        return (f"--cpu_devices={cpu_devices} applies to --strategy=mirrored only (it splits the CPU into devices "
                f"for MirroredStrategy); --strategy={strategy} would not use them")
    return None


_WATCHDOG = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent's to answer
parent, timeout, message_file = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    time.sleep(0.2)
    if os.getppid() != parent:
        sys.exit(0)
    try:
        os.kill(parent, 0)
    except OSError:
        sys.exit(0)
sys.path.insert(0, sys.argv[4])
from tfhier.cluster import _timeout_message
sys.stderr.write(_timeout_message(message_file))
sys.stderr.flush()
os.kill(parent, signal.SIGKILL)
"""


def _timeout_message(path) -> str:
    """The watchdog's line: which peers of the plan in file ``path`` accept no connection."""
    with open(path, encoding="utf-8") as f:
        plan = json.load(f)
    os.remove(path)
    peers = [tuple(p) for p in plan["peers"]]
    missing = unreachable(peers)
    named = ", ".join(f"{name} at {address}" for name, address in missing)
    what = (f"nothing answers at {named}" if missing else
            f"every address answers ({', '.join(a for _, a in peers)}) but the cluster did not form; are they all "
            f"tfhier workers of this TF_CONFIG?")
    return (f"{plan['prog']}: error: --strategy=multi_worker: the other workers did not all start within "
            f"--worker_timeout={plan['timeout']:g} s: {what} (start every worker of TF_CONFIG, or raise "
            f"--worker_timeout); nothing was written\n")


class _BoundedStart:
    """While the body waits in TensorFlow's runtime (which holds Python's interpreter lock, so no Python thread or
    signal handler runs): SIGINT takes its default action (the process ends at once), as SIGTERM does until the
    runtime installs a handler of its own (it does while forming the cluster; hence :func:`wait_for_peers` first),
    and a watchdog process (SIGKILL, whatever handlers are installed) ends it at the deadline with a line naming the
    peers that do not answer."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, timeout, peers, prog, flag_timeout=None):
        self.timeout, self.peers, self.prog = timeout, peers, prog
        self.flag_timeout = timeout if flag_timeout is None else flag_timeout
        self._old = {}
        self._watchdog = None

    def __enter__(self):
        import subprocess
        import tempfile

        from tfhier.quiet import real_stderr

        fd, plan = tempfile.mkstemp(prefix="tfhier_workers_", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"peers": self.peers, "timeout": self.flag_timeout, "prog": self.prog}, f)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._plan = plan
        self._watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.timeout),
                                           plan, package_root], stdin=subprocess.DEVNULL,
                                          stderr=real_stderr(), pass_fds=(real_stderr(),) if real_stderr() != 2 else ())
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, signal.SIG_DFL)
        # stderr's filter (tfhier.quiet) is a Python thread, which cannot run during the wait: TensorFlow's lines
        # (and its signal handler's) would fill the pipe and block the process. They go to stderr itself meanwhile.
        sys.stderr.flush()
        self._saved_stderr = None
        if real_stderr() != 2:
            self._saved_stderr = os.dup(2)
            os.dup2(real_stderr(), 2)
        return self

    def __exit__(self, *exc):
        if self._saved_stderr is not None:
            os.dup2(self._saved_stderr, 2)
            os.close(self._saved_stderr)
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        try:
            os.remove(self._plan)
        except OSError:
            pass


def multi_worker_strategy(timeout: Optional[float] = None, prog: str = "train.py"):
    """``tf.distribute.MultiWorkerMirroredStrategy()`` for the cluster of ``TF_CONFIG`` (checked first), waiting at
    most ``timeout`` seconds (default :data:`DEFAULT_WORKER_TIMEOUT`) for the other workers; SIGTERM / SIGINT end
    the wait at once.  Both end the process (exit status 1, or 128 + the signal's number) with one line on stderr
    naming what did not answer: TensorFlow's start cannot be cancelled once begun."""
    text = os.environ.get("TF_CONFIG")
    problem = tf_config_problem(text)
    if problem:
        raise ValueError(f"--strategy=multi_worker: {problem}")
    timeout = DEFAULT_WORKER_TIMEOUT if timeout is None else timeout
    problem = worker_timeout_problem(timeout)
    if problem:
        raise ValueError(problem)
    peers = peer_addresses(text)
    from tfhier.quiet import real_stderr

    sys.stderr.flush()
    os.write(real_stderr(), (f"waiting up to {timeout:g} s for {len(peers)} other worker(s) of TF_CONFIG: "
                             f"{', '.join(f'{n} at {a}' for n, a in peers)} (SIGTERM / Ctrl-C end the wait)\n"
                             ).encode())
    start = time.monotonic()
    wait_for_peers(own_address(text), peers, timeout, prog)
    import tensorflow as tf

    # Every peer is up: TensorFlow's start now takes seconds. A peer that dies in between still cannot hang it.
    with _BoundedStart(max(timeout - (time.monotonic() - start), 30.0), peers, prog, flag_timeout=timeout):
        return tf.distribute.MultiWorkerMirroredStrategy()


__all__ = ["DEFAULT_WORKER_TIMEOUT", "MAX_CPU_DEVICES", "cpu_devices_problem", "multi_worker_strategy",
           "peer_addresses", "tf_config_problem", "unreachable", "worker_timeout_problem"]
