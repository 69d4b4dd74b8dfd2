"""Throughput side by side with the peers: undiffuse vs diffusers vs denoising-diffusion-pytorch.

    pip install -e '.[bench]' && pip install --no-deps denoising-diffusion-pytorch   # once
    taskset -c 0,1 python benchmarks/peers.py [--sizes tiny,small] [--resolutions 28x1,32x3] [--batch-size 128]

For each model size and image shape, the three libraries get networks of matched size (contenders.py)
and are measured in one process, in alternating rounds so that a drift in the machine's speed hits
all of them alike, twice over: as their users run them on a CPU ("default": the peers in fp32,
undiffuse with its default --precision auto), and every library under bf16 autocast. Per cell:
parameters, forward FLOPs per image, training images/s (each library's own training step: loss,
backward, clipping, optimizer, EMA where its recipe has one; the same batch for all), the achieved
training GFLOP/s (3x forward FLOPs per image) as a share of this machine's measured matmul rate in
the precision the step ran in, and DDIM sampling images/s. The ratios are undiffuse as its users
run it (default) over each row. BENCHMARKS.md gets the table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # lucidrains' sampler draws a progress bar of its own

import torch  # noqa: E402

from contenders import LIBRARIES, PRECISIONS, build, forward_flops, parameters  # noqa: E402
from report import cpu_line, markdown_table, write_section  # noqa: E402
from throughput import matmul_gflops  # noqa: E402


def time_training(contender, batch: torch.Tensor, steps: int) -> float:
    """Median seconds per optimizer step over `steps` timed steps (after one untimed)."""
    contender.step(batch)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        contender.step(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_sampling(contender, n: int, steps: int, repeats: int = 3) -> float:
    """Median seconds of `repeats` DDIM samplings of n images (a single one of half a second is noisy)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        contender.sample(n, steps, 0)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(size: str, side: int, channels: int, args, limits: dict[str, float]) -> list[dict]:
    contenders = {(lib, mode): build(lib, size, side, channels, batch_size=args.batch_size, precision=mode)
                  for mode in args.precisions for lib in args.libraries}
    batch = torch.rand(args.batch_size, channels, side, side) * 2 - 1
    step_times = {key: [] for key in contenders}
    sample_times = {key: [] for key in contenders}
    for _ in range(args.rounds):  # alternate, so that slow spells of the machine are shared
        for key, c in contenders.items():
            step_times[key].append(time_training(c, batch, args.repeats))
        for key, c in contenders.items():
            sample_times[key].append(time_sampling(c, args.sample_n, args.sample_steps))
    train = {key: args.batch_size / statistics.median(t) for key, t in step_times.items()}
    sampling = {key: args.sample_n / statistics.median(t) for key, t in sample_times.items()}
    ours = ("undiffuse", "default")
    rows = []
    for (lib, mode), c in contenders.items():
        flops = forward_flops(c, side, channels)
        ran_in = "bf16" if mode == "bf16" or "trains in bf16" in c.recipe else "fp32"
        rows.append({
            "model": size, "image": f"{side}x{side}x{channels}", "library": lib, "precision": _mode(lib, mode, c),
            "params": f"{parameters(c) / 1e6:.2f}M", "fwd GFLOP/img": f"{flops / 1e9:.3f}",
            "train img/s": f"{train[lib, mode]:.1f}", f"ddim-{args.sample_steps} img/s": f"{sampling[lib, mode]:.2f}",
            "undiffuse/this train": f"{train[ours] / train[lib, mode]:.2f}x" if ours in train else "",
            "undiffuse/this sample": f"{sampling[ours] / sampling[lib, mode]:.2f}x" if ours in sampling else "",
            "train GFLOP/s": f"{3 * flops * train[lib, mode] / 1e9:.1f}",
            "of matmul rate": f"{3 * flops * train[lib, mode] / 1e9 / limits[ran_in]:.0%} of {ran_in}",
            "recipe": c.recipe,
        })
        print({k: v for k, v in rows[-1].items() if k != "recipe"}, flush=True)
    return rows


def _mode(library: str, mode: str, contender) -> str:
    if mode == "bf16":
        return "bf16 autocast"
    if library != "undiffuse":
        return "fp32 (its default)"
    train, sample = (contender.recipe.split("trains in ")[1].split(", samples in "))
    return f"auto: {train} training, {sample} sampling"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--resolutions", default="28x1,32x3", help="SIDExCHANNELS, comma-separated")
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds over the libraries")
    parser.add_argument("--sample-n", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.libraries, args.precisions = args.libraries.split(","), args.precisions.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    limits = {name: matmul_gflops(dtype=dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"matmul: {limits['fp32']:.0f} GFLOP/s fp32, {limits['bf16']:.0f} GFLOP/s bf16", flush=True)
    rows = []
    for size in args.sizes.split(","):
        for res in args.resolutions.split(","):
            side, channels = (int(v) for v in res.split("x"))
            rows += measure(size, side, channels, args, limits)
    header = [h for h in rows[0] if h != "recipe"]
    table = markdown_table(header, rows)
    recipes = sorted({(r["library"], r["recipe"]) for r in rows})
    command = (f"taskset -c 0,1 python benchmarks/peers.py --sizes {args.sizes} --resolutions {args.resolutions} "
               f"--batch-size {args.batch_size} --repeats {args.repeats} --rounds {args.rounds} "
               f"--sample-n {args.sample_n} --sample-steps {args.sample_steps}"
               + (f" --threads {args.threads}" if args.threads else "")
               + (f" --libraries {','.join(args.libraries)}" if tuple(args.libraries) != LIBRARIES else "")
               + (f" --precisions {','.join(args.precisions)}" if tuple(args.precisions) != PRECISIONS else ""))
    import diffusers
    from importlib.metadata import version

    machine = (f"{cpu_line()}; {torch.get_num_threads()} threads, torch {torch.__version__}, matmul "
               f"{limits['fp32']:.0f} GFLOP/s fp32 and {limits['bf16']:.0f} GFLOP/s bf16; diffusers "
               f"{diffusers.__version__}, denoising-diffusion-pytorch {version('denoising-diffusion-pytorch')}")
    text = "\n".join([
        f"Command: `{command}`. Machine: {machine}. All unconditional, same batch, same data; each "
        "library's own training step and its DDIM sampler (deterministic, x0 clipped). The ratios are "
        "undiffuse as its users run it (--precision auto) over each row: above 1 means undiffuse is faster. "
        "lucidrains' Unet has its fixed layout (two residual blocks per level, linear attention at every "
        "other level), so at the same width it has more parameters and FLOPs: compare its GFLOP/s as well "
        "as its images/s.", "", *table, "",
        "Training steps timed:", *[f"- {lib}: {recipe}" for lib, recipe in recipes]])
    print(text)
    if not args.no_write:
        write_section("peers", "Throughput against the peers (matched sizes, same process)", text)


if __name__ == "__main__":
    main()
