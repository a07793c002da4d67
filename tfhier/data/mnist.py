"""Sequential binarized MNIST: every image a sequence of 784 single pixels.

This is the sequential-MNIST density-modelling setting of STCN (Aksan &
Hilliges 2019, §4, Table 2: "Seq-MNIST", the statically binarized MNIST of
Larochelle & Murray, 50,000/10,000/10,000 images): the 28x28 image is read in
row-major order (pixel ``(r, c)`` is step ``28 r + c``) and each step is one
binary value, so a sequence is a float32 ``[784, 1]`` array of 0/1.

File format: an ``.npz`` with keys ``train``, ``valid`` and ``test``, each a
``(N, 784)`` array of 0/1 (uint8 as distributed; any integer, bool or float
dtype holding only 0 and 1 is accepted).  The file is opened with
``allow_pickle=False``: an npz holding object arrays is refused.

Choices made here (the paper is silent): ``(N, 28, 28)`` arrays are accepted
and flattened row-major; ``limit`` keeps the first N images of each split (in
file order) so tests and quick runs do not materialise 70,000 x 784 floats.
"""

from __future__ import annotations

import os
import zipfile
from typing import Optional

import numpy as np

from tfhier.data.base import SPLITS, DataError, SequenceData
from tfhier.data.sources import DataSource

NUM_PIXELS = 784


def load_binarized_mnist(path: str | os.PathLike, *, limit: Optional[int] = None) -> SequenceData:
    """Loads binarized MNIST as pixel sequences.

    Args:
      path: the ``.npz`` file with keys ``train``/``valid``/``test``.
      limit: if given, keep only the first ``limit`` images of every split.

    Returns:
      ``SequenceData(name='mnist', kind='binary', feature_dim=1)`` whose
      sequences are float32 ``[784, 1]`` arrays (row-major pixel order).
      ``info`` holds ``image_shape`` ``(28, 28)`` and ``source``.

    Raises:
      DataError: naming the file, when it is missing or not an npz, a key is
        missing, an array does not have shape ``(N, 784)`` (or ``(N, 28, 28)``)
        with ``N > 0``, or holds values other than 0 and 1.
    """
    path = os.fspath(path)
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise DataError(f"load_binarized_mnist: limit must be a positive integer, got {limit!r}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: binarized MNIST file not found")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # not an npz / truncated zip / pickled object
        raise DataError(
            f"{path}: not a readable .npz with keys train/valid/test ({type(e).__name__}: {e})") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, expected an .npz with keys train/valid/test")
    splits = {}
    with npz:
        missing = [k for k in SPLITS if k not in npz.files]
        if missing:
            raise DataError(
                f"{path}: missing key(s) {missing}; expected keys train/valid/test, found {npz.files}")
        for split in SPLITS:
            try:
                arr = npz[split]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
                raise DataError(f"{path}: cannot read array '{split}' ({type(e).__name__}: {e})") from e
            if arr.ndim == 3 and arr.shape[1:] == (28, 28):
                arr = arr.reshape(arr.shape[0], NUM_PIXELS)
            if arr.ndim != 2 or arr.shape[1] != NUM_PIXELS or arr.shape[0] == 0:
                raise DataError(
                    f"{path}: '{split}' has shape {arr.shape}, expected (N>0, 784) binary images")
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise DataError(f"{path}: '{split}' has dtype {arr.dtype}, expected 0/1 integers")
            if limit is not None:
                arr = arr[:limit]
            bad = (arr != 0) & (arr != 1)
            if bad.any():
                n, p = np.argwhere(bad)[0]
                raise DataError(
                    f"{path}: '{split}' image {n} pixel {p} is {arr[n, p]!r}; expected only 0 and 1 "
                    f"(binarized MNIST)")
            flat = arr.astype(np.float32)[:, :, None]  # [N, 784, 1]
            splits[split] = list(flat)
    return SequenceData(
        name="mnist", feature_dim=1, kind="binary",
        info={"image_shape": (28, 28), "source": path}, **splits).check()


def _load(data_dir, seed):
    return load_binarized_mnist(data_dir)


SOURCE = DataSource(
    name="mnist", description="binarized MNIST as sequences of 784 pixels", load=_load, shape=("binary", 1),
    data_dir="the binarized MNIST .npz file")
