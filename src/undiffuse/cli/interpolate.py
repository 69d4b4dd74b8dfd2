"""`undiffuse interpolate`: morph between two seeds' samples."""
from __future__ import annotations

from ..limits import SEED
from . import editing
from .flags import add_run, add_sampling, conditioning, load_run, parse_ints
from .output import say, write_animation, write_images


def add(sub) -> None:
    p = sub.add_parser("interpolate", help="morph between two seeds' samples", description=(
        "Walk the great circle between the starting noise of two seeds (spherical interpolation) and "
        "denoise every point with the same deterministic sampler: the ends are `sample`'s images for "
        "those seeds, and the ones between change smoothly. A strip (PNG), an animation (GIF) or .npy."))
    add_run(p)
    p.add_argument("--seeds", required=True, metavar="A,B", help="the two seeds at the ends")
    editing.add_n(p, 8, "images along the way, ends included")
    add_sampling(p, deterministic_only=True, spacing=False)
    editing.add_common(p, "strip.png, strip.gif or FILE.npy", gif=False)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..edit import interpolate

    out, _ = editing.check(args, suffixes=(".png", ".npy", ".gif"), n_min=2)
    seeds = [SEED.check(s, "--seeds") for s in parse_ints(args.seeds, "--seeds", "A,B", 2)]
    loaded = load_run(args)
    asked = conditioning(args, loaded, args.n, default_label="none")
    strip = interpolate(loaded, seeds, args.n, sampler=args.sampler, steps=args.steps,
                        clip_denoised=not args.no_clip, **asked.options())
    if out.suffix.lower() == ".gif":
        frames = [strip[i:i + 1] for i in [*range(args.n), *range(args.n - 2, 0, -1)]]  # there and back
        write_animation(frames, out, nrow=1, seconds=0.25 * len(frames), hold=0.25)
    else:
        write_images(strip, out, args.n, asked.labels)
    say(f"{args.n} images from seed {seeds[0]} to seed {seeds[1]}: {out}")
    return 0
