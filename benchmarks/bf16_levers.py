"""What bf16 buys on this CPU, and which other levers still pay under it.

    taskset -c 0,1 .venv/bin/python benchmarks/bf16_levers.py [--configs tiny:28x1,small:32x3,small:64x3,medium:64x3]
                                                              [--widths 16,24,32,48,64] [--rounds 3] [--no-compile]

Per model and image shape, in one process, alternating rounds (a drift of the machine hits all alike):
- a training step (undiffuse's own Learner: forward, backward in the autocast, at batch 32 as the CPU
  recipe trains) in fp32, in bf16 autocast, and in bf16 with channels_last;
- the sampling forward pass (inference mode, batch 250 as `eval` samples) in fp32, bf16, bf16 with
  channels_last, and bf16 under torch.compile (Inductor's C++ backend, weights frozen) with the
  seconds its first call took to compile, and the sampling time it takes to win that back.
Then channel widths: the `tiny` layout (one block a level, 28x28x1) at base widths that do and do not
suit the matrix units (multiples of 16 and 32), their training step's images/s and GFLOP/s in bf16.
The achieved GFLOP/s count a training step as 3x forward FLOPs, set against the measured matmul rate.
"""
from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
import time

import torch

from core import forward_flops
from report import cpu_line, markdown_table, write_section
from throughput import matmul_gflops

TRAIN_BATCH, SAMPLE_BATCH = 32, 250


def learner(size: str, side: int, channels: int, precision: str, channels_last: bool = False, base: int | None = None):
    """undiffuse's Learner on random class-labelled images, in `precision`."""
    from undiffuse.data import ImageData
    from undiffuse.precision import Precision
    from undiffuse.training import TrainConfig
    from undiffuse.training import recipe
    from undiffuse.training.learner import Learner
    from undiffuse.training.setup import new_setup

    torch.manual_seed(0)
    data = ImageData(torch.rand(512, channels, side, side) * 2 - 1, torch.arange(512) % 10,
                     tuple(map(str, range(10))), "random")
    cfg = TrainConfig.flat(data="(in memory)", steps=10, batch_size=TRAIN_BATCH, model=size, grids=0,
                           channels_last=channels_last, precision=precision)
    sizes = dict(recipe.MODEL_SIZES)
    if base is not None:  # a width the recipe does not have: the tiny layout at `base` channels
        recipe.MODEL_SIZES[size] = dict(base=base, blocks=1)
    try:
        return Learner(new_setup(cfg, data), size, Precision(precision, "benchmark"))
    finally:
        recipe.MODEL_SIZES.clear()
        recipe.MODEL_SIZES.update(sizes)


def step_seconds(lrn) -> float:
    start = time.perf_counter()
    lrn.backward(0)
    lrn.model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def rates(workloads: dict, rounds: int, per_round: int = 3) -> dict[str, float]:
    """Median seconds of each workload, alternating, after a warm-up of each."""
    for work in workloads.values():
        work()
    times = {name: [] for name in workloads}
    for _ in range(rounds):
        for name, work in workloads.items():
            for _ in range(per_round):
                start = time.perf_counter()
                work()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def sampling(size: str, side: int, channels: int, rounds: int, compile_too: bool) -> tuple[dict, float | None]:
    """Seconds of one forward pass at batch SAMPLE_BATCH per lever; and the compile seconds."""
    from undiffuse.precision import Precision
    from undiffuse.training.recipe import unet_config
    from undiffuse.unet import UNet

    torch.manual_seed(0)
    net = UNet(unet_config(size, side, channels, 10)).eval().requires_grad_(False)
    nhwc = UNet(unet_config(size, side, channels, 10)).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    x, t = torch.randn(SAMPLE_BATCH, channels, side, side), torch.randint(1000, (SAMPLE_BATCH,))
    c = torch.nn.functional.one_hot(torch.arange(SAMPLE_BATCH) % 10, 10).float()
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    bf16, fp32 = Precision("bf16", "benchmark"), Precision("fp32", "benchmark")

    def forward(model, inputs, precision):
        def run():
            with torch.inference_mode(), precision.autocast("cpu"):
                model(inputs, t, c)
        return run

    workloads = {"fp32": forward(net, x, fp32), "bf16": forward(net, x, bf16),
                 "bf16 channels_last": forward(nhwc, x_nhwc, bf16)}
    compile_s = None
    if compile_too:
        import torch._inductor.config as inductor

        inductor.freezing = True
        torch._dynamo.reset()
        compiled = torch.compile(net, dynamic=False)
        start = time.perf_counter()
        forward(compiled, x, bf16)()
        compile_s = time.perf_counter() - start
        workloads["bf16 compiled"] = forward(compiled, x, bf16)
    return rates(workloads, rounds), compile_s


