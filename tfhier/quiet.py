"""Keeps TensorFlow's start-up chatter out of the command lines' stderr.

TensorFlow's C++ runtime writes lines such as "oneDNN custom operations are
on", "Could not find cuda drivers", "failed call to cuInit" and "This
TensorFlow binary is optimized to use available CPU instructions" to stderr
before any logging configuration applies (``TF_CPP_MIN_LOG_LEVEL`` does not
silence them in TF 2.21).  :func:`install` routes file descriptor 2 through a
filter thread that drops exactly those lines and passes everything else
(warnings, errors, tracebacks) through unchanged and in order.  The command
lines call it when run as scripts; ``TFHIER_TF_LOGS=1`` turns it off.
"""

from __future__ import annotations

import atexit
import os
import re
import threading

NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cuda_platform|cuda_executor|cpu_feature_guard|gpu_device)\.cc:\d+\]"
    rb"|[IWE]\d{4} [\d:. ]+\d+ util\.cc:\d+\] oneDNN supports DT_"
    rb"|To enable the following instructions: .*in other operations, rebuild TensorFlow with the appropriate compiler"
    rb" flags\.)")

_installed = False
_real_stderr = 2


def real_stderr() -> int:
    """The file descriptor of the unfiltered stderr: for a line that must appear while the filter thread cannot
    run (TensorFlow holding Python's interpreter lock in a long wait, see tfhier.cluster)."""
    return _real_stderr


def install():
    """Filters fd 2 for the rest of the process (idempotent; no-op with ``TFHIER_TF_LOGS=1``)."""
    global _installed, _real_stderr
    if _installed or os.environ.get("TFHIER_TF_LOGS") == "1":
        return
    _installed = True
    real = _real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        pending = b""
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line + b"\n" for line in lines if not NOISE.match(line)]
            if kept:
                os.write(real, b"".join(kept))
        if pending and not NOISE.match(pending):
            os.write(real, pending)
        os.close(read_end)

    thread = threading.Thread(target=pump, name="tfhier-stderr-filter", daemon=True)
    thread.start()

    def restore():
        import sys

        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(real, 2)  # closes the pipe's last write end: the pump sees EOF, writes what is left, ends
        thread.join(timeout=5)

    atexit.register(restore)


__all__ = ["NOISE", "install"]
