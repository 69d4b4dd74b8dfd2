"""`undiffuse demo` as people run it: on ONE core while the other is busy, and on two quiet cores.

    .venv/bin/python benchmarks/demo_cores.py [--modes one-busy,two-quiet] [--minutes 10] [--per-digit 100]

one-busy: the demo pinned to core 1 (`taskset -c 1`, one thread) while a competing process keeps
core 0 busy with matrix products for the whole run (the two vCPUs here are hyperthreads of one
physical core, so the competitor also slows the demo's core). two-quiet: the demo on cores 0 and 1
with nothing else running. For each: the minutes the training took against the budget asked (read
from the run's log; the final pictures excluded and reported apart), the steps it took, fidelity at
the default guidance (the share of 100 samples per digit that the shipped judge reads as the digit
asked, default sampler), and FID / KID from `undiffuse eval RUN --n 1000`.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from digit_judge import fidelity, judge
from report import write_section
from undiffuse.generation import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, generate, load_run
from undiffuse.samplers import DEFAULT_STEPS

UNDIFFUSE = [sys.executable, "-m", "undiffuse"]
COMPETITOR = "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"
MODES = {"one-busy": ("1", "0"), "two-quiet": ("0,1", None)}  # demo cores, competitor core


def run_demo(mode: str, minutes: float, out: Path) -> dict:
    cores, busy = MODES[mode]
    env = dict(os.environ, **({"OMP_NUM_THREADS": "1"} if "," not in cores else {}))
    competitor = subprocess.Popen(["taskset", "-c", busy, sys.executable, "-c", COMPETITOR]) if busy else None
    try:
        start = time.perf_counter()
        subprocess.run(["taskset", "-c", cores, *UNDIFFUSE, "demo", "--minutes", str(minutes), "--out", str(out),
                        "--quiet"], env=env, check=True)
        wall = time.perf_counter() - start
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    with (out / "log.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    return {"wall_min": wall / 60, "train_min": float(last["seconds"]) / 60, "steps": int(last["step"])}


def scores(out: Path, per_digit: int, judge_net) -> dict:
    run = load_run(out)
    labels = [k for k in range(10) for _ in range(per_digit)]
    images = generate(run, len(labels), labels=labels, guidance=DEFAULT_GUIDANCE, seed=0)
    result = {"fidelity": fidelity(judge_net, images, torch.tensor(labels))}
    subprocess.run([*UNDIFFUSE, "eval", str(out), "--n", "1000"], check=True, stdout=subprocess.DEVNULL)
    evaluation = json.loads((out / "eval.json").read_text())
    return {**result, **{k: evaluation[k] for k in ("fid", "kid", "kid_std")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--out", default="runs/demo-cores", help="folder for the runs (replaced)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    judge_net, accuracy = judge()
    rows = []
    for mode in args.modes.split(","):
        out = Path(args.out) / mode
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        timing = run_demo(mode, args.minutes, out)
        s = scores(out, args.per_digit, judge_net)
        config = json.loads((out / "config.json").read_text())
        rows.append(f"| {mode} | {args.minutes:g} | {timing['train_min']:.2f} | {timing['wall_min']:.2f} | "
                    f"{config['model_size']} | {timing['steps']} | {s['fidelity']:.3f} | {s['fid']:.2f} | "
                    f"{1e3 * s['kid']:.0f} +- {1e3 * s['kid_std']:.0f} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        f"Command: `python benchmarks/demo_cores.py --minutes {args.minutes:g} --per-digit {args.per_digit}`. "
        f"one-busy: the demo on core 1 alone (one thread) while a matmul loop keeps core 0 busy; two-quiet: the "
        f"demo on both cores, nothing else running. Training minutes from the run's log (everything but the "
        f"final pictures); wall minutes include start-up and the final pictures. Fidelity: share of "
        f"{10 * args.per_digit} samples ({DEFAULT_SAMPLER}, {DEFAULT_STEPS[DEFAULT_SAMPLER]} steps, guidance {DEFAULT_GUIDANCE:g}) the "
        f"shipped judge (accuracy {accuracy:.3f} on real digits) reads as the digit asked. FID and KID: "
        "`undiffuse eval RUN --n 1000` (digit features).",
        "", "| mode | minutes asked | training minutes | wall minutes | model | steps | fidelity | FID | KID x 1e3 |",
        "|---|---|---|---|---|---|---|---|---|", *rows])
    print(text)
    if not args.no_write:
        write_section("demo_cores", "The demo on one busy core and on two quiet cores", text)


if __name__ == "__main__":
    main()
