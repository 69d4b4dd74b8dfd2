"""`undiffuse upscale`: super-resolution with an upscale run (train --task upscale)."""
from __future__ import annotations

from ..errors import UsageError
from ..limits import EDITS
from . import editing
from .flags import add_run, add_sampling, add_seed, load_run, sampler_options
from .output import output_path


def add(sub) -> None:
    from ..conditions.lowres import DEFAULT_AUG

    p = sub.add_parser("upscale", help="upscale a low-resolution image with a super-resolution run", description=(
        "Sample a full-size image given --image, a low-resolution one of the run's low-res size (its image "
        "size over its factor), as SR3 (Saharia et al. 2021). The PNG shows low-res (nearest-upscaled) | "
        "bicubic | results; a .npy holds the results."))
    add_run(p)
    p.add_argument("--image", required=True, metavar="IMG",
                   help="the low-resolution image, exactly the run's low-res size; converted to the run's channels")
    add_sampling(p, spacing=False)
    editing.add_n(p, 4)
    p.add_argument("--aug", type=float, default=DEFAULT_AUG,
                   help=f"the noise level the low-res image is given and the network told (default {DEFAULT_AUG})")
    p.add_argument("--no-clip", action="store_true", help="do not clip each step's clean-image estimate to the data range")
    add_seed(p, "result")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.png (low-res | bicubic | results) or FILE.npy (results)")
    p.add_argument("--gif", default=None, metavar="FILE.gif", help="also animate the reverse process")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..data.decode import decode_picture
    from ..edit.upscale import comparison, low_res_picture, upscale
    from ..samplers import get

    out, gif = _check(args)
    loaded = load_run(args)
    options = sampler_options(args, loaded)
    if loaded.task != "upscale":
        raise UsageError(f"{args.run} generates images: it does not upscale (train one with --task upscale)")
    try:
        low = low_res_picture(decode_picture(args.image), loaded)
    except UsageError as e:
        raise UsageError(f"--image: {e}") from None
    frames = editing.recorder(gif, get(options["sampler"]).steps(args.steps, loaded.schedule.T))
    results = upscale(loaded, low, n=args.n, seed=args.seed, aug=args.aug, callback=frames, **options)
    tiles = comparison(low, results, loaded.factor)
    editing.write(results, tiles, out, None, gif, frames and frames.frames, f"images upscaled {loaded.factor}x")
    return 0


def _check(args):
    out = output_path(args.out, (".png", ".npy"))
    gif = output_path(args.gif, (".gif",), "--gif") if args.gif else None
    EDITS.check(args.n, "--n")
    if not 0 <= args.aug <= 2:
        raise UsageError(f"--aug must lie in [0, 2], got {args.aug}")
    from pathlib import Path
    if not Path(args.image).is_file():
        raise UsageError(f"--image '{args.image}': no such file")
    return out, gif
