"""Throughput side by side with the peers: undiffuse vs diffusers vs denoising-diffusion-pytorch.

    pip install -e '.[bench]' && pip install --no-deps denoising-diffusion-pytorch   # once
    python benchmarks/peers.py [--sizes tiny,small] [--resolutions 28x1,32x3] [--batch-size 128]

For each model size and image shape, the three libraries get networks of matched size (contenders.py)
and are measured in one process, in alternating rounds so that a drift in the machine's speed hits
all three alike: parameters, forward FLOPs per image, training images/s (each library's own training
step: loss, backward, clipping, optimizer, EMA where its recipe has one; the same batch for all),
the achieved training GFLOP/s (3x forward FLOPs per image) and DDIM sampling images/s. The table
quotes undiffuse / peer ratios; BENCHMARKS.md gets the table.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from contenders import LIBRARIES, build, forward_flops, parameters
from report import markdown_table, write_section
from throughput import matmul_gflops


def time_training(contender, batch: torch.Tensor, steps: int) -> float:
    """Median seconds per optimizer step over `steps` timed steps (after one untimed)."""
    contender.step(batch)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        contender.step(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_sampling(contender, n: int, steps: int) -> float:
    start = time.perf_counter()
    contender.sample(n, steps, 0)
    return time.perf_counter() - start


def measure(size: str, side: int, channels: int, args) -> list[dict]:
    contenders = {lib: build(lib, size, side, channels, batch_size=args.batch_size) for lib in args.libraries}
    batch = torch.rand(args.batch_size, channels, side, side) * 2 - 1
    step_times = {lib: [] for lib in contenders}
    sample_times = {lib: [] for lib in contenders}
    for _ in range(args.rounds):  # alternate, so that slow spells of the machine are shared
        for lib, c in contenders.items():
            step_times[lib].append(time_training(c, batch, args.repeats))
        for lib, c in contenders.items():
            sample_times[lib].append(time_sampling(c, args.sample_n, args.sample_steps))
    rows = []
    ours_train = args.batch_size / statistics.median(step_times["undiffuse"]) if "undiffuse" in contenders else None
    ours_sample = args.sample_n / statistics.median(sample_times["undiffuse"]) if "undiffuse" in contenders else None
    for lib, c in contenders.items():
        flops = forward_flops(c, side, channels)
        train = args.batch_size / statistics.median(step_times[lib])
        sampling = args.sample_n / statistics.median(sample_times[lib])
        rows.append({
            "model": size, "image": f"{side}x{side}x{channels}", "library": lib,
            "params": f"{parameters(c) / 1e6:.2f}M", "fwd GFLOP/img": f"{flops / 1e9:.3f}",
            "train img/s": f"{train:.1f}", "train GFLOP/s": f"{3 * flops * train / 1e9:.1f}",
            f"ddim-{args.sample_steps} img/s": f"{sampling:.2f}",
            "undiffuse/peer train": "" if lib == "undiffuse" or ours_train is None else f"{ours_train / train:.2f}x",
            "undiffuse/peer sample": "" if lib == "undiffuse" or ours_sample is None else f"{ours_sample / sampling:.2f}x",
            "recipe": c.recipe,
        })
        print({k: v for k, v in rows[-1].items() if k != "recipe"}, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--resolutions", default="28x1,32x3", help="SIDExCHANNELS, comma-separated")
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds over the libraries")
    parser.add_argument("--sample-n", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.libraries = args.libraries.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    limit = matmul_gflops()
    print(f"fp32 matmul: {limit:.0f} GFLOP/s", flush=True)
    rows = []
    for size in args.sizes.split(","):
        for res in args.resolutions.split(","):
            side, channels = (int(v) for v in res.split("x"))
            rows += measure(size, side, channels, args)
    for row in rows:
        row["of matmul limit"] = f"{float(row['train GFLOP/s']) / limit:.0%}"
    header = [h for h in rows[0] if h != "recipe"]
    table = markdown_table(header, rows)
    recipes = sorted({(r["library"], r["recipe"]) for r in rows})
    command = (f"python benchmarks/peers.py --sizes {args.sizes} --resolutions {args.resolutions} "
               f"--batch-size {args.batch_size} --repeats {args.repeats} --rounds {args.rounds} "
               f"--sample-n {args.sample_n} --sample-steps {args.sample_steps}"
               + (f" --threads {args.threads}" if args.threads else "")
               + (f" --libraries {','.join(args.libraries)}" if tuple(args.libraries) != LIBRARIES else ""))
    import diffusers
    from importlib.metadata import version

    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
               f"{torch.__version__}, fp32, matmul limit {limit:.0f} GFLOP/s; diffusers {diffusers.__version__}, "
               f"denoising-diffusion-pytorch {version('denoising-diffusion-pytorch')}")
    text = "\n".join([
        f"Command: `{command}`. Machine: {machine}. All unconditional, same batch, same data; each "
        "library's own training step and its DDIM sampler (deterministic, x0 clipped). Ratios above 1 mean "
        "undiffuse is faster. lucidrains' Unet has its fixed layout (two residual blocks per level, linear "
        "attention at every other level), so at the same width it has more parameters and FLOPs: compare its "
        "GFLOP/s as well as its images/s.", "", *table, "",
        "Training steps timed:", *[f"- {lib}: {recipe}" for lib, recipe in recipes]])
    print(text)
    if not args.no_write:
        write_section("peers", "Throughput against the peers (matched sizes, same process)", text)


if __name__ == "__main__":
    main()
