"""The headline table: each library trains on the bundled digits for the same wall-clock budget,
then its samples are scored in the offline digit feature space of `undiffuse eval`.

    python benchmarks/quality_at_budget.py [--minutes 10] [--n 1000] [--steps 20] [--out runs/quality-at-budget]
    python benchmarks/quality_at_budget.py --data emoji --steps 25 --recipes documented,undiffuse --side-by-side

undiffuse trains as `undiffuse train --data mnist --minutes M` does (the demo's recipe: model size and
step count fitted to the budget, class-conditional with guidance dropout), and is sampled twice from
the same weights: at its run's guidance (2 for digits) with balanced labels, and at guidance 0 (unconditional, as
the peers are). diffusers and denoising-diffusion-pytorch train networks of the same size as the
one undiffuse picked (contenders.py), each with its documented recipe (batch, optimizer, learning
rate, EMA, loss target, schedule), in a loop that stops when the budget is spent. Every library
samples with DDIM at the same number of steps. Each training runs alone in a fresh process; run
nothing else meanwhile. Samples are kept in OUT/LIB/ so that `--score-only` rescoring is free.

--data emoji: the same on the bundled colour set, scored in the emoji judge's features (the peers with
the horizontal flips their documented colour recipes use; undiffuse with what its recipe decides from
the data). --side-by-side: the trainings run two at a time, each pinned to its own core with one thread,
so that each has one core while the other is busy, the condition of the colour issue's budget.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from colour_budget import COMPETITOR
from report import cpu_line, write_section

HERE = Path(__file__).resolve().parent
FEATURES = {"mnist": "digits", "emoji": "emoji"}  # the shipped judge whose features score each set
LIBRARIES = "undiffuse,diffusers,lucidrains"


def pinned(core: int | None, job, *args):
    """Run job(*args) on one core with one thread (None: as the process is)."""
    if core is not None:
        os.sched_setaffinity(0, {core})
        torch.set_num_threads(1)
    return job(*args)


def train_undiffuse(out: Path, minutes: float, n: int, steps: int, data: str = "mnist") -> dict:
    from undiffuse.generation import generate, load_run
    from undiffuse.training import TrainConfig, Trainer

    start = time.perf_counter()
    trainer = Trainer.create(TrainConfig.flat(data=data, minutes=minutes), out / "run", overwrite=True)
    trainer.train(progress=False)
    seconds = time.perf_counter() - start
    run = load_run(out / "run")
    labels = [i % run.num_classes for i in range(n)]
    info = {"train_seconds": seconds, "steps": trainer.step, "batch_size": trainer.cfg.optim.batch_size,
            "model": trainer.size, "params": sum(p.numel() for p in run.net.parameters()),
            "threads": torch.get_num_threads()}
    for name, guidance in (("undiffuse", run.guidance), ("undiffuse-w0", 0.0)):
        t0 = time.perf_counter()
        images = generate(run, n, labels=labels, sampler="ddim", steps=steps, guidance=guidance, seed=10_000)
        _save(out.parent / name, images, dict(info, sample_seconds=time.perf_counter() - t0, guidance=guidance))
    return info


def train_peer(library: str, out: Path, minutes: float, n: int, steps: int, size: str, recipe: str,
               data: str = "mnist") -> dict:
    from contenders import build, epoch_batches, parameters
    from undiffuse.data import load_data

    images, flip = load_data(data).images, data != "mnist"
    side, channels = images.shape[-1], images.shape[1]
    # one throw-away contender times a few steps, so that a schedule with a length fits the budget
    probe = build(library, size, side, channels, recipe=recipe)
    batches = epoch_batches(images, probe.batch_size, seed=1, flip=flip)
    probe.step(next(batches))
    t0 = time.perf_counter()
    for _ in range(5):
        probe.step(next(batches))
    planned = max(10, int(minutes * 60 / ((time.perf_counter() - t0) / 5)))
    contender = build(library, size, side, channels, planned_steps=planned, recipe=recipe)
    batches = epoch_batches(images, contender.batch_size, seed=0, flip=flip)
    step, losses, start = 0, [], time.perf_counter()
    while time.perf_counter() - start < minutes * 60:
        losses.append(contender.step(next(batches)))
        step += 1
    seconds = time.perf_counter() - start
    t0 = time.perf_counter()
    samples = contender.sample(n, steps, 10_000)
    info = {"train_seconds": seconds, "steps": step, "batch_size": contender.batch_size, "model": size,
            "params": parameters(contender), "planned_steps": planned, "final_loss": float(np.mean(losses[-50:])),
            "sample_seconds": time.perf_counter() - t0, "recipe": contender.recipe,
            "threads": torch.get_num_threads()}
    _save(out, samples, info)
    return info


def peer_name(library: str, recipe: str) -> str:
    return library if recipe == "documented" else f"{library}+budget-recipe"


def _save(folder: Path, images: torch.Tensor, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "samples.npy", images.clamp(-1, 1).numpy())
    (folder / "info.json").write_text(json.dumps(info, indent=1))


def score(out: Path, names: list[str], data: str = "mnist") -> dict:
    from undiffuse.data import load_data
    from undiffuse.eval.metrics import feature_extractor, score_features

    features = feature_extractor(FEATURES[data])
    real = features(load_data(data).images)
    results = {}
    for name in names:
        folder = out / name
        if not (folder / "samples.npy").exists():
            continue
        images = torch.from_numpy(np.load(folder / "samples.npy", allow_pickle=False))
        info = json.loads((folder / "info.json").read_text())
        results[name] = dict(info, **score_features(real, features(images)), images=images)
    return results


def picture(results: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    from undiffuse.viz import image_grid

    tiles = []
    for name, r in results.items():
        grid = image_grid(r["images"][:100], nrow=10, scale=2)
        canvas = Image.new("RGB", (grid.width, grid.height + 18), "white")
        canvas.paste(grid.convert("RGB"), (0, 18))
        ImageDraw.Draw(canvas).text((4, 3), f"{name}: FID {r['fid']:.1f}", fill="black")
        tiles.append(canvas)
    width = sum(t.width for t in tiles) + 8 * (len(tiles) - 1)
    sheet = Image.new("RGB", (width, max(t.height for t in tiles)), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 8
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=FEATURES)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--n", type=int, default=1000, help="samples per library")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps for every library")
    parser.add_argument("--libraries", default=LIBRARIES)
    parser.add_argument("--recipes", default="documented",
                        help="for the peers: documented (each its own), undiffuse (undiffuse's budget recipe "
                             "around the peer's network and loss), or both, comma-separated")
    parser.add_argument("--without", default="", help="rows to leave out, comma-separated (e.g. "
                        "lucidrains+budget-recipe)")
    parser.add_argument("--side-by-side", action="store_true",
                        help="two trainings at a time, one core and one thread each")
    parser.add_argument("--size", default=None, help="the peers' matched size (default: the one undiffuse picks; "
                        "needed with --side-by-side, where the peers may start before undiffuse has picked)")
    parser.add_argument("--out", default=None, help="default: runs/quality-at-budget[-DATA]")
    parser.add_argument("--section", default=None, help="a BENCHMARKS.md section (and picture) of its own, "
                        "named with this suffix, for a run of some rows that must not replace the full table")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    digits = args.data == "mnist"
    out = Path(args.out or ("runs/quality-at-budget" if digits else f"runs/quality-at-budget-{args.data}"))
    libraries, recipes = args.libraries.split(","), args.recipes.split(",")
    args.without = set(filter(None, args.without.split(",")))
    if not args.score_only:
        train_all(args, out, libraries, recipes)
    names = [n for lib in libraries for n in (("undiffuse", "undiffuse-w0") if lib == "undiffuse" else
                                              [peer_name(lib, r) for r in recipes]) if n not in args.without]
    results = score(out, names, args.data)
    rows = ["| library | model (params) | steps x batch in budget | FID | KID x 1e3 | precision | recall | "
            "samples/s (DDIM) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['model']} ({r['params'] / 1e6:.2f}M) | {r['steps']} x {r['batch_size']} | "
                    f"{r['fid']:.2f} | {r['kid'] * 1e3:.2f} ± {r['kid_std'] * 1e3:.2f} | {r['precision']:.2f} | "
                    f"{r['recall']:.2f} | {len(r['images']) / r['sample_seconds']:.1f} |")
    ours = results.get("undiffuse-w0") or results.get("undiffuse")
    peers = {k: v for k, v in results.items() if not k.startswith("undiffuse")}  # every recipe
    verdict = "; ".join(f"{k} FID / undiffuse (guidance 0) FID = {v['fid'] / ours['fid']:.1f}x"
                        for k, v in peers.items()) if ours and peers else ""
    key = "quality_at_budget" + ("" if digits else f"_{args.data}") + (f"_{args.section}" if args.section else "")
    picture_path = HERE / f"{key}.png"
    if not args.no_write:
        picture(results, picture_path)
    described = [f"- {k}: {v['recipe']}" for k, v in peers.items() if "recipe" in v]
    threads = sorted({r.get("threads") for r in results.values()})
    guidance = results["undiffuse"]["guidance"] if "undiffuse" in results else 2
    command = (f"python benchmarks/quality_at_budget.py --minutes {args.minutes:g} --n {args.n} --steps {args.steps}"
               + ("" if digits else f" --data {args.data}") + ("" if recipes == ["documented"] else f" --recipes {args.recipes}")
               + (" --side-by-side" if args.side_by_side else "") + (f" --size {args.size}" if args.size else "")
               + (f" --without {','.join(sorted(args.without))}" if args.without else "")
               + (f" --libraries {args.libraries}" if args.libraries != LIBRARIES else "")
               + (f" --section {args.section}" if args.section else ""))
    where = ("each pinned to its own core with one thread, two trainings at a time (so each had one core while "
             "the other was busy)" if args.side_by_side else f"alone, torch threads {threads}")
    text = "\n".join([
        f"Command: `{command}`. Machine: {cpu_line()}. "
        f"Each library trains for {args.minutes:g} minutes of wall clock on the bundled "
        + ("5,000 digits" if digits else f"{args.data} set") + f" ({where}), then draws {args.n} samples with DDIM "
        f"{args.steps} steps; scored against the bundled set in the offline {FEATURES[args.data]} judge's features "
        f"of `undiffuse eval`. `undiffuse` is sampled at its run's guidance ({guidance:g}) with balanced labels, "
        "`undiffuse-w0` from the same weights at guidance 0 (unconditional, like the peers). "
        "Rows `LIB+budget-recipe`: the peer's own network, loss target and noise schedule, trained with "
        "undiffuse's budget recipe instead of its documented one (batch 128, AdamW, warm-up and cosine decay, "
        "EMA over the last fifth of the run), which separates what the recipe does from what the library does."
        + ("" if digits else " The peers train with random horizontal flips, as their documented colour recipes do."),
        "", *rows, "", verdict, "", "Peer recipes (network matched to undiffuse's size):",
        *described, "", f"![100 samples of each](benchmarks/{picture_path.name})"])
    print(text)
    if not args.no_write:
        title = ("Quality at a fixed training budget, against the peers" + ("" if digits else f": {args.data}")
                 + (f" ({args.section})" if args.section else ""))
        write_section(key, title, text)


def train_all(args, out: Path, libraries: list[str], recipes: list[str]) -> None:
    """Every training in a fresh process (no warm caches, no shared memory peaks): one after the
    other, undiffuse first so that the peers match the size it picks; or, --side-by-side, two at a time
    on the two cores (the size given; a lone last one beside a busy loop)."""
    if args.side_by_side and args.size is None:
        raise SystemExit("--side-by-side needs --size: the peers may start before undiffuse picks its own")
    runs = [("undiffuse", None)] * ("undiffuse" in libraries) + [(lib, r) for lib in libraries if lib != "undiffuse"
                                                                 for r in recipes if peer_name(lib, r) not in args.without]
    size = args.size or "tiny"
    group = 2 if args.side_by_side else 1
    for first in range(0, len(runs), group):
        batch = runs[first:first + group]
        jobs = [(train_undiffuse, (out / "undiffuse-run", args.minutes, args.n, args.steps, args.data)) if lib == "undiffuse"
                else (train_peer, (lib, out / peer_name(lib, r), args.minutes, args.n, args.steps, size, r, args.data))
                for lib, r in batch]
        alone = args.side_by_side and len(batch) == 1
        cores = [1] if alone else [0, 1] if args.side_by_side else [None]
        competitor = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", COMPETITOR]) if alone else None
        spawn = multiprocessing.get_context("spawn")
        pools = [spawn.Pool(1) for _ in batch]
        try:
            pending = [pool.apply_async(pinned, (core, job, *job_args)) for pool, core, (job, job_args) in
                       zip(pools, cores, jobs)]
            for (lib, r), result in zip(batch, pending):
                info = result.get()
                if lib == "undiffuse":
                    if args.size and info["model"] != args.size:
                        print(f"warning: undiffuse picked {info['model']}, the peers are matched to {args.size}")
                    size = args.size or info["model"]
                print(lib if r is None else peer_name(lib, r), info, flush=True)
        finally:
            for pool in pools:
                pool.close()
            if competitor is not None:
                competitor.kill()
                competitor.wait()


if __name__ == "__main__":
    main()
