"""Writing files so that a reader (or a crash) never sees half of one, with the permissions a user expects.

One helper for the whole package.  A file goes to a hidden temporary file in
the same folder first and is renamed into place once complete.  Temporary
files from ``tempfile.mkstemp`` are created 0600; the finished file gets
``0666 & ~umask`` instead (0644 under the usual umask 022), as ``open()``
would give it, so colleagues on a shared machine can read a run's
``config.json``, flags, evaluations and samples as they read its checkpoints.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Union


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, content: Union[str, bytes, Callable[[str], None]]) -> str:
    """Writes ``content`` (text, bytes, or a function that writes the file at the path it is given) to
    ``path`` atomically; creates the folder; returns the path."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".tmp_{base}.", suffix=os.path.splitext(base)[1])
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


__all__ = ["atomic_write"]
