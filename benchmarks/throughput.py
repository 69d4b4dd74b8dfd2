"""Throughput of the default models per image size: FLOPs, training and sampling speed, memory.

    python benchmarks/throughput.py [--sizes tiny,small] [--resolutions 28x1,32x3,64x3]
                                    [--batch-size 128] [--samplers ddim,ddpm] [--no-write]

For each model size and image shape: parameters, forward FLOPs per image (torch.utils.flop_counter),
training images/s (median of timed steps after a warm-up), sampling images/s per sampler, and the
peak memory of training (how far the peak resident set of a fresh process rises above its size
before the first training step). The training FLOP rate counts a backward pass as two forward passes (3x forward FLOPs
per image) and is set against this machine's measured fp32 matmul rate, the practical limit.
Each configuration runs in its own process so that memory peaks do not mix.
"""
from __future__ import annotations

import argparse
import multiprocessing
import platform
import time

import torch

from core import forward_flops, train_images_per_second
from report import markdown_table, write_section


def matmul_gflops(n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """The matmul rate of this machine in `dtype` (GFLOP/s): the best of `repeats` n x n products."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def sampling_images_per_second(net, channels: int, side: int, n: int, sampler: str, steps: int) -> float:
    from undiffuse.conditions import Classes, Condition, one_hot
    from undiffuse.guidance import denoiser
    from undiffuse.samplers import sample
    from undiffuse.schedule import linear

    schedule = linear()
    eps_fn = denoiser(net.eval(), schedule, cond=Condition(Classes.of(one_hot(torch.arange(n) % 10, 10))), guidance=1.0)
    x = torch.randn(n, channels, side, side)
    start = time.perf_counter()
    with torch.inference_mode():
        sample(sampler, eps_fn, schedule, x, steps=None if sampler == "ddpm" else steps)
    return n / (time.perf_counter() - start)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set (VmHWM) to the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(size: str, side: int, channels: int, batch: int, samplers: list[str], sample_n: int,
            sample_steps: int, repeats: int, threads: int | None = None) -> dict:
    """One configuration, in a fresh process: its figures as a table row."""
    if threads:
        torch.set_num_threads(threads)
    from undiffuse.training.recipe import unet_config
    from undiffuse.unet import UNet, count_parameters

    torch.manual_seed(0)
    net = UNet(unet_config(size, side, channels, 10))
    flops = forward_flops(net, side, channels)
    _reset_peak_rss()
    baseline = _status_kib("VmRSS")
    rate = train_images_per_second(net, side, batch, repeats, channels)
    peak_mib = (_status_kib("VmHWM") - baseline) / 1024
    row = {"model": size, "image": f"{side}x{side}x{channels}", "params": f"{count_parameters(net) / 1e6:.2f}M",
           "fwd GFLOP/img": f"{flops / 1e9:.3f}", f"train img/s (batch {batch})": f"{rate:.1f}",
           "train GFLOP/s": f"{3 * flops * rate / 1e9:.1f}", "train peak MiB": f"{peak_mib:.0f}"}
    for sampler in samplers:
        steps = "1000" if sampler == "ddpm" else str(sample_steps)
        row[f"{sampler} {steps} img/s"] = f"{sampling_images_per_second(net, channels, side, sample_n, sampler, sample_steps):.2f}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--resolutions", default="28x1,32x3,64x3", help="SIDExCHANNELS, comma-separated")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=8, help="timed training steps")
    parser.add_argument("--samplers", default="ddim,ddpm")
    parser.add_argument("--sample-n", type=int, default=64, help="images per sampling run")
    parser.add_argument("--sample-steps", type=int, default=50, help="steps of the samplers other than ddpm")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice). On a CPU shared with other busy "
                             "processes, 1 thread can be many times faster than 2: waiting threads spin")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in r.split("x")) for r in args.resolutions.split(",")]
    limit = matmul_gflops()
    print(f"fp32 matmul: {limit:.0f} GFLOP/s", flush=True)
    rows = []
    spawn = multiprocessing.get_context("spawn")
    for size in args.sizes.split(","):
        for side, channels in shapes:
            with spawn.Pool(1) as pool:
                row = pool.apply(measure, (size, side, channels, args.batch_size, args.samplers.split(","),
                                           args.sample_n, args.sample_steps, args.repeats, args.threads))
            row["of matmul limit"] = f"{float(row['train GFLOP/s']) / limit:.0%}"
            print(row, flush=True)
            rows.append(row)
    header = list(dict.fromkeys(k for r in rows for k in r))
    table = markdown_table(header, rows)
    command = (f"python benchmarks/throughput.py --sizes {args.sizes} --resolutions {args.resolutions} "
               f"--batch-size {args.batch_size} --repeats {args.repeats} --samplers {args.samplers} "
               f"--sample-n {args.sample_n} --sample-steps {args.sample_steps}"
               + (f" --threads {args.threads}" if args.threads else ""))
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}, fp32; fp32 matmul limit measured at {limit:.0f} GFLOP/s")
    text = "\n".join([f"Command: `{command}`. Machine: {machine}. Sampling at guidance 1, 10 classes.",
                      "", *table])
    print(text)
    if not args.no_write:
        write_section("throughput", "Throughput per model size and image shape", text)


if __name__ == "__main__":
    main()
