"""The console's view of training: a live progress line or one line per validation interval."""

from __future__ import annotations

import time


def _clock(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """The console's view of training, in the run's own step count (not Keras' per-fit epochs).

    ``verbose``: ``'auto'`` (a live line on a terminal, else ``2``), ``1`` (a
    live line redrawn in place), ``2`` (one line per validation interval: for
    log files, nohup and batch jobs), ``0`` (nothing).  Only a few numbers are
    shown (loss, the bound per step, the total KL, steps/s, ETA), named as the
    TensorBoard tags; everything else is in TensorBoard.
    """

    def __init__(self, total, verbose, bound="elbo", stream=None):
        import sys

        self.stream = stream or sys.stdout
        if verbose == "auto":
            verbose = 1 if getattr(self.stream, "isatty", lambda: False)() else 2
        self.verbose = int(verbose)
        self.total, self.bound = int(total), bound
        self._start_time = self._start_step = None
        self._last_draw = 0.0
        self._live = False

    def begin(self, step):
        if self._start_time is None:
            self._start_time, self._start_step = time.monotonic(), step

    def _rate_eta(self, step):
        elapsed = time.monotonic() - self._start_time
        done = step - self._start_step
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        return rate, (self.total - step) / rate if rate else float("nan"), elapsed

    def _numbers(self, logs, prefix=""):
        keys = [("loss", "loss"), (f"neg_{self.bound}_per_step", f"neg_{self.bound}_per_step"), ("kl", "kl/total")]
        return "  ".join(f"{prefix}{label} {float(logs[k]):.4g}" for k, label in keys if k in logs)

    def step(self, step, logs):
        if self.verbose != 1:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.25 and step < self.total:
            return
        self._last_draw = now
        rate, eta, _ = self._rate_eta(step)
        width = 24
        filled = int(width * min(step / max(self.total, 1), 1.0))
        bar = "=" * filled + (">" if filled < width else "") + "." * max(width - filled - 1, 0)
        eta_text = _clock(eta) if eta == eta else "?"
        line = (f"\rstep {step}/{self.total} [{bar}] {self._numbers(logs)}  {rate:.2f} steps/s  ETA {eta_text}")
        self.stream.write(line.ljust(110))
        self.stream.flush()
        self._live = True

    def interval(self, step, train_logs, valid_logs):
        if self.verbose == 0:
            return
        rate, eta, elapsed = self._rate_eta(step)
        text = f"step {step}/{self.total}  train: {self._numbers(train_logs)}"
        if valid_logs:
            text += f"  |  valid: {self._numbers(valid_logs)}"
        text += f"  |  {rate:.2f} steps/s  elapsed {_clock(elapsed)}"
        if step < self.total and eta == eta:
            text += f"  ETA {_clock(eta)}"
        self.message(text)

    def message(self, text):
        if self.verbose == 0:
            return
        if self._live:
            self.stream.write("\n")
            self._live = False
        self.stream.write(text + "\n")
        self.stream.flush()
