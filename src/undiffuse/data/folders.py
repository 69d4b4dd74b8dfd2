"""A folder of images; class = first-level sub-folder."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image

from ..errors import DataError
from .decode import FORMATS, IMAGE_EXTENSIONS, read_image
from .transforms import Loaded, set_channels


def load_folder(root: Path, size: int | None) -> Loaded:
    with warnings.catch_warnings():  # the CLI reports `skipped`; PIL must not warn mid-run
        warnings.simplefilter("ignore")
        return _load_folder_quietly(root, size)


def _load_folder_quietly(root: Path, size: int | None) -> Loaded:
    files = _find_images(root)
    if not files:
        raise DataError(f"folder '{root}' holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    names = _class_names(root, files)
    size = size or _infer_folder_size(files)
    images, kept = [], []
    for path in files:
        try:
            images.append(read_image(path, size))
            kept.append(path)
        except DataError:  # unreadable, of another format, or too large: counted as skipped
            continue
    if not images:
        raise DataError(f"folder '{root}': none of its {len(files)} image files could be read")
    channels = max(image.shape[0] for image in images)  # 1 only if every image is grayscale
    stacked = torch.cat([set_channels(image[None], channels) for image in images])
    labels = None
    if names:
        labels = torch.tensor([names.index(p.relative_to(root).parts[0]) for p in kept], dtype=torch.int64)
    return Loaded(stacked, labels, names, len(files) - len(kept), tuple(p.relative_to(root).as_posix() for p in kept))


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
            with Image.open(path, formats=FORMATS) as img:
                sizes.add(img.size)
        except Exception:  # counted as skipped when the image itself is read
            continue
    if len(sizes) == 1:
        (w, h), = sizes
        if w == h and 8 <= w <= 128:
            return w
    return 64
