"""How torch's worker threads wait, on quiet cores and on cores another process keeps busy.

    .venv/bin/python benchmarks/thread_waiting.py [--rounds 3] [--steps 60]

torch's CPU build runs its intra-op threads on GNU OpenMP, whose idle threads spin before they sleep
(OMP_WAIT_POLICY, GOMP_SPINCOUNT; read once, when the library loads). On a machine with nothing else
to do, spinning saves the wake-up; next to another busy process, the spinning threads take the cores
the work needs. Each cell is one fresh process timing training steps of the demo's model (tiny,
batch 32, 28x28 digits) and a DDIM-10 sampling of 64 images at guidance 2; "busy" runs a competitor
beside it (a 2-thread torch matmul loop, as a second training or a notebook would be). The settings
alternate within each round, and the median over rounds is kept.

Then what undiffuse does about it (training/threads.py): `undiffuse train --minutes M` beside the same
competitor, once as it is (a time budget times both counts and trains at the faster) and once with
OMP_NUM_THREADS=2 (the count fixed by the user: torch's default, as before), counting the steps each fits.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import markdown_table, write_section

SRC = str(Path(__file__).resolve().parents[1] / "src")

SETTINGS = {  # name: environment
    "default (spin, 2 threads)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}

CHILD = """
import json, sys, time, torch
from undiffuse.data import ImageData
from undiffuse.conditions import Classes, Condition, one_hot
from undiffuse.generation import LoadedRun, sample_images
from undiffuse.training import TrainConfig
from undiffuse.training.learner import Learner
from undiffuse.training.setup import new_setup
steps = int(sys.argv[1])
torch.manual_seed(0)
data = ImageData(torch.rand(512, 1, 28, 28) * 2 - 1, torch.arange(512) % 10, tuple("0123456789"), "random")
setup = new_setup(TrainConfig.flat(data="random", image_size=28, steps=steps, batch_size=32, model="tiny",
                                   device="cpu"), data)
learner = Learner(setup, "tiny")
for i in range(3):
    learner.backward(i)
start = time.perf_counter()
for i in range(steps):
    learner.backward(i)
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
train = (time.perf_counter() - start) / steps
net = learner.model.eval()
start = time.perf_counter()
with torch.inference_mode():
    labels = torch.arange(64) % 10
    sample_images(net, setup.schedule, "eps", 64, image_size=28, cond=Condition(Classes.of(one_hot(labels, 10))),
                  sampler="ddim", steps=10, guidance=2.0, seed=0)
print(json.dumps({"train": train, "sample": time.perf_counter() - start, "threads": torch.get_num_threads()}))
"""

COMPETITOR = """
import time, torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh_()
"""


def measure(env: dict, steps: int) -> dict:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    full.update(env, PYTHONPATH=SRC)
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps)], env=full, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def budget_steps(env: dict, minutes: float, out: Path) -> int:
    """The steps a time-budgeted demo-like run fits in `minutes` beside the competitor."""
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    full.update(env, PYTHONPATH=SRC)
    subprocess.run([sys.executable, "-m", "undiffuse", "train", "--data", "mnist", "--model", "tiny", "--minutes",
                    str(minutes), "--grids", "0", "--quiet", "--out", str(out), "--overwrite"], env=full, check=True,
                   capture_output=True)
    return json.loads((out / "config.json").read_text())["plan"]["steps"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--train-minutes", type=float, default=1.0)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    results: dict[tuple[str, str], list[dict]] = {}
    fitted = {}
    for load in ("quiet", "busy"):
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if load == "busy" else None
        try:
            time.sleep(1 if competitor else 0)
            for r in range(args.rounds):
                for name, env in SETTINGS.items():
                    got = measure(env, args.steps)
                    results.setdefault((load, name), []).append(got)
                    print(load, name, got, flush=True)
            if competitor:
                with tempfile.TemporaryDirectory() as tmp:
                    for name, env in (("chosen by timing", {}), ("OMP_NUM_THREADS=2", {"OMP_NUM_THREADS": "2"})):
                        fitted[name] = budget_steps(env, args.train_minutes, Path(tmp) / "run")
                        print(name, fitted[name], flush=True)
        finally:
            if competitor:
                competitor.kill()
                competitor.wait()
    rows = []
    for name in SETTINGS:
        row = {"setting": name}
        for load in ("quiet", "busy"):
            runs = results[(load, name)]
            row[f"{load}: train step (ms)"] = f"{1e3 * statistics.median(r['train'] for r in runs):.0f}"
            row[f"{load}: sample 64 (s)"] = f"{statistics.median(r['sample'] for r in runs):.2f}"
        rows.append(row)
    text = "\n".join([
        f"Command: `python benchmarks/thread_waiting.py --rounds {args.rounds} --steps {args.steps}`. Machine: "
        f"{os.cpu_count()} vCPUs. Each cell: the median over {args.rounds} rounds of a fresh process timing "
        f"{args.steps} training steps of the demo's model (tiny, batch 32, 28x28) and a DDIM-10 sampling of 64 "
        "images at guidance 2 (lower is better). busy: a 2-thread torch matmul loop runs beside it.", "",
        *markdown_table(list(rows[0]), rows), "",
        f"`undiffuse train --data mnist --model tiny --minutes {args.train_minutes:g}` beside the busy competitor "
        f"fitted {fitted['chosen by timing']} steps of 32 with its thread count chosen by timing "
        f"(training/threads.py) and {fitted['OMP_NUM_THREADS=2']} with OMP_NUM_THREADS=2 fixed "
        f"({fitted['chosen by timing'] / fitted['OMP_NUM_THREADS=2']:.2f}x)."])
    print(text)
    if not args.no_write:
        write_section("thread_waiting", "How torch's threads wait: quiet cores and busy ones", text)


if __name__ == "__main__":
    main()
