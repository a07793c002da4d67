"""Keeping a run directory safe: one owner at a time, checkpoints that survive a lost state file.

* :class:`RunLock`: an OS-level lock (``flock`` on the run directory itself,
  so no lock file can be left behind) held by the training process for its
  whole life and released by the kernel when it exits or crashes.  The owner
  writes its pid, host and start time to ``R/.owner`` so a second
  ``train.py`` is refused with a message naming the holder.
* :func:`checkpoint_prefixes`: the complete checkpoints present in a folder
  (``ckpt-N.index`` plus its data files), newest first, whatever the
  ``checkpoint`` state file says; :func:`repair_state` rewrites a missing or
  unreadable state file from them, so a run whose state file was lost resumes
  instead of restarting from step 0 over its own checkpoints.
* :func:`writable_problem`: whether a folder (or the nearest existing parent
  of one to be created) can be written, checked before work that would
  otherwise fail only at the end.
* :func:`model_variables`: the model's variables by path, as every training
  checkpoint holds them (written by :mod:`tfhier.training`, read by
  :mod:`tfhier.runs`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import time
from typing import Optional

_CKPT = re.compile(r"^(ckpt-(\d+))\.index$")
OWNER_FILE = ".owner"


class RunDirError(ValueError):
    """The run directory cannot be used for this run (message says why; nothing was changed)."""


class RunLock:
    """Exclusive ownership of ``run_dir`` by this process (see the module docstring)."""

    def __init__(self, run_dir):
        self.run_dir = os.fspath(run_dir)
        self._fd = None

    def acquire(self):
        import fcntl

        try:
            fd = os.open(self.run_dir, os.O_RDONLY)
        except OSError as e:
            raise RunDirError(f"--run_dir={self.run_dir}: cannot open it ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"--run_dir={self.run_dir}: cannot lock it ({e.strerror})") from None
            raise RunDirError(f"--run_dir={self.run_dir} is in use by another training process ({self.holder()}); "
                              f"wait for it to finish, stop it, or use another --run_dir") from None
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            from tfhier.fileio import atomic_write

            atomic_write(os.path.join(self.run_dir, OWNER_FILE), json.dumps(info) + "\n")
        except OSError:
            pass  # the lock holds without the note; a read-only directory fails later with its own message
        return self

    def holder(self) -> str:
        try:
            with open(os.path.join(self.run_dir, OWNER_FILE), encoding="utf-8") as f:
                info = json.load(f)
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "its pid is unknown"

    def release(self):
        if self._fd is None:
            return
        try:
            os.remove(os.path.join(self.run_dir, OWNER_FILE))
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def checkpoint_prefixes(directory) -> list:
    """Paths ``directory/ckpt-N`` of the checkpoints whose index and data files are present, newest first."""
    if not os.path.isdir(directory):
        return []
    names = set(os.listdir(directory))
    found = []
    for name in names:
        match = _CKPT.match(name)
        if match and any(n.startswith(match.group(1) + ".data-") for n in names):
            found.append((int(match.group(2)), os.path.join(directory, match.group(1))))
    return [path for _, path in sorted(found, reverse=True)]


def state_problem(directory) -> Optional[str]:
    """Why ``directory/checkpoint`` (the state file) does not describe the checkpoints present, or None."""
    import tensorflow as tf

    present = checkpoint_prefixes(directory)
    if not present:
        return None
    path = os.path.join(directory, "checkpoint")
    if not os.path.exists(path):
        return "the state file is missing"
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception as e:  # a garbled text proto
        return f"the state file is unreadable ({type(e).__name__})"
    if state is None or not state.model_checkpoint_path:
        return "the state file names no checkpoint"
    latest = state.model_checkpoint_path
    latest = latest if os.path.isabs(latest) else os.path.join(directory, latest)
    if os.path.normpath(latest) != os.path.normpath(present[0]):
        return f"the state file names {os.path.basename(latest)}, but the newest complete checkpoint is " \
               f"{os.path.basename(present[0])}"
    return None


def repair_state(directory) -> Optional[str]:
    """Rewrites ``directory/checkpoint`` from the checkpoints present when it does not describe them.

    Returns what was wrong (and is now repaired), or None when nothing was.
    """
    import tensorflow as tf

    problem = state_problem(directory)
    if problem is None:
        return None
    present = checkpoint_prefixes(directory)
    tf.compat.v1.train.update_checkpoint_state(
        directory, os.path.basename(present[0]), [os.path.basename(p) for p in reversed(present)])
    return problem


def writable_problem(path, what) -> Optional[str]:
    """Why files cannot be written in folder ``path`` (or in the nearest existing parent, if it does not exist
    yet), or None.  ``what`` names the flag."""
    probe = os.path.abspath(os.fspath(path))
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"{what}: {probe} is a file, not a folder"
    import tempfile

    try:  # a real write: permission bits say nothing for root, and nothing of read-only or immutable mounts
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".tmp_write_probe_")
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        return f"{what}: cannot write in {probe} ({e.strerror})"
    return None


def model_variables(model) -> dict:
    """The model's variables by path, for ``tf.train.Checkpoint``.

    ``tf.train.Checkpoint(model=keras_model)`` does not see Keras 3 layers held
    in Python lists (MS-STCN keeps one per latent layer), so the variables are
    named explicitly: a checkpoint then holds every weight, whatever the
    model's Python structure.
    """
    variables = {v.path: v for v in model.weights}
    if len(variables) != len(model.weights):
        raise ValueError(f"{model.name}: variable paths are not unique; cannot checkpoint by path")
    return variables


__all__ = ["OWNER_FILE", "RunDirError", "RunLock", "checkpoint_prefixes", "model_variables", "repair_state",
           "state_problem", "writable_problem"]
