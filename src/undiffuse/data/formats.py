"""Array formats: the bundled digit CSVs, MNIST's IDX files, CIFAR-10's python batches, and .npy arrays.
Nothing here unpickles anything but plain arrays."""
from __future__ import annotations

import gzip
import math
import importlib.util
import pickle
import tokenize
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..files import check_regular
from ..memory import require
from .transforms import fit_square, Loaded


LAYOUTS = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4"


def _package_file(spec: str, package: str, parts: tuple[str, ...]) -> Path:
    # find_spec locates the package without importing it (importing sklearn alone takes seconds).
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise DataError(f"data '{spec}' needs the {package} package; install it with pip")
    path = Path(list(found.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise DataError(f"data '{spec}': {path} is missing from the installed {package}")
    return path


def load_bundled_digits(spec: str, package: str, parts: tuple[str, ...], side: int, peak: float,
                         size: int) -> Loaded:
    """A CSV of flattened square images, one per row, with the class id in the last column."""
    with gzip.open(_package_file(spec, package, parts), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :-1] / peak).reshape(-1, 1, side, side)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return Loaded(fit_square(images, size), labels, tuple(str(d) for d in range(10)))


def idx_images_in(folder: Path) -> Path | None:
    """The training images of an IDX folder (train-images-idx3-ubyte[.gz]), else any images file."""
    found = sorted(folder.glob("*idx3-ubyte*"), key=lambda p: ("train" not in p.name, p.name))
    return found[0] if found else None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX array (LeCun's MNIST format): 0, 0, type 0x08 (ubyte), ndim, big-endian int32 sizes, data.
    The header is checked, and the memory the data needs, before the data is read (or inflated)."""
    try:
        with (gzip.open(path) if path.suffix == ".gz" else path.open("rb")) as f:
            head = f.read(4 + 4 * ndim)
            if len(head) < 4 + 4 * ndim or head[:3] != b"\0\0\x08" or head[3] != ndim:
                raise DataError(f"'{path}' is not an IDX file of unsigned bytes with {ndim} dimensions")
            shape = tuple(int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
            if 0 in shape:
                raise DataError(f"IDX file '{path}' has shape {shape}: it holds no images")
            count = math.prod(shape)
            require(f"IDX file '{path}' of shape {shape}", 5 * count)  # the bytes, then float32 images
            raw = f.read(count + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"IDX file '{path}' cannot be read ({e})") from None
    if len(raw) != count:
        raise DataError(f"IDX file '{path}' holds {len(raw)}{'+' if len(raw) > count else ''} bytes of data for "
                        f"shape {shape}, which needs {count}")
    return np.frombuffer(raw, np.uint8).reshape(shape)


def load_idx(images_path: Path, size: int | None) -> Loaded:
    images = _read_idx(images_path, 3)
    if len(images) == 0:
        raise DataError(f"IDX file '{images_path}' holds no images")
    labels_path = images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))
    labels, names = None, ()
    if labels_path != images_path and labels_path.is_file():
        ids = _read_idx(labels_path, 1)
        if len(ids) != len(images):
            raise DataError(f"'{labels_path}' holds {len(ids)} labels for {len(images)} images")
        labels = torch.from_numpy(ids.astype(np.int64))
        names = tuple(str(k) for k in range(int(ids.max()) + 1))
    unit = torch.from_numpy(images.astype(np.float32) / 255)[:, None]
    return Loaded(fit_square(unit, size or images.shape[1]), labels, names)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else: a pickle can name any function."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_cifar(folder: Path, size: int | None) -> Loaded:
    """The CIFAR-10 python version: data_batch_1..5 (10,000 x 3072 uint8 each) and batches.meta."""
    images, labels = [], []
    for path in sorted(folder.glob("data_batch_*")):
        batch = _unpickle(path)
        data, ids = batch.get(b"data"), batch.get(b"labels")
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8 \
                or not isinstance(ids, list) or len(ids) != len(data):
            raise DataError(f"'{path}' is not a CIFAR-10 batch (expected uint8 data of shape (N, 3072) and N labels)")
        if not all(isinstance(k, int) and 0 <= k < 10 for k in ids):
            raise DataError(f"'{path}': CIFAR-10 labels are class ids 0..9; found {_first_bad(ids)}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels += ids
    names = tuple(str(k) for k in range(10))
    if (folder / "batches.meta").is_file():
        meta = _unpickle(folder / "batches.meta").get(b"label_names")
        if meta and len(meta) == 10:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta)
    unit = torch.from_numpy(np.concatenate(images).astype(np.float32) / 255)
    return Loaded(fit_square(unit, size or 32), torch.tensor(labels, dtype=torch.int64), names)


def _first_bad(ids: list) -> str:
    bad = next(k for k in ids if not (isinstance(k, int) and 0 <= k < 10))
    return repr(bad)[:40]


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            value = _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"'{path}' is not a readable CIFAR-10 batch ({e})") from None
    if not isinstance(value, dict):
        raise DataError(f"'{path}' is not a CIFAR-10 batch")
    return value


def load_array(path: Path, size: int | None) -> Loaded:
    array = _to_nchw(read_npy(path, "data"), path)
    if array.shape[0] == 0 or array.shape[2] == 0 or array.shape[3] == 0:
        raise DataError(f"data '{path}' has shape {array.shape}: it holds no images")
    images = torch.from_numpy(_values_to_unit(array, path))
    if images.shape[1] == 4:  # drop alpha by compositing on white
        images = images[:, :3] * images[:, 3:] + (1 - images[:, 3:])
    h, w = images.shape[2:]
    size = size or min(max(h if h == w else min(h, w), 8), 1024)
    return Loaded(fit_square(images, size), None, ())


def read_npy(path: str | Path, role: str) -> np.ndarray:
    """A .npy array, never unpickled (a .npy may carry code), its header checked against the file's
    size and the memory it needs before the data is read."""
    check_regular(path, role, DataError)
    try:
        shape, dtype = _npy_header(Path(path))
        require(f"{role} '{path}' of shape {shape}", max(4, dtype.itemsize) * math.prod(shape) * 2)
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as e:  # a garbled header
        if isinstance(e, DataError):
            raise
        raise DataError(f"{role} '{path}' is not a readable .npy array: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(array, np.ndarray):  # np.load opens .npz archives whatever the file is called
        array.close()
        raise DataError(f"{role} '{path}' is an .npz archive; save one array with np.save")
    return array


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header; DataError when the file is shorter than the header claims."""
    with path.open("rb") as f:
        if f.read(6) != b"\x93NUMPY":
            return (), np.dtype(np.uint8)  # not a plain .npy (an .npz, or garbage): np.load decides
        f.seek(0)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)  # version 3 differs from 2 only in the header's text encoding
        have = path.stat().st_size - f.tell()
    need = math.prod(shape) * dtype.itemsize
    if dtype.hasobject:
        raise DataError(f"'{path}' is not a readable .npy array: it holds Python objects (a pickle), "
                        "and only numeric arrays are read")
    if need > have:
        raise DataError(f"'{path}' claims shape {shape} of {dtype} ({need:,} bytes) but holds {have:,}")
    return shape, dtype


def _to_nchw(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] in (3, 4):
        raise DataError(f"data '{path}' has shape {array.shape}, which looks like one (H, W, C) image; "
                        f"expected a stack of images, {LAYOUTS}")
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        first, last = array.shape[1] in (1, 3, 4), array.shape[3] in (1, 3, 4)
        # Both plausible, e.g. (N, 3, 4, 4): NCHW only if that makes the image square and NHWC would not.
        if first and (not last or array.shape[2] == array.shape[3] != array.shape[1]):
            return array
        if last:
            return array.transpose(0, 3, 1, 2)
    raise DataError(f"data '{path}' has shape {array.shape}; expected {LAYOUTS}")


def _values_to_unit(array: np.ndarray, path: Path) -> np.ndarray:
    """Pixel values as float32 in [0, 1], the range read from the dtype or, for floats, the values."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype.kind not in "uif":
        raise DataError(f"data '{path}' has dtype {array.dtype}; expected integers, floats or booleans")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"data '{path}' holds NaN or infinite values")
    if array.dtype in (np.uint8, np.uint16):
        return array.astype(np.float32) / np.iinfo(array.dtype).max
    low, high = float(array.min()), float(array.max())
    if array.dtype.kind == "f" and -1 <= low < 0 and high <= 1:
        return (array.astype(np.float32) + 1) / 2
    for top in ((1.0,) if array.dtype.kind == "f" else ()) + (255.0, 65535.0):
        if low >= 0 and high <= top:
            return array.astype(np.float32) / top
    raise DataError(f"data '{path}' has values from {low:g} to {high:g}; "
                    "expected [-1, 1], [0, 1], [0, 255] or [0, 65535]")
