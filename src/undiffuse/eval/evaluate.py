"""The library side of `undiffuse eval`: the images to score a run by, real and generated.

Generated images come from the run (conditional runs cycle through their classes, so that every
class is as frequent as any other) or from a .npy file as `undiffuse sample --out F.npy` writes it;
the real ones are the run's training data (config.json records its spec) or any other spec, loaded
at the run's image size and channels.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..data import DataError, load_data
from ..errors import UsageError
from ..generation import LoadedRun, can_compile, generate, with_compiled_network
from .efficientnet import PACKAGE as EFFNET_PACKAGE

MAX_REAL = 50_000  # a random subset of larger real sets: the statistics settle long before


def default_features(spec: str) -> str:
    """The digit network for the bundled digit sets, the emoji network for the emoji; for anything
    else EfficientNet-Lite0's ImageNet features where its package is installed (offline), else
    Inception-v3 (FID's own, whose weights are a download)."""
    if spec in ("mnist", "digits"):
        return "digits"
    if spec == "emoji":
        return "emoji"
    return "effnet-lite0" if importlib.util.find_spec(EFFNET_PACKAGE) else "inception"


def real_images(spec: str, image_size: int, channels: int, limit: int = MAX_REAL, seed: int = 0) -> Tensor:
    """The images of `spec` in [-1, 1] at the run's shape, at most `limit` of them, drawn at random."""
    images = load_data(spec, image_size=image_size, channels=channels).images
    if len(images) > limit:
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit]]
    return images


def read_samples(path: str | Path, channels: int, image_size: int) -> Tensor:
    """A float .npy of images N x C x H x W in [0, 1], checked against the run's shape, mapped to [-1, 1]."""
    path = Path(path)
    if path.suffix.lower() != ".npy" or not path.is_file():
        raise DataError(f"samples '{path}': not an existing .npy file")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"samples '{path}' cannot be read ({' '.join(str(e).split())})") from None
    expected = (channels, image_size, image_size)
    if array.ndim != 4 or array.shape[1:] != expected or not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"samples '{path}': expected float images N x {' x '.join(map(str, expected))} "
                        f"in [0, 1] (as `undiffuse sample --out F.npy` writes), got {array.dtype} {array.shape}")
    if len(array) < 2 or not np.isfinite(array).all() or array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise DataError(f"samples '{path}': need at least 2 finite images with values in [0, 1]")
    return torch.from_numpy(array.astype(np.float32)).clamp(0, 1) * 2 - 1


def balanced_labels(run: LoadedRun, n: int) -> list[int] | None:
    """0, 1, ..., K-1, 0, 1, ...: every class equally often (None for an unconditional run)."""
    return [i % run.num_classes for i in range(n)] if run.num_classes else None


# Compiling the network (torch.compile, Inductor) sampled 1.23x (tiny, 28x28) to 1.37x (small, 32x32x3)
# as fast as eager bf16 on a CPU, after 36-39 s of compiling: it pays after 132-211 s of sampling
# (benchmarks/bf16_levers.py). An eval whose remaining batches would take longer than this compiles.
COMPILE_PAYS_AFTER = 240.0


def generate_in_batches(run: LoadedRun, n: int, *, batch_size: int = 250, seed: int = 0, progress: bool = False,
                        compile: str = "auto", clock: Callable[[], float] = time.perf_counter, **options) -> Tensor:
    """n images of `run` in [-1, 1], sampled batch by batch behind a progress bar.

    Image i is seeded seed + i (as in `generate`), so the batch size does not change the images.
    compile: "auto" times the first batch and compiles the network for the full batches after it when
    they would take longer than COMPILE_PAYS_AFTER seconds and the machine can compile; "yes", "no".
    """
    from tqdm.auto import tqdm

    if compile not in ("auto", "yes", "no"):
        raise UsageError(f"compile must be auto, yes or no, got {compile!r}")
    labels = balanced_labels(run, n)
    out, current = [], with_compiled_network(run) if compile == "yes" and can_compile(run) else run
    with tqdm(total=n, disable=not progress, unit="img", desc="sampling", dynamic_ncols=True) as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            began = clock()
            full = stop - start == batch_size  # a partial batch would compile anew for its shape
            out.append(generate(current if full else run, stop - start, seed=seed + start, batch_size=batch_size,
                                labels=None if labels is None else labels[start:stop], **options))
            bar.update(stop - start)
            if start == 0 and compile == "auto" and (n - stop) // batch_size * (clock() - began) > COMPILE_PAYS_AFTER \
                    and can_compile(run):
                current = with_compiled_network(run)
    return torch.cat(out)


def free_path(folder: Path, stem: str = "eval", suffix: str = ".json") -> Path:
    """folder/eval.json, or eval-2.json, eval-3.json, ...: an earlier evaluation is never replaced."""
    path, k = folder / f"{stem}{suffix}", 2
    while path.exists():
        path, k = folder / f"{stem}-{k}{suffix}", k + 1
    return path
