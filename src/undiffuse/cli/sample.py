"""`undiffuse sample`: images from a trained run, as a grid, a .npy array and an animation.

--n is the total number of images, in every command. A conditional run draws, by default, a grid of
DEFAULT_PER_CLASS images of each class, a row per class; --per-class K sets the row length. A text
run draws DEFAULT_TEXT_N images of --prompt (by default, of its training captions in turn).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..limits import IMAGES
from ..memory import require
from .flags import add_conditioning, add_run, add_sampling, add_seed, conditioning, load_run, sampler_options
from .output import output_path, say, write_animation, write_images

MAX_GIF = 250  # images an animation shows
MAX_GRID = 10_000  # images a PNG grid shows
DEFAULT_PER_CLASS, DEFAULT_N = 8, 64
DEFAULT_TEXT_N = 8  # a text run: images of --prompt (or of its training captions in turn)


def add(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a trained run", description=(
        "Generate images with a trained run's EMA weights. A conditional run draws a grid with one "
        "row per class unless --label picks one class or --n asks for a total."))
    add_run(p)
    how_many = p.add_mutually_exclusive_group()
    how_many.add_argument("--n", type=int, default=None,
                          help=f"images in all (default: {DEFAULT_PER_CLASS} per class, or {DEFAULT_N}); "
                               "a conditional run cycles through its classes")
    how_many.add_argument("--per-class", type=int, default=None, metavar="K",
                          help=f"a conditional run: K images of each class, a row per class (default {DEFAULT_PER_CLASS})")
    add_sampling(p)
    add_conditioning(p, "class name or id; 'all' (the default for conditional runs) cycles through the classes "
                        "(a text run takes --prompt instead)")
    add_seed(p)
    p.add_argument("--out", default=None, metavar="FILE.png|FILE.npy", help="default: RUN/samples.png")
    p.add_argument("--gif", default=None, metavar="FILE.gif", help="also animate the reverse process")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..generation import generate, run_steps
    from ..guidance import branches
    from ..samplers import network_calls, steps_walked
    from ..viz import FrameRecorder

    out = output_path(args.out or Path(args.run) / "samples.png", (".png", ".npy"))
    gif = output_path(args.gif, (".gif",), "--gif") if args.gif else None
    for flag, value in (("--n", args.n), ("--per-class", args.per_class)):
        if value is not None:
            IMAGES.check(value, flag)
    loaded = load_run(args)
    options = sampler_options(args, loaded)
    n, nrow, per_class = _layout(args, loaded)
    if gif and n > MAX_GIF:
        raise UsageError(f"--gif animates at most {MAX_GIF} images; this asks for {n}")
    if out.suffix.lower() == ".png" and n > MAX_GRID:
        raise UsageError(f"a PNG grid shows at most {MAX_GRID:,} images; this asks for {n:,}: write FILE.npy")
    side, c = loaded.image_size, loaded.channels
    require(f"{n:,} images of {c}x{side}x{side}", 2 * 4 * n * c * side * side)  # the images, then the output
    in_class_order = [k for k in range(loaded.num_classes) for _ in range(per_class)] if per_class else None
    asked = conditioning(args, loaded, n, "each", labels=in_class_order)  # per_class: a row per class
    steps = run_steps(loaded, options["sampler"], options["steps"])
    recorder = FrameRecorder(steps_walked(options["sampler"], steps, loaded.schedule.T)) if gif else None
    images = generate(loaded, n, seed=args.seed, callback=recorder, **options, **asked.options())
    write_images(images, out, nrow, asked.labels)
    calls = network_calls(options["sampler"], steps, loaded.schedule.T)
    both = branches(loaded.net, asked.cond, asked.guidance) == 2
    say(f"{n} samples ({loaded.precision.name}, {calls} network call{'s' * (calls > 1)} an image"
        f"{', each on both branches of guidance' if both else ''}): {out}")
    if gif:
        say(f"reverse process: {write_animation(recorder.frames, gif, nrow=nrow)}")
    return 0


def _layout(args, run) -> tuple[int, int, int | None]:
    """(images, images per row, images per class for a class-by-row grid or None)."""
    every_class = run.num_classes and args.context is None and args.label in (None, "all", "each")
    if args.per_class is not None and not every_class:
        raise UsageError("--per-class draws a row for every class of a conditional run; "
                         "use --n with --label, --context or an unconditional run")
    if every_class and args.n is None:
        per_class = args.per_class or DEFAULT_PER_CLASS
        return per_class * run.num_classes, per_class, per_class
    n = args.n or (DEFAULT_TEXT_N if getattr(run, "text", None) is not None else DEFAULT_N)
    return n, min(n, run.num_classes) if every_class else min(n, 8), None
