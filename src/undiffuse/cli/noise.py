"""`undiffuse noise`: the forward process on an image, as a strip (for teaching)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .flags import add_seed
from .output import IMAGE_SUFFIXES, output_path, say, write_picture

FORWARD_STEPS = "0,50,100,200,300,500,700,999"


def add(sub) -> None:
    from ..schedule import SCHEDULES

    p = sub.add_parser("noise", help="show the forward process on an image", description=(
        "Noise an image (or the first images of a data spec such as mnist) to several steps t in one "
        "shot, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, and save the strip."))
    p.add_argument("image", metavar="IMAGE", help="an image file, or a data spec (mnist, a folder, a .npy)")
    p.add_argument("--t", default=FORWARD_STEPS, help=f"comma-separated steps (default {FORWARD_STEPS})")
    p.add_argument("--out", default="forward.png", help="default: forward.png")
    p.add_argument("--n", type=int, default=4, help="rows when IMAGE is a data set (default 4)")
    p.add_argument("--schedule", default="linear", choices=SCHEDULES, help="default: linear")
    p.add_argument("--T", type=int, default=1000, help="diffusion steps (default 1000)")
    p.add_argument("--image-size", type=int, default=None, help="resize to this side")
    add_seed(p, help="seeds the noise eps")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..data import load_data, load_image
    from ..schedule import make_schedule
    from ..viz import forward_strip

    ts = parse_steps(args.t)
    if not 2 <= args.T <= 100_000 or not 1 <= args.n <= 64:
        raise UsageError("--T must lie in [2, 100000] and --n in [1, 64]")
    out = output_path(args.out, IMAGE_SUFFIXES)
    schedule = make_schedule(args.schedule, args.T)
    path = Path(args.image)
    if path.is_file() and path.suffix.lower() != ".npy":
        images = load_image(path, args.image_size)[None]
    else:
        images = load_data(args.image, image_size=args.image_size).images[:args.n]
    write_picture(forward_strip(images, schedule, ts, seed=args.seed), out)
    say(f"forward process at t = {', '.join(map(str, ts))}: {out}")
    return 0


def parse_steps(text: str) -> list[int]:
    try:
        ts = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--t must be comma-separated integers, got '{text}'") from None
    if not ts:
        raise UsageError("--t needs at least one step")
    return ts
