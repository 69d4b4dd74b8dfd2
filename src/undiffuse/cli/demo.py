"""`undiffuse demo`: the main job. Train on a bundled set (the digits, or the colour emoji) for a
bounded time, then draw."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import UsageError
from .flags import add_seed
from .noise import FORWARD_STEPS, parse_steps
from .output import say
from .progress import describe_trainer, spent, train_and_report

GIF_STEPS = 100  # DDIM steps of the animation: enough frames for the image to emerge slowly
DEMO_SETS = {"mnist": "MNIST digits", "emoji": "colour emoji"}  # the bundled sets, as the demo names them


def add(sub) -> None:
    p = sub.add_parser("demo", help="the main job: train on the bundled digits (or emoji), then draw", description=(
        "Train a class-conditional DDPM on a bundled set for a bounded time: the 5,000 MNIST digits, or "
        "with --data emoji the 1,906 colour emoji in 9 categories; then write a grid of samples (one row "
        "per class), the reverse process as a GIF, the forward process as a strip and the loss curve "
        "into a fresh run folder."))
    p.add_argument("--data", default="mnist", choices=DEMO_SETS, help="the bundled set (default mnist)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget (default 10)")
    p.add_argument("--out", default=None, metavar="RUN", help="run folder (default: the first free runs/demo[-N])")
    add_seed(p, help="seeds the weights, the batches and the noise")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..training import TrainConfig, Trainer

    if not 0 < args.minutes <= 24 * 60:
        raise UsageError(f"--minutes must lie in (0, 1440], got {args.minutes}")
    cfg = TrainConfig.flat(data=args.data, minutes=args.minutes, seed=args.seed)  # checks --seed too
    run_folder = Path(args.out) if args.out else free_folder(Path("runs") / ("demo" if args.data == "mnist" else
                                                                              f"demo-{args.data}"))
    say(f"undiffuse demo: {args.minutes:g} minutes of training on the bundled {DEMO_SETS[args.data]} -> {run_folder}")
    trainer = Trainer.create(cfg, run_folder, spent=spent(args))
    describe_trainer(trainer)
    if train_and_report(trainer, progress=not args.quiet) is None:
        return 130
    start = time.perf_counter()
    draw_pictures(trainer, run_folder)
    say(f"drawing the pictures took {time.perf_counter() - start:.0f} s, after the {args.minutes:g}-minute "
        "training budget")
    return 0


def draw_pictures(trainer, run: Path) -> None:
    from ..generation import generate, load_run
    from ..viz import FrameRecorder, forward_strip, image_grid, save_gif

    loaded = load_run(run, device=trainer.device)
    k = loaded.num_classes
    say("sampling the grid and the animation ...")
    labels = [c for c in range(k) for _ in range(10)]
    grid = generate(loaded, len(labels), labels=labels, seed=0)
    image_grid(grid, nrow=10).save(run / "samples.png")
    say(f"samples, one row per class ({', '.join(loaded.class_names)}): {run / 'samples.png'}")

    recorder = FrameRecorder(GIF_STEPS)
    generate(loaded, 2 * k, labels=list(range(k)) * 2, sampler="ddim", steps=GIF_STEPS, eta=1.0, seed=1,
             callback=recorder)
    save_gif(recorder.frames, run / "reverse.gif", nrow=k)
    say(f"reverse process, noise to images: {run / 'reverse.gif'}")

    real = trainer.data.images[[int((trainer.data.labels == c).nonzero()[0]) for c in range(min(4, k))]]
    forward_strip(real, trainer.schedule, parse_steps(FORWARD_STEPS)).save(run / "forward.png")
    say(f"forward process on real images: {run / 'forward.png'}")
    say(f"loss curve: {run / 'loss.png'}")


def free_folder(base: Path) -> Path:
    """base, or base-2, base-3, ...: the demo never overwrites an earlier demo."""
    if not base.exists():
        return base
    k = 2
    while Path(f"{base}-{k}").exists():
        k += 1
    return Path(f"{base}-{k}")