def measure(size: str, side: int, channels: int, rounds: int, compile_too: bool, limits: dict) -> dict:
    learners = {"fp32": learner(size, side, channels, "fp32"), "bf16": learner(size, side, channels, "bf16"),
                "bf16 channels_last": learner(size, side, channels, "bf16", channels_last=True)}
    train = rates({name: (lambda lrn=lrn: step_seconds(lrn)) for name, lrn in learners.items()}, rounds)
    sample, compile_s = sampling(size, side, channels, rounds, compile_too)
    flops = forward_flops(learners["fp32"].model, side, channels)
    row = {"model": size, "image": f"{side}x{side}x{channels}",
           "train fp32 img/s": f"{TRAIN_BATCH / train['fp32']:.0f}",
           "train bf16": f"{train['fp32'] / train['bf16']:.2f}x",
           "train bf16 + channels_last": f"{train['fp32'] / train['bf16 channels_last']:.2f}x",
           "train GFLOP/s fp32 / bf16": f"{3 * flops * TRAIN_BATCH / train['fp32'] / 1e9:.0f} / "
                                        f"{3 * flops * TRAIN_BATCH / train['bf16'] / 1e9:.0f}",
           "of matmul rate fp32 / bf16": f"{3 * flops * TRAIN_BATCH / train['fp32'] / 1e9 / limits['fp32']:.0%} / "
                                         f"{3 * flops * TRAIN_BATCH / train['bf16'] / 1e9 / limits['bf16']:.0%}",
           "sample fp32 img/s": f"{SAMPLE_BATCH / sample['fp32']:.0f}",
           "sample bf16": f"{sample['fp32'] / sample['bf16']:.2f}x",
           "sample bf16 + channels_last": f"{sample['fp32'] / sample['bf16 channels_last']:.2f}x"}
    if compile_s is not None:
        gain = sample["bf16"] / sample["bf16 compiled"]
        # eager sampling seconds after which compiling pays: compile_s = T (1 - 1/gain)
        pays = compile_s / (1 - 1 / gain) if gain > 1 else float("inf")
        row["sample bf16 compiled"] = (f"{sample['fp32'] / sample['bf16 compiled']:.2f}x ({gain:.2f}x bf16) after "
                                       f"{compile_s:.0f} s; pays after {pays:.0f} s of sampling")
    print(row, flush=True)
    return row


def widths(bases: list[int], rounds: int, limits: dict) -> list[dict]:
    learners = {base: learner("tiny", 28, 1, "bf16", base=base) for base in bases}
    fp32 = {base: learner("tiny", 28, 1, "fp32", base=base) for base in bases}
    workloads = {**{f"bf16 {b}": (lambda lrn=lrn: step_seconds(lrn)) for b, lrn in learners.items()},
                 **{f"fp32 {b}": (lambda lrn=lrn: step_seconds(lrn)) for b, lrn in fp32.items()}}
    seconds = rates(workloads, rounds)
    rows = []
    for base, lrn in learners.items():
        flops = forward_flops(lrn.model, 28, 1)
        bf, fp = seconds[f"bf16 {base}"], seconds[f"fp32 {base}"]
        rows.append({"base width": base, "multiple of 16 / 32": f"{'yes' if base % 16 == 0 else 'no'} / "
                                                                 f"{'yes' if base % 32 == 0 else 'no'}",
                     "fwd GFLOP/img": f"{flops / 1e9:.3f}", "bf16 train img/s": f"{TRAIN_BATCH / bf:.0f}",
                     "bf16 GFLOP/s": f"{3 * flops * TRAIN_BATCH / bf / 1e9:.0f}",
                     "of bf16 matmul": f"{3 * flops * TRAIN_BATCH / bf / 1e9 / limits['bf16']:.0%}",
                     "bf16 / fp32": f"{fp / bf:.2f}x"})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny:28x1,small:32x3,small:64x3,medium:64x3")
    parser.add_argument("--widths", default="16,24,32,48,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder = tempfile.mkdtemp(prefix="undiffuse-levers-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    limits = {name: matmul_gflops(dtype=dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    rows = []
    for config in args.configs.split(","):
        size, shape = config.split(":")
        side, channels = (int(v) for v in shape.split("x"))
        rows.append(measure(size, side, channels, args.rounds, not args.no_compile, limits))
    width_rows = widths([int(b) for b in args.widths.split(",")], args.rounds, limits) if args.widths else []
    text = "\n".join([
        f"Command: `taskset -c 0,1 python benchmarks/bf16_levers.py --configs {args.configs} --widths {args.widths} "
        f"--rounds {args.rounds}`. Machine: {cpu_line()}; 2 threads, torch {torch.__version__}; matmul "
        f"{limits['fp32']:.0f} GFLOP/s fp32, {limits['bf16']:.0f} GFLOP/s bf16. Training: undiffuse's forward and "
        f"backward at batch {TRAIN_BATCH} (class-conditional); sampling: the forward pass at batch {SAMPLE_BATCH} in "
        "inference mode. Ratios are speed-ups over fp32 in the same rounds.", "", *markdown_table(list(rows[0]), rows),
        *(["", "Channel widths (the tiny layout, 28x28x1, bf16 training step):", "",
           *markdown_table(list(width_rows[0]), width_rows)] if width_rows else []),
        "", "What undiffuse does with them: bf16 wherever `--precision auto`'s probe of the model times it at least "
        "1.1x faster (every row here); channels_last never in training (slower or even in every row here), and in "
        "sampling where the same probe times it at least 1.1x faster for the model at hand "
        "(`generation.faster_layout`); compiled sampling in `eval` when the batches after the first would take longer "
        "than `COMPILE_PAYS_AFTER` (240 s), since the compile time is repaid only after the seconds in the last "
        "column (a first compile on a fresh machine took about twice as long as with Inductor's cache warm); the "
        "model widths stay multiples of 16 for no reason of the matrix units: a width of 24 ran as efficiently as "
        "its neighbours, and the share of the bf16 matmul rate grows with the width, not with its divisibility."])
    print(text)
    if not args.no_write:
        write_section("bf16_levers", "What bf16 buys on this CPU, and the levers beside it", text)


if __name__ == "__main__":
    main()
