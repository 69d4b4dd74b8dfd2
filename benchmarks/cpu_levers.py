"""The CPU speed levers, each measured against plain eager training in the same process.

    .venv/bin/python benchmarks/cpu_levers.py [--configs tiny:28x1,small:32x3] [--rounds 3] [--no-write]

For each model and image shape, undiffuse's own training step (Trainer.train_step: loss, backward,
clipping, AdamW, EMA; batch 128) runs in alternating rounds under each lever, so that a drift in
the machine's speed hits all of them alike, and the table quotes each lever's images/s relative to
eager NCHW with 2 threads:
- channels_last memory layout (`--channels-last`),
- one thread instead of two (the two vCPUs here are one physical core's hyperthreads),
- torch.compile (Inductor's C++ backend) of the training step: steady-state speed, and the seconds
  its first step took to compile,
- torch.compile with weight freezing for sampling (the forward pass at batch 200, inference mode),
- jemalloc as the allocator (LD_PRELOAD, in a child process, when libjemalloc is installed),
- two torchrun processes of one thread each (data-parallel over gloo) instead of one process of two
  threads, both through `undiffuse train` (its log's images/s over 30 steps of 128 random images).
Where the profile goes: the share of one eager training step spent in the oneDNN convolutions.
"""
from __future__ import annotations

import argparse
import atexit
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from report import markdown_table, write_section
from throughput import matmul_gflops

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
BATCH = 128


def trainer(size: str, side: int, channels: int, channels_last: bool = False):
    from undiffuse.data import ImageData
    from undiffuse.training import TrainConfig, Trainer

    torch.manual_seed(0)
    labels = torch.arange(512) % 10
    data = ImageData(torch.rand(512, channels, side, side) * 2 - 1, labels, tuple(map(str, range(10))), "random")
    folder = tempfile.mkdtemp(prefix="undiffuse-levers-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    cfg = TrainConfig.flat(data="(in memory)", steps=1000, batch_size=BATCH, model=size, grids=0, checkpoint_minutes=1e9,
                           channels_last=channels_last)
    return Trainer.create(cfg, folder, overwrite=True, data=data)


def seconds_per_step(step, repeats: int = 4, threads: int = 2) -> float:
    torch.set_num_threads(threads)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    torch.set_num_threads(2)
    return statistics.median(times)


def conv_share(tr) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tr.train_step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return conv / total


def compiled_training(size, side, channels):
    tr = trainer(size, side, channels)
    torch._dynamo.reset()  # each configuration compiles afresh, with static shapes
    tr.learner.net = torch.compile(tr.model, dynamic=False)  # what --compile did; the Trainer refuses it on a CPU
    start = time.perf_counter()
    tr.train_step()
    return tr, time.perf_counter() - start


def inference(size: str, side: int, channels: int, rounds: int) -> tuple[float, float, float]:
    """(eager img/s, compiled img/s, compile seconds) of the forward pass that samplers call."""
    import torch._inductor.config as inductor

    from undiffuse.conditions import Classes, Condition
    from undiffuse.training.recipe import unet_config
    from undiffuse.unet import UNet

    torch.manual_seed(0)
    net = UNet(unet_config(size, side, channels, 10)).eval().requires_grad_(False)
    x, t = torch.randn(200, channels, side, side), torch.randint(1000, (200,))
    c = Condition(Classes.of(torch.nn.functional.one_hot(torch.arange(200) % 10, 10).float()))
    inductor.freezing = True
    torch._dynamo.reset()
    compiled = torch.compile(net, dynamic=False)
    with torch.inference_mode():
        start = time.perf_counter()
        compiled(x, t, c)
        compile_s = time.perf_counter() - start
        net(x, t, c)
        eager, fast = [], []
        for _ in range(rounds):
            eager.append(seconds_per_step(lambda: net(x, t, c), 3))
            fast.append(seconds_per_step(lambda: compiled(x, t, c), 3))
    return 200 / statistics.median(eager), 200 / statistics.median(fast), compile_s


def jemalloc_ratio(size: str, side: int, channels: int, rounds: int) -> str:
    """Eager img/s with jemalloc / without, each in its own child process, alternating."""
    if not os.path.exists(JEMALLOC):
        return "not installed"
    rates = {"glibc": [], "jemalloc": []}
    for _ in range(rounds):
        for name in rates:
            env = dict(os.environ, **({"LD_PRELOAD": JEMALLOC} if name == "jemalloc" else {}))
            out = subprocess.run([sys.executable, __file__, "--child", f"{size}:{side}x{channels}"], env=env,
                                 capture_output=True, text=True, check=True).stdout
            rates[name].append(float(out.split()[-1]))
    return f"{statistics.median(rates['jemalloc']) / statistics.median(rates['glibc']):.2f}x"


