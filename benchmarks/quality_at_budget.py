"""The headline table: each library trains on the bundled digits for the same wall-clock budget,
then its samples are scored in the offline digit feature space of `undiffuse eval`.

    python benchmarks/quality_at_budget.py [--minutes 10] [--n 1000] [--steps 20] [--out runs/quality-at-budget]

undiffuse trains as `undiffuse train --data mnist --minutes M` does (the demo's recipe: model size and
step count fitted to the budget, class-conditional with guidance dropout), and is sampled twice from
the same weights: at guidance 2 with a balanced set of labels, and at guidance 0 (unconditional, as
the peers are). diffusers and denoising-diffusion-pytorch train networks of the same size as the
one undiffuse picked (contenders.py), each with its documented recipe (batch, optimizer, learning
rate, EMA, loss target, schedule), in a loop that stops when the budget is spent. Every library
samples with DDIM at the same number of steps. Each training runs alone in a fresh process; run
nothing else meanwhile. Samples are kept in OUT/LIB/ so that `--score-only` rescoring is free.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch

from report import write_section

HERE = Path(__file__).resolve().parent
PICTURE = HERE / "quality_at_budget.png"


def train_undiffuse(out: Path, minutes: float, n: int, steps: int) -> dict:
    from undiffuse.generation import DEFAULT_GUIDANCE, generate, load_run
    from undiffuse.training import TrainConfig, Trainer

    start = time.perf_counter()
    trainer = Trainer.create(TrainConfig.flat(data="mnist", minutes=minutes), out / "run", overwrite=True)
    trainer.train(progress=False)
    seconds = time.perf_counter() - start
    run = load_run(out / "run")
    labels = [i % run.num_classes for i in range(n)]
    info = {"train_seconds": seconds, "steps": trainer.step, "batch_size": trainer.cfg.optim.batch_size,
            "model": trainer.size, "params": sum(p.numel() for p in run.net.parameters()),
            "threads": torch.get_num_threads()}
    for name, guidance in (("undiffuse", DEFAULT_GUIDANCE), ("undiffuse-w0", 0.0)):
        t0 = time.perf_counter()
        images = generate(run, n, labels=labels, sampler="ddim", steps=steps, guidance=guidance, seed=10_000)
        _save(out.parent / name, images, dict(info, sample_seconds=time.perf_counter() - t0, guidance=guidance))
    return info


def train_peer(library: str, out: Path, minutes: float, n: int, steps: int, size: str, recipe: str) -> dict:
    from contenders import build, epoch_batches, parameters
    from undiffuse.data import load_data

    images = load_data("mnist").images
    side, channels = images.shape[-1], images.shape[1]
    # one throw-away contender times a few steps, so that a schedule with a length fits the budget
    probe = build(library, size, side, channels, recipe=recipe)
    batches = epoch_batches(images, probe.batch_size, seed=1)
    probe.step(next(batches))
    t0 = time.perf_counter()
    for _ in range(5):
        probe.step(next(batches))
    planned = max(10, int(minutes * 60 / ((time.perf_counter() - t0) / 5)))
    contender = build(library, size, side, channels, planned_steps=planned, recipe=recipe)
    batches = epoch_batches(images, contender.batch_size, seed=0)
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


def score(out: Path, names: list[str]) -> dict:
    from undiffuse.data import load_data
    from undiffuse.eval.metrics import feature_extractor, score_features

    features = feature_extractor("digits")
    real = features(load_data("mnist").images)
    results = {}
    for name in names:
        folder = out / name
        if not (folder / "samples.npy").exists():
            continue
        images = torch.from_numpy(np.load(folder / "samples.npy", allow_pickle=False))
        info = json.loads((folder / "info.json").read_text())
        results[name] = dict(info, **score_features(real, features(images)), images=images)
    return results


def picture(results: dict) -> None:
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
    sheet.save(PICTURE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--n", type=int, default=1000, help="samples per library")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps for every library")
    parser.add_argument("--libraries", default="undiffuse,diffusers,lucidrains")
    parser.add_argument("--recipes", default="documented",
                        help="for the peers: documented (each its own), undiffuse (undiffuse's budget recipe "
                             "around the peer's network and loss), or both, comma-separated")
    parser.add_argument("--out", default="runs/quality-at-budget")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    libraries, recipes = args.libraries.split(","), args.recipes.split(",")
    spawn = multiprocessing.get_context("spawn")
    size = "tiny"
    if not args.score_only:
        for library in libraries:  # a fresh process each: no warm caches, no shared memory peaks
            if library == "undiffuse":
                with spawn.Pool(1) as pool:
                    info = pool.apply(train_undiffuse, (out / "undiffuse-run", args.minutes, args.n, args.steps))
                size = info["model"]
                print(library, info, flush=True)
                continue
            for recipe in recipes:
                with spawn.Pool(1) as pool:
                    info = pool.apply(train_peer, (library, out / peer_name(library, recipe), args.minutes, args.n,
                                                   args.steps, size, recipe))
                print(peer_name(library, recipe), info, flush=True)
    names = [n for lib in libraries for n in (("undiffuse", "undiffuse-w0") if lib == "undiffuse" else
                                              [peer_name(lib, r) for r in recipes])]
    results = score(out, names)
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
    if not args.no_write:
        picture(results)
    recipes = [f"- {k}: {v['recipe']}" for k, v in peers.items() if "recipe" in v]
    threads = sorted({r.get("threads") for r in results.values()})
    text = "\n".join([
        f"Command: `python benchmarks/quality_at_budget.py --minutes {args.minutes:g} --n {args.n} --steps {args.steps}`. "
        f"Each library trains for {args.minutes:g} minutes of wall clock on the 5,000 bundled digits (fp32, this CPU, "
        f"alone, torch threads {threads}), then draws {args.n} samples with DDIM {args.steps} steps; scored against the 5,000 training images "
        "in the offline digit feature space of `undiffuse eval`. `undiffuse` is sampled at guidance 2 with "
        "balanced labels, `undiffuse-w0` from the same weights at guidance 0 (unconditional, like the peers). "
        "Rows `LIB+budget-recipe`: the peer's own network, loss target and noise schedule, trained with "
        "undiffuse's budget recipe instead of its documented one (batch 128, AdamW, warm-up and cosine decay, "
        "EMA over the last tenth of the run), which separates what the recipe does from what the library does.",
        "", *rows, "", verdict, "", "Peer recipes (network matched to undiffuse's size):",
        *recipes, "", f"![100 samples of each](benchmarks/{PICTURE.name})"])
    print(text)
    if not args.no_write:
        write_section("quality_at_budget", "Quality at a fixed training budget, against the peers", text)


if __name__ == "__main__":
    main()
