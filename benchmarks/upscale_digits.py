"""Super-resolution on the digits (SR3): 7x7 -> 28x28 (factor 4) and 14x14 -> 28x28 (factor 2).

    .venv/bin/python benchmarks/upscale_digits.py [--minutes 5] [--n 500] [--steps 10] [--cores 0,1]
        [--out runs/upscale-digits] [--no-write]

The bundled MNIST holds 5,000 digits sorted by class (500 of each), so its last 500 are all nines:
instead the last 50 of each class are held out (500 digits, 50 per class) and the other 4,500 are
saved as OUT/train.npy, which each run trains on (`--task upscale --factor F --data OUT/train.npy`,
tiny model, --minutes on one CPU core with one thread, the two runs at once, one per core in
--cores). The held-out digits are never trained on: each is
area-downsampled by F, then upsampled back by bicubic interpolation and by undiffuse (DDIM, --steps,
seed 0, the default augmentation level), and both are compared with the original: PSNR (in [0, 1]
pixels, mean over images), FID in the shipped digit features (undiffuse.eval.metrics), and the share
the shipped digit judge reads as the original's label. The picture shows a few held-out digits:
low-res (nearest) | bicubic | undiffuse | original.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from digit_judge import fidelity, judge
from report import markdown_table, write_section
from undiffuse.conditions.lowres import downsample, nearest, upsample
from undiffuse.data import load_data
from undiffuse.edit import upscale
from undiffuse.eval.metrics import feature_extractor, frechet_distance
from undiffuse.generation import load_run
from undiffuse.viz import save_grid

HERE = Path(__file__).resolve().parent
PICTURE = HERE / "upscale_digits.png"
FACTORS = (4, 2)
HELD_PER_CLASS = 50  # the last 50 digits of each class are held out: 500 of the 5,000


def split(out: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """OUT/train.npy (the 4,500 training digits as uint8) and the held-out images and labels, interleaved
    by class (0, 1, ..., 9, 0, ...) so that any --n first of them cover the classes evenly."""
    data = load_data("mnist")
    held = torch.zeros(len(data.images), dtype=torch.bool)
    for k in range(10):
        held[torch.nonzero(data.labels == k).flatten()[-HELD_PER_CLASS:]] = True
    out.mkdir(parents=True, exist_ok=True)
    train = out / "train.npy"
    np.save(train, ((data.images[~held, 0] + 1) * 127.5).round().clamp(0, 255).numpy().astype(np.uint8))
    index = torch.nonzero(held).flatten()
    order = index[torch.argsort(torch.arange(len(index)) % HELD_PER_CLASS * 10 + data.labels[index], stable=True)]
    return train, data.images[order], data.labels[order]


def train(data: Path, minutes: float, out: Path, cores: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    for i, factor in enumerate(FACTORS):
        command = ["taskset", "-c", cores[i % len(cores)], sys.executable, "-m", "undiffuse", "train",
                   "--data", str(data), "--task", "upscale", "--factor", str(factor), "--model", "tiny",
                   "--minutes", str(minutes), "--out", str(out / f"x{factor}"), "--overwrite", "--quiet",
                   "--grids", "0"]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a training run failed: {' '.join(map(str, p.args))}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of 10 log10(1 / MSE), pixels in [0, 1]."""
    mse = ((a - b) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).mean().item()


def scores(name: str, images: torch.Tensor, originals: torch.Tensor, labels, judge_net, extract) -> dict:
    return {"method": name, "PSNR (dB)": f"{psnr(images, originals):.2f}",
            "FID (digit features)": f"{frechet_distance(extract(originals), extract(images)):.2f}",
            "judge reads the label": f"{fidelity(judge_net, images, labels):.3f}"}


def evaluate(out: Path, held: torch.Tensor, labels: torch.Tensor, steps: int, judge_net) -> tuple[list, list]:
    extract = feature_extractor("digits")
    rows = [{"factor": "-", "method": "original", "PSNR (dB)": "-", "FID (digit features)": "-",
             "judge reads the label": f"{fidelity(judge_net, held, labels):.3f}"}]
    tiles = []
    for factor in FACTORS:
        run = load_run(out / f"x{factor}")
        low = downsample(held, factor)
        bicubic = upsample(low, factor)
        ours = upscale(run, low, sampler="ddim", steps=steps, seed=0)
        side = 28 // factor
        for name, images in (("bicubic", bicubic), ("undiffuse", ours)):
            rows.append({"factor": f"{factor} ({side}x{side} -> 28x28)",
                         **scores(name, images, held, labels, judge_net, extract)})
            print(rows[-1], flush=True)
        k = min(8, len(held))
        tiles += [torch.stack([nearest(low[:k], factor), bicubic[:k], ours[:k], held[:k]], 1).flatten(0, 1)]
    return rows, tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training minutes of each run")
    parser.add_argument("--n", type=int, default=500, help="held-out digits scored (at most 500)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--cores", default="0,1", help="the cores the two runs train on, one each, in turn")
    parser.add_argument("--out", default="runs/upscale-digits")
    parser.add_argument("--no-write", action="store_true", help="print only; the picture goes to OUT")
    args = parser.parse_args()
    out = Path(args.out)
    data, held, labels = split(out)
    held, labels = held[:args.n], labels[:args.n]
    train(data, args.minutes, out, args.cores.split(","))
    judge_net, accuracy = judge()
    rows, tiles = evaluate(out, held, labels, args.steps, judge_net)
    picture = out / PICTURE.name if args.no_write else PICTURE
    save_grid(torch.cat(tiles), picture, nrow=4)
    steps = {f: load_run(out / f"x{f}").config["plan"]["steps"] for f in FACTORS}
    text = "\n".join([
        f"Command: `python benchmarks/upscale_digits.py --minutes {args.minutes:g} --n {args.n}`. Tiny model, "
        f"`--task upscale` on 4,500 of the bundled MNIST digits, {args.minutes:g} minutes on one core each "
        f"({', '.join(f'factor {f}: {s} steps' for f, s in steps.items())}); scored on {len(held)} held-out digits "
        f"(from the last {HELD_PER_CLASS} of each class, never trained on), area-downsampled, then upsampled by bicubic interpolation or by undiffuse "
        f"(DDIM {args.steps} steps, augmentation level 0.1). PSNR in [0, 1] pixels; FID against the originals "
        f"in the shipped digit features; the share the digit judge (accuracy {accuracy:.3f} on its own held-out "
        "digits) reads as the original's label.", "",
        *markdown_table(["factor", "method", "PSNR (dB)", "FID (digit features)", "judge reads the label"], rows),
        "", f"![low-res | bicubic | undiffuse | original](benchmarks/{PICTURE.name}) (each row: low-res, nearest-upscaled | "
        "bicubic | undiffuse | original; factor 4 first, then 2)"])
    print(text)
    print(f"picture: {picture}")
    if not args.no_write:
        write_section("upscale_digits", "Super-resolution of held-out digits (SR3): undiffuse against bicubic", text)


if __name__ == "__main__":
    main()