def two_processes_ratio(size: str, side: int, channels: int, rounds: int) -> str:
    """Training img/s of two torchrun processes of one thread each (DDP over gloo, the global batch
    split between them) / one process of two threads, both through `undiffuse train`, alternating."""
    import numpy as np

    folder = Path(tempfile.mkdtemp(prefix="undiffuse-levers-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    data = folder / "images.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (512, side, side, channels), dtype=np.uint8))
    train = ["-m", "undiffuse", "train", "--data", str(data), "--model", size, "--steps", "30", "--batch-size", "128",
             "--grids", "0", "--quiet", "--overwrite"]
    launchers = {"one": ([sys.executable], {}),
                 "two": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                         {"OMP_NUM_THREADS": "1"})}
    rates = {name: [] for name in launchers}
    for _ in range(rounds):
        for name, (launcher, env) in launchers.items():
            run = folder / name
            subprocess.run([*launcher, *train, "--out", str(run)], env=dict(os.environ, **env), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with (run / "log.csv").open() as f:
                rates[name].append(float(list(csv.DictReader(f))[-1]["images_per_s"]))
    return f"{statistics.median(rates['two']) / statistics.median(rates['one']):.2f}x"


def measure(size: str, side: int, channels: int, rounds: int, limit: float) -> dict:
    from undiffuse.unet import count_parameters
    sys.path.insert(0, os.path.dirname(__file__))
    from core import forward_flops

    plain, nhwc = trainer(size, side, channels), trainer(size, side, channels, channels_last=True)
    flops = forward_flops(plain.model, side, channels)
    compiled, compile_s = compiled_training(size, side, channels)
    levers = {"eager": (plain.train_step, 2), "channels_last": (nhwc.train_step, 2),
              "1 thread": (plain.train_step, 1), "compile": (compiled.train_step, 2)}
    for step, threads in levers.values():
        seconds_per_step(step, 2, threads)  # warm-up
    times = {name: [] for name in levers}
    for _ in range(rounds):
        for name, (step, threads) in levers.items():
            times[name].append(seconds_per_step(step, threads=threads))
    rate = {name: BATCH / statistics.median(ts) for name, ts in times.items()}
    eager_fwd, compiled_fwd, fwd_compile_s = inference(size, side, channels, rounds)
    row = {"model": size, "image": f"{side}x{side}x{channels}",
           "params": f"{count_parameters(plain.model) / 1e6:.2f}M",
           "eager train img/s": f"{rate['eager']:.0f}",
           "of matmul limit": f"{3 * flops * rate['eager'] / 1e9 / limit:.0%}",
           "in convolutions": f"{conv_share(plain):.0%}",
           "channels_last": f"{rate['channels_last'] / rate['eager']:.2f}x",
           "1 thread": f"{rate['1 thread'] / rate['eager']:.2f}x",
           "compile (train)": f"{rate['compile'] / rate['eager']:.2f}x after {compile_s:.0f} s",
           "compile (sampling fwd)": f"{compiled_fwd / eager_fwd:.2f}x after {fwd_compile_s:.0f} s",
           "jemalloc": jemalloc_ratio(size, side, channels, rounds),
           "2 processes x 1 thread": two_processes_ratio(size, side, channels, rounds)}
    print(row, flush=True)
    return row


def child(config: str) -> None:
    size, shape = config.split(":")
    side, channels = (int(v) for v in shape.split("x"))
    tr = trainer(size, side, channels)
    seconds_per_step(tr.train_step, 2)
    print(BATCH / statistics.median([seconds_per_step(tr.train_step) for _ in range(3)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny:28x1,small:32x3", help="SIZE:SIDExCHANNELS, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    torch.set_num_threads(2)
    limit = matmul_gflops()
    rows = []
    for config in args.configs.split(","):
        size, shape = config.split(":")
        side, channels = (int(v) for v in shape.split("x"))
        rows.append(measure(size, side, channels, args.rounds, limit))
    header = list(rows[0])
    table = markdown_table(header, rows)
    text = "\n".join([
        f"Command: `python benchmarks/cpu_levers.py --configs {args.configs} --rounds {args.rounds}` "
        f"(run alone, pinned with `taskset -c 0,1`). Undiffuse's training step at batch 128, class-conditional; "
        f"each lever's images/s relative to eager NCHW with 2 threads in the same rounds; fp32 matmul limit "
        f"{limit:.0f} GFLOP/s (3x forward FLOPs per trained image); torch {torch.__version__}.",
        "", *table])
    print(text)
    if not args.no_write:
        write_section("cpu_levers", "CPU speed levers (each against eager, same process)", text)


if __name__ == "__main__":
    main()
