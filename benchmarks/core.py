"""Core figures of the demo model on this machine: size, FLOPs, training and sampling speed.

    .venv/bin/python benchmarks/core.py [--sizes tiny,small] [--batch-size 128]

Prints a table and writes it into BENCHMARKS.md between the `core` markers. Timings are medians of
repeated runs after a warm-up; no peer runs here (see the peer benchmarks for ratios).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from undiffuse.conditions import Classes, Condition, one_hot
from undiffuse.guidance import denoiser
from undiffuse.training.recipe import MIN_IMAGES, unet_config
from undiffuse.samplers import get, sample
from undiffuse.schedule import linear
from undiffuse.training import diffusion_loss, draw_noise
from undiffuse.unet import UNet, count_parameters

from report import markdown_table, write_section


def forward_flops(net: UNet, size: int, channels: int = 1) -> float:
    x, t, c = torch.randn(1, channels, size, size), torch.tensor([500]), Condition(Classes.of(torch.eye(10)[:1]))
    with FlopCounterMode(display=False) as counter:
        net(x, t, c)
    return counter.get_total_flops()


def train_images_per_second(net: UNet, size: int, batch: int, repeats: int = 8, channels: int = 1) -> float:
    schedule, opt = linear(), torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, channels, size, size)
    c = Condition(Classes.of(one_hot(torch.randint(10, (batch,)), 10)))
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        t, noise = draw_noise(schedule.T, x.shape, g)
        loss = diffusion_loss(net, schedule, x, t, noise, c, prediction="eps", min_snr=5.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def sampling_seconds(net: UNet, size: int, n: int, sampler: str) -> float:
    schedule = linear()
    eps_fn = denoiser(net.eval(), schedule, cond=Condition(Classes.of(one_hot(torch.arange(n) % 10, 10))), guidance=1.0)
    x = torch.randn(n, 1, size, size)
    start = time.perf_counter()
    with torch.inference_mode():
        sample(sampler, eps_fn, schedule, x, steps=None if get(sampler).walks_every_step else 50)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for size in args.sizes.split(","):
        net = UNet(unet_config(size, args.image_size, 1, 10))
        row = {
            "model": size,
            "params": f"{count_parameters(net) / 1e6:.2f}M",
            "fwd GFLOP/img": f"{forward_flops(net, args.image_size) / 1e9:.3f}",
            f"train img/s (batch {args.batch_size})": f"{train_images_per_second(net, args.image_size, args.batch_size):.0f}",
            "64 images, DDIM 50 steps (s)": f"{sampling_seconds(net, args.image_size, 64, 'ddim'):.1f}",
            "64 images, DDPM 1000 steps (s)": f"{sampling_seconds(net, args.image_size, 64, 'ddpm'):.1f}",
        }
        print(row, flush=True)
        rows.append(row)
    header = list(rows[0])
    table = markdown_table(header, rows)
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}, fp32, {args.image_size}x{args.image_size}x1, 10 classes")
    note = ("`undiffuse demo` picks `tiny` on this machine (auto: the largest size that trains on "
            f"{MIN_IMAGES:,} images within the budget). Sampling times are at guidance 1 (one network pass per step); "
            "any other guidance but 0 takes two passes per step.")
    text = "\n".join([f"Command: `python benchmarks/core.py`. Machine: {machine}.", "", *table, "", note])
    print(text)
    if not args.no_write:
        write_section("core", "Core figures of the demo models", text)


if __name__ == "__main__":
    main()
