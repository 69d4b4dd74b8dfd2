"""Class labels and context vectors that come beside the images (a .npy of ids or of vectors), and their names."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .formats import read_npy


_MAX_CLASSES = 100_000  # guards against a stray huge id in a labels file


def read_labels(path: str, n: int) -> tuple[Tensor, tuple[str, ...]]:
    array = read_npy(path, "labels")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 2:
        return _read_contexts(array, path, n)
    if array.ndim != 1 or array.dtype.kind not in "biuf":
        raise DataError(f"labels '{path}' has shape {array.shape} and dtype {array.dtype}; "
                        "expected non-negative integer class ids of shape (N,)")
    if len(array) != n:
        raise DataError(f"labels '{path}' holds {len(array)} labels but the data has {n} images")
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise DataError(f"labels '{path}' holds values that are not whole numbers")
    if n and (array.min() < 0 or array.max() >= _MAX_CLASSES):
        raise DataError(f"labels '{path}' holds ids from {array.min():g} to {array.max():g}; "
                        f"expected class ids 0..K-1 with K <= {_MAX_CLASSES}")
    ids = torch.from_numpy(array.astype(np.int64))
    return ids, tuple(str(i) for i in range(int(ids.max()) + 1 if n else 0))


def _read_contexts(array: np.ndarray, path: str, n: int) -> tuple[Tensor, tuple[str, ...]]:
    """(N, K) context vectors: one-hot, multi-hot or real-valued attributes, as the sprites ship."""
    if array.dtype.kind not in "biuf" or not np.isfinite(array).all():
        raise DataError(f"labels '{path}' must hold finite numbers, got dtype {array.dtype}")
    if len(array) != n:
        raise DataError(f"labels '{path}' holds {len(array)} context vectors but the data has {n} images")
    if not 1 <= array.shape[1] <= 1024:
        raise DataError(f"labels '{path}' has {array.shape[1]} context values per image; expected 1 to 1024")
    contexts = torch.from_numpy(array.astype(np.float32))
    return contexts, tuple(str(i) for i in range(array.shape[1]))
