"""The memory of a training step: the estimate (training/sizing.py) against torch's real peak on a CPU.

    .venv/bin/python benchmarks/step_memory.py [--configs tiny:16,small:28,medium:32] [--batches 32,160]

For each model and image side, a fresh process builds undiffuse's Learner on random labelled images
and takes one forward and backward pass (Learner.backward, as a step does); its peak resident memory
(ru_maxrss) is read before and after. Two batch sizes in two processes: the difference of their peaks
over the difference of their batches is the memory per image, with the interpreter, torch, the data
and the weights cancelled out. The table gives it beside sizing.activation_elements * 4 bytes, and
the ratio is what sizing.BYTES_PER_ELEMENT is calibrated by.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

CHILD = """
import json, resource, sys, torch
from undiffuse.data import ImageData
from undiffuse.training.config import TrainConfig
from undiffuse.training.learner import Learner
from undiffuse.training.setup import new_setup
from undiffuse.training.sizing import CHECKPOINTED, REDUCED, activation_elements
size, side, batch, options = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
torch.manual_seed(0)
data = ImageData(torch.rand(64, 1, side, side) * 2 - 1, torch.arange(64) % 10, tuple("0123456789"), "random")
cfg = TrainConfig.flat(data="random", image_size=side, steps=1, batch_size=batch, model=size, device="cpu", **options)
setup = new_setup(cfg, data)
learner = Learner(setup, size)
learner.backward(0)  # a first pass: the gradients and the allocator's pools exist
learner.model.zero_grad(set_to_none=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
learner.backward(1)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
factor = REDUCED[cfg.optim.precision] * (CHECKPOINTED if cfg.runtime.grad_checkpointing else 1)
estimate = activation_elements(setup.unet_config(size), side) * 4 * factor  # the network this setup trains
print(json.dumps({"peak": after * 1024, "before": before * 1024, "estimate": estimate}))
"""


def step(size: str, side: int, batch: int, options: str) -> tuple[int, float]:
    """(peak resident bytes, the estimate of the activations per image: 4 bytes per counted element,
    times the factors sizing.py gives the precision and checkpointing)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, size, str(side), str(batch), options], env=env, check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["peak"], result["estimate"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="tiny:16,tiny:28,small:16,small:28,small:32,medium:28")
    p.add_argument("--batches", default="32,160")
    p.add_argument("--options", default="{}", help='training options as JSON, e.g. {"precision": "bf16"}')
    args = p.parse_args()
    small, large = map(int, args.batches.split(","))
    print("| model | side | measured per image | 4 bytes x elements | ratio |\n|---|---|---|---|---|")
    for config in args.configs.split(","):
        size, side = config.split(":")
        (big, estimated), (little, _) = (step(size, int(side), b, args.options) for b in (large, small))
        measured = (big - little) / (large - small)
        print(f"| {size} | {side} | {measured / 2**20:.2f} MB | {estimated / 2**20:.2f} MB | "
              f"{measured / estimated:.2f} |", flush=True)


if __name__ == "__main__":
    main()
