"""Preemption: SIGTERM and SIGINT (a scheduler's or the user's stop) end training after the current step with a
checkpoint written, and the process exits with status 128 + the signal's number."""

from __future__ import annotations

import os


class Preempted(Exception):
    """Training stopped on SIGTERM / SIGINT after writing a checkpoint at the current step."""

    def __init__(self, signum, step, checkpoint):
        import signal as _signal

        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.name = _signal.Signals(signum).name
        super().__init__(f"stopped by {self.name} at step {step}; checkpoint {checkpoint or '(none written)'}; "
                         f"rerun the same command to resume")

    @property
    def exit_status(self):
        """128 + the signal number: what a shell (and a scheduler) reads as "killed by that signal"."""
        return 128 + self.signum


class SignalStop:
    """SIGTERM and SIGINT stop training after the current step (a checkpoint is written); a second one exits at
    once.  Outside ``fit`` (while loading), the first one raises :class:`Preempted` straight away."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.received = None
        self.model = None
        self._old = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        import signal
        import sys

        if self.received is not None:  # the second signal: no more waiting
            sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting without a checkpoint\n")
            os._exit(128 + signum)
        self.received = signum
        if self.model is None:
            raise Preempted(signum, None, None)
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                         f"(send it again to exit at once)\n")
        self.model.stop_training = True

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
